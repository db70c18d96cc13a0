"""An ONNX image classifier as a torch module, for the converters that read torch (LiteRT's litert-torch).

`gtnpipe compile MODEL.onnx` builds a .tflite from a user's ONNX file; litert-torch converts a torch module,
so the ONNX graph is run by `OnnxModule`: its float initializers are buffers, its integer ones and every value
computed from shapes only stay numpy constants (so torch.export sees static shapes), and `forward` runs the
nodes in graph order with torch functions. The FP32 .tflite is then parity-checked against ONNX Runtime like
every artifact, so a wrong translation cannot ship.

Why not onnx2torch (the maintained converter): it imports torchvision at import time, and torchvision's only
wheels for torch 2.13 on our package indexes are CUDA builds, which fail to import beside torch's CPU build
("operator torchvision::nms does not exist", measured). This covers the operators of CNN classifiers that
torch's exporters write (`OPS`); any other is an error that names it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

from gtnpipe.errors import ConfigError

__all__ = ["OPS", "OnnxModule", "onnx_to_torch"]

Value = torch.Tensor | np.ndarray  # a tensor, or a constant known when the graph is read (shapes, axes, weights' shapes)
Op = Callable[[list[Any], dict[str, Any]], list[Value]]


def _t(v: Value) -> torch.Tensor:
    return v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))


def _ints(v: Value | None) -> list[int]:
    if v is None:
        return []
    if isinstance(v, torch.Tensor):
        raise ConfigError("an ONNX shape or axes input is computed from tensor values at run time; gtnpipe compile reads "
                          "static graphs only: export with constant folding (torch.onnx.export do_constant_folding=True)")
    return [int(i) for i in np.asarray(v).reshape(-1)]


def _pads2d(pads: list[int]) -> tuple[list[int], bool]:
    """ONNX pads (top, left, bottom, right) -> F.pad's (left, right, top, bottom), and whether they are symmetric."""
    if not pads:
        return [0, 0, 0, 0], True
    top, left, bottom, right = pads
    return [left, right, top, bottom], top == bottom and left == right


def _no_auto_pad(attrs: dict[str, Any], op: str) -> None:
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ConfigError(f"ONNX {op} with auto_pad={attrs['auto_pad']!r} is not supported; re-export with explicit pads")


def _conv(ins: list[Any], a: dict[str, Any]) -> list[Value]:
    _no_auto_pad(a, "Conv")
    x, w = _t(ins[0]), _t(ins[1])
    if w.dim() != 4:
        raise ConfigError(f"ONNX Conv with a {w.dim() - 2}-D kernel is not supported (2-D image convolutions only)")
    bias = _t(ins[2]) if len(ins) > 2 and ins[2] is not None else None
    pads, symmetric = _pads2d(a.get("pads", []))
    if not symmetric:
        x, padding = F.pad(x, pads), [0, 0]
    else:
        padding = [pads[2], pads[0]]
    return [F.conv2d(x, w, bias, stride=a.get("strides", [1, 1]), padding=padding, dilation=a.get("dilations", [1, 1]),
                     groups=a.get("group", 1))]


def _pool(kind: str) -> Op:
    def run(ins: list[Any], a: dict[str, Any]) -> list[Value]:
        _no_auto_pad(a, kind)
        x, kernel = _t(ins[0]), a["kernel_shape"]
        pads, symmetric = _pads2d(a.get("pads", []))
        stride, ceil = a.get("strides", kernel), bool(a.get("ceil_mode", 0))
        if kind == "MaxPool":
            if not symmetric:
                x, pad = F.pad(x, pads, value=float("-inf")), [0, 0]
            else:
                pad = [pads[2], pads[0]]
            return [F.max_pool2d(x, kernel, stride, pad, dilation=a.get("dilations", [1, 1]), ceil_mode=ceil)]
        if not symmetric:
            raise ConfigError("ONNX AveragePool with asymmetric pads is not supported; re-export with symmetric pads")
        return [F.avg_pool2d(x, kernel, stride, [pads[2], pads[0]], ceil_mode=ceil,
                             count_include_pad=bool(a.get("count_include_pad", 0)))]
    return run


