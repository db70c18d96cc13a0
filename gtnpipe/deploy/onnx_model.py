"""A user's ONNX image classifier, read and prepared for `gtnpipe compile`: checked, batch fixed, counted.

What a model must be: one float32 NCHW input, and one output of shape (batch, classes). The batch may be dynamic (it
is fixed to the device profile's); a dynamic channel, height or width is fixed by the user's `--input-shape`
(`InputShape`: onnxruntime's own tool for this, `onnxruntime.tools.onnx_model_utils.make_dim_param_fixed`, renames a
symbolic dimension through the whole graph), after which ONNX shape inference must give the output's classes. The
prepared copy has what every gtnpipe artifact has: input 'input', output 'logits', optionally the user's input
normalisation folded in (`mean`, `std` in [0, 1] pixel units, so the artifact takes [0, 1] images like gtnpipe's
own), and an opset the device's runtime parses (converted down with onnx.version_converter when the profile caps it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference, version_converter

from gtnpipe.errors import ConfigError
from gtnpipe.fsutil import atomic_write_bytes, sha256_file

__all__ = ["INPUT", "OUTPUT", "InputShape", "OnnxFacts", "count_onnx", "fold_constants", "parse_input_shape", "prepare_onnx",
           "read_onnx"]

INPUT, OUTPUT = "input", "logits"


@dataclass(frozen=True)
class OnnxFacts:
    """What `read_onnx` found in a user's model file."""

    path: Path
    sha256: str
    chw: tuple[int, int, int]  # the input's channels, height, width
    batch: int | None  # the input's batch dimension; None when dynamic
    num_classes: int
    opset: int


@dataclass(frozen=True)
class InputShape:
    """`--input-shape [NAME=]NxCxHxW` (or CxHxW): the image size a model with a dynamic channel, height or width was
    made for. The batch, when given, must be the device profile's (it is fixed to that anyway)."""

    chw: tuple[int, int, int]
    batch: int | None = None
    name: str | None = None  # the input it is for; None: the model's one input


def parse_input_shape(text: str) -> InputShape:
    """'1x3x48x192', '3x48x192' or 'x=1x3x48x192' (an input's name first)."""
    name, _, dims = text.rpartition("=")
    try:
        values = tuple(int(v) for v in dims.lower().split("x"))
    except ValueError:
        values = ()
    if len(values) not in (3, 4) or any(v < 1 for v in values):
        raise ConfigError(f"--input-shape {text!r}: give NxCxHxW or CxHxW in positive integers, optionally after the "
                          "input's name (e.g. 1x3x48x192, or x=1x3x48x192)")
    return InputShape((values[-3], values[-2], values[-1]), values[0] if len(values) == 4 else None, name or None)


def _fix_input_shape(model: onnx.ModelProto, inp: onnx.ValueInfoProto, shape: InputShape, path: Path) -> None:
    """The input's channel, height and width set to `shape` (a symbolic one through the whole graph, as onnxruntime's
    make_dim_param_fixed does), the batch left as it is; a fixed dimension that differs is an error."""
    from onnxruntime.tools.onnx_model_utils import make_dim_param_fixed

    if shape.name is not None and shape.name != inp.name:
        raise ConfigError(f"--input-shape names input {shape.name!r}; {path.name}'s input is {inp.name!r}")
    axes = list(zip(list(inp.type.tensor_type.shape.dim)[1:], shape.chw, strict=True))
    # a symbolic name the input uses for dimensions given different sizes (Paddle's exports call both H and W "?")
    # is not one size: those dimensions are set on the input alone, and shape inference carries them on
    sizes: dict[str, set[int]] = {}
    for dim, value in axes:
        if dim.HasField("dim_param") and dim.dim_param:
            sizes.setdefault(dim.dim_param, set()).add(value)
    for axis, (dim, value) in enumerate(axes, start=1):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            if dim.dim_value != value:
                raise ConfigError(f"--input-shape gives {'CHW'[axis - 1]} = {value}, {path.name}'s input {inp.name!r} "
                                  f"has a fixed {dim.dim_value} there: give {dim.dim_value}")
        elif dim.HasField("dim_param") and dim.dim_param and len(sizes[dim.dim_param]) == 1:
            make_dim_param_fixed(model.graph, dim.dim_param, value)
        else:
            dim.Clear()
            dim.dim_value = value


