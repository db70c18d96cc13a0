"""TensorRT (NVIDIA GPUs, Jetson): engine builds and an engine runner.

What runs where:
- `TensorRtBackend.build` always runs the ONNX check of `gtnpipe.deploy.backends.tensorrt_onnx` (which needs
  only the `onnx` package) and ships `model.onnx`. Where the TensorRT Python
  API is importable it also builds `model-<precision>.engine`; else where `trtexec` is on PATH it
  builds the engine with that; else (this machine) it ships the ONNX with the exact command that
  builds the engine on the device, and for INT8 a calibration batch file (`calibration.npy`).
  An engine only runs on the GPU model and TensorRT version that built it (TensorRT developer
  guide, "Serialized engines are not portable across platforms or TensorRT versions"), which is
  why a host without TensorRT leaves the engine to the device.
- `TensorRtBackend.load` runs an `.engine`, or builds one next to an `.onnx` first (cached).
  It needs `tensorrt` and a CUDA binding for device buffers (cuda-python, else pycuda); it never
  imports torch or onnx.
- `python -m gtnpipe.deploy.backends.tensorrt check|build ...` is the ONNX check and the engine build from a shell.

Caveat for the Jetson Nano profile: JetPack 4.6 ships TensorRT's Python bindings for its system
Python 3.6 only; a gtnpipe process (Python >= 3.11) there cannot import them, and `trtexec`
(/usr/src/tensorrt/bin/trtexec) is the tool that builds and times engines on that device.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from gtnpipe.deploy.backends import Backend, BuildResult, CompileInputs, missing
from gtnpipe.deploy.backends.tensorrt_onnx import (
    _major_minor,
    _summary,
    check_onnx_for_tensorrt,
    require_onnx_for_tensorrt,
    tensorrt_version_for_opset,
)
from gtnpipe.errors import BackendUnavailable, ConfigError
from gtnpipe.fsutil import atomic_write, atomic_write_bytes

__all__ = [
    "CALIBRATION_FILE",
    "CALIBRATION_CACHE_FILE",
    "CALIBRATION_IMAGES",
    "ONNX_FILE",
    "TensorRtBackend",
    "TrtRunner",
    "build_engine",
    "engine_build_command",
    "engine_file_name",
    "engine_for_onnx",
    "main",
]

ONNX_FILE = "model.onnx"
CALIBRATION_FILE = "calibration.npy"  # float32 (N, C, H, W) images in [0, 1] for INT8 calibration on the device
CALIBRATION_CACHE_FILE = "calibration.cache"  # TensorRT's per-tensor scales; trtexec --calib reads it
# TensorRT developer guide, "INT8 Calibration Using Python": "about 500 images are sufficient for
# calibrating ImageNet classification networks"; fewer are used when fewer are given.
CALIBRATION_IMAGES = 500
# Builder scratch memory. Small CNN layers need a few MiB; 256 MiB leaves room for faster tactics
# without starving a 4 GB Jetson whose GPU shares the CPU's memory (tactics that need more are skipped).
WORKSPACE_BYTES = 256 << 20
TRTEXEC_TIMEOUT_S = 3600  # engine builds on a Jetson Nano take minutes per model; a hang still ends
_PORTABILITY = (f"runs only on this GPU model with this TensorRT version; elsewhere load {ONNX_FILE}, which builds "
                "an engine there")
_GET_TENSORRT = ("TensorRT itself does not come from PyPI for these devices: on a Jetson it ships with JetPack "
                 "(the python3-libnvinfer package; create the virtual environment with --system-site-packages to "
                 "see it), on an x86 GPU machine install NVIDIA's TensorRT packages for its CUDA version")

# ---------------------------------------------------------------------------------------------
# TensorRT and CUDA, imported lazily: the host builds TensorRT-ready artifacts without either.

def _tensorrt_missing(err: ImportError) -> BackendUnavailable:
    return BackendUnavailable(f"{missing('TensorRT', err, None)}. {_GET_TENSORRT}")


def _import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as err:
        raise _tensorrt_missing(err) from err
    except OSError as err:  # a wheel whose libnvinfer is absent (PyPI's tensorrt stubs) fails to load, not to import
        raise _tensorrt_missing(ImportError(str(err), name="tensorrt")) from err
    return tensorrt


def _optional_tensorrt() -> Any | None:
    """The tensorrt module, or None where it is not usable here."""
    try:
        return _import_tensorrt()
    except BackendUnavailable:
        return None


def _trtexec_path() -> str | None:
    """trtexec's path: on PATH, or where JetPack and NVIDIA's packages put it (not on PATH by default)."""
    found = shutil.which("trtexec")
    if found:
        return found
    default = Path("/usr/src/tensorrt/bin/trtexec")
    return str(default) if default.is_file() else None


@cache
def _logger(trt: Any) -> Any:
    # one logger per process: TensorRT warns when builders and runtimes get different ones
    return trt.Logger(trt.Logger.WARNING)


class _CudaPython:
    """Device buffers, copies and a stream through cuda-python's runtime API (CUDA 11+)."""

    name = "cuda-python"

    def __init__(self, runtime: Any) -> None:
        self.rt = runtime
        self.stream = self._call(runtime.cudaStreamCreate(), "cudaStreamCreate")[0]
        self.stream_handle = int(self.stream)

    def _call(self, result: tuple[Any, ...], what: str) -> tuple[Any, ...]:
        err = result[0]
        if err != self.rt.cudaError_t.cudaSuccess:
            name = self.rt.cudaGetErrorName(err)[1]
            raise ConfigError(f"CUDA {what} failed ({name.decode() if isinstance(name, bytes) else name}): check that "
                              "the GPU driver works (nvidia-smi, or tegrastats on a Jetson) and memory is free")
        return result[1:]

    def malloc(self, nbytes: int) -> int:
        return int(self._call(self.rt.cudaMalloc(nbytes), "cudaMalloc")[0])

    def free(self, pointer: int) -> None:
        self.rt.cudaFree(pointer)

    def host(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return np.zeros(shape, dtype)

    def to_device(self, pointer: int, array: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call(self.rt.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, kind, self.stream), "copy to GPU")

    def to_host(self, array: np.ndarray, pointer: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call(self.rt.cudaMemcpyAsync(array.ctypes.data, pointer, array.nbytes, kind, self.stream), "copy to host")

    def synchronize(self) -> None:
        self._call(self.rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")


class _PyCuda:
    """The same through pycuda (JetPack 4.x has CUDA 10.2, which cuda-python does not support)."""

    name = "pycuda"

    def __init__(self) -> None:
        import pycuda.autoinit  # noqa: F401  (creates and makes current a context on GPU 0, which TensorRT uses)
        import pycuda.driver as driver

        self.driver = driver
        self.stream = driver.Stream()
        self.stream_handle = int(self.stream.handle)
        self._allocations: dict[int, Any] = {}

    def malloc(self, nbytes: int) -> int:
        allocation = self.driver.mem_alloc(nbytes)
        self._allocations[int(allocation)] = allocation  # freed when the DeviceAllocation is released
        return int(allocation)

    def free(self, pointer: int) -> None:
        allocation = self._allocations.pop(pointer, None)
        if allocation is not None:
            allocation.free()

    def host(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        array: np.ndarray = self.driver.pagelocked_zeros(shape, dtype)  # async copies need page-locked memory
        return array

    def to_device(self, pointer: int, array: np.ndarray) -> None:
        self.driver.memcpy_htod_async(pointer, array, self.stream)

    def to_host(self, array: np.ndarray, pointer: int) -> None:
        self.driver.memcpy_dtoh_async(array, pointer, self.stream)

    def synchronize(self) -> None:
        self.stream.synchronize()


def _cuda() -> _CudaPython | _PyCuda:
    """GPU buffers for the runner and the INT8 calibrator: cuda-python if importable, else pycuda."""
    try:
        try:
            from cuda.bindings import runtime  # cuda-python 12.6+ layout (the old one is gone in 13)
        except ImportError:
            from cuda import cudart as runtime  # cuda-python 11.x-12.5
        return _CudaPython(runtime)
    except ImportError as first:
        try:
            return _PyCuda()
        except ImportError:
            err = ImportError(str(first), name="cuda-python")
            raise BackendUnavailable(
                f"{missing('cuda-python (or pycuda), which the TensorRT runner uses for GPU buffers,', err, None)}"
                "; or install it alone: 'pip install cuda-python' (CUDA 11 and later), or 'pip install pycuda' "
                "(e.g. on JetPack 4.x, CUDA 10.2)") from first


# ---------------------------------------------------------------------------------------------
# Engine builds: one function for the host's build() and the device's load()

def engine_file_name(precision: str) -> str:
    return f"model-{precision}.engine"


def engine_build_command(precision: str, *, onnx_file: str = ONNX_FILE) -> list[str]:
    """The trtexec command that builds the engine from the artifact's ONNX (run in the artifact folder).

    INT8 reads the calibration cache that a calibrated build (`engine_for_onnx`, i.e. `load` or
    `python -m gtnpipe.deploy.backends.tensorrt build`) writes: trtexec cannot calibrate from images, and
    `--int8` without `--calib` uses placeholder scales, whose accuracy means nothing.
    """
    command = ["trtexec", f"--onnx={onnx_file}", f"--saveEngine={engine_file_name(precision)}"]
    if precision == "fp16":
        command.append("--fp16")
    elif precision == "int8":
        command += ["--int8", f"--calib={CALIBRATION_CACHE_FILE}"]
    return command


def _calibrator(trt: Any, images: np.ndarray, batch: int, cache_path: Path | None) -> Any:
    """An IInt8EntropyCalibrator2 (TensorRT's default for CNNs) over `images` in batches of the engine's batch."""
    if len(images) < batch:
        raise ConfigError(f"INT8 calibration needs at least one batch of {batch} images, got {len(images)}: "
                          f"ship more calibration images ({CALIBRATION_FILE}) or build fp16/fp32")
    cuda = _cuda()

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)  # pybind11 trampolines need the base __init__ called
            usable = len(images) // batch * batch
            self.batches = [np.ascontiguousarray(images[i:i + batch], dtype=np.float32) for i in range(0, usable, batch)]
            self.next = 0
            self.pointer = cuda.malloc(self.batches[0].nbytes)

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.next >= len(self.batches):
                return None
            cuda.to_device(self.pointer, self.batches[self.next])
            cuda.synchronize()
            self.next += 1
            return [self.pointer]

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else None

        def write_calibration_cache(self, data: Any) -> None:
            if cache_path is not None:
                atomic_write_bytes(cache_path, bytes(data))

        def release(self) -> None:
            cuda.free(self.pointer)

    return EntropyCalibrator()


def build_engine(onnx_path: Path, engine_path: Path, *, precision: str, calibration: np.ndarray | None = None,
                 calibration_cache: Path | None = None, workspace_bytes: int = WORKSPACE_BYTES) -> Path:
    """Parse `onnx_path` with TensorRT's OnnxParser and write the serialized engine to `engine_path` (atomically).

    fp16 sets the FP16 builder flag (TensorRT still picks FP32 kernels where faster or needed);
    int8 sets INT8 (with FP16 as fallback) and calibrates with an entropy calibrator over
    `calibration` (float32 NCHW images in [0, 1]), reusing and writing `calibration_cache`.
    """
    trt = _import_tensorrt()
    if precision not in TensorRtBackend.precisions:
        raise ConfigError(f"TensorRT builds {', '.join(TensorRtBackend.precisions)}, not {precision!r}")
    logger = _logger(trt)
    builder = trt.Builder(logger)
    major = _major_minor(trt.__version__)[0]
    # ONNX models need an explicit-batch network in TensorRT 7-9; 10 has only those and deprecates the flag
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if major < 10 else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ConfigError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {errors}. Run "
                          f"'python -m gtnpipe.deploy.backends.tensorrt check {onnx_path} --trt-version {trt.__version__}' "
                          "and export again at the profile's max_onnx_opset")
    config = builder.create_builder_config()
    if hasattr(config, "set_memory_pool_limit"):  # TensorRT 8.4+
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    else:  # 8.0-8.3 (removed in 10)
        config.max_workspace_size = workspace_bytes
    calibrator = None
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "int8":
        if not getattr(builder, "platform_has_fast_int8", True):
            raise ConfigError("this GPU has no fast INT8 path (e.g. the Jetson Nano's Maxwell GPU): TensorRT would "
                              "run INT8 layers in FP32; remove 'int8' from the profile's precisions")
        batch = int(network.get_input(0).shape[0])
        images = calibration if calibration is not None else np.zeros((0,), np.float32)
        if len(images) == 0 and not (calibration_cache is not None and calibration_cache.is_file()):
            raise ConfigError(f"INT8 needs calibration images or a calibration cache; none given for {onnx_path}: "
                              f"put {CALIBRATION_FILE} next to it (gtnpipe build writes it) or build fp16/fp32")
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)  # layers TensorRT keeps out of INT8 run in FP16, not FP32
        # implicit quantization by calibration: deprecated from TensorRT 10.1 in favour of Q/DQ models, still working
        calibrator = (_calibrator(trt, images, batch, calibration_cache) if len(images)
                      else _cache_only_calibrator(trt, calibration_cache))
        config.int8_calibrator = calibrator
    try:
        serialized = builder.build_serialized_network(network, config)  # TensorRT 8.0+
    finally:
        if calibrator is not None and hasattr(calibrator, "release"):
            calibrator.release()
    if serialized is None:
        raise ConfigError(f"TensorRT {trt.__version__} could not build a {precision} engine from {onnx_path} (its log "
                          "above says why); check that the GPU has free memory and try fp32 to narrow it down")
    with atomic_write(Path(engine_path)) as handle:
        handle.write(serialized)
    return Path(engine_path)


def _cache_only_calibrator(trt: Any, cache_path: Path | None) -> Any:
    """A calibrator that only replays a calibration cache (TensorRT asks for no batches when the cache is valid)."""

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> None:
            return None  # no images: a cache TensorRT rejects (another version) ends in a build error, not bad scales

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else None

        def write_calibration_cache(self, data: Any) -> None:
            return None

    return CacheCalibrator()


def engine_for_onnx(onnx_path: Path, precision: str, *, rebuild: bool = False) -> Path:
    """The engine for an artifact's ONNX on this device: `model-<precision>.engine` beside it, built if missing.

    Reused while it is newer than the ONNX (and, for int8, than `calibration.npy`); INT8 calibrates
    from the `calibration.npy` beside the ONNX and leaves `calibration.cache` there for trtexec.
    """
    onnx_path = Path(onnx_path)
    folder = onnx_path.parent
    engine = folder / engine_file_name(precision)
    calibration_file = folder / CALIBRATION_FILE
    sources = [onnx_path] + ([calibration_file] if precision == "int8" and calibration_file.is_file() else [])
    fresh = engine.is_file() and all(engine.stat().st_mtime_ns >= src.stat().st_mtime_ns for src in sources)
    if fresh and not rebuild:
        return engine
    calibration = None
    if precision == "int8" and calibration_file.is_file():
        calibration = np.load(calibration_file).astype(np.float32, copy=False)
    return build_engine(onnx_path, engine, precision=precision, calibration=calibration,
                        calibration_cache=folder / CALIBRATION_CACHE_FILE if precision == "int8" else None)


# ---------------------------------------------------------------------------------------------
# Running an engine

@dataclass(frozen=True)
class _Tensor:
    name: str
    index: int  # binding index (bindings API) or I/O tensor index (tensor API)
    is_input: bool
    shape: tuple[int, ...]
    dtype: np.dtype


class TrtRunner:
    """Runs a deserialized engine on GPU 0: float32 NCHW batches in, logits out.

    Supports TensorRT 8.5+'s tensor API (num_io_tensors / set_tensor_address / execute_async_v3, the
    only one in 10.x) and 8.0-8.4's bindings API (get_binding_index / execute_async_v2), by feature.
    """

    def __init__(self, engine: Any, *, trt: Any, runtime: Any) -> None:
        self._runtime = runtime  # TensorRT 8 requires the runtime to outlive its engines
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise ConfigError("TensorRT could not create an execution context (GPU memory is short): close other "
                              "GPU processes and try again")
        self.cuda = _cuda()
        self.tensor_api = hasattr(engine, "num_io_tensors") and hasattr(self.context, "execute_async_v3")
        tensors = self._tensors(trt)
        dynamic = [t.name for t in tensors if any(d < 0 for d in t.shape)]
        if dynamic:
            raise ConfigError(f"the engine has dynamic tensors {dynamic}: build it from an ONNX with static shapes "
                              "(gtnpipe exports the profile's batch size)")
        inputs = [t for t in tensors if t.is_input]
        outputs = [t for t in tensors if not t.is_input]
        if len(inputs) != 1 or not outputs:
            raise ConfigError(f"expected one input and an output, the engine has inputs {[t.name for t in inputs]} and "
                              f"outputs {[t.name for t in outputs]}: build it from a gtnpipe export")
        self.input = inputs[0]
        self.output = next((t for t in outputs if t.name == "logits"), outputs[0])
        self.pointers = {t.name: self.cuda.malloc(int(np.prod(t.shape)) * t.dtype.itemsize) for t in tensors}
        self.host_input = self.cuda.host(self.input.shape, self.input.dtype)
        self.host_output = self.cuda.host(self.output.shape, self.output.dtype)
        if self.tensor_api:
            for t in tensors:
                self.context.set_tensor_address(t.name, self.pointers[t.name])
        else:
            self.bindings = [0] * len(tensors)
            for t in tensors:
                self.bindings[t.index] = self.pointers[t.name]

    def _tensors(self, trt: Any) -> list[_Tensor]:
        engine = self.engine
        if self.tensor_api:
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            return [_Tensor(name, i, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                            tuple(engine.get_tensor_shape(name)), np.dtype(trt.nptype(engine.get_tensor_dtype(name))))
                    for i, name in enumerate(names)]
        tensors = []
        for name in (engine.get_binding_name(i) for i in range(engine.num_bindings)):
            i = engine.get_binding_index(name)
            tensors.append(_Tensor(name, i, engine.binding_is_input(i), tuple(engine.get_binding_shape(i)),
                                   np.dtype(trt.nptype(engine.get_binding_dtype(i)))))
        return tensors

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits of `x` (N <= the engine's batch; a short last batch is zero-padded and cut back)."""
        x = np.asarray(x)
        batch = self.input.shape[0]
        if x.shape[1:] != self.input.shape[1:] or not 0 < len(x) <= batch:
            raise ConfigError(f"the engine takes batches of up to {batch} images shaped {self.input.shape[1:]}, got "
                              f"{x.shape}: rebuild for this batch size (profile batch_size)")
        self.host_input[:len(x)] = x
        self.host_input[len(x):] = 0
        self.cuda.to_device(self.pointers[self.input.name], self.host_input)
        if self.tensor_api:
            ok = self.context.execute_async_v3(self.cuda.stream_handle)
        else:
            ok = self.context.execute_async_v2(bindings=self.bindings, stream_handle=self.cuda.stream_handle)
        if not ok:
            raise ConfigError("TensorRT failed to run the engine (its log above says why)")
        self.cuda.to_host(self.host_output, self.pointers[self.output.name])
        self.cuda.synchronize()
        return np.array(self.host_output[:len(x)], dtype=np.float32)

    def close(self) -> None:
        """Free the GPU buffers (also done when the runner is garbage collected)."""
        for pointer in getattr(self, "pointers", {}).values():
            self.cuda.free(pointer)
        self.pointers = {}

    def __del__(self) -> None:
        # at interpreter shutdown CUDA may already be gone, and the process frees the memory anyway
        with contextlib.suppress(Exception):
            self.close()


def _deserialize(trt: Any, engine_path: Path) -> tuple[Any, Any]:
    runtime = trt.Runtime(_logger(trt))
    return runtime.deserialize_cuda_engine(Path(engine_path).read_bytes()), runtime


class TensorRtBackend(Backend):
    runtime = "tensorrt"
    precisions = ("fp32", "fp16", "int8")

    def version(self) -> str:
        return str(_import_tensorrt().__version__)

    def build(self, inputs: CompileInputs, precision: str, out_dir: Path) -> BuildResult:
        """Check the export, ship it as model.onnx, and build the engine where TensorRT or trtexec is here."""
        self.check_precision(precision)
        trt = _optional_tensorrt()
        trt_version = str(trt.__version__) if trt is not None else tensorrt_version_for_opset(inputs.max_onnx_opset)
        require_onnx_for_tensorrt(inputs.onnx_path, max_opset=inputs.max_onnx_opset, trt_version=trt_version)
        out_dir.mkdir(parents=True, exist_ok=True)
        onnx_file = out_dir / ONNX_FILE
        atomic_write_bytes(onnx_file, Path(inputs.onnx_path).read_bytes())
        files = [ONNX_FILE]
        notes: dict[str, Any] = {"onnx_checked_for": f"TensorRT {trt_version}, opset <= {inputs.max_onnx_opset}"}
        if precision == "int8":
            count = min(CALIBRATION_IMAGES, len(inputs.calibration))
            with atomic_write(out_dir / CALIBRATION_FILE) as handle:
                np.save(handle, np.ascontiguousarray(inputs.calibration[:count], dtype=np.float32))
            files.append(CALIBRATION_FILE)
            notes["calibration_images"] = count
            notes["calibration"] = (f"{CALIBRATION_FILE} holds {count} training images; the calibrated build writes "
                                    f"{CALIBRATION_CACHE_FILE}, which '{shlex.join(engine_build_command('int8'))}' "
                                    "reads. trtexec --int8 without --calib uses placeholder scales (accuracy not "
                                    "representative), so it is never used")
        engine_name = engine_file_name(precision)
        if trt is not None:
            cache_file = out_dir / CALIBRATION_CACHE_FILE if precision == "int8" else None
            build_engine(onnx_file, out_dir / engine_name, precision=precision,
                         calibration=inputs.calibration[:CALIBRATION_IMAGES] if precision == "int8" else None,
                         calibration_cache=cache_file)
            files.append(engine_name)
            if cache_file is not None and cache_file.is_file():
                files.append(CALIBRATION_CACHE_FILE)
            notes.update(engine=f"built by TensorRT {trt.__version__} (Python API)", engine_builder="tensorrt",
                         engine_portability=_PORTABILITY)
            return BuildResult(engine_name, tuple(files), notes)
        trtexec = _trtexec_path()
        if trtexec is not None and precision != "int8":
            command = [trtexec, *engine_build_command(precision)[1:]]
            try:
                done = subprocess.run(command, cwd=out_dir, capture_output=True, text=True, timeout=TRTEXEC_TIMEOUT_S)
            except subprocess.TimeoutExpired as err:
                raise ConfigError(f"'{shlex.join(command)}' ran over {TRTEXEC_TIMEOUT_S} s in {out_dir}: check the "
                                  "GPU (nvidia-smi / tegrastats) and run it by hand to see where it stops") from err
            if done.returncode != 0 or not (out_dir / engine_name).is_file():
                tail = (done.stdout + done.stderr)[-2000:]
                raise ConfigError(f"'{shlex.join(command)}' failed in {out_dir} (exit {done.returncode}):\n{tail}\n"
                                  f"Check the model with 'python -m gtnpipe.deploy.backends.tensorrt check {onnx_file}'")
            files.append(engine_name)
            notes.update(engine=f"built by {trtexec}", engine_builder="trtexec",
                         engine_build_command=shlex.join(engine_build_command(precision)),
                         engine_portability=_PORTABILITY)
            return BuildResult(engine_name, tuple(files), notes)
        # No TensorRT here (or int8 with trtexec only, which cannot calibrate from images): the device builds
        # the engine from model.onnx when `load` (gtnpipe bench) first runs it, or by the command below.
        why = ("trtexec cannot calibrate INT8 from images" if trtexec is not None
               else "TensorRT not installed here")
        notes["engine"] = f"not built: {why}; gtnpipe bench builds it on the device"
        notes["engine_file"] = engine_name
        if precision == "int8":
            notes["engine_build_command"] = shlex.join(
                ["python", "-m", "gtnpipe.deploy.backends.tensorrt", "build", ONNX_FILE, "--precision", "int8"])
        else:
            notes["engine_build_command"] = shlex.join(engine_build_command(precision))
        return BuildResult(ONNX_FILE, tuple(files), notes, deployed_format=False)

    def load(self, model_path: Path, *, threads: int, precision: str = "fp32") -> TrtRunner:
        """A runner for an `.engine`, or for an `.onnx` after building (or reusing) its engine beside it.

        `threads` does not apply: the GPU runs the model, the CPU thread only copies and waits.
        """
        trt = _import_tensorrt()
        model_path = Path(model_path)
        if model_path.suffix == ".onnx":
            self.check_precision(precision)
            engine_path = engine_for_onnx(model_path, precision)
            engine, runtime = _deserialize(trt, engine_path)
            if engine is None:  # a cached engine from an older TensorRT (a JetPack upgrade): build it again
                engine_path = engine_for_onnx(model_path, precision, rebuild=True)
                engine, runtime = _deserialize(trt, engine_path)
        else:
            engine, runtime = _deserialize(trt, model_path)
        if engine is None:
            raise ConfigError(f"TensorRT {trt.__version__} cannot load {model_path}: engines run only on the GPU model "
                              f"and TensorRT version that built them; load the artifact's {ONNX_FILE} instead, which "
                              "builds an engine on this device")
        return TrtRunner(engine, trt=trt, runtime=runtime)


# ---------------------------------------------------------------------------------------------
# python -m gtnpipe.deploy.backends.tensorrt

def main(argv: Sequence[str] | None = None) -> int:
    """`check MODEL.onnx [--max-opset N] [--trt-version V]` or `build MODEL.onnx --precision P` (on the device)."""
    parser = argparse.ArgumentParser(prog="python -m gtnpipe.deploy.backends.tensorrt",
                                     description="Check an ONNX export for TensorRT, or build its engine on the device.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="will this ONNX parse in TensorRT? (needs only the onnx package)")
    check.add_argument("onnx", type=Path)
    check.add_argument("--max-opset", type=int, default=13, help="the profile's runtime.max_onnx_opset (default 13)")
    check.add_argument("--trt-version", default=None,
                       help="TensorRT version to check against (default: the oldest that reads --max-opset)")
    build = commands.add_parser("build", help="build model-<precision>.engine beside the ONNX (needs TensorRT)")
    build.add_argument("onnx", type=Path)
    build.add_argument("--precision", choices=TensorRtBackend.precisions, default="fp16")
    build.add_argument("--rebuild", action="store_true", help="build even if a newer engine is there")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            version = args.trt_version or tensorrt_version_for_opset(args.max_opset)
            problems = check_onnx_for_tensorrt(args.onnx, max_opset=args.max_opset, trt_version=version)
            print(_summary(args.onnx, problems, max_opset=args.max_opset, trt_version=version))
            return 1 if problems else 0
        print(engine_for_onnx(args.onnx, args.precision, rebuild=args.rebuild))
        return 0
    except (ConfigError, BackendUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
