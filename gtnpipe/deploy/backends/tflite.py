"""LiteRT (TFLite) on the CPU: litert-torch converts the torch module, ai-edge-quantizer makes FP16 and INT8.

- fp32: `litert_torch.convert` of the eval-mode module with a sample input of the device's
  static NCHW shape. The input stays NCHW float32 in [0, 1], like every other backend's; the
  converter inserts the transposes to TFLite's NHWC kernels itself.
- fp16: ai-edge-quantizer's weight-only FLOAT_CASTING recipe: weights stored as float16 (half
  the file), activations float32. TFLite's CPU kernels upcast the weights to float32 before the
  first inference (https://www.tensorflow.org/lite/performance/post_training_float16_quant), so
  on a CPU this saves size, not time; GPU delegates can compute in float16.
- int8: ai-edge-quantizer's static range recipe (`recipe.static_wi8_ai8`): int8 per-channel
  symmetric weights, int8 per-tensor asymmetric activations whose ranges are the min/max over
  the calibration images (see `_int8`), so every op runs in integer arithmetic. The model's input
  and output tensors are int8 too: the runner quantizes the images and dequantizes the logits
  with the tensors' own scale and zero point.

The device needs only the interpreter: `ai_edge_litert` (works with numpy 2), or
`tflite_runtime` where that is what a board has (tflite-runtime 2.14 needs numpy<2, ../shared/DEPS.md).
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Iterator
from importlib.metadata import version as distribution_version
from pathlib import Path
from typing import Any

import numpy as np

from gtnpipe.deploy.backends import Backend, BuildResult, ExportedModel, calibration_batches, missing, toolchain_step
from gtnpipe.errors import ConfigError
from gtnpipe.fsutil import atomic_write_bytes, sha256_file
from gtnpipe.progress import quiet_libraries


@functools.cache
def interpreter() -> tuple[Any, str]:
    """The TFLite Interpreter class and the distribution it comes from: ai-edge-litert, else tflite-runtime (imported
    when a model is run or built; the registry lists this backend without either)."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"  # distribution name, for importlib.metadata
    except ImportError as litert_err:
        try:
            from tflite_runtime.interpreter import Interpreter as RuntimeInterpreter

            return RuntimeInterpreter, "tflite-runtime"
        except ImportError as runtime_err:
            err = ImportError(f"neither ai_edge_litert ({litert_err}) nor tflite_runtime ({runtime_err}) can be imported",
                              name="ai_edge_litert")
            raise missing("runtime 'tflite'", err, "tflite") from runtime_err


__all__ = ["BACKEND", "TfliteBackend", "TfliteRunner", "interpreter"]



def _round_half_away(v: np.ndarray) -> np.ndarray:
    # TFLite's QUANTIZE kernel rounds with std::round (half away from zero); np.round rounds half to even
    return np.asarray(np.sign(v) * np.floor(np.abs(v) + 0.5))


class TfliteRunner:
    """One interpreter with tensors allocated once; `run` maps float32 NCHW [0, 1] images to float32 logits."""

    def __init__(self, model_path: Path, *, threads: int) -> None:
        # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." comes at the first invoke: one on zeros here
        with quiet_libraries():
            self.interpreter = interpreter()[0](model_path=str(model_path), num_threads=threads)
            self.interpreter.allocate_tensors()
            self.input = self.interpreter.get_input_details()[0]
            self.output = self.interpreter.get_output_details()[0]
            self.interpreter.set_tensor(self.input["index"], np.zeros(self.input["shape"], dtype=self.input["dtype"]))
            self.interpreter.invoke()
        # (scale, zero_point); scale 0 means a float tensor (TFLite's convention for "not quantized")
        self.input_scale, self.input_zero_point = self.input["quantization"]
        self.output_scale, self.output_zero_point = self.output["quantization"]

    def run(self, x: np.ndarray) -> np.ndarray:
        if self.input_scale:
            limits = np.iinfo(self.input["dtype"])
            q = _round_half_away(np.asarray(x, dtype=np.float32) / np.float32(self.input_scale)) + self.input_zero_point
            value = np.clip(q, limits.min, limits.max).astype(self.input["dtype"])
        else:
            value = np.ascontiguousarray(x, dtype=np.float32)
        self.interpreter.set_tensor(self.input["index"], value)
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output["index"])  # a copy, not a view into the arena
        if self.output_scale:
            return np.asarray((out.astype(np.float32) - np.float32(self.output_zero_point)) * np.float32(self.output_scale))
        return np.asarray(out, dtype=np.float32)