def _gemm(ins: list[Any], a: dict[str, Any]) -> list[Value]:
    x, w = _t(ins[0]), _t(ins[1])
    x = x.t() if a.get("transA", 0) else x
    w = w.t() if a.get("transB", 0) else w
    out = a.get("alpha", 1.0) * (x @ w)
    if len(ins) > 2 and ins[2] is not None:
        out = out + a.get("beta", 1.0) * _t(ins[2])
    return [out]


def _clip(ins: list[Any], a: dict[str, Any]) -> list[Value]:
    low = ins[1] if len(ins) > 1 and ins[1] is not None else a.get("min")
    high = ins[2] if len(ins) > 2 and ins[2] is not None else a.get("max")
    return [torch.clamp(_t(ins[0]), None if low is None else float(np.asarray(low)),
                        None if high is None else float(np.asarray(high)))]


def _binary(fn: Callable[[Any, Any], Any]) -> Op:
    def run(ins: list[Any], a: dict[str, Any]) -> list[Value]:
        x, y = ins
        if isinstance(x, np.ndarray) and isinstance(y, np.ndarray):  # shape arithmetic: stays a constant
            return [np.asarray(fn(x, y))]
        return [fn(_t(x).to(torch.float32) if _t(x).is_floating_point() else _t(x),
                   _t(y).to(torch.float32) if _t(y).is_floating_point() else _t(y))]
    return run


def _reshape(ins: list[Any], a: dict[str, Any]) -> list[Value]:
    x, shape = ins[0], _ints(ins[1])
    shape = [x.shape[i] if s == 0 and not a.get("allowzero", 0) else s for i, s in enumerate(shape)]
    return [x.reshape(shape)]


def _flatten(ins: list[Any], a: dict[str, Any]) -> list[Value]:
    x, axis = ins[0], a.get("axis", 1)
    axis = axis % len(x.shape) if axis < 0 else axis
    return [x.reshape(int(np.prod(x.shape[:axis])) if axis else 1, -1)]


def _axes(ins: list[Any], a: dict[str, Any]) -> list[int]:
    return _ints(ins[1]) if len(ins) > 1 and ins[1] is not None else list(a.get("axes", []))


def _unsqueeze(ins: list[Any], a: dict[str, Any]) -> list[Value]:
    x = ins[0]
    for axis in sorted(_axes(ins, a)):
        x = np.expand_dims(x, axis) if isinstance(x, np.ndarray) else x.unsqueeze(axis)
    return [x]


def _squeeze(ins: list[Any], a: dict[str, Any]) -> list[Value]:
    x, axes = ins[0], _axes(ins, a)
    if isinstance(x, np.ndarray):
        return [np.squeeze(x, tuple(axes) if axes else None)]
    for axis in sorted((ax % x.dim() for ax in axes), reverse=True) if axes else []:
        x = x.squeeze(axis)
    return [x if axes else x.squeeze()]


def _gather(ins: list[Any], a: dict[str, Any]) -> list[Value]:
    x, idx, axis = ins[0], ins[1], a.get("axis", 0)
    if isinstance(x, np.ndarray) and isinstance(idx, np.ndarray):
        return [np.take(x, idx, axis=axis)]
    index = _t(idx).long()
    out = torch.index_select(_t(x), axis, index.reshape(-1))
    return [out.reshape(*out.shape[:axis], *index.shape, *out.shape[axis + 1:])]


def _concat(ins: list[Any], a: dict[str, Any]) -> list[Value]:
    if all(isinstance(v, np.ndarray) for v in ins):
        return [np.concatenate(ins, axis=a["axis"])]
    return [torch.cat([_t(v) for v in ins], dim=a["axis"])]


def _reduce_mean(ins: list[Any], a: dict[str, Any]) -> list[Value]:
    axes = _axes(ins, a) or list(range(ins[0].dim()))
    return [torch.mean(_t(ins[0]), dim=axes, keepdim=bool(a.get("keepdims", 1)))]


def _pad(ins: list[Any], a: dict[str, Any]) -> list[Value]:
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads = _ints(ins[1]) if len(ins) > 1 else list(a["pads"])
    value = float(np.asarray(ins[2])) if len(ins) > 2 and ins[2] is not None else float(a.get("value", 0.0))
    n = len(pads) // 2
    torch_pads = [p for i in reversed(range(n)) for p in (pads[i], pads[i + n])]  # last axis first
    while torch_pads and torch_pads[-2:] == [0, 0]:
        torch_pads = torch_pads[:-2]
    return [F.pad(_t(ins[0]), torch_pads, mode=mode, value=value) if mode == "constant"
            else F.pad(_t(ins[0]), torch_pads, mode=mode)]


