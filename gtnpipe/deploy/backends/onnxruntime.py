"""ONNX Runtime (CPU execution provider): FP32 as exported, INT8 by NNCF post-training quantization."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gtnpipe.deploy.backends import (
    Backend,
    BuildResult,
    ExportedModel,
    calibration_batches,
    import_sdk,
    missing,
    toolchain_step,
)
from gtnpipe.progress import quiet_loggers

if TYPE_CHECKING:
    import onnxruntime as ort

__all__ = ["BACKEND", "OnnxRuntimeBackend", "OrtRunner", "every_intermediate"]


def _ort() -> Any:
    return import_sdk("onnxruntime", "onnxruntime", "onnx")

def every_intermediate(model_path: Path, x: np.ndarray, names: set[str] | None = None
                       ) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
    """The ONNX model run on `x` with its float intermediate tensors (those in `names`, or all) made graph outputs:
    their values by name, and (tensor, op type) of each in node order (gtnpipe.deploy.divergence compares them)."""
    import onnx
    from onnx import TensorProto, shape_inference

    model = shape_inference.infer_shapes(onnx.load(str(model_path)))
    wanted = {v.name for v in model.graph.value_info if v.type.tensor_type.elem_type == TensorProto.FLOAT
              and (names is None or v.name in names)}
    known = {o.name for o in model.graph.output}
    order = [(out, node.op_type) for node in model.graph.node for out in node.output if out in wanted]
    model.graph.output.extend(v for v in model.graph.value_info if v.name in wanted and v.name not in known)
    session = _ort().InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs() if o.name in wanted]
    values = session.run(outputs, {session.get_inputs()[0].name: x})
    return {n: np.asarray(v, dtype=np.float32) for n, v in zip(outputs, values, strict=True)}, order


class OrtRunner:
    def __init__(self, model_path: Path, *, threads: int) -> None:
        ort = _ort()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: x})[0])


_SESSIONS: dict[int, tuple[object, ort.InferenceSession]] = {}


def _session_of(proto: object) -> ort.InferenceSession:
    """One session per model NNCF hands the validation function (it asks for the same model once per item)."""
    held = _SESSIONS.get(id(proto))
    if held is None or held[0] is not proto:
        _SESSIONS.clear()  # one model at a time: the previous one is done with
        session = _ort().InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]
        held = _SESSIONS[id(proto)] = (proto, session)
    return held[1]


def _quantized_layers(model: object) -> set[str]:
    """The nodes that read a DequantizeLinear's output: the ones that run in INT8."""
    graph = model.graph  # type: ignore[attr-defined]
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name or n.output[0] for n in graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
            and any(i in dequantized for i in n.input)}


class OnnxRuntimeBackend(Backend):
    runtime = "onnxruntime"
    accuracy_control = True
    # FP16 is left out: ORT's CPU provider has no FP16 kernels for most ops and inserts casts around them
    precisions = ("fp32", "int8")
    extra = "onnx"
    sdk_modules = ("onnxruntime",)
    packages = ("onnxruntime", "onnx", "nncf")  # INT8: NNCF quantizes the ONNX graph
    suffixes = (".onnx",)
    # bench/int8_size.py (bench/results/int8_size.md): the largest INT8-file / formula ratio over 8 students, rounded up
    int8_size_factor = 2.27
    int8_size_factor_source = "measured: bench/results/int8_size.md"

    def version(self) -> str:
        return str(_ort().__version__)

    def build(self, inputs: ExportedModel, precision: str, out_dir: Path) -> BuildResult:
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

    def build_accuracy_controlled(self, inputs: ExportedModel, out_dir: Path) -> BuildResult:
        try:
            import nncf
            import onnx
        except ImportError as err:
            raise missing("INT8 quantization for ONNX Runtime", err, "build") from err
        from gtnpipe.deploy.backends.accuracy_control import quantize_with_accuracy_control
        from gtnpipe.fsutil import atomic_write_bytes

        out_dir.mkdir(parents=True, exist_ok=True)
        model = onnx.load(str(inputs.onnx_path))
        name = model.graph.input[0].name
        batches = calibration_batches(inputs)

        def logits(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
            session = _session_of(proto)
            return np.asarray(session.run(None, {name: x})[0], dtype=np.float32)

        with quiet_loggers("nncf"), toolchain_step("NNCF accuracy-control INT8 quantization for ONNX Runtime"):
            plain = nncf.quantize(model, nncf.Dataset([{name: b} for b in batches]), subset_size=len(batches))
            quantized = quantize_with_accuracy_control(onnx.load(str(inputs.onnx_path)), inputs,
                                                       feed=lambda x: {name: x}, logits=logits)
        target = out_dir / "model-int8-ac.onnx"
        atomic_write_bytes(target, quantized.SerializeToString())
        return BuildResult(target.name, (target.name,), {
            "quantizer": f"nncf {nncf.__version__} quantize_with_accuracy_control",
            "calibration_images": len(batches) * inputs.input_shape[0],
            "validation_images": len(inputs.validation[0]) if inputs.validation is not None else 0,
            "max_drop_points": inputs.max_drop_points,
            "float_layers": sorted(_quantized_layers(plain) - _quantized_layers(quantized)),
            "quantized_layers": len(_quantized_layers(quantized))})

    def intermediates(self, model_path: Path, x: np.ndarray, names: set[str], *, precision: str
                      ) -> dict[str, np.ndarray] | None:
        """The QDQ graph keeps the FP32 export's tensor names: each of `names` it has becomes a graph output."""
        values, _ = every_intermediate(model_path, x, names)
        return values

    def load(self, model_path: Path, *, threads: int, precision: str = "fp32") -> OrtRunner:
        return OrtRunner(model_path, threads=threads)


BACKEND = OnnxRuntimeBackend
