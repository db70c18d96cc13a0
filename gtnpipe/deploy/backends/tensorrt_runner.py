"""Running a TensorRT engine: deserialized by Polygraphy, its input and output in Polygraphy's CUDA buffers.

Why not Polygraphy's TrtRunner: its own docstring says runners are "not designed for production deployment", and each
`infer()` sends every array through helpers that import torch wherever it is installed (polygraphy.util.array.is_torch),
which would put torch into the peak memory `gtnpipe bench` measures; it also re-binds an output allocator per call.
A fixed-shape classifier needs one input and one output buffer, bound once. Polygraphy requires TensorRT 8.5+, so only
the tensor API (num_io_tensors, set_tensor_address, execute_async_v3) is used. Never imports torch or onnx.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gtnpipe.deploy.backends.tensorrt_engine import import_polygraphy_trt
from gtnpipe.errors import BackendUnavailable, ConfigError

__all__ = ["TrtRunner", "open_engine"]


@dataclass(frozen=True)
class _Tensor:
    name: str
    is_input: bool
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize


def open_engine(engine_path: Path) -> TrtRunner | None:
    """A runner for the serialized engine at `engine_path`, or None where this TensorRT cannot deserialize it (an
    engine from another TensorRT version or GPU; TensorRT logs why)."""
    trt, poly = import_polygraphy_trt()
    from polygraphy.exception import PolygraphyException

    runtime = trt.Runtime(poly.get_trt_logger())  # kept by the runner: the engine must not outlive its runtime
    try:
        engine = poly.EngineFromBytes(Path(engine_path).read_bytes(), runtime=runtime)()
    except PolygraphyException:
        return None
    return TrtRunner(engine, trt=trt, runtime=runtime)


class TrtRunner:
    """Runs a deserialized engine on the current GPU: float32 NCHW batches in, logits out."""

    def __init__(self, engine: Any, *, trt: Any, runtime: Any) -> None:
        try:
            from polygraphy import cuda

            self._wrapper = cuda.wrapper()  # loads libcudart (/usr/local/cuda/lib64, LD_LIBRARY_PATH, a pip wheel)
        except (ImportError, OSError) as err:
            raise BackendUnavailable(f"the CUDA runtime library (libcudart) cannot be loaded ({err}): install the "
                                     "CUDA runtime that matches TensorRT, or put its folder on LD_LIBRARY_PATH") from err
        self._cuda = cuda
        self._runtime = runtime
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise ConfigError("TensorRT could not create an execution context (GPU memory is short): close other "
                              "GPU processes and try again")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        tensors = [_Tensor(name, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT, tuple(engine.get_tensor_shape(name)),
                           np.dtype(trt.nptype(engine.get_tensor_dtype(name)))) for name in names]
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
        self.stream = cuda.Stream()
        self.buffers = {t.name: cuda.DeviceArray.raw((t.nbytes,)) for t in tensors}
        for t in tensors:
            if not self.context.set_tensor_address(t.name, self.buffers[t.name].ptr):
                raise ConfigError(f"TensorRT refused the GPU buffer for tensor {t.name!r} (its log above says why)")
        self.host_input = np.zeros(self.input.shape, self.input.dtype)
        self.host_output = np.zeros(self.output.shape, self.output.dtype)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits of `x` (N <= the engine's batch; a short last batch is zero-padded and cut back)."""
        x = np.asarray(x)
        batch = self.input.shape[0]
        if x.shape[1:] != self.input.shape[1:] or not 0 < len(x) <= batch:
            raise ConfigError(f"the engine takes batches of up to {batch} images shaped {self.input.shape[1:]}, got "
                              f"{x.shape}: rebuild for this batch size (profile batch_size)")
        self.host_input[:len(x)] = x
        self.host_input[len(x):] = 0
        kind = self._cuda.MemcpyKind
        self._wrapper.memcpy(dst=self.buffers[self.input.name].ptr, src=self.host_input.ctypes.data,
                             nbytes=self.host_input.nbytes, kind=kind.HostToDevice, stream_ptr=self.stream.ptr)
        if not self.context.execute_async_v3(self.stream.ptr):
            raise ConfigError("TensorRT failed to run the engine (its log above says why)")
        self._wrapper.memcpy(dst=self.host_output.ctypes.data, src=self.buffers[self.output.name].ptr,
                             nbytes=self.host_output.nbytes, kind=kind.DeviceToHost, stream_ptr=self.stream.ptr)
        self.stream.synchronize()
        return np.array(self.host_output[:len(x)], dtype=np.float32)

    def close(self) -> None:
        """Free the GPU buffers and the stream (also done when the runner is garbage collected)."""
        for buffer in getattr(self, "buffers", {}).values():
            buffer.free()
        self.buffers = {}
        stream = getattr(self, "stream", None)
        if stream is not None:
            stream.free()
            self.stream = None

    def __del__(self) -> None:
        # at interpreter shutdown CUDA may already be gone, and the process frees the memory anyway
        with contextlib.suppress(Exception):
            self.close()
