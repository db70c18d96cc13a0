"""TensorRT engines on the device, built with Polygraphy: the build, its sidecar, and the engine cache beside an ONNX.

An engine runs only on the GPU model and TensorRT version that built it (TensorRT developer guide, "Serialized engines
are not portable across platforms or TensorRT versions"). So an engine beside an artifact's ONNX is reused only while
its sidecar (`model-<precision>.engine.json`) names the ONNX's sha256, this device's TensorRT version and GPU, the
precision, and for INT8 the sha256 of the calibration images: file times say nothing about any of these (a copied
folder keeps or loses them at random).

Needs TensorRT 8.5+ (Polygraphy's floor) and Polygraphy (`pip install 'gtnpipe[tensorrt]'`); never imports torch or onnx.
"""

from __future__ import annotations

import ctypes
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from packaging.version import InvalidVersion, Version

from gtnpipe.deploy.backends import missing
from gtnpipe.errors import BackendBuildError, BackendUnavailable, ConfigError
from gtnpipe.fsutil import atomic_write, atomic_write_json, sha256_file

__all__ = [
    "CALIBRATION_CACHE_FILE",
    "CALIBRATION_FILE",
    "ONNX_FILE",
    "PRECISIONS",
    "EngineStamp",
    "build_engine",
    "builder_flags",
    "engine_file_name",
    "engine_for_onnx",
    "engine_stamp",
    "gpu_name",
    "import_polygraphy_trt",
    "import_tensorrt",
    "read_sidecar",
    "sidecar_path",
    "stale_reason",
]

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
CALIBRATION_FILE = "calibration.npy"  # float32 (N, C, H, W) images in [0, 1] for INT8 calibration on the device
CALIBRATION_CACHE_FILE = "calibration.cache"  # TensorRT's per-tensor scales; trtexec --calib reads it
PRECISIONS = ("fp32", "fp16", "int8")
# Builder scratch memory. Small CNN layers need a few MiB; 256 MiB leaves room for faster tactics
# without starving a 4 GB Jetson whose GPU shares the CPU's memory (tactics that need more are skipped).
WORKSPACE_BYTES = 256 << 20
MIN_TENSORRT = Version("8.5")  # Polygraphy 0.53 imports "tensorrt>=8.5" (polygraphy/mod/trt_importer.py)
GET_TENSORRT = ("TensorRT itself does not come from PyPI for these devices: on a Jetson it ships with JetPack "
                "(the python3-libnvinfer package; create the virtual environment with --system-site-packages to "
                "see it), on an x86 GPU machine install NVIDIA's TensorRT packages for its CUDA version")

# ---------------------------------------------------------------------------------------------
# TensorRT and Polygraphy, imported lazily: the host ships TensorRT-ready artifacts without either.

def _tensorrt_missing(err: ImportError) -> BackendUnavailable:
    return BackendUnavailable(f"{missing('TensorRT', err, None)}. {GET_TENSORRT}")


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as err:
        raise _tensorrt_missing(err) from err
    except OSError as err:  # a wheel whose libnvinfer is absent (PyPI's tensorrt stubs) fails to load, not to import
        raise _tensorrt_missing(ImportError(str(err), name="tensorrt")) from err
    return tensorrt


def _import_polygraphy() -> Any:
    try:
        from polygraphy.backend import trt as poly_trt  # lazy: imports TensorRT only when a loader runs
    except ImportError as err:
        raise missing("Polygraphy (which builds and loads gtnpipe's TensorRT engines)", err, "tensorrt") from err
    return poly_trt


def import_polygraphy_trt() -> tuple[Any, Any]:
    """(tensorrt, polygraphy.backend.trt), once TensorRT is known to be here and new enough for Polygraphy."""
    trt = import_tensorrt()
    try:
        too_old = Version(str(trt.__version__)) < MIN_TENSORRT
    except InvalidVersion:
        too_old = False  # a build string Version cannot read: let Polygraphy's own check decide
    if too_old:
        raise BackendUnavailable(f"TensorRT {trt.__version__} is older than {MIN_TENSORRT}, the oldest Polygraphy builds "
                                 "with: build the engine with trtexec instead (the artifact's engine_build_command), "
                                 "or upgrade TensorRT (JetPack 5+ on a Jetson)")
    return trt, _import_polygraphy()


