"""Runtime backends: compile an exported model for a device's runtime, load it, run a batch.

A backend is a class with three methods (STYLE.md's build / load / run protocol):

- `build(inputs, precision, out_dir)` compiles the FP32 export (an ONNX file, and the torch
  module for converters that read torch) to the runtime's format at one precision and
  writes the model file(s) into `out_dir`. Runs on the host; may import torch and the
  converters (nncf, litert-torch, ...) inside the method.
- `load(model_path, threads=, precision=)` returns a `Runner` whose `run(x)` maps one batch
  of float32 NCHW images in [0, 1] (the shape of `inputs.input_shape`) to logits. Runs on the
  device: it must not need torch, nncf or any converter, only the runtime.
- `version()` the installed runtime's version.

`BACKENDS` maps a runtime name to "module:Class". Modules are imported on demand, so a
device needs only its own runtime: a missing SDK is a `BackendUnavailable` naming the pip
extra that installs it; an unknown runtime a `ConfigError` listing the known ones.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from gtnpipe.errors import BackendBuildError, BackendUnavailable, ConfigError

__all__ = [
    "BACKENDS",
    "Backend",
    "BuildResult",
    "CALIBRATION_IMAGES",
    "CompileInputs",
    "calibration_batches",
    "Runner",
    "get_backend",
    "installed_runtimes",
    "missing",
    "load_runner",
    "runtime_version",
    "toolchain_step",
]


class Runner(Protocol):
    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits (float32, (N, classes)) of one batch of float32 (N, C, H, W) images in [0, 1]."""
        ...


@dataclass(frozen=True)
class CompileInputs:
    """What every backend compiles from (gtnpipe.deploy.export writes it)."""

    onnx_path: Path  # FP32 ONNX: input 'input' float32 NCHW in [0, 1] (normalisation inside), output 'logits'
    input_shape: tuple[int, ...]  # static (batch, C, H, W): the device's batch
    calibration: np.ndarray  # float32 (N, C, H, W) training-split images in [0, 1], for INT8 calibration
    max_onnx_opset: int  # the device runtime's limit (profile runtime.max_onnx_opset)
    torch_module: Any = None  # the same model as an eval-mode torch nn.Module, for converters that read torch
    # accuracy-control INT8 (Backend.build_accuracy_controlled): labelled validation images (float32 [0, 1], int64
    # labels) and the top-1 drop allowed, in points
    validation: tuple[np.ndarray, np.ndarray] | None = None
    max_drop_points: float | None = None


@dataclass(frozen=True)
class BuildResult:
    """The files a build wrote into its out_dir (names relative to it); `model_file` is what `load` takes."""

    model_file: str
    files: tuple[str, ...]
    notes: dict[str, Any] = field(default_factory=dict)  # e.g. quantization settings, the engine build command
    # False when the device compiles model_file further before running it (a TensorRT engine from ONNX): its
    # size then says nothing about the size budget
    deployed_format: bool = True


CALIBRATION_IMAGES = 300  # NNCF's default subset size; DEPS.md measured ~6 s of INT8 PTQ per small CNN with it


class Backend(ABC):
    runtime: ClassVar[str]  # the device profiles' runtime name
    precisions: ClassVar[tuple[str, ...]]  # what `build` can produce
    # training images the build is given for INT8 calibration (gtnpipe build passes exactly this many)
    calibration_images: ClassVar[int] = CALIBRATION_IMAGES
    # whether `build_accuracy_controlled` exists: INT8 with the layers that cost most accuracy kept in float
    accuracy_control: ClassVar[bool] = False

    @abstractmethod
    def version(self) -> str: ...

    @abstractmethod
    def build(self, inputs: CompileInputs, precision: str, out_dir: Path) -> BuildResult: ...

    @abstractmethod
    def load(self, model_path: Path, *, threads: int, precision: str = "fp32") -> Runner: ...

    def build_accuracy_controlled(self, inputs: CompileInputs, out_dir: Path) -> BuildResult:
        """INT8 by NNCF's quantize_with_accuracy_control (backends with `accuracy_control`); notes name the layers
        kept in float ("float_layers")."""
        raise ConfigError(f"the {self.runtime} backend has no accuracy-control INT8 (NNCF supports OpenVINO and ONNX)")

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise ConfigError(f"the {self.runtime} backend builds {', '.join(self.precisions)}, not {precision!r}; "
                              "remove it from the profile's 'precisions'")