def _constant(ins: list[Any], a: dict[str, Any]) -> list[Value]:
    if "value" not in a:
        raise ConfigError(f"ONNX Constant with {sorted(a)} is not supported (only 'value')")
    return [numpy_helper.to_array(a["value"]).copy()]  # writable: torch warns on read-only arrays


def _shape(ins: list[Any], a: dict[str, Any]) -> list[Value]:
    return [np.asarray([int(s) for s in ins[0].shape], dtype=np.int64)]


def _cast(ins: list[Any], a: dict[str, Any]) -> list[Value]:
    dtype = helper.tensor_dtype_to_np_dtype(a["to"])
    x = ins[0]
    if isinstance(x, np.ndarray):
        return [x.astype(dtype)]
    return [x.to(torch.from_numpy(np.zeros(0, dtype=dtype)).dtype)]


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> Op:
    return lambda ins, a: [fn(_t(ins[0]))]


def _slice(ins: list[Any], a: dict[str, Any]) -> list[Value]:
    """Slice: starts, ends, axes, steps as inputs (opset >= 10) or attributes (before)."""
    x = ins[0]
    starts = _ints(ins[1]) if len(ins) > 1 else list(a["starts"])
    ends = _ints(ins[2]) if len(ins) > 2 else list(a["ends"])
    rank = len(x.shape)
    axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(a.get("axes", range(len(starts))))
    steps = _ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    index: list[Any] = [slice(None)] * rank
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        size = int(x.shape[axis])
        if step < 0:  # torch has no negative steps: flip, then slice forwards
            raise ConfigError("ONNX Slice with a negative step is not supported; re-export without reversing slices")
        index[axis % rank] = slice(max(min(start, size), -size), max(min(end, size), -size - 1), step)
    return [x[tuple(index)]]