def gpu_name(ordinal: int = 0) -> str:
    """The name of CUDA device `ordinal` (numbered as CUDA_VISIBLE_DEVICES shows them), from the driver API."""
    library = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        driver = ctypes.CDLL(library)
    except OSError as err:
        raise BackendUnavailable(f"the NVIDIA driver's {library} cannot be loaded ({err}): TensorRT needs an NVIDIA "
                                 "GPU and its driver; check nvidia-smi (tegrastats on a Jetson)") from err
    device = ctypes.c_int()
    name = ctypes.create_string_buffer(256)
    calls: tuple[tuple[str, Callable[[], Any]], ...] = (  # ctypes calls into the driver: untyped
        ("cuInit", lambda: driver.cuInit(0)),
        ("cuDeviceGet", lambda: driver.cuDeviceGet(ctypes.byref(device), ordinal)),
        ("cuDeviceGetName", lambda: driver.cuDeviceGetName(name, len(name), device)))
    for what, call in calls:
        code = int(call())
        if code != 0:
            raise BackendUnavailable(f"CUDA {what} failed (CUresult {code}): no usable GPU {ordinal}; check nvidia-smi "
                                     "(tegrastats on a Jetson) and CUDA_VISIBLE_DEVICES")
    return name.value.decode(errors="replace")


# ---------------------------------------------------------------------------------------------
# Freshness: the sidecar beside each engine

@dataclass(frozen=True)
class EngineStamp:
    """What an engine is built from and for; a cached engine is reused only where every field still holds."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    precision: str
    calibration_sha256: str | None = None  # int8 calibrated from images: the calibration.npy they came from


_FIELD_LABELS = {"onnx_sha256": "ONNX sha256", "tensorrt_version": "TensorRT version", "gpu_name": "GPU",
                 "precision": "precision", "calibration_sha256": f"{CALIBRATION_FILE} sha256"}


def engine_file_name(precision: str) -> str:
    return f"model-{precision}.engine"


def sidecar_path(engine_path: Path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def engine_stamp(onnx_path: Path, precision: str, *, tensorrt_version: str, gpu_name: str) -> EngineStamp:
    """The stamp an engine for `onnx_path` must carry on this device (INT8 also hashes the calibration.npy beside it)."""
    onnx_path = Path(onnx_path)
    calibration = onnx_path.parent / CALIBRATION_FILE
    calibration_sha256 = sha256_file(calibration) if precision == "int8" and calibration.is_file() else None
    return EngineStamp(sha256_file(onnx_path), str(tensorrt_version), gpu_name, precision, calibration_sha256)


def read_sidecar(engine_path: Path) -> dict[str, Any] | None:
    """The sidecar's JSON object, or None where it is missing or unreadable."""
    try:
        recorded = json.loads(sidecar_path(engine_path).read_text())
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) else None


def stale_reason(engine_path: Path, expected: EngineStamp) -> str | None:
    """Why the engine at `engine_path` cannot serve `expected` (None: it is fresh)."""
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        return f"{engine_path.name} does not exist yet"
    recorded = read_sidecar(engine_path)
    if recorded is None:
        return (f"{sidecar_path(engine_path).name} is missing or unreadable, so what built {engine_path.name} is "
                "unknown (trtexec, another device or an older gtnpipe)")
    changed = [f"{_FIELD_LABELS[f.name]} {recorded.get(f.name)!r} -> {getattr(expected, f.name)!r}"
               for f in fields(EngineStamp) if recorded.get(f.name) != getattr(expected, f.name)]
    return "; ".join(changed) or None


# ---------------------------------------------------------------------------------------------
# The build

