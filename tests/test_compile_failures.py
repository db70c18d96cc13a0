"""gtnpipe build records a precision as not built only for a toolchain failure (BackendBuildError, cause chained):
any other exception propagates, and --strict turns a failed precision into a failed build."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_RECIPE

from gtnpipe.config.profiles import load_profile
from gtnpipe.deploy.backends import BuildResult, ExportedModel
from gtnpipe.deploy.backends.onnxruntime import OnnxRuntimeBackend
from gtnpipe.deploy.export import Deployable, compile_inputs, logits_of
from gtnpipe.errors import BackendBuildError
from gtnpipe.models.static import build_static
from gtnpipe.stages import training
from gtnpipe.stages.deploy import split_images
from gtnpipe.stages.ship import compile_all
from gtnpipe.stages.workspace import Workspace


class NncfFailsOnInt8(OnnxRuntimeBackend):
    """The real ONNX Runtime backend, whose INT8 step gets calibration images of the wrong shape: NNCF itself fails."""

    def build(self, inputs: ExportedModel, precision: str, out_dir: Path) -> BuildResult:
        if precision == "int8":
            wrong = np.zeros((len(inputs.calibration), 3, *inputs.calibration.shape[2:]), dtype=np.float32)
            inputs = dataclasses.replace(inputs, calibration=wrong)
        return super().build(inputs, precision, out_dir)


class BugOnInt8(OnnxRuntimeBackend):
    """A bug of our own in a backend: not a toolchain failure, so it must not be swallowed."""

    def build(self, inputs: ExportedModel, precision: str, out_dir: Path) -> BuildResult:
        if precision == "int8":
            raise KeyError("a bug in gtnpipe, not in NNCF")
        return super().build(inputs, precision, out_dir)


@pytest.fixture
def compile_args(tmp_path: Path) -> tuple:
    ws = Workspace.open(TINY_RECIPE, cache_dir=tmp_path / "cache", progress=False)
    profile = load_profile("host")
    assert "int8" in profile.precisions and "fp32" in profile.precisions
    student = training.distill_input(ws, "smallest", teacher="none")  # the key; an untrained student compiles the same
    model = Deployable(build_static(ws.space.smallest(), ws.space, ws.task), ws.data.mean, ws.data.std).train(False)
    return ws, profile, student, model, logits_of(model, ws.data.test.chunks(512))


def _compile_all(ws: Workspace, profile, backend, student, model, logits, *, strict: bool) -> tuple:
    def export(work: Path, batch_size: int, max_opset: int, calibration: np.ndarray) -> tuple:
        return compile_inputs(model, ws.task, work, batch_size=batch_size, max_opset=max_opset,
                              calibration_uint8=ws.data.train.x[list(calibration)]), logits

    compiled, failures, superseded = compile_all(
        ws.cache, profile, backend, student, export, split_images(ws.data.test), n_train=len(ws.data.train),
        n_val=len(ws.data.val), precisions=profile.precisions, strict=strict)
    assert not superseded  # no INT8 was built to lose accuracy
    return compiled, failures


def test_a_toolchain_failure_is_recorded_and_the_build_goes_on(compile_args: tuple) -> None:
    ws, profile, student, model, logits = compile_args
    compiled, failures = _compile_all(ws, profile, NncfFailsOnInt8(), student, model, logits, strict=False)
    assert set(compiled) == {"fp32"} and compiled["fp32"].meta["parity"]["passed"]
    assert set(failures) == {"int8"} and "NNCF INT8 quantization for ONNX Runtime failed" in failures["int8"]


def test_strict_fails_the_build_and_keeps_the_cause(compile_args: tuple) -> None:
    ws, profile, student, model, logits = compile_args
    with pytest.raises(BackendBuildError, match="--strict: host allows int8") as info:
        _compile_all(ws, profile, NncfFailsOnInt8(), student, model, logits, strict=True)
    assert isinstance(info.value.__cause__, BackendBuildError) and info.value.__cause__.__cause__ is not None


def test_any_other_error_propagates(compile_args: tuple) -> None:
    ws, profile, student, model, logits = compile_args
    with pytest.raises(KeyError, match="a bug in gtnpipe"):
        _compile_all(ws, profile, BugOnInt8(), student, model, logits, strict=False)