def _output_dims(model: onnx.ModelProto, path: Path) -> list[int | None]:
    """The output's shape, as ONNX shape inference gives it once the input is fixed."""
    try:
        inferred = shape_inference.infer_shapes(model, data_prop=True)
    except Exception as err:  # onnx's inference errors are many: all mean the fixed shape cannot flow through
        raise ConfigError(f"{path}: ONNX shape inference fails at the given --input-shape ({type(err).__name__}: "
                          f"{err}); check the size the model was made for") from err
    return _dims(inferred.graph.output[0])


def _dims(value: onnx.ValueInfoProto) -> list[int | None]:
    # exporters write an unknown dimension as a dim_param, nothing, or (Paddle's) dim_value -1
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in value.type.tensor_type.shape.dim]


def _graph_io(model: onnx.ModelProto, path: Path) -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    initialized = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initialized]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise ConfigError(f"{path} has {len(inputs)} input(s) and {len(model.graph.output)} output(s); gtnpipe compile "
                          "takes an image classifier with one input (float32 NCHW images) and one output (logits)")
    return inputs[0], model.graph.output[0]


def read_onnx(path: str | Path, input_shape: InputShape | None = None) -> tuple[onnx.ModelProto, OnnxFacts]:
    """Load and check a model file (`input_shape`: what fixes a dynamic channel, height or width); errors say what is
    wrong with it and how to re-export or fix it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; pass the path of an .onnx file")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as err:  # onnx raises DecodeError, ValidationError, ...: all mean "not a valid model"
        raise ConfigError(f"{path} is not a valid ONNX model ({type(err).__name__}: {err}); export it with "
                          "torch.onnx.export or check it with onnx.checker") from err
    inp, out = _graph_io(model, path)
    dims = _dims(inp)
    if inp.type.tensor_type.elem_type != TensorProto.FLOAT or len(dims) != 4:
        raise ConfigError(f"{path}: input {inp.name!r} is {TensorProto.DataType.Name(inp.type.tensor_type.elem_type)} "
                          f"with {len(dims)} dimensions; gtnpipe compile takes float32 NCHW images (4 dimensions)")
    if input_shape is not None:
        _fix_input_shape(model, inp, input_shape, path)
        dims = _dims(inp)
    elif any(d is None for d in dims[1:]):
        shown = "x".join("?" if d is None else str(d) for d in dims)
        raise ConfigError(f"{path}: input {inp.name!r} has shape {shown}, with a dynamic channel, height or width: give "
                          f"the size the model was made for with --input-shape (e.g. --input-shape 1x3x224x224), or "
                          "re-export it with a fixed image size")
    out_dims = _dims(out)
    if len(out_dims) == 2 and out_dims[1] is None and input_shape is not None:
        out_dims = _output_dims(model, path)
    if len(out_dims) != 2 or out_dims[1] is None:
        raise ConfigError(f"{path}: output {out.name!r} has shape {out_dims}; gtnpipe compile takes a classifier whose "
                          "one output is (batch, classes) logits")
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    c, h, w = (int(d) for d in dims[1:])  # type: ignore[arg-type]
    return model, OnnxFacts(path, sha256_file(path), (c, h, w), dims[0], int(out_dims[1]), opset)


def _rename(model: onnx.ModelProto, old: str, new: str) -> None:
    if old == new:
        return
    for node in model.graph.node:
        node.input[:] = [new if i == old else i for i in node.input]
        node.output[:] = [new if o == old else o for o in node.output]
    for value in (*model.graph.input, *model.graph.output):
        if value.name == old:
            value.name = new


def _set_batch(value: onnx.ValueInfoProto, batch: int) -> None:
    dim = value.type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_value = batch


def prepare_onnx(model: onnx.ModelProto, facts: OnnxFacts, out: Path, *, batch_size: int, max_opset: int,
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> Path:
    """Write the model as the backends compile it (see the module docstring) to `out`, atomically."""
    if facts.batch is not None and facts.batch != batch_size:
        raise ConfigError(f"{facts.path} has a fixed batch of {facts.batch}, the device profile's batch_size is "
                          f"{batch_size}; re-export with a dynamic batch dimension (torch.onnx.export dynamic_axes="
                          f"{{'input': {{0: 'batch'}}}}) or with batch {batch_size}")
    model = onnx.ModelProto.FromString(model.SerializeToString())  # a copy: the caller's model stays as it was
    for v in list(model.graph.value_info):  # shapes inferred for another batch would contradict the fixed one
        model.graph.value_info.remove(v)
    inp, outp = _graph_io(model, facts.path)
    _set_batch(inp, batch_size)
    if _dims(outp)[0] is None:
        _set_batch(outp, batch_size)
    _rename(model, outp.name, OUTPUT)
    if mean is not None or std is not None:
        _fold_normalisation(model, inp.name, facts.chw[0], mean, std)
    else:
        _rename(model, inp.name, INPUT)
    if facts.opset > max_opset:
        try:
            model = version_converter.convert_version(model, max_opset)
        except Exception as err:
            raise ConfigError(f"{facts.path} is at opset {facts.opset}; the device's runtime parses at most opset "
                              f"{max_opset} (profile runtime.max_onnx_opset) and onnx's version converter failed "
                              f"({type(err).__name__}: {err}): re-export at opset {max_opset}") from err
    try:
        model = shape_inference.infer_shapes(model, strict_mode=True)
        onnx.checker.check_model(model)
    except Exception as err:
        raise ConfigError(f"{facts.path} with its batch fixed to {batch_size} fails ONNX shape inference "
                          f"({type(err).__name__}: {err}); re-export it with a static graph") from err
    atomic_write_bytes(out, model.SerializeToString())
    return out


def _fold_normalisation(model: onnx.ModelProto, old_input: str, channels: int, mean: tuple[float, ...] | None,
                        std: tuple[float, ...] | None) -> None:
    """Prepend (x - mean) / std: the artifact then takes [0, 1] images and the model sees what it was trained on."""
    mean_v = np.asarray(mean if mean is not None else (0.0,) * channels, dtype=np.float32)
    std_v = np.asarray(std if std is not None else (1.0,) * channels, dtype=np.float32)
    if mean_v.shape != (channels,) or std_v.shape != (channels,) or not (std_v > 0).all():
        raise ConfigError(f"--mean and --std need {channels} values each (one per input channel; std > 0), got "
                          f"{list(mean_v)} and {list(std_v)}")
    centred, normalised = "gtnpipe_centred", "gtnpipe_normalised"
    for node in model.graph.node:  # the model's own nodes now read the normalised images
        node.input[:] = [normalised if i == old_input else i for i in node.input]
    for value in model.graph.input:
        if value.name == old_input:
            value.name = INPUT
    model.graph.initializer.extend([numpy_helper.from_array(mean_v.reshape(1, -1, 1, 1), "gtnpipe_mean"),
                                    numpy_helper.from_array(std_v.reshape(1, -1, 1, 1), "gtnpipe_std")])
    model.graph.node.insert(0, helper.make_node("Div", [centred, "gtnpipe_std"], [normalised]))
    model.graph.node.insert(0, helper.make_node("Sub", [INPUT, "gtnpipe_mean"], [centred]))


def fold_constants(path: Path, out: Path) -> Path:
    """`path`'s graph with what its static shapes make constant computed once (Shape -> Slice -> Concat -> Reshape
    chains become one Reshape), BatchNorm folded into Conv and MatMul + Add into Gemm: ONNX Runtime's basic graph
    optimizations (standard ONNX operators only; its extended ones write its own fused operators), saved as a
    model. For a converter that translates operator by operator (LiteRT's route): fewer, simpler operators, and the
    same function (parity against ONNX Runtime FP32 checks every file it makes). The original is returned where the
    optimized graph holds an operator outside the default domain."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    model = onnx.load(str(out))
    if any(node.domain not in ("", "ai.onnx") for node in model.graph.node):
        return path
    used = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]  # ORT lists every domain it knows
    del model.opset_import[:]
    model.opset_import.extend(used)
    atomic_write_bytes(out, model.SerializeToString())
    return out


