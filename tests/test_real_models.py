"""`gtnpipe compile` on published models (tests/real_models.py): a dynamic input fixed by --input-shape, every device
whose runtime takes it built with parity against ONNX Runtime FP32, a device that cannot take it reported by name
while the others are built, and `gtnpipe bench` passing on the host artifact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from conftest import HANG_TIMEOUT_S
from real_models import CLS_48X192, rapidocr_model

from gtnpipe.config.profiles import profiles_dir
from gtnpipe.deploy.manifest import load_manifest
from gtnpipe.deploy.onnx_model import InputShape, parse_input_shape, read_onnx
from gtnpipe.errors import ConfigError


def test_input_shape_parses_with_or_without_batch_and_name() -> None:
    assert parse_input_shape("1x3x48x192") == InputShape((3, 48, 192), 1, None)
    assert parse_input_shape("3x48x192") == InputShape((3, 48, 192), None, None)
    assert parse_input_shape("x=1X3x48x192") == InputShape((3, 48, 192), 1, "x")
    for bad in ("48x192", "1x3x48x0", "1x3xHx192", ""):
        with pytest.raises(ConfigError, match="give NxCxHxW or CxHxW in positive integers"):
            parse_input_shape(bad)


def test_a_dynamic_input_is_refused_without_a_shape_and_fixed_with_one() -> None:
    """Paddle names both sides "?": fixing them must not rename one through the other (onnxruntime's
    make_dim_param_fixed would set W to 48 as well); the output's classes come from shape inference."""
    path = rapidocr_model(CLS_48X192)
    with pytest.raises(ConfigError, match=r"input 'x' has shape \?x3x\?x\?, with a dynamic channel, height or width: "
                                          r"give the size the model was made for with --input-shape"):
        read_onnx(path)
    model, facts = read_onnx(path, parse_input_shape("1x3x48x192"))
    assert facts.chw == (3, 48, 192) and facts.num_classes == 2 and facts.opset == 11 and facts.batch is None
    onnx.checker.check_model(model)
    with pytest.raises(ConfigError, match=r"gives C = 1, ch_ppocr_mobile_v2\.0_cls_infer\.onnx's input 'x' has a fixed 3 "
                                          "there: give 3"):
        read_onnx(path, InputShape((1, 48, 192)))
    with pytest.raises(ConfigError, match="--input-shape names input 'images'; .*'s input is 'x'"):
        read_onnx(path, parse_input_shape("images=1x3x48x192"))


@pytest.mark.slow
def test_a_published_classifier_compiles_for_every_runtime_that_takes_it(tmp_path: Path) -> None:
    path = rapidocr_model(CLS_48X192)
    out = tmp_path / "artifacts"
    # a device the model cannot fit (a user's profile with a 10 kB size budget): it fails by name, the others build
    tiny = tmp_path / "tiny-board.toml"
    tiny.write_text((profiles_dir() / "raspberry-pi-4.toml").read_text().split("\n# Budgets for students of the other")[0]
                    .replace('name = "raspberry-pi-4"', 'name = "tiny-board"').replace("model_size_mb = 0.8",
                                                                                       "model_size_mb = 0.01"))
    done = subprocess.run([sys.executable, "-m", "gtnpipe.cli", "compile", str(path), "--input-shape", "1x3x48x192",
                           "--device", "host", "--device", "intel-nuc", "--device", "raspberry-pi-4", "--device",
                           "jetson-nano", "--device", str(tiny), "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                           "--no-progress",
                           # the shipped budgets are the 28-px demo's: a 48x192 OCR classifier gets its own latency budget
                           "--budget", "latency_ms_p90=50", "--json"], capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    assert done.returncode == 4, done.stderr  # some built, one not
    results = {r["device"]: r for r in json.loads(done.stdout)}
    assert set(results) == {"host", "intel-nuc", "raspberry-pi-4", "jetson-nano", "tiny-board"}
    assert "no precision of device 'tiny-board' passes its checks" in results["tiny-board"]["failed"]
    for device, runtime in (("host", "onnxruntime"), ("intel-nuc", "openvino"), ("raspberry-pi-4", "tflite")):
        m = load_manifest(Path(results[device]["folder"]))
        assert m["runtime"]["name"] == runtime and m["model"]["input"]["shape"] == [1, 3, 48, 192]
        assert m["budget_overrides"] == {"latency_ms_p90": 50.0} and m["budgets"]["latency_ms_p90"] == 50.0
        fp32 = next(r for r in m["precisions"] if r["precision"] == "fp32")
        # parity against ONNX Runtime FP32 on 500 random images (no --data): the same function, to 1e-4
        assert fp32["parity"]["passed"] and fp32["parity"]["max_abs_diff"] <= 1e-4, (device, fp32["parity"])
        assert fp32["parity"]["agreement_pct"] >= 99.9
    # TensorRT 8.0's parser check takes the graph once its constants are folded (the raw export holds an INT32 shape
    # weight, 'fill_constant_1.tmp_0', it refuses); no TensorRT here to run it
    nano = load_manifest(Path(results["jetson-nano"]["folder"]))
    assert nano["runtime"]["name"] == "tensorrt" and nano["precisions"][0]["status"] == "built-unchecked"
    index = (out / "index.md").read_text()
    assert "| tiny-board | not built (gtnpipe compile," in index and "FAILED: ParityError" in index
    bench = subprocess.run([sys.executable, "-m", "gtnpipe.cli", "bench", str(out / "host"), "--runs", "30", "--json"],
                           capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    assert bench.returncode == 0, bench.stderr
    assert json.loads(bench.stdout)["parity"]["passed"]