@contextlib.contextmanager
def _quiet_converter() -> Iterator[None]:
    """Around the converters: their noise dropped (gtnpipe.progress.quiet_libraries: litert-torch's stage lines,
    TensorFlow's C++ start-up lines, the quantizer's calibration bar), their warnings about their own internals off."""
    with quiet_libraries(), warnings.catch_warnings():
        # torch.export's pytree deprecations, raised inside litert-torch, not by our code
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        # the quantizer's calibrator keeps every intermediate tensor on purpose (it reads their ranges)
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
        yield


class TfliteBackend(Backend):
    runtime = "tflite"
    precisions = ("fp32", "fp16", "int8")
    extra = "tflite"
    sdk_modules = ()  # ai_edge_litert or tflite_runtime: require() resolves which
    # litert-torch converts the torch module (gtnpipe compile translates a user's ONNX file to torch for it)
    converts_from = frozenset({"torch"})
    fold_constants = True  # the ONNX-to-torch translation covers fewer operators
    packages = ("ai-edge-litert", "litert-torch", "ai-edge-quantizer")
    suffixes = (".tflite",)
    # bench/int8_size.py (bench/results/int8_size.md): the largest INT8-file / formula ratio over 8 students, rounded up
    int8_size_factor = 1.40
    int8_size_factor_source = "measured: bench/results/int8_size.md"

    def __init__(self) -> None:
        self._fp32_models: dict[tuple[str, tuple[int, ...]], bytes] = {}  # _converted's memo

    @property
    def runner(self) -> str:
        """Which interpreter distribution load() uses on this machine."""
        return str(interpreter()[1])

    def require(self) -> None:
        interpreter()

    def version(self) -> str:
        # the bare version (profiles compare it with a PEP 440 range); `runner` says which package it is of
        return distribution_version(self.runner)

    def build(self, inputs: ExportedModel, precision: str, out_dir: Path) -> BuildResult:
        self.check_precision(precision)
        if inputs.torch_module is None:
            raise ConfigError("the tflite backend converts the torch module, but ExportedModel.torch_module is None; "
                              "build the inputs with gtnpipe.deploy.export.compile_inputs")
        if precision == "int8":
            calibration_batches(inputs)  # too few fails here, before a conversion
        with _quiet_converter():
            try:
                import ai_edge_quantizer  # noqa: F401  (all three before any work: a missing one fails fast)
                import litert_torch
                import torch  # noqa: F401
            except ImportError as err:
                raise missing("the TFLite converter", err, "build") from err
            fp32 = self._converted(inputs)
            notes: dict[str, Any] = {"converter": f"litert-torch {litert_torch.__version__}",
                                     "input": "float32 NCHW [0, 1]"}
            if precision == "fp32":
                model = fp32
            elif precision == "fp16":
                model = self._fp16(fp32, notes)
            else:
                model = self._int8(fp32, inputs, notes)
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / f"model-{precision}.tflite"
        atomic_write_bytes(target, model)
        return BuildResult(target.name, (target.name,), notes)

    def _converted(self, inputs: ExportedModel) -> bytes:
        """The float32 .tflite of `inputs`, converted once per model and input shape by this backend instance: fp16
        and int8 quantize it, so a build of all three precisions converts once (33 s per conversion on 2 Zen 3 cores
        for the demo's Raspberry Pi student, two thirds of its compile stage). The key is the exported ONNX file's
        sha256: the torch module and that file are the same model (gtnpipe.deploy.export writes both)."""
        import litert_torch
        import torch

        key = (sha256_file(inputs.onnx_path), tuple(inputs.input_shape))
        if key not in self._fp32_models:
            sample = torch.zeros(inputs.input_shape, dtype=torch.float32)
            with torch.no_grad(), toolchain_step("litert-torch conversion to .tflite"):
                # eval mode: BatchNorm must use its running statistics (compile_inputs passes it so already)
                self._fp32_models[key] = litert_torch.convert(inputs.torch_module.train(False), (sample,)).model_content()
        return self._fp32_models[key]

    @staticmethod
    def _fp16(fp32: bytes, notes: dict[str, Any]) -> bytes:
        from ai_edge_quantizer import qtyping, quantizer

        q = quantizer.Quantizer(fp32)
        q.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16,
                                 algorithm_key=quantizer.AlgorithmName.FLOAT_CASTING)
        notes["quantizer"] = f"ai-edge-quantizer {distribution_version('ai-edge-quantizer')}"
        notes["recipe"] = "weight-only float16 (FLOAT_CASTING), float32 activations"
        with toolchain_step("ai-edge-quantizer float16 weight quantization"):
            return bytes(q.quantize(enable_progress_report=False).quantized_model)

    def _int8(self, fp32: bytes, inputs: ExportedModel, notes: dict[str, Any]) -> bytes:
        from ai_edge_quantizer import calibrator, quantizer, recipe, recipe_manager
        from ai_edge_quantizer.utils import qsv_utils

        samples = self._calibration_samples(inputs, fp32)
        # Activation ranges are the min and max over all calibration batches. Quantizer.calibrate would
        # average each batch's range (qsv_utils.moving_average_update, smoothing 0.95), which at batch 1
        # tracks a typical image, not the extremes: on the tests' student it clipped the logits to
        # [-5.8, 7.8] while the calibration logits span [-13.7, 22.3] (mean abs logit error 0.61 vs 0.17
        # with min/max; top-1 agreement with torch 97.2% vs 97.9%).
        manager = recipe_manager.RecipeManager()
        manager.load_quantization_recipe(recipe.static_wi8_ai8())
        calib = calibrator.Calibrator(fp32, num_threads=os.cpu_count() or 1, qsv_update_func=qsv_utils.min_max_update)
        with toolchain_step("ai-edge-quantizer INT8 calibration"):
            calib.calibrate(samples, manager)
        q = quantizer.Quantizer(fp32, recipe.static_wi8_ai8())
        notes["quantizer"] = f"ai-edge-quantizer {distribution_version('ai-edge-quantizer')}"
        notes["recipe"] = ("static_wi8_ai8: int8 per-channel weights, int8 per-tensor activations (min/max calibration), "
                           "int8 model input and output")
        notes["calibration_images"] = sum(len(batches) for batches in samples.values()) * inputs.input_shape[0]
        with toolchain_step("ai-edge-quantizer INT8 quantization"):
            return bytes(q.quantize(calib.get_model_qsvs(), enable_progress_report=False).quantized_model)

    @staticmethod
    def _calibration_samples(inputs: ExportedModel, fp32: bytes) -> dict[str, list[dict[str, np.ndarray]]]:
        """Calibration batches of the device's batch size, keyed by the converted model's signature and input names."""
        signatures = interpreter()[0](model_content=fp32).get_signature_list()  # {'serving_default': {'inputs': ['args_0'], ...}}
        key, signature = next(iter(signatures.items()))
        name = signature["inputs"][0]
        return {key: [{name: b} for b in calibration_batches(inputs)]}

    def load(self, model_path: Path, *, threads: int, precision: str = "fp32") -> TfliteRunner:
        return TfliteRunner(model_path, threads=threads)


BACKEND = TfliteBackend
