"""ONNX Runtime (CPU execution provider): FP32 as exported, INT8 by NNCF post-training quantization."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort

from gtnpipe.deploy.backends import Backend, BuildResult, CompileInputs, calibration_batches, missing, toolchain_step
from gtnpipe.progress import quiet_loggers

__all__ = ["OnnxRuntimeBackend", "OrtRunner"]

class OrtRunner:
    def __init__(self, model_path: Path, *, threads: int) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]


class OnnxRuntimeBackend(Backend):
    runtime = "onnxruntime"
    # FP16 is left out: ORT's CPU provider has no FP16 kernels for most ops and inserts casts around them
    precisions = ("fp32", "int8")

    def version(self) -> str:
        return str(ort.__version__)

    def build(self, inputs: CompileInputs, precision: str, out_dir: Path) -> BuildResult:
        self.check_precision(precision)
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / f"model-{precision}.onnx"
        if precision == "fp32":
            shutil.copyfile(inputs.onnx_path, target)
            return BuildResult(target.name, (target.name,))
        try:
            import nncf
            import onnx
        except ImportError as err:
            raise missing("INT8 quantization for ONNX Runtime", err, "build") from err
        from gtnpipe.fsutil import atomic_write_bytes

        model = onnx.load(str(inputs.onnx_path))
        input_name = model.graph.input[0].name
        samples = [{input_name: b} for b in calibration_batches(inputs)]
        with quiet_loggers("nncf"), toolchain_step("NNCF INT8 quantization for ONNX Runtime"):  # INFO off: --no-progress
            quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples))
        atomic_write_bytes(target, quantized.SerializeToString())
        return BuildResult(target.name, (target.name,), {"quantizer": f"nncf {nncf.__version__} post-training",
                                                         "calibration_images": len(samples) * inputs.input_shape[0]})

    def load(self, model_path: Path, *, threads: int, precision: str = "fp32") -> OrtRunner:
        return OrtRunner(model_path, threads=threads)
