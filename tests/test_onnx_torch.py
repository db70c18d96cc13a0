"""The ONNX-to-torch translation (LiteRT's route for a user's ONNX model): each operator beyond the classifier ones,
over its attributes, against ONNX Runtime on random inputs. A wrong translation can never ship (every LiteRT file is
parity-checked against ONNX Runtime FP32), but these say which operator is wrong before a whole model is."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from gtnpipe.deploy.onnx_torch import OnnxModule
from gtnpipe.errors import ConfigError

RNG = np.random.default_rng(0)
OPSET = 18


def _model(nodes: list[onnx.NodeProto], x_shape: tuple[int, ...], consts: dict[str, np.ndarray], *,
           opset: int = OPSET) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "op", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
                              [numpy_helper.from_array(v, k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    del model.graph.output[0].type.tensor_type.shape.dim[:]  # the output's rank left to the operator
    model.graph.output[0].type.tensor_type.ClearField("shape")
    return model


def _check(model: onnx.ModelProto, x: np.ndarray, *, atol: float = 1e-5) -> None:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x})[0]
    with torch.no_grad():
        got = OnnxModule(model).train(False)(torch.from_numpy(x)).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=atol, rtol=1e-5)


def _i64(*values: int) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


@pytest.mark.parametrize(("starts", "ends", "axes", "steps"), [
    ((1,), (3,), (1,), None),  # channels 1-2
    ((0, 2), (-1, 100), (2, 3), None),  # a negative end, an end past the size
    ((0,), (6,), (3,), (2,)),  # a step
    ((-4,), (2**62,), (2,), None),  # what exporters write for x[..., -4:, :]
])
def test_slice(starts: tuple[int, ...], ends: tuple[int, ...], axes: tuple[int, ...], steps: tuple[int, ...] | None
               ) -> None:
    consts = {"s": _i64(*starts), "e": _i64(*ends), "a": _i64(*axes)} | ({"t": _i64(*steps)} if steps else {})
    node = helper.make_node("Slice", ["x", "s", "e", "a", *(["t"] if steps else [])], ["y"])
    _check(_model([node], (2, 4, 6, 6), consts), RNG.standard_normal((2, 4, 6, 6), dtype=np.float32))


def test_slice_with_a_negative_step_is_refused_by_name() -> None:
    node = helper.make_node("Slice", ["x", "s", "e", "a", "t"], ["y"])
    model = _model([node], (1, 4, 6, 6), {"s": _i64(5), "e": _i64(0), "a": _i64(3), "t": _i64(-1)})
    with pytest.raises(ConfigError, match="ONNX Slice with a negative step is not supported"):
        OnnxModule(model)(torch.zeros(1, 4, 6, 6))


@pytest.mark.parametrize("how", ["sizes", "num_outputs"])
def test_split_then_concat(how: str) -> None:
    if how == "sizes":
        split = helper.make_node("Split", ["x", "n"], ["a", "b", "c"], axis=1)
        consts = {"n": _i64(1, 2, 3)}
    else:
        split = helper.make_node("Split", ["x"], ["a", "b", "c"], axis=1, num_outputs=3)
        consts = {}
    nodes = [split, helper.make_node("Mul", ["a", "a"], ["a2"]), helper.make_node("Concat", ["c", "a2", "b"], ["y"], axis=1)]
    _check(_model(nodes, (2, 6, 5, 5), consts), RNG.standard_normal((2, 6, 5, 5), dtype=np.float32))


@pytest.mark.parametrize(("attrs", "scale"), [
    ({"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}, 2.0),
    ({"mode": "linear", "coordinate_transformation_mode": "half_pixel"}, 2.0),
    ({"mode": "linear", "coordinate_transformation_mode": "align_corners"}, 2.0),
    ({"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"}, 1.5),
])
def test_resize_by_scales(attrs: dict[str, Any], scale: float) -> None:
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], **attrs)
    consts = {"scales": np.asarray([1, 1, scale, scale], dtype=np.float32)}
    _check(_model([node], (1, 3, 8, 8), consts), RNG.standard_normal((1, 3, 8, 8), dtype=np.float32), atol=1e-4)


def test_resize_by_sizes_and_an_unsupported_mode_named() -> None:
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear")
    _check(_model([node], (1, 2, 5, 7), {"sizes": _i64(1, 2, 10, 14)}), RNG.standard_normal((1, 2, 5, 7), dtype=np.float32),
           atol=1e-4)
    cubic = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="cubic")
    with pytest.raises(ConfigError, match="ONNX Resize with mode='cubic'"):
        OnnxModule(_model([cubic], (1, 2, 5, 7), {"sizes": _i64(1, 2, 10, 14)}))(torch.zeros(1, 2, 5, 7))


def test_expand_range_and_constant_of_shape() -> None:
    nodes = [
        helper.make_node("Range", ["r0", "r1", "r2"], ["r"]),  # 0, 1, ..., 4 as float
        helper.make_node("Expand", ["r", "shape"], ["e"]),  # (2, 3, 4, 5)
        helper.make_node("ConstantOfShape", ["shape"], ["c"], value=numpy_helper.from_array(np.asarray([0.5], np.float32))),
        helper.make_node("Add", ["e", "c"], ["ec"]),
        helper.make_node("Mul", ["x", "ec"], ["y"]),
    ]
    consts = {"r0": np.asarray(0.0, np.float32), "r1": np.asarray(5.0, np.float32), "r2": np.asarray(1.0, np.float32),
              "shape": _i64(2, 3, 4, 5)}
    _check(_model(nodes, (2, 3, 4, 5), consts), RNG.standard_normal((2, 3, 4, 5), dtype=np.float32))


@pytest.mark.parametrize("op", ["Sqrt", "Exp", "Log", "Neg", "Abs", "Reciprocal", "Erf"])
def test_unary(op: str) -> None:
    x = RNG.uniform(0.1, 3.0, (2, 3, 4, 4)).astype(np.float32)  # positive: Sqrt, Log and Reciprocal are defined
    _check(_model([helper.make_node(op, ["x"], ["y"])], x.shape, {}), x)


def test_pow_with_a_constant_exponent() -> None:
    x = RNG.uniform(0.1, 3.0, (2, 3, 4, 4)).astype(np.float32)
    _check(_model([helper.make_node("Pow", ["x", "p"], ["y"])], x.shape, {"p": np.asarray(3.0, np.float32)}), x)


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin", "ReduceSum"])
@pytest.mark.parametrize(("axes", "keepdims"), [((1,), 1), ((2, 3), 0), (None, 1)])
def test_reduce(op: str, axes: tuple[int, ...] | None, keepdims: int) -> None:
    inputs, consts = ["x"], {}
    if axes is not None:  # opset 18: axes is an input
        inputs.append("axes")
        consts["axes"] = _i64(*axes)
    node = helper.make_node(op, inputs, ["y"], keepdims=keepdims)
    _check(_model([node], (2, 3, 4, 5), consts), RNG.standard_normal((2, 3, 4, 5), dtype=np.float32))


@pytest.mark.parametrize("axis", [-1, 1])
def test_layer_normalization(axis: int) -> None:
    shape = (2, 3, 4, 5)
    norm = shape[axis:] if axis >= 0 else shape[axis:]
    consts = {"g": RNG.standard_normal(norm).astype(np.float32), "b": RNG.standard_normal(norm).astype(np.float32)}
    node = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=axis, epsilon=1e-5)
    _check(_model([node], shape, consts, opset=17), RNG.standard_normal(shape, dtype=np.float32), atol=1e-4)


@pytest.mark.parametrize("equation", ["bchw,bchw->bhw", "bchw->bhwc", "bchw,c->bhw"])
def test_einsum(equation: str) -> None:
    second = equation.split("->")[0].split(",")[1:] if "," in equation else []
    consts = {"w": RNG.standard_normal((3,)).astype(np.float32)} if second == ["c"] else {}
    inputs = ["x", "w"] if consts else (["x", "x"] if second else ["x"])
    node = helper.make_node("Einsum", inputs, ["y"], equation=equation)
    _check(_model([node], (2, 3, 4, 5), consts), RNG.standard_normal((2, 3, 4, 5), dtype=np.float32), atol=1e-4)
