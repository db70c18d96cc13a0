"""OpenVINO (CPU plugin): FP32 IR, FP16 IR (weights compressed to fp16), INT8 by NNCF post-training quantization.

Builds read the FP32 ONNX export, fix its input to the device's static batch shape (the
ONNX frontend keeps any dynamic dimension the exporter left, and a static shape lets the
CPU plugin pick its kernels once) and save OpenVINO IR: `model-<precision>.xml` with its
`.bin` of weights.

Runners pin the CPU plugin's inference precision instead of taking its default: on a CPU
with avx512_bf16 the plugin silently runs f32 IR in bf16 (../shared/DEPS.md), which breaks
FP32 parity and makes INT8 results depend on the host. FP16 IR runs in f16 only where the
CPU reports FP16 among its optimization capabilities, else in f32 (its weights are then
decompressed at load time); the runner records which in `inference_precision`.

The runner imports only openvino and numpy: a device needs neither torch nor nncf.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
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
from gtnpipe.errors import ConfigError
from gtnpipe.progress import quiet_loggers

if TYPE_CHECKING:
    import openvino as ov

__all__ = ["BACKEND", "OpenVinoBackend", "OvRunner"]


def _ov() -> Any:
    return import_sdk("openvino", "openvino", "openvino")

DEVICE = "CPU"  # the plugin the device profiles time; GPU/NPU plugins would need their own parity bars


def _inference_precision(core: ov.Core, precision: str) -> str:
    """The INFERENCE_PRECISION_HINT for an artifact: f32 unless it is FP16 IR and the CPU computes in f16."""
    if precision == "fp16" and "FP16" in core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"):
        return "f16"
    # fp32 and int8: f32, so FP32 parity is exact and the non-quantized layers of an INT8 model never fall to bf16
    return "f32"


class OvRunner:
    def __init__(self, model_path: Path, *, threads: int, precision: str = "fp32") -> None:
        core = _ov().Core()
        self.inference_precision = _inference_precision(core, precision)
        config = {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",  # one stream: a batch's latency, as the bench measures it
            "INFERENCE_PRECISION_HINT": self.inference_precision,
        }
        self.compiled = core.compile_model(core.read_model(str(model_path)), DEVICE, config)
        # one request reused by every run: creating it allocates the plugin's buffers
        self.request = self.compiled.create_infer_request()

    def run(self, x: np.ndarray) -> np.ndarray:
        self.request.infer({0: x})
        # the output tensor's memory belongs to the request and is overwritten by the next run: copy it out
        return np.array(self.request.get_output_tensor(0).data, dtype=np.float32, copy=True)


def _save_ir(model: ov.Model, out_dir: Path, stem: str, *, compress_to_fp16: bool) -> tuple[str, str]:
    """Save `model` as `stem.xml` + `stem.bin` in out_dir without ever leaving a mismatched pair.

    The IR is saved into a temp dir inside out_dir (same filesystem, so os.replace is atomic), then
    the old .xml is removed, the .bin moved in, and the .xml moved in last: the .xml is what `load`
    opens, so whenever it exists the .bin beside it is the one written with it. An interrupted
    build leaves no .xml (rebuild) rather than a new .bin under an old .xml.
    """
    xml, bin_ = f"{stem}.xml", f"{stem}.bin"
    tmp = Path(tempfile.mkdtemp(prefix=f".{stem}.", suffix=".tmp", dir=out_dir))
    try:
        _ov().save_model(model, str(tmp / xml), compress_to_fp16=compress_to_fp16)
        for name in (bin_, xml):
            with open(tmp / name, "rb") as handle:
                os.fsync(handle.fileno())
        (out_dir / xml).unlink(missing_ok=True)
        os.replace(tmp / bin_, out_dir / bin_)
        os.replace(tmp / xml, out_dir / xml)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return xml, bin_


def _quantized_layers(model: ov.Model) -> set[str]:
    """The operations that read a FakeQuantize's output: the ones that run in INT8 (shape bookkeeping left out)."""
    return {target.get_node().get_friendly_name() for op in model.get_ops() if op.get_type_name() == "FakeQuantize"
            for target in op.output(0).get_target_inputs()
            if target.get_node().get_type_name() not in ("FakeQuantize", "ShapeOf")}


