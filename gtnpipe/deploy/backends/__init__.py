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

The class is the one place that knows its runtime: its name, the pip extra and the modules that
install and import it, the distributions whose versions key its compiles and go in the manifest,
the file suffixes it writes, what it converts from, its INT8 size factor and where that figure
comes from, and the code that keys its compiles (its own module and what that imports). Profiles,
the cost model, the compile stage and the manifest read it from here.

The registry finds backends by themselves: every module of this package that defines a module-level
`BACKEND = TheClass`, and every `gtnpipe.backends` entry point ("name = module:Class") of an installed
distribution (a runtime shipped outside gtnpipe). Adding a runtime is its backend module, its device
profile(s) and its tests. Backend modules import their SDK inside methods, so listing the registry
imports no runtime; `get_backend` then imports the SDK, and a missing one is a `BackendUnavailable`
naming the pip extra that installs it; an unknown runtime is a `ConfigError` listing the known ones.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import pkgutil
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from gtnpipe.errors import BackendBuildError, BackendUnavailable, ConfigError
from gtnpipe.progress import quiet_libraries

__all__ = [
    "ENTRY_POINT_GROUP",
    "Backend",
    "BuildResult",
    "CALIBRATION_IMAGES",
    "ExportedModel",
    "calibration_batches",
    "Runner",
    "backend_class",
    "get_backend",
    "import_sdk",
    "installed_runtimes",
    "missing",
    "load_runner",
    "runtime_version",
    "runtimes",
    "toolchain_step",
]


class Runner(Protocol):
    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits (float32, (N, classes)) of one batch of float32 (N, C, H, W) images in [0, 1]."""
        ...


@dataclass(frozen=True)
class ExportedModel:
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
    # the pip extra that installs the runtime (None: it does not come from PyPI, e.g. TensorRT from JetPack)
    extra: ClassVar[str | None]
    # modules `load` needs on the device: `get_backend` imports them first, so a missing SDK fails before any work
    sdk_modules: ClassVar[tuple[str, ...]]
    # distributions whose versions change what `build` writes: in every compile's cache key and in the manifest
    packages: ClassVar[tuple[str, ...]]
    suffixes: ClassVar[tuple[str, ...]]  # the file suffixes a build writes (".onnx", ".xml"/".bin", ...)
    # what `build` reads of ExportedModel: "onnx" (onnx_path) and/or "torch" (torch_module: gtnpipe compile then
    # translates a user's ONNX file to torch for it)
    converts_from: ClassVar[frozenset[str]] = frozenset({"onnx"})
    # whether `gtnpipe compile` hands it a user's graph with its constants folded (gtnpipe.deploy.onnx_model
    # .fold_constants: shape arithmetic computed once, BatchNorm in Conv): for a parser or translation that takes
    # fewer operators than ONNX Runtime's own graph optimizer reads
    fold_constants: ClassVar[bool] = False
    # INT8 file bytes over the cost model's formula (gtnpipe.devices.cost.model_size_bytes), an upper bound, and
    # where the figure comes from: "measured: <results file>" or "guess: <why not measured>"
    int8_size_factor: ClassVar[float]
    int8_size_factor_source: ClassVar[str]
    # training images the build is given for INT8 calibration (gtnpipe build passes exactly this many)
    calibration_images: ClassVar[int] = CALIBRATION_IMAGES
    # whether `build_accuracy_controlled` exists: INT8 with the layers that cost most accuracy kept in float
    accuracy_control: ClassVar[bool] = False

    @classmethod
    def code_roots(cls) -> tuple[str, ...]:
        """The modules whose code keys this backend's compiles (with what they import): its own module."""
        return (cls.__module__,)

    def require(self) -> None:
        """Import what `load` needs here; a missing SDK is a BackendUnavailable naming the extra that installs it."""
        for module in self.sdk_modules:
            try:
                importlib.import_module(module)
            except ImportError as err:
                raise missing(f"runtime {self.runtime!r}", err, self.extra) from err

    @abstractmethod
    def version(self) -> str: ...

    @abstractmethod
    def build(self, inputs: ExportedModel, precision: str, out_dir: Path) -> BuildResult: ...

    @abstractmethod
    def load(self, model_path: Path, *, threads: int, precision: str = "fp32") -> Runner: ...

    def intermediates(self, model_path: Path, x: np.ndarray, names: set[str], *, precision: str
                      ) -> dict[str, np.ndarray] | None:
        """The values of the intermediate tensors named `names` (the FP32 ONNX export's tensor names) that this
        compiled model still has, on `x`: what gtnpipe.deploy.divergence compares to find where parity is lost.
        None: the runtime cannot show its intermediates (or renames them all)."""
        return None

    def build_accuracy_controlled(self, inputs: ExportedModel, out_dir: Path) -> BuildResult:
        """INT8 by NNCF's quantize_with_accuracy_control (backends with `accuracy_control`); notes name the layers
        kept in float ("float_layers")."""
        raise ConfigError(f"the {self.runtime} backend has no accuracy-control INT8 (NNCF supports OpenVINO and ONNX)")

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise ConfigError(f"the {self.runtime} backend builds {', '.join(self.precisions)}, not {precision!r}; "
                              "remove it from the profile's 'precisions'")