def builder_flags(precision: str) -> dict[str, bool]:
    """Polygraphy CreateConfig's precision flags for `precision`.

    fp32 turns TF32 off: TensorRT enables it by default, and on Ampere and later TF32 convolutions round inputs to
    10 mantissa bits, which breaks the 1e-4 logit parity bar. fp16 and int8 keep TensorRT's default (TF32 on) as
    trtexec does; they are judged by top-1 agreement. int8 also enables FP16, so layers TensorRT keeps out of INT8 run
    in FP16, not FP32.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"TensorRT builds {', '.join(PRECISIONS)}, not {precision!r}")
    return {"tf32": precision != "fp32", "fp16": precision != "fp32", "int8": precision == "int8"}


class _DeviceBatches:
    """Calibration batches for Polygraphy's Calibrator, handed over as one GPU buffer's pointer per batch.

    NumPy arrays would work too, but Polygraphy's array helpers probe for torch (polygraphy.util.array.is_torch imports
    it where installed), which a device process must not load. TensorRT reads a batch before it asks for the next, so
    one buffer serves them all.
    """

    def __init__(self, images: np.ndarray, batch: int, input_name: str) -> None:
        self.images = np.ascontiguousarray(images, dtype=np.float32)
        self.batch = batch
        self.input_name = input_name

    def __iter__(self) -> Any:
        from polygraphy import cuda

        first = self.images[:self.batch]
        buffer = cuda.DeviceArray.raw((first.nbytes,))
        try:
            for start in range(0, len(self.images), self.batch):
                chunk = self.images[start:start + self.batch]  # a contiguous slice: whole images along axis 0
                cuda.wrapper().memcpy(dst=buffer.ptr, src=chunk.ctypes.data, nbytes=chunk.nbytes,
                                      kind=cuda.MemcpyKind.HostToDevice)
                yield {self.input_name: buffer.ptr}
        finally:
            buffer.free()


def _calibrator(poly: Any, images: np.ndarray | None, cache: Path | None, *, batch: int, input_name: str,
                onnx_path: Path) -> tuple[Any, int]:
    """Polygraphy's Calibrator (an IInt8EntropyCalibrator2) over whole batches of `images`, or replaying `cache` alone;
    and how many images it calibrates on."""
    if images is not None and len(images):
        usable = len(images) // batch * batch
        if usable == 0:
            raise ConfigError(f"INT8 calibration needs at least one batch of {batch} images, got {len(images)}: "
                              f"ship more calibration images ({CALIBRATION_FILE}) or build fp16/fp32")
        if usable < len(images):
            log.warning("INT8 calibration uses %d of the %d images in %s: whole batches of %d", usable, len(images),
                        CALIBRATION_FILE, batch)
        if cache is not None:
            # scales from another ONNX or image set must not be replayed: calibrate afresh, which rewrites the cache
            cache.unlink(missing_ok=True)
        data = _DeviceBatches(images[:usable], batch, input_name)
        return poly.Calibrator(data, cache=str(cache) if cache is not None else None), usable
    if cache is not None and cache.is_file() and cache.stat().st_size:
        # TensorRT asks for no batches when the cache is valid; one it rejects (another version) fails the build
        return poly.Calibrator([], cache=str(cache)), 0
    raise ConfigError(f"INT8 needs calibration images or a calibration cache; none given for {onnx_path}: put "
                      f"{CALIBRATION_FILE} next to it (gtnpipe build writes it) or build fp16/fp32")


def build_engine(onnx_path: Path, engine_path: Path, *, precision: str, calibration: np.ndarray | None = None,
                 calibration_cache: Path | None = None, workspace_bytes: int = WORKSPACE_BYTES) -> dict[str, Any]:
    """Build `engine_path` from `onnx_path` with Polygraphy (atomically); returns what the sidecar records about it.

    int8 calibrates on whole batches of `calibration` (float32 NCHW images in [0, 1]) and writes `calibration_cache`,
    or, without images, replays that cache.
    """
    flags = builder_flags(precision)
    trt, poly = import_polygraphy_trt()
    from polygraphy.exception import PolygraphyException

    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    try:
        builder, network, parser = poly.NetworkFromOnnxPath(str(onnx_path))()
    except PolygraphyException as err:
        raise BackendBuildError(f"TensorRT {trt.__version__} cannot parse {onnx_path} (the parser's errors are logged "
                                f"above): run 'python -m gtnpipe.deploy.backends.tensorrt check {onnx_path} --trt-version "
                                f"{trt.__version__}' and export again at the profile's max_onnx_opset") from err
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    shape = tuple(inputs[0].shape) if inputs else ()
    if len(inputs) != 1 or any(d < 0 for d in shape):
        raise ConfigError(f"{onnx_path} has inputs {[(t.name, tuple(t.shape)) for t in inputs]}; gtnpipe engines take one "
                          "input of static shape: export it with gtnpipe (the profile's batch size, no dynamic axes)")
    calibrator, used = None, 0
    if precision == "int8":
        if not getattr(builder, "platform_has_fast_int8", True):
            raise ConfigError("this GPU has no fast INT8 path (e.g. the Jetson Nano's Maxwell GPU): TensorRT would "
                              "run INT8 layers in FP32; remove 'int8' from the profile's precisions")
        # implicit quantization by calibration: deprecated from TensorRT 10.1 in favour of Q/DQ models, still working
        calibrator, used = _calibrator(poly, calibration, calibration_cache, batch=int(shape[0]),
                                       input_name=inputs[0].name, onnx_path=onnx_path)
    config = poly.CreateConfig(**flags, calibrator=calibrator,
                               memory_pool_limits={trt.MemoryPoolType.WORKSPACE: workspace_bytes})
    try:
        serialized = poly.EngineBytesFromNetwork((builder, network, parser), config=config)()
    except PolygraphyException as err:
        raise BackendBuildError(f"TensorRT {trt.__version__} could not build a {precision} engine from {onnx_path} (its "
                                "log above says why): check that the GPU has free memory, and try fp32 to narrow it "
                                "down") from err
    sidecar_path(engine_path).unlink(missing_ok=True)  # the old sidecar must not vouch for the new engine
    with atomic_write(engine_path) as handle:
        handle.write(serialized)
    import polygraphy

    return {"tf32": flags["tf32"], "calibration_images": used, "built_with": f"polygraphy {polygraphy.__version__}"}


def engine_for_onnx(onnx_path: Path, precision: str, *, rebuild: bool = False) -> Path:
    """The engine for an artifact's ONNX on this device: `model-<precision>.engine` beside it, built unless fresh.

    Fresh means its sidecar's stamp matches this ONNX, TensorRT, GPU and precision (and for int8 calibration.npy).
    INT8 calibrates on the `calibration.npy` beside the ONNX and leaves `calibration.cache` there for trtexec.
    """
    trt, _ = import_polygraphy_trt()
    onnx_path = Path(onnx_path)
    folder = onnx_path.parent
    engine = folder / engine_file_name(precision)
    stamp = engine_stamp(onnx_path, precision, tensorrt_version=str(trt.__version__), gpu_name=gpu_name())
    why = "a rebuild was asked for" if rebuild else stale_reason(engine, stamp)
    if why is None:
        return engine
    log.warning("building %s with TensorRT %s on %s (%s); this can take minutes", engine, trt.__version__,
                stamp.gpu_name, why)
    calibration = None
    if stamp.calibration_sha256 is not None:
        calibration = np.load(folder / CALIBRATION_FILE).astype(np.float32, copy=False)
    details = build_engine(onnx_path, engine, precision=precision, calibration=calibration,
                           calibration_cache=folder / CALIBRATION_CACHE_FILE if precision == "int8" else None)
    atomic_write_json(sidecar_path(engine), asdict(stamp) | details)
    return engine
