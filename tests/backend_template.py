"""The contract every runtime backend meets (nncf's cross-framework template tests, STYLE.md).

A backend's test module subclasses `BackendContract`, sets `runtime`, and skips itself with a
reason when the runtime is absent (pytest.importorskip). What is checked, on a trained student
and real test images, against torch's logits:
- FP32: max abs logit difference <= 1e-4 and top-1 agreement >= 99.9% (the build's parity bar);
- FP16: top-1 agreement >= 99.5%;
- INT8: top-1 within 2 points of torch on the test slice (a tiny model; the build applies the
  profile's own limit);
- every built file is inside out_dir and named in BuildResult.files;
- the runner loads and runs in a process where torch, nncf and the converters cannot be imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from conftest import HANG_TIMEOUT_S, DeployCase, block_imports_prelude

from gtnpipe.deploy.backends import Backend, BuildResult, get_backend, runtimes

FP32_MAX_ABS = 1e-4
FP32_AGREEMENT = 99.9
FP16_AGREEMENT = 99.5
INT8_TEST_DROP_POINTS = 2.0


def run_all(backend: Backend, model_path: Path, x: np.ndarray, *, batch: int, precision: str) -> np.ndarray:
    runner = backend.load(model_path, threads=2, precision=precision)
    return np.concatenate([runner.run(x[i:i + batch]) for i in range(0, len(x), batch)])


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean() * 100)


class BackendContract:
    runtime: ClassVar[str]

    @pytest.fixture
    def backend(self) -> Backend:
        return get_backend(self.runtime)

    def build(self, backend: Backend, case: DeployCase, precision: str, out: Path) -> BuildResult:
        result = backend.build(case.inputs, precision, out)
        assert result.model_file in result.files
        for name in result.files:
            assert (out / name).is_file(), name
            assert Path(name).suffix in backend.suffixes, f"{name}: not a suffix {self.runtime} declares ({backend.suffixes})"
        return result

    def test_registered(self, backend: Backend) -> None:
        assert self.runtime in runtimes() and backend.runtime == self.runtime
        assert "fp32" in backend.precisions and backend.version()

    def test_fp32_parity(self, backend: Backend, deploy_case: DeployCase, tmp_path: Path) -> None:
        result = self.build(backend, deploy_case, "fp32", tmp_path)
        logits = run_all(backend, tmp_path / result.model_file, deploy_case.x_test, batch=1, precision="fp32")
        assert logits.shape == deploy_case.torch_logits.shape and logits.dtype == np.float32
        assert np.abs(logits - deploy_case.torch_logits).max() <= FP32_MAX_ABS
        assert agreement(logits, deploy_case.torch_logits) >= FP32_AGREEMENT

    def test_fp16_agreement(self, backend: Backend, deploy_case: DeployCase, tmp_path: Path) -> None:
        if "fp16" not in backend.precisions:
            pytest.skip(f"{self.runtime} builds no fp16 here")
        result = self.build(backend, deploy_case, "fp16", tmp_path)
        logits = run_all(backend, tmp_path / result.model_file, deploy_case.x_test, batch=1, precision="fp16")
        assert agreement(logits, deploy_case.torch_logits) >= FP16_AGREEMENT

    def test_int8_accuracy(self, backend: Backend, deploy_case: DeployCase, tmp_path: Path) -> None:
        if "int8" not in backend.precisions:
            pytest.skip(f"{self.runtime} builds no int8 here")
        result = self.build(backend, deploy_case, "int8", tmp_path)
        logits = run_all(backend, tmp_path / result.model_file, deploy_case.x_test, batch=1, precision="int8")
        top1 = float((logits.argmax(1) == deploy_case.y_test).mean() * 100)
        assert top1 >= deploy_case.torch_top1 - INT8_TEST_DROP_POINTS
        # quantized, not a copy of the FP32 model: the logits move
        assert np.abs(logits - deploy_case.torch_logits).max() > FP32_MAX_ABS

    def test_unknown_precision_is_refused(self, backend: Backend, deploy_case: DeployCase, tmp_path: Path) -> None:
        with pytest.raises(Exception, match="builds"):
            backend.build(deploy_case.inputs, "fp8", tmp_path)

    def test_runner_needs_no_training_stack(self, backend: Backend, deploy_case: DeployCase, tmp_path: Path) -> None:
        result = self.build(backend, deploy_case, "fp32", tmp_path)
        x = deploy_case.x_test[:4]
        np.save(tmp_path / "x.npy", x)
        code = block_imports_prelude() + (
            "import json, numpy as np\n"
            "from gtnpipe.deploy.backends import load_runner\n"
            f"r = load_runner({self.runtime!r}, __import__('pathlib').Path({str(tmp_path / result.model_file)!r}), threads=1)\n"
            f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
            "print(json.dumps(np.concatenate([r.run(x[i:i+1]) for i in range(len(x))]).tolist()))\n"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
        assert done.returncode == 0, done.stderr
        logits = np.array(json.loads(done.stdout.strip().splitlines()[-1]), dtype=np.float32)
        np.testing.assert_allclose(logits, deploy_case.torch_logits[:4], atol=FP32_MAX_ABS, rtol=0)
