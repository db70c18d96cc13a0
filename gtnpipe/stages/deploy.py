"""Deploy stages: one precision compiled for a runtime and parity-checked (machine-independent), and its
latency and peak memory measured on this machine (machine-dependent: keyed by the machine's fingerprint)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NotRequired, TypedDict, cast

import numpy as np

from gtnpipe.cache import Cache
from gtnpipe.config.profiles import DeviceProfile, RuntimeSpec
from gtnpipe.data.datasets import Split
from gtnpipe.deploy.backends import Backend, ExportedModel, backend_class
from gtnpipe.deploy.divergence import Divergence, first_divergence, reference_intermediates
from gtnpipe.deploy.export import to_unit_float
from gtnpipe.deploy.parity import ParityDict, compare, run_batched
from gtnpipe.deploy.timing import Machine, measure_fresh
from gtnpipe.errors import BackendUnavailable
from gtnpipe.space.spaces import ArchConfig
from gtnpipe.stages.keys import Stage
from gtnpipe.stages.training import DistillInput
from gtnpipe.stages.workspace import DataRef, run_stage

__all__ = ["ARTIFACT_LOGITS", "RANDOM_IMAGES", "CompileInput", "CompileMeta", "Compiled", "MeasureInput", "Measured",
           "ParityImages", "SourceModel", "compile_input", "compile_precision", "measure_input", "measure_precision",
           "random_images", "split_images", "threads_here"]

ARTIFACT_LOGITS = "artifact_logits.npy"  # the compiled model's logits on the reference images, for gtnpipe bench
REFERENCE_IMAGES = 500  # test images (and torch logits) an artifact carries for the on-device parity check
CALIBRATION_SEED = 1234
MEASURE_WARMUP = 20
MEASURE_RUNS = 200
# fresh processes per precision: on the 2-vCPU VM one model's p50 varied 0.22-0.36 ms from one fresh process to the
# next (5000 runs each), far more than within a process, so one process is one sample; the median one is recorded
MEASURE_PROCESSES = 3
# gtnpipe compile without --data: parity on this many seeded uniform [0, 1] images (argmax agreement, max abs diff)
RANDOM_IMAGES = 500
RANDOM_SEED = 0
# what every compile runs besides its backend: the torch export and the ONNX checks, and their packages
_EXPORT_PACKAGES = ("torch", "numpy", "onnx", "onnxscript")


def _backend_code(runtime: str) -> tuple[str, ...]:
    """The modules that key a compile or a measurement for `runtime`: its own backend's, never another's (an edit in
    the TensorRT backend must not re-key ONNX Runtime builds)."""
    return backend_class(runtime).code_roots()


@dataclass(frozen=True)
class SourceModel:
    """A model the user brought (gtnpipe compile): their ONNX file, as prepared for the device, and its data."""

    sha256: str  # of the user's file
    input_shape: tuple[int, int, int, int]  # (batch, C, H, W) as compiled: the batch is the profile's
    mean: tuple[float, ...] | None  # the input normalisation folded into the graph (None: none)
    std: tuple[float, ...] | None
    data: DataRef | None  # what calibrates it and what parity runs on; None: RANDOM_IMAGES random images


@dataclass(frozen=True)
class CompileInput(Stage):
    """A model (a distilled student, or a user's) compiled for the device's runtime at one precision and
    parity-checked on the test split (or, for a user's model without data, on random images)."""

    STAGE = "compiled"
    CODE = ("gtnpipe.deploy.export", "gtnpipe.deploy.parity", "gtnpipe.deploy.onnx_model", "gtnpipe.deploy.onnx_torch")
    PACKAGES = _EXPORT_PACKAGES

    model: DistillInput | SourceModel
    runtime: RuntimeSpec
    runtime_version: str | None  # None: the runtime is not installed here (TensorRT on a CPU host)
    precision: str
    batch_size: int
    max_accuracy_drop_points: float
    calibration_images: int  # INT8/FP16 calibration images from the train split, as many as the backend asks for
    calibration_seed: int
    reference_images: int
    # INT8 by NNCF's accuracy control (tried when plain INT8 loses too much top-1), ranking layers on this many
    # images of the validation split
    accuracy_control: bool = False
    validation_images: int = 0

    def code_modules(self) -> tuple[str, ...]:
        return (*self.CODE, *_backend_code(self.runtime.name))

    def package_names(self) -> tuple[str, ...]:
        return (*self.PACKAGES, *backend_class(self.runtime.name).packages)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(batch, C, H, W) of the compiled model."""
        if isinstance(self.model, SourceModel):
            return self.model.input_shape
        task = self.model.task.for_arch(ArchConfig.from_id(self.model.arch))
        return (self.batch_size, task.in_channels, *task.image_hw)


@dataclass(frozen=True)
class ParityImages:
    """What compiled models are checked on: float32 [0, 1] images a chunk at a time, with their labels (None: random
    images, where only agreement with the reference can be judged)."""

    chunks: Callable[[int], Iterable[np.ndarray]]
    labels: np.ndarray | None
    count: int


def split_images(test: Split) -> ParityImages:
    """A labelled test split, as parity reads it."""
    return ParityImages(lambda n: (to_unit_float(x) for x in test.chunks(n)), test.y, len(test))


def random_images(chw: tuple[int, int, int]) -> ParityImages:
    """RANDOM_IMAGES seeded uniform [0, 1] images (gtnpipe compile without --data): agreement with the reference only."""
    images = np.random.default_rng(RANDOM_SEED).random((RANDOM_IMAGES, *chw), dtype=np.float32)
    return ParityImages(lambda n: (images[i:i + n] for i in range(0, len(images), n)), None, RANDOM_IMAGES)


@dataclass(frozen=True)
class MeasureInput(Stage):
    """Latency and peak memory of a compiled precision on this machine, in fresh processes holding one session."""

    STAGE = "measured"
    CODE = ("gtnpipe.deploy.timing",)
    PACKAGES = ("numpy",)

    compiled: CompileInput
    machine: Machine
    threads: int
    warmup: int
    runs: int
    processes: int  # fresh processes timed one after another; the one with the median p50 is recorded

    def code_modules(self) -> tuple[str, ...]:
        return (*self.CODE, *_backend_code(self.compiled.runtime.name))


class CompileMeta(TypedDict):
    """What a compile entry records (its entry.json's meta)."""

    model_file: str  # the file the runtime loads, in the entry folder
    files: list[str]  # every file the artifact ships (model_file among them)
    notes: dict[str, Any]  # the backend's BuildResult.notes (quantization settings, the engine build command)
    runtime_version: str | None  # the runtime installed on the build machine; None when absent (TensorRT)
    deployed_format: bool  # False: a format the device compiles further (TensorRT's ONNX)
    size_bytes: int  # the shipped files, calibration images left out
    parity: ParityDict | None  # None: the runtime cannot run here
    unchecked_reason: NotRequired[str]  # why parity is None


@dataclass(frozen=True)
class Compiled:
    inp: CompileInput
    cached: bool
    meta: CompileMeta
    entry_dir: str

    def file(self, name: str) -> Path:
        return Path(self.entry_dir) / name


@dataclass(frozen=True)
class Measured:
    inp: MeasureInput
    cached: bool
    latency: dict[str, float]  # LatencyStats.to_dict()
    peak_memory_mb: float


def threads_here(profile: DeviceProfile) -> int:
    """The profile's threads, capped at this machine's cores: more threads than cores only measures contention."""
    return min(profile.threads, os.cpu_count() or 1)


def runtime_version_here(backend: Backend) -> str | None:
    try:
        return backend.version()
    except BackendUnavailable:
        return None  # TensorRT on a machine without it: the artifact carries ONNX and the engine build command


def compile_input(profile: DeviceProfile, model: DistillInput | SourceModel, precision: str, backend: Backend
                  ) -> CompileInput:
    return CompileInput(model, profile.runtime, runtime_version_here(backend), precision, profile.batch_size,
                        profile.budgets.max_accuracy_drop_points, backend.calibration_images, CALIBRATION_SEED,
                        REFERENCE_IMAGES)


def calibration_indices(inp: CompileInput, n_train: int) -> np.ndarray:
    """Which train images calibrate `inp` (sorted, seeded)."""
    rng = np.random.default_rng(inp.calibration_seed)
    return np.sort(rng.choice(n_train, size=min(inp.calibration_images, n_train), replace=False))


def compile_precision(cache: Cache, inp: CompileInput, backend: Backend,
                      exported: Callable[[], tuple[ExportedModel, np.ndarray]], images: ParityImages) -> Compiled:
    """One precision compiled, parity-checked against the FP32 reference on `images` (cached; machine-independent).

    `exported()` gives the ONNX export with its calibration images, and the reference logits on `images` (torch's
    for a student, ONNX Runtime FP32's for a user's model); it is called only when the entry is not cached. A
    toolchain failure raises BackendBuildError (from the backend)."""
    if backend.runtime != inp.runtime.name:
        raise ValueError(f"{type(backend).__name__} builds {backend.runtime}, the input asks for {inp.runtime.name}")

    def build(staging: Any, meta: dict[str, Any]) -> None:
        inputs, torch_logits = exported()
        result = (backend.build_accuracy_controlled(inputs, staging) if inp.accuracy_control
                  else backend.build(inputs, inp.precision, staging))
        meta |= {"model_file": result.model_file, "files": list(result.files), "notes": result.notes,
                 "runtime_version": inp.runtime_version, "deployed_format": result.deployed_format,
                 "size_bytes": sum((staging / f).stat().st_size for f in result.files if f != "calibration.npy")}
        try:
            runner = backend.load(staging / result.model_file, threads=1, precision=inp.precision)
        except BackendUnavailable as err:
            meta |= {"parity": None, "unchecked_reason": str(err)}
            return
        chunk = inp.batch_size * max(1, 512 // inp.batch_size)  # whole batches, so only the last one is padded
        logits = np.concatenate([run_batched(runner, x, batch_size=inp.batch_size) for x in images.chunks(chunk)])
        report = compare(logits, torch_logits, images.labels, backend=inp.runtime.name, precision=inp.precision,
                         max_drop_points=inp.max_accuracy_drop_points)
        np.save(staging / ARTIFACT_LOGITS, logits[:inp.reference_images])  # what gtnpipe bench on the device compares
        parity = report.to_dict()
        if not report.passed:  # say where: the first layer that leaves the FP32 reference, where the runtime shows it
            first = next(iter(images.chunks(inp.batch_size)))[:inp.batch_size]
            located = locate_divergence(backend, inputs.onnx_path, staging / result.model_file, first, inp.precision)
            if located is not None:
                parity |= {"divergence": located.to_dict(), "divergence_note": located.describe()}
        meta |= {"parity": parity}

    entry, cached = run_stage(cache, inp, build)
    return Compiled(inp, cached, cast(CompileMeta, entry.meta), str(entry.path))


def locate_divergence(backend: Backend, reference_onnx: Path, model_path: Path, x: np.ndarray, precision: str
                      ) -> Divergence | None:
    """gtnpipe.deploy.divergence for one failed precision: None where the backend cannot show its intermediates (LiteRT
    renames every tensor, TensorRT is not here) or none matches the reference's."""
    if x.shape[0] == 0:
        return None
    reference, order = reference_intermediates(reference_onnx, x)
    candidate = backend.intermediates(model_path, x, set(reference), precision=precision)
    return first_divergence(reference, order, candidate, precision=precision) if candidate else None


def measure_input(profile: DeviceProfile, compiled: Compiled) -> MeasureInput:
    return MeasureInput(compiled.inp, Machine.here(), threads_here(profile), MEASURE_WARMUP, MEASURE_RUNS,
                        MEASURE_PROCESSES)


def measure_precision(cache: Cache, inp: MeasureInput, compiled: Compiled) -> Measured:
    """Latency and peak memory of a compiled precision on this machine (cached per machine fingerprint): the fresh
    process with the median p50 of `inp.processes`, and the highest peak memory among them."""
    shape = inp.compiled.input_shape

    def build(staging: Any, meta: dict[str, Any]) -> None:
        runs = sorted((measure_fresh(inp.compiled.runtime.name, compiled.file(compiled.meta["model_file"]),
                                     threads=inp.threads, input_shape=shape, precision=inp.compiled.precision,
                                     warmup=inp.warmup, runs=inp.runs) for _ in range(inp.processes)),
                      key=lambda m: m.latency.p50_ms)
        median = runs[len(runs) // 2]
        meta |= {"latency": median.latency.to_dict(), "peak_memory_mb": max(m.peak_rss_mb for m in runs),
                 "p50_ms_per_process": [m.latency.p50_ms for m in runs]}

    entry, cached = run_stage(cache, inp, build)
    return Measured(inp, cached, entry.meta["latency"], entry.meta["peak_memory_mb"])