def _split(ins: list[Any], a: dict[str, Any]) -> list[Value]:
    x, axis = _t(ins[0]), a.get("axis", 0)
    sizes = _ints(ins[1]) if len(ins) > 1 and ins[1] is not None else list(a.get("split", []))
    if not sizes:
        parts = int(a["num_outputs"]) if "num_outputs" in a else None
        if parts is None:
            raise ConfigError("ONNX Split without its sizes or num_outputs is not supported; re-export at opset >= 13")
        size = -(-int(x.shape[axis]) // parts)  # ceil: the last part is the smaller (ONNX opset 18)
        sizes = [min(size, int(x.shape[axis]) - i * size) for i in range(parts)]
    return list(torch.split(x, sizes, dim=axis))


def _resize(ins: list[Any], a: dict[str, Any]) -> list[Value]:
    """The common upsamplers: nearest (asymmetric coordinates, floor) and (bi)linear (half_pixel or align_corners)."""
    def text(name: str, default: str) -> str:
        value = a.get(name, default)
        return value.decode() if isinstance(value, bytes) else str(value)

    x = _t(ins[0])
    mode, coords = text("mode", "nearest"), text("coordinate_transformation_mode", "half_pixel")
    scales = ins[2] if len(ins) > 2 and ins[2] is not None and np.asarray(ins[2]).size else None
    sizes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else None
    size = tuple(sizes[2:]) if sizes else tuple(int(d * f) for d, f in zip(x.shape[2:], _floats(scales)[2:], strict=True))
    if mode == "nearest" and coords == "asymmetric" and text("nearest_mode", "round_prefer_floor") == "floor":
        return [F.interpolate(x, size=size, mode="nearest")]
    if mode == "linear" and coords in ("half_pixel", "pytorch_half_pixel", "align_corners") and x.dim() == 4:
        return [F.interpolate(x, size=size, mode="bilinear", align_corners=coords == "align_corners")]
    raise ConfigError(f"ONNX Resize with mode={mode!r}, coordinate_transformation_mode={coords!r} is not supported "
                      "(nearest with asymmetric + floor, or linear with half_pixel or align_corners: torch's "
                      "interpolate); re-export the upsampling as F.interpolate(mode='nearest' or 'bilinear')")


def _floats(v: Value | None) -> list[float]:
    return [float(f) for f in np.asarray(v).reshape(-1)] if v is not None else []


def _reduce(name: str, fn: Callable[..., torch.Tensor]) -> Op:
    def run(ins: list[Any], a: dict[str, Any]) -> list[Value]:
        x = _t(ins[0])
        axes = _axes(ins, a)
        if not axes and a.get("noop_with_empty_axes", 0):
            return [x]
        out = fn(x, dim=tuple(axes or range(x.dim())), keepdim=bool(a.get("keepdims", 1)))
        return [out]
    run.__name__ = name
    return run


def _layer_norm(ins: list[Any], a: dict[str, Any]) -> list[Value]:
    x = _t(ins[0])
    axis = a.get("axis", -1) % x.dim()
    scale = _t(ins[1]) if len(ins) > 1 else None
    bias = _t(ins[2]) if len(ins) > 2 and ins[2] is not None else None
    shape = tuple(int(d) for d in x.shape[axis:])
    return [F.layer_norm(x, shape, scale.reshape(shape) if scale is not None else None,
                         bias.reshape(shape) if bias is not None else None, eps=a.get("epsilon", 1e-5))]


def _constant_of_shape(ins: list[Any], a: dict[str, Any]) -> list[Value]:
    value = numpy_helper.to_array(a["value"]).reshape(-1) if "value" in a else np.zeros(1, dtype=np.float32)
    return [np.full(_ints(ins[0]), value[0], dtype=value.dtype)]


def _range(ins: list[Any], a: dict[str, Any]) -> list[Value]:
    if any(isinstance(v, torch.Tensor) for v in ins):
        raise ConfigError("ONNX Range over tensor values is not supported; export with constant folding")
    return [np.arange(np.asarray(ins[0]).item(), np.asarray(ins[1]).item(), np.asarray(ins[2]).item(),
                      dtype=np.asarray(ins[0]).dtype)]


def _expand(ins: list[Any], a: dict[str, Any]) -> list[Value]:
    x = _t(ins[0])
    shape = tuple(int(d) for d in np.broadcast_shapes(tuple(x.shape), tuple(_ints(ins[1]))))  # ONNX: bidirectional
    return [torch.broadcast_to(x, shape)]


# ONNX op -> (inputs, attributes) -> outputs. Elementwise activations, the convolution and pooling ops, and the
# shape ops that torch's exporters write around a classifier's head.
OPS: dict[str, Op] = {
    "Conv": _conv,
    "BatchNormalization": lambda ins, a: [F.batch_norm(_t(ins[0]), _t(ins[3]), _t(ins[4]), _t(ins[1]), _t(ins[2]),
                                                       training=False, eps=a.get("epsilon", 1e-5))],
    "Relu": _unary(torch.relu),
    "Sigmoid": _unary(torch.sigmoid),
    "Tanh": _unary(torch.tanh),
    "LeakyRelu": lambda ins, a: [F.leaky_relu(_t(ins[0]), a.get("alpha", 0.01))],
    "HardSigmoid": lambda ins, a: [torch.clamp(a.get("alpha", 0.2) * _t(ins[0]) + a.get("beta", 0.5), 0.0, 1.0)],
    "HardSwish": _unary(F.hardswish),
    "Elu": lambda ins, a: [F.elu(_t(ins[0]), a.get("alpha", 1.0))],
    "PRelu": lambda ins, a: [torch.where(_t(ins[0]) >= 0, _t(ins[0]), _t(ins[0]) * _t(ins[1]))],
    "Softmax": lambda ins, a: [torch.softmax(_t(ins[0]), dim=a.get("axis", -1))],
    "Clip": _clip,
    "Add": _binary(lambda x, y: x + y),
    "Sub": _binary(lambda x, y: x - y),
    "Mul": _binary(lambda x, y: x * y),
    "Div": _binary(lambda x, y: x / y),
    "MatMul": lambda ins, a: [_t(ins[0]) @ _t(ins[1])],
    "Gemm": _gemm,
    "GlobalAveragePool": lambda ins, a: [torch.mean(_t(ins[0]), dim=(2, 3), keepdim=True)],
    "GlobalMaxPool": lambda ins, a: [torch.amax(_t(ins[0]), dim=(2, 3), keepdim=True)],
    "AveragePool": _pool("AveragePool"),
    "MaxPool": _pool("MaxPool"),
    "ReduceMean": _reduce_mean,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": lambda ins, a: [_t(ins[0]).permute(*a["perm"]) if "perm" in a else _t(ins[0]).permute(
        *reversed(range(_t(ins[0]).dim())))],
    "Concat": _concat,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Gather": _gather,
    "Shape": _shape,
    "Cast": _cast,
    "Pad": _pad,
    "Constant": _constant,
    "Identity": lambda ins, a: [ins[0]],
    "Dropout": lambda ins, a: [ins[0]],  # inference: the identity
    # beyond classifier heads: what detectors, segmenters and transformers' exporters write (each tested against
    # ONNX Runtime over its attributes: tests/test_onnx_torch.py)
    "Slice": _slice,
    "Split": _split,
    "Resize": _resize,
    "Expand": _expand,
    "Range": _range,
    "ConstantOfShape": _constant_of_shape,
    "Pow": _binary(lambda x, y: torch.pow(x, y)),
    "Sqrt": _unary(torch.sqrt),
    "Exp": _unary(torch.exp),
    "Log": _unary(torch.log),
    "Neg": _unary(torch.neg),
    "Abs": _unary(torch.abs),
    "Reciprocal": _unary(torch.reciprocal),
    "Erf": _unary(torch.erf),
    "ReduceMax": _reduce("ReduceMax", torch.amax),
    "ReduceMin": _reduce("ReduceMin", torch.amin),
    "ReduceSum": _reduce("ReduceSum", torch.sum),
    "LayerNormalization": _layer_norm,
    "Einsum": lambda ins, a: [torch.einsum(a["equation"].decode() if isinstance(a["equation"], bytes) else a["equation"],
                                           *[_t(v) for v in ins])],
}