class OpenVinoBackend(Backend):
    runtime = "openvino"
    precisions = ("fp32", "fp16", "int8")
    accuracy_control = True
    extra = "openvino"
    sdk_modules = ("openvino",)
    packages = ("openvino", "nncf")  # the ONNX frontend and IR writer are openvino's; INT8 is NNCF's
    suffixes = (".xml", ".bin")
    # bench/int8_size.py (bench/results/int8_size.md): the largest INT8-file / formula ratio over 8 students, rounded up
    int8_size_factor = 2.23
    int8_size_factor_source = "measured: bench/results/int8_size.md"

    def version(self) -> str:
        try:
            return importlib.metadata.version("openvino")  # "2026.4.1"
        except importlib.metadata.PackageNotFoundError:  # a source build: "2026.4.1-22982-e213a147257-releases/2026/4"
            return str(_ov().get_version()).split("-")[0]

    def _read(self, inputs: ExportedModel) -> ov.Model:
        model = _ov().Core().read_model(str(inputs.onnx_path))
        if len(model.inputs) != 1:
            raise ConfigError(f"{inputs.onnx_path} has {len(model.inputs)} inputs; the OpenVINO backend compiles "
                              "single-input image classifiers (export with gtnpipe.deploy.export)")
        model.reshape(list(inputs.input_shape))
        return model

    def build(self, inputs: ExportedModel, precision: str, out_dir: Path) -> BuildResult:
        self.check_precision(precision)
        out_dir.mkdir(parents=True, exist_ok=True)
        model = self._read(inputs)
        stem = f"model-{precision}"
        if precision in ("fp32", "fp16"):
            # save_model compresses float weights to fp16 by default (DEPS.md): explicit either way
            with toolchain_step(f"OpenVINO {precision} IR"):
                files = _save_ir(model, out_dir, stem, compress_to_fp16=precision == "fp16")
            return BuildResult(files[0], files, {"weights": precision, "input_shape": list(inputs.input_shape)})
        try:
            import nncf
        except ImportError as err:
            raise missing("INT8 quantization for OpenVINO", err, "build") from err

        samples = calibration_batches(inputs)
        with quiet_loggers("nncf"), toolchain_step("NNCF INT8 quantization for OpenVINO"):  # INFO lines off with --no-progress
            quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples))
        # FakeQuantize'd weights are stored as int8 whatever the flag; False keeps the non-quantized ones fp32
        files = _save_ir(quantized, out_dir, stem, compress_to_fp16=False)
        return BuildResult(files[0], files, {"quantizer": f"nncf {nncf.__version__} post-training",
                                             "calibration_images": len(samples) * inputs.input_shape[0], "weights": "int8",
                                             "input_shape": list(inputs.input_shape)})

    def build_accuracy_controlled(self, inputs: ExportedModel, out_dir: Path) -> BuildResult:
        try:
            import nncf
        except ImportError as err:
            raise missing("INT8 quantization for OpenVINO", err, "build") from err
        from gtnpipe.deploy.backends.accuracy_control import quantize_with_accuracy_control

        out_dir.mkdir(parents=True, exist_ok=True)
        model = self._read(inputs)
        with quiet_loggers("nncf"), toolchain_step("NNCF accuracy-control INT8 quantization for OpenVINO"):
            plain = nncf.quantize(model, nncf.Dataset(calibration_batches(inputs)),
                                  subset_size=len(calibration_batches(inputs)))
            quantized = quantize_with_accuracy_control(
                self._read(inputs), inputs, feed=lambda x: x,
                logits=lambda compiled, x: np.asarray(compiled(x)[0], dtype=np.float32))
        files = _save_ir(quantized, out_dir, "model-int8-ac", compress_to_fp16=False)
        return BuildResult(files[0], files, {
            "quantizer": f"nncf {nncf.__version__} quantize_with_accuracy_control", "weights": "int8 (mixed)",
            "calibration_images": len(calibration_batches(inputs)) * inputs.input_shape[0],
            "validation_images": len(inputs.validation[0]) if inputs.validation is not None else 0,
            "max_drop_points": inputs.max_drop_points, "input_shape": list(inputs.input_shape),
            "float_layers": sorted(_quantized_layers(plain) - _quantized_layers(quantized)),
            "quantized_layers": len(_quantized_layers(quantized))})

    def intermediates(self, model_path: Path, x: np.ndarray, names: set[str], *, precision: str
                      ) -> dict[str, np.ndarray] | None:
        """OpenVINO's IR keeps the ONNX tensor names on its operations' outputs: those in `names` become outputs of the
        model, compiled with the inference precision the artifact runs at."""
        ov = _ov()
        core = ov.Core()
        model = core.read_model(str(model_path))
        found: dict[str, Any] = {}
        for op in model.get_ops():
            for output in op.outputs():
                hit = next((n for n in output.get_names() if n in names), None)
                if hit is not None and hit not in found and op.get_type_name() not in ("Constant", "Result"):
                    found[hit] = output
        if not found:
            return None
        model.add_outputs(list(found.values()))
        compiled = core.compile_model(model, DEVICE, {"INFERENCE_PRECISION_HINT": _inference_precision(core, precision)})
        result = compiled(x)
        values: dict[str, np.ndarray] = {}
        for port, value in result.items():
            name = next((n for n in port.get_names() if n in found), None)
            if name is not None:
                values[name] = np.asarray(value, dtype=np.float32)
        return values

    def load(self, model_path: Path, *, threads: int, precision: str = "fp32") -> OvRunner:
        return OvRunner(model_path, threads=threads, precision=precision)


BACKEND = OpenVinoBackend
