"""OpenVINO backend against the template contract (FP32 IR, FP16 IR, NNCF INT8), plus what is OpenVINO's own."""

from __future__ import annotations

from pathlib import Path

import pytest

ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'gtnpipe[openvino]')")

from backend_template import BackendContract  # noqa: E402
from conftest import DeployCase  # noqa: E402

from gtnpipe.deploy.backends import Backend  # noqa: E402


class TestOpenVino(BackendContract):
    runtime = "openvino"

    def test_fp16_ir_halves_the_weights(self, backend: Backend, deploy_case: DeployCase, tmp_path: Path) -> None:
        fp32 = self.build(backend, deploy_case, "fp32", tmp_path)
        fp16 = self.build(backend, deploy_case, "fp16", tmp_path)
        bin32, bin16 = (tmp_path / next(f for f in r.files if f.endswith(".bin")) for r in (fp32, fp16))
        # fp16 weights are 2 bytes instead of 4; the .bin also holds a few int64 shape constants, hence the band
        assert 0.4 <= bin16.stat().st_size / bin32.stat().st_size <= 0.6
        # atomic save: nothing but the two IR pairs is left in out_dir (no temp dirs)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(fp32.files + fp16.files)

    def test_fp32_runner_pins_f32(self, backend: Backend, deploy_case: DeployCase, tmp_path: Path) -> None:
        result = self.build(backend, deploy_case, "fp32", tmp_path)
        runner = backend.load(tmp_path / result.model_file, threads=1, precision="fp32")
        # the CPU plugin would otherwise run f32 IR in bf16 on avx512_bf16 CPUs (../shared/DEPS.md)
        assert runner.inference_precision == "f32"
        assert runner.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32  # what the plugin compiled with
        assert list(runner.compiled.input(0).get_shape()) == list(deploy_case.inputs.input_shape)