class OnnxModule(nn.Module):
    """An ONNX graph with one image input and one output, run with torch functions (see the module docstring)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__()
        graph = model.graph
        unsupported = sorted({n.op_type for n in graph.node if n.op_type not in OPS or n.domain not in ("", "ai.onnx")})
        if unsupported:
            raise ConfigError(f"the ONNX model uses operator(s) {', '.join(unsupported)}, which gtnpipe's ONNX-to-torch "
                              f"translation (for LiteRT) does not cover; it covers {', '.join(sorted(OPS))}. Compile it for "
                              "a device whose runtime reads ONNX (onnxruntime, openvino, tensorrt), or bring it as a "
                              "torch module (gtnpipe.compile(module, ...))")
        initialized = {t.name for t in graph.initializer}
        inputs = [i.name for i in graph.input if i.name not in initialized]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise ConfigError(f"the ONNX model has {len(inputs)} input(s) and {len(graph.output)} output(s); gtnpipe "
                              "compiles image classifiers with one input (images) and one output (logits)")
        self.input_name, self.output_name = inputs[0], graph.output[0].name
        self.constants: dict[str, np.ndarray] = {}
        self.buffer_names: dict[str, str] = {}
        for i, tensor in enumerate(graph.initializer):
            array = numpy_helper.to_array(tensor)
            # weights are buffers; a one-element float (Clip's bounds, a scale) stays a constant: ops read it as a
            # number, which a buffer is not while torch.export traces
            if np.issubdtype(array.dtype, np.floating) and array.size > 1:
                attr = f"w{i}"
                self.register_buffer(attr, torch.from_numpy(array.astype(np.float32, copy=True)))
                self.buffer_names[tensor.name] = attr
            else:
                self.constants[tensor.name] = array.copy()  # writable: torch warns on read-only arrays
        self.nodes = [(n.op_type, list(n.input), list(n.output), {a.name: helper.get_attribute_value(a)
                                                                  for a in n.attribute}) for n in graph.node]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, Any] = {"": None, self.input_name: x, **self.constants}
        env |= {name: getattr(self, attr) for name, attr in self.buffer_names.items()}
        for op, ins, outs, attrs in self.nodes:
            results = OPS[op]([env[i] for i in ins], attrs)
            env.update(zip(outs, results, strict=False))
        return _t(env[self.output_name])


def onnx_to_torch(path: str | Any) -> OnnxModule:
    """The ONNX file at `path` as an eval-mode torch module."""
    return OnnxModule(onnx.load(str(path))).train(False)