def calibration_batches(inputs: ExportedModel, *, max_images: int = CALIBRATION_IMAGES) -> list[np.ndarray]:
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
    """Around one call into a converter or quantizer: its noise dropped (gtnpipe.progress.quiet_libraries), and its
    failure a BackendBuildError naming the step, with the cause chained (gtnpipe build then records that precision as
    not built and goes on; --strict fails)."""
    try:
        with quiet_libraries():
            yield
    except (BackendUnavailable, BackendBuildError):
        raise
    except Exception as err:  # the toolchain's own exception types are many and undocumented
        raise BackendBuildError(f"{what} failed: {type(err).__name__}: {err}") from err


ENTRY_POINT_GROUP = "gtnpipe.backends"  # runtimes shipped by other distributions: name = "module:Class"
_BACKEND_LINE = re.compile(r"^BACKEND = \w+$", re.MULTILINE)


def missing(what: str, err: ImportError, extra: str | None) -> BackendUnavailable:
    """The error for a missing SDK: which module, and the extra that installs it (None: not from PyPI)."""
    how = f"install it with \"pip install 'gtnpipe[{extra}]'\"" if extra else "it does not come from PyPI"
    return BackendUnavailable(f"{what} is not installed ({err.name or err} missing); {how}")


def import_sdk(module: str, runtime: str, extra: str | None) -> Any:
    """A runtime's SDK module, imported when a model is built or run (the registry lists backends without it); a
    missing one is the BackendUnavailable naming the extra that installs it. Untyped (the SDKs ship no stubs)."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise missing(f"runtime {runtime!r}", err, extra) from err


@functools.cache
def _registry() -> dict[str, type[Backend]]:
    """runtime name -> backend class: this package's modules that define BACKEND, then the entry points."""
    found: dict[str, type[Backend]] = {}

    def add(cls: object, where: str) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise TypeError(f"{where}: BACKEND must be a subclass of gtnpipe.deploy.backends.Backend, got {cls!r}")
        if cls.runtime in found and found[cls.runtime] is not cls:
            raise ConfigError(f"two backends for runtime {cls.runtime!r}: {found[cls.runtime].__module__} and {where}; "
                              "uninstall one of them")
        found[cls.runtime] = cls

    for info in pkgutil.iter_modules(__path__, prefix=f"{__name__}."):
        # a backend module says so on a line of its own ("BACKEND = TheClass"): helper modules (accuracy control,
        # TensorRT's ONNX checks) are not imported just to be listed, so the device side never loads them
        spec = importlib.util.find_spec(info.name)
        if spec is None or spec.origin is None or not _BACKEND_LINE.search(Path(spec.origin).read_text()):
            continue
        module = importlib.import_module(info.name)  # backend modules import their SDK lazily: this is cheap
        add(getattr(module, "BACKEND", None), info.name)
    for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        cls = point.load()
        add(cls, f"entry point {point.value}")
        if point.name != cls.runtime:
            raise ConfigError(f"entry point {point.name!r} of group {ENTRY_POINT_GROUP!r} loads the backend of runtime "
                              f"{cls.runtime!r}; name the entry point after its runtime")
    return found


def runtimes() -> tuple[str, ...]:
    """Every runtime a backend is registered for, sorted."""
    return tuple(sorted(_registry()))


def backend_class(runtime: str) -> type[Backend]:
    """The backend class of `runtime`, without importing its SDK (what the registry knows about the runtime)."""
    registry = _registry()
    if runtime not in registry:
        raise ConfigError(f"no backend for runtime {runtime!r}; known runtimes: {', '.join(sorted(registry))} (a "
                          f"runtime is a module of gtnpipe/deploy/backends defining BACKEND, or a {ENTRY_POINT_GROUP!r} "
                          "entry point): fix the profile's runtime.name")
    return registry[runtime]


def get_backend(runtime: str) -> Backend:
    """The backend of `runtime`, its SDK imported (BackendUnavailable naming the extra where it is missing)."""
    backend = backend_class(runtime)()
    backend.require()
    return backend


def load_runner(runtime: str, model_path: Path, *, threads: int, precision: str = "fp32") -> Runner:
    return get_backend(runtime).load(model_path, threads=threads, precision=precision)


def runtime_version(runtime: str) -> str:
    return get_backend(runtime).version()


def installed_runtimes() -> dict[str, dict[str, Any]]:
    """Every known runtime: {"installed": True, "version": ...} here, or {"installed": False, "error": what installs it}."""
    found: dict[str, dict[str, Any]] = {}
    for runtime in runtimes():
        try:
            found[runtime] = {"installed": True, "version": runtime_version(runtime)}
        except BackendUnavailable as err:
            found[runtime] = {"installed": False, "error": str(err)}
    return found