def count_onnx(path: Path) -> tuple[int, int]:
    """(MACs per image, parameters) of a prepared (static-shape) model: convolutions, Gemm and MatMul count MACs;
    every float initializer counts as parameters."""
    model = onnx.load(str(path))
    shapes = {v.name: _dims(v) for v in (*model.graph.value_info, *model.graph.input, *model.graph.output)}
    init = {t.name: tuple(t.dims) for t in model.graph.initializer}
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer
                 if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE))
    macs = 0
    batch = _dims(model.graph.input[0])[0] or 1
    for node in model.graph.node:
        out = shapes.get(node.output[0])
        if not out or any(d is None for d in out):
            continue
        n_out = int(np.prod(out))  # type: ignore[arg-type]
        if node.op_type in ("Conv", "ConvTranspose") and node.input[1] in init:
            kernel = init[node.input[1]]
            macs += n_out * int(np.prod(kernel[1:]))  # (C_in / groups) * kh * kw per output element
        elif node.op_type in ("Gemm", "MatMul"):
            a = shapes.get(node.input[0]) or [None]
            k = a[-1] if node.op_type == "MatMul" or not any(at.name == "transA" and at.i for at in node.attribute) else a[0]
            macs += n_out * int(k or 0)
    return max(1, macs // batch), max(1, params)