def calibration_batches(inputs: CompileInputs, *, max_images: int = CALIBRATION_IMAGES) -> list[np.ndarray]:
    """INT8 calibration data: whole batches of the device's batch size from `inputs.calibration`, up to
    `max_images` images (at least one batch)."""
    batch = inputs.input_shape[0]
    n = min(len(inputs.calibration), max(max_images, batch)) // batch * batch
    if n == 0:
        raise ConfigError(f"INT8 calibration needs at least one batch of {batch} images, got {len(inputs.calibration)}; "
                          "pass more calibration images or build int8 at a smaller batch")
    return [inputs.calibration[i:i + batch] for i in range(0, n, batch)]


@contextmanager
def toolchain_step(what: str) -> Iterator[None]:
    """Around one call into a converter or quantizer: its failure becomes a BackendBuildError naming the step, with
    the cause chained (gtnpipe build then records that precision as not built and goes on; --strict fails)."""
    try:
        yield
    except (BackendUnavailable, BackendBuildError):
        raise
    except Exception as err:  # the toolchain's own exception types are many and undocumented
        raise BackendBuildError(f"{what} failed: {type(err).__name__}: {err}") from err


# runtime name -> "module:Class" (imported on demand) and the pip extra that installs the runtime
BACKENDS: dict[str, tuple[str, str | None]] = {
    "onnxruntime": ("gtnpipe.deploy.backends.onnxruntime:OnnxRuntimeBackend", "onnx"),
    "openvino": ("gtnpipe.deploy.backends.openvino:OpenVinoBackend", "openvino"),
    "tflite": ("gtnpipe.deploy.backends.tflite:TfliteBackend", "tflite"),
    "tensorrt": ("gtnpipe.deploy.backends.tensorrt:TensorRtBackend", None),  # JetPack / NVIDIA's packages
}


def missing(what: str, err: ImportError, extra: str | None) -> BackendUnavailable:
    """The error for a missing SDK: which module, and the extra that installs it (None: not from PyPI)."""
    how = f"install it with \"pip install 'gtnpipe[{extra}]'\"" if extra else "it does not come from PyPI"
    return BackendUnavailable(f"{what} is not installed ({err.name or err} missing); {how}")


def get_backend(runtime: str) -> Backend:
    if runtime not in BACKENDS:
        raise ConfigError(f"no backend for runtime {runtime!r}; backends: {', '.join(sorted(BACKENDS))}")
    target, extra = BACKENDS[runtime]
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise missing(f"runtime {runtime!r}", err, extra) from err
    backend: Backend = getattr(module, class_name)()
    return backend


def load_runner(runtime: str, model_path: Path, *, threads: int, precision: str = "fp32") -> Runner:
    return get_backend(runtime).load(model_path, threads=threads, precision=precision)


def runtime_version(runtime: str) -> str:
    return get_backend(runtime).version()


def installed_runtimes() -> dict[str, dict[str, Any]]:
    """Every known runtime: {"installed": True, "version": ...} here, or {"installed": False, "error": what installs it}."""
    found: dict[str, dict[str, Any]] = {}
    for runtime in sorted(BACKENDS):
        try:
            found[runtime] = {"installed": True, "version": runtime_version(runtime)}
        except BackendUnavailable as err:
            found[runtime] = {"installed": False, "error": str(err)}
    return found
