"""LiteRT (TFLite) backend against the template contract (litert-torch FP32, ai-edge-quantizer FP16 and INT8)."""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert", reason="LiteRT is not installed (pip install 'gtnpipe[tflite]')")

from backend_template import BackendContract  # noqa: E402
from conftest import DeployCase  # noqa: E402
from packaging.version import Version  # noqa: E402

from gtnpipe.deploy.backends import Backend, BuildResult, get_backend  # noqa: E402
from gtnpipe.errors import BackendUnavailable, ConfigError  # noqa: E402

Builds = tuple[Path, dict[str, BuildResult]]


@pytest.fixture(scope="module")
def builds(deploy_case: DeployCase, tmp_path_factory: pytest.TempPathFactory) -> Builds:
    """Every precision built once into one directory (a conversion takes ~6 s; the contract asks for four)."""
    pytest.importorskip("litert_torch", reason="the TFLite converter is not installed (pip install 'gtnpipe[build]')")
    pytest.importorskip("ai_edge_quantizer", reason="ai-edge-quantizer is not installed (pip install 'gtnpipe[build]')")
    import litert_torch

    backend = get_backend("tflite")
    out = tmp_path_factory.mktemp("tflite-builds")
    conversions = []
    with pytest.MonkeyPatch.context() as patch:  # count the real converter's calls
        real_convert = litert_torch.convert
        patch.setattr(litert_torch, "convert", lambda *a, **kw: conversions.append(1) or real_convert(*a, **kw))
        results = {precision: backend.build(deploy_case.inputs, precision, out) for precision in backend.precisions}
    # fp16 and int8 quantize the float32 .tflite: one backend converts a model once (33 s on the demo's Pi student)
    assert len(conversions) == 1, conversions
    # the builds wrote exactly the files they name: no temp files or converter leftovers beside them
    assert sorted(p.name for p in out.iterdir()) == sorted(name for r in results.values() for name in r.files)
    return out, results


class TestTflite(BackendContract):
    runtime = "tflite"

    @pytest.fixture(autouse=True)
    def _builds(self, builds: Builds) -> None:
        self.built_dir, self.built = builds

    def build(self, backend: Backend, case: DeployCase, precision: str, out: Path) -> BuildResult:
        """The module's build of `precision`, copied into `out`, with the template's checks."""
        result = self.built[precision]
        for name in result.files:
            shutil.copyfile(self.built_dir / name, out / name)
        assert result.model_file in result.files
        for name in result.files:
            assert (out / name).is_file(), name
        return result

    def test_version_and_interpreter_package(self, backend: Backend) -> None:
        assert backend.runner in ("ai-edge-litert", "tflite-runtime")  # type: ignore[attr-defined]
        assert Version(backend.version()).release  # a bare PEP 440 version: profiles compare it with a range

    def test_quantized_files_shrink(self) -> None:
        size = {p: (self.built_dir / r.model_file).stat().st_size for p, r in self.built.items()}
        # float16 weights are half of float32 ones; graph structure and float32 biases add a little
        assert 0.4 <= size["fp16"] / size["fp32"] <= 0.65, size
        # int8 weights are a quarter; per-channel scales, int32 biases and the graph keep it above that
        assert size["int8"] / size["fp32"] < 0.4, size

    def test_int8_is_full_integer_with_min_max_ranges(self, backend: Backend, deploy_case: DeployCase) -> None:
        import torch

        result = self.built["int8"]
        assert result.notes["calibration_images"] == 300 and "static_wi8_ai8" in result.notes["recipe"]
        runner = backend.load(self.built_dir / result.model_file, threads=1, precision="int8")
        # int8 tensors in and out: the runner quantizes the float images and dequantizes the logits
        assert runner.input["dtype"] == np.int8 and runner.output["dtype"] == np.int8  # type: ignore[attr-defined]
        logits = runner.run(deploy_case.x_test[:1])
        assert logits.dtype == np.float32 and logits.shape == deploy_case.torch_logits[:1].shape
        # the output's int8 range covers every calibration image's logits (min/max calibration; the
        # quantizer's default moving average covered about a third of it and clipped the logits)
        scale, zero_point = runner.output_scale, runner.output_zero_point  # type: ignore[attr-defined]
        with torch.no_grad():
            calibration_logits = deploy_case.model(torch.from_numpy(deploy_case.inputs.calibration)).numpy()
        assert (-128 - zero_point) * scale <= calibration_logits.min() + scale
        assert (127 - zero_point) * scale >= calibration_logits.max() - scale

    def test_missing_converter_names_the_extra(self, backend: Backend, deploy_case: DeployCase, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "litert_torch", None)  # import litert_torch now raises ImportError
        with pytest.raises(BackendUnavailable, match=r"gtnpipe\[build\]"):
            backend.build(deploy_case.inputs, "fp32", tmp_path)

    def test_int8_without_a_calibration_batch_is_refused(self, backend: Backend, deploy_case: DeployCase,
                                                        tmp_path: Path) -> None:
        inputs = dataclasses.replace(deploy_case.inputs, calibration=deploy_case.inputs.calibration[:0])
        with pytest.raises(ConfigError, match="at least one batch"):
            backend.build(inputs, "int8", tmp_path)
        assert not list(tmp_path.iterdir())
