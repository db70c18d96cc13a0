"""Will this ONNX export parse in TensorRT? A check that needs only the `onnx` package.

The host runs it before anything ships: the export must use an opset, operators, a domain, input
shapes and weight types that the target's TensorRT ONNX parser (onnx-tensorrt) takes. TensorRT
cannot be installed on the project's machines (../shared/DEPS.md), so this check is what the host
can verify; the tables below are onnx-tensorrt's operator support matrices per TensorRT release.

This module never imports tensorrt or torch, and imports onnx only inside the functions that read
a model. `python -m gtnpipe.deploy.backends.tensorrt check ...` runs it from a shell; the engine builds are in
`gtnpipe.deploy.backends.tensorrt_engine` and the runner in `gtnpipe.deploy.backends.tensorrt_runner`, neither of
which imports this module (the device never needs onnx).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gtnpipe.deploy.backends import missing
from gtnpipe.errors import ConfigError

__all__ = [
    "TENSORRT_8_0_ONNX_OPS",
    "TENSORRT_8_4_ONNX_OPS",
    "TENSORRT_8_5_ONNX_OPS",
    "TENSORRT_10_ONNX_OPS",
    "check_onnx_for_tensorrt",
    "require_onnx_for_tensorrt",
    "summarize_onnx_check",
    "supported_onnx_ops",
    "tensorrt_version_for_opset",
]

# What onnx-tensorrt's parser takes, per TensorRT release: the rows marked "Y" of the operator
# support matrix in onnx/onnx-tensorrt docs/operators.md on the release branch named.

# release/8.0 docs/operators.md ("TensorRT 8.0 supports operators up to Opset 13"). Used for 8.0-8.3:
# JetPack 4.6 ships 8.0.1 and 4.6.1+ 8.2.1, and the Jetson Nano profile (>=8.0,<8.3) must parse on
# 8.0. Later 8.x tables only add rows (checked for 8.4 and 8.5 below), so this is the safe lower bound.
TENSORRT_8_0_ONNX_OPS: frozenset[str] = frozenset({
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh",
    "AveragePool", "BatchNormalization", "Cast", "Ceil", "Celu", "Clip", "Concat", "Constant",
    "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "DepthToSpace",
    "DequantizeLinear", "Div", "Elu", "Equal", "Erf", "Exp", "Expand", "EyeLike", "Flatten", "Floor",
    "Gather", "GatherElements", "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "Greater",
    "GreaterOrEqual", "GRU", "HardSigmoid", "Identity", "ImageScaler", "InstanceNormalization",
    "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "Loop", "LRN", "LSTM", "LpNormalization",
    "LpPool", "MatMul", "Max", "MaxPool", "Mean", "Min", "Mul", "Neg", "Not", "Or", "Pad",
    "ParametricSoftplus", "Pow", "PRelu", "QuantizeLinear", "RandomUniform", "RandomUniformLike", "Range",
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
    "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize", "ReverseSequence", "RNN",
    "ScaledTanh", "Scan", "Selu", "Shape", "Sigmoid", "Sin", "Sinh", "Size", "Slice", "Softmax",
    "SoftmaxCrossEntropyLoss", "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub",
    "Sum", "Tan", "Tanh", "ThresholdedRelu", "Tile", "TopK", "Transpose", "Unsqueeze", "Upsample", "Where",
})
# release/8.4 docs/operators.md ("up to Opset 13"): 12 rows turn to Y, SoftmaxCrossEntropyLoss to N.
TENSORRT_8_4_ONNX_OPS: frozenset[str] = (TENSORRT_8_0_ONNX_OPS - {"SoftmaxCrossEntropyLoss"}) | {
    "Dropout", "Einsum", "GatherND", "If", "IsNaN", "NonMaxSuppression", "Round", "Scatter",
    "ScatterElements", "ScatterND", "Sign", "Xor",
}
# release/8.5 docs/operators.md ("up to Opset 17"); also used for 8.6 and 9.x (whose tables only add rows).
# HardSwish (an opset-14 op) first appears here: below opset 14 torch's exporter decomposes it into
# HardSigmoid and Mul, which every 8.x table has.
TENSORRT_8_5_ONNX_OPS: frozenset[str] = TENSORRT_8_4_ONNX_OPS | {
    "GridSample", "HardSwish", "MeanVarianceNormalization", "Mod", "NonZero", "OneHot", "Reciprocal",
    "RoiAlign", "Shrink", "Trilu",
}
# main-branch docs/operators.md for TensorRT 10.15 ("opset 9 to opset 24"). Used for every 10.x: the
# opset limit (20 for 10.0, from the 10.0 table's header) keeps out the newer ops among these
# (Attention, RMSNormalization, RotaryEmbedding are opset 23, TensorScatter 24).
TENSORRT_10_ONNX_OPS: frozenset[str] = TENSORRT_8_5_ONNX_OPS | {
    "Attention", "BlackmanWindow", "CastLike", "DeformConv", "Gelu", "GroupNormalization", "HammingWindow",
    "HannWindow", "Hardmax", "IsInf", "LayerNormalization", "Mish", "RandomNormal", "RandomNormalLike",
    "RMSNormalization", "RotaryEmbedding", "STFT", "TensorScatter",
}

_REDUCE_OPS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
               "ReduceProd", "ReduceSum", "ReduceSumSquare")


@dataclass(frozen=True)
class _ParserTable:
    since: tuple[int, int]  # the first TensorRT (major, minor) this table describes
    max_opset: int  # the table's header: "supports operators up to Opset N"
    ops: frozenset[str]
    # op -> input positions the table's "Restrictions" column says must be initializers (constants)
    constant_inputs: Mapping[str, tuple[int, ...]]
    pad_last_two_dims_only: bool  # 8.0's Pad row: "Zero-padding on last 2 dimensions only"
    source: str


_PARSER_TABLES: tuple[_ParserTable, ...] = (
    _ParserTable((8, 0), 13, TENSORRT_8_0_ONNX_OPS,
                 {"Clip": (1, 2), "ConvTranspose": (1,), "CumSum": (1,), "DequantizeLinear": (1, 2),
                  "InstanceNormalization": (1, 2), "QuantizeLinear": (1, 2), "Slice": (3,), "Split": (1,),
                  "Squeeze": (1,), "Unsqueeze": (1,)},
                 True, "onnx-tensorrt release/8.0 docs/operators.md (used for TensorRT 8.0-8.3)"),
    _ParserTable((8, 4), 13, TENSORRT_8_4_ONNX_OPS,
                 {"ConvTranspose": (1,), "CumSum": (1,), "InstanceNormalization": (1, 2), "Slice": (3,),
                  "Squeeze": (1,), "TopK": (1,), "Unsqueeze": (1,)},
                 False, "onnx-tensorrt release/8.4 docs/operators.md"),
    _ParserTable((8, 5), 17, TENSORRT_8_5_ONNX_OPS,
                 {"CumSum": (1,), "InstanceNormalization": (1, 2), "Slice": (3,), "Squeeze": (1,), "TopK": (1,),
                  "Unsqueeze": (1,)},
                 False, "onnx-tensorrt release/8.5 docs/operators.md (used for TensorRT 8.5-9.x)"),
    _ParserTable((10, 0), 20, TENSORRT_10_ONNX_OPS, {"CumSum": (1,), **{op: (1,) for op in _REDUCE_OPS}},
                 False, "onnx-tensorrt docs/operators.md (TensorRT 10.15 rows, 10.0 opset limit)"),
    _ParserTable((10, 15), 24, TENSORRT_10_ONNX_OPS, {"CumSum": (1,), **{op: (1,) for op in _REDUCE_OPS}},
                 False, "onnx-tensorrt docs/operators.md (TensorRT 10.15)"),
)

# Inputs that carry shapes, axes or indices: integer tensors are expected there (torch exports them as
# INT64 initializers; TensorRT casts them to INT32). Anywhere else an integer or float64 weight is
# something TensorRT 8 can only cast down (onnx-tensorrt docs: "limited support for INT32, INT64, and
# DOUBLE types"), i.e. not a plain FP32 CNN export.
_INDEX_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Slice": (1, 2, 3, 4), "Squeeze": (1,), "Unsqueeze": (1,), "Pad": (1, 3), "Resize": (3,),
    "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,), "TopK": (1,), "Gather": (1,), "GatherElements": (1,),
    "GatherND": (1,), "Scatter": (1,), "ScatterElements": (1,), "ScatterND": (1,), "Split": (1,),
    "Range": (0, 1, 2), "CumSum": (1,), "OneHot": (0, 1), "Trilu": (1,), **{op: (1,) for op in _REDUCE_OPS},
}
_DEFAULT_DOMAINS = ("", "ai.onnx")


def _major_minor(trt_version: str) -> tuple[int, int]:
    found = re.match(r"\s*(\d+)(?:\.(\d+))?", str(trt_version))
    if not found:
        raise ConfigError(f"TensorRT version {trt_version!r} is not a version; pass e.g. '8.2' or '10.3.0'")
    return int(found.group(1)), int(found.group(2) or 0)


def _table_for(trt_version: str) -> _ParserTable:
    version = _major_minor(trt_version)
    tables = [table for table in _PARSER_TABLES if table.since <= version]
    if not tables:
        raise ConfigError(f"no ONNX operator table for TensorRT {trt_version}: gtnpipe targets TensorRT 8.0 and "
                          "later (JetPack 4.6+); upgrade the device's TensorRT or pick another runtime")
    return tables[-1]


def supported_onnx_ops(trt_version: str) -> frozenset[str]:
    """The default-domain ONNX ops that onnx-tensorrt's parser of `trt_version` ("8.2", "10.3.0") takes."""
    return _table_for(trt_version).ops


def tensorrt_version_for_opset(max_opset: int) -> str:
    """The oldest TensorRT whose parser reads `max_opset`: what to check against when TensorRT is not here.

    A profile's `max_onnx_opset` is its runtime's parser limit, so the oldest TensorRT with that limit is
    the strictest version the profile can mean (13 -> 8.0, the Jetson Nano's JetPack 4.6).
    """
    for table in _PARSER_TABLES:
        if table.max_opset >= max_opset:
            return f"{table.since[0]}.{table.since[1]}"
    newest = _PARSER_TABLES[-1]
    return f"{newest.since[0]}.{newest.since[1]}"


# ---------------------------------------------------------------------------------------------
# The check (onnx is imported inside the functions that read a model)

def _graphs(graph: Any) -> Iterator[Any]:
    """`graph` and every subgraph (If/Loop/Scan bodies), depth first."""
    import onnx

    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graphs(sub)


def _examples(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(repr(name) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


@dataclass
class _Constants:
    """What the parser knows at build time.

    onnx-tensorrt imports a Constant node's value as weights and passes weights through Identity,
    so initializers, Constant outputs and Identity copies of either all count as initializers for
    the operator table's restrictions.
    """

    tensors: dict[str, Any]  # initializers and Constant 'value' tensors, by name
    names: set[str]  # every constant name: those, Constant value_* outputs and Identity copies
    source: dict[str, str]  # Identity output -> the constant it copies

    def tensor(self, name: str) -> Any | None:
        return self.tensors.get(self.source.get(name, name))


def _constants(graphs: Sequence[Any]) -> _Constants:
    import onnx

    tensors: dict[str, Any] = {}
    names: set[str] = set()
    for graph in graphs:
        tensors.update({init.name: init for init in graph.initializer})
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS and node.output:
                names.add(node.output[0])
                for attr in node.attribute:
                    if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                        tensors[node.output[0]] = attr.t
    names |= set(tensors)
    source: dict[str, str] = {}
    changed = True
    while changed:  # Identity chains, in any node order
        changed = False
        for graph in graphs:
            for node in graph.node:
                if (node.op_type == "Identity" and node.input and node.input[0] in names
                        and node.output and node.output[0] not in names):
                    names.add(node.output[0])
                    source[node.output[0]] = source.get(node.input[0], node.input[0])
                    changed = True
    return _Constants(tensors, names, source)


def _pad_problem(node: Any, opset: int, constants: _Constants) -> str | None:
    """TensorRT 8.0's Pad row: "Zero-padding on last 2 dimensions only"."""
    from onnx import helper, numpy_helper

    attrs = {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode != "constant":
        return f"mode {mode!r} (only zero padding parses)"
    if opset < 11:
        pads = list(attrs.get("pads", []))
        value = float(attrs.get("value", 0.0))
    else:
        pads_tensor = constants.tensor(node.input[1]) if len(node.input) > 1 else None
        if pads_tensor is None:
            return "its pads are computed in the graph (they must be an initializer)"
        pads = numpy_helper.to_array(pads_tensor).astype(np.int64).tolist()
        value = 0.0
        if len(node.input) > 2 and node.input[2]:
            value_tensor = constants.tensor(node.input[2])
            if value_tensor is None:
                return "its padding value is computed in the graph (it must be a constant 0)"
            value = float(numpy_helper.to_array(value_tensor).reshape(-1)[0])
        if len(node.input) > 3 and node.input[3]:
            return "it pads selected axes (the opset-18 'axes' input), which this parser predates"
    rank = len(pads) // 2
    outer = [p for i, p in enumerate(pads) if i % rank < rank - 2]
    if any(outer):
        return f"it pads dimensions other than the last two (pads {pads})"
    if value != 0.0:
        return f"it pads with {value}, not zero"
    return None


def check_onnx_for_tensorrt(onnx_path: Path, *, max_opset: int, trt_version: str) -> list[str]:
    """The reasons the TensorRT `trt_version` ONNX parser would refuse `onnx_path` (empty: none found).

    Checks the default-domain opset (against `max_opset` and the parser's own limit), every node's
    op against onnx-tensorrt's operator table for that release and its must-be-initializer inputs,
    non-default domains, static input shapes, and that weights are float32 (integers only where a
    shape, axis or index goes). Needs only the `onnx` package.
    """
    try:
        import onnx
    except ImportError as err:
        raise missing("The ONNX check for TensorRT", err, "train") from err
    from onnx import TensorProto

    table = _table_for(trt_version)
    path = Path(onnx_path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises OSError, DecodeError or its own errors for a bad file
        return [f"{path} cannot be read as an ONNX model ({err}); export it again"]
    problems: list[str] = []

    opsets = {entry.domain: entry.version for entry in model.opset_import}
    opset = opsets.get("", opsets.get("ai.onnx"))
    limit = min(max_opset, table.max_opset)
    if opset is None:
        problems.append("the model imports no default-domain ONNX opset; export it with torch.onnx.export")
        opset = limit
    elif opset > limit:
        why = (f"the profile's max_onnx_opset {max_opset}" if max_opset <= table.max_opset
               else f"the TensorRT {trt_version} parser's limit {table.max_opset} ({table.source})")
        problems.append(f"opset {opset} is above {why}: export with max_opset={limit} "
                        "(gtnpipe.deploy.export.export_onnx(..., max_opset=...), the profile's runtime.max_onnx_opset)")

    graphs = list(_graphs(model.graph))
    nodes = [node for graph in graphs for node in graph.node]
    foreign: dict[str, list[str]] = {}
    unsupported: dict[str, list[str]] = {}
    for node in nodes:
        label = node.name or (node.output[0] if node.output else node.op_type)
        if node.domain not in _DEFAULT_DOMAINS:
            foreign.setdefault(f"{node.domain}::{node.op_type}", []).append(label)
        elif node.op_type not in table.ops:
            unsupported.setdefault(node.op_type, []).append(label)
    for op, labels in sorted(foreign.items()):
        problems.append(f"op {op} ({len(labels)} node(s): {_examples(labels)}) is outside the default ONNX domain: "
                        "TensorRT parses custom-domain ops only through a plugin; export with standard ops only")
    for op, labels in sorted(unsupported.items()):
        hint = (" (an opset-14 op: below opset 14 torch's exporter writes it as HardSigmoid and Mul)"
                if op == "HardSwish" else "")
        problems.append(f"op {op} ({len(labels)} node(s): {_examples(labels)}) is not in {table.source}, the "
                        f"operators TensorRT {trt_version} parses{hint}: export at a lower opset or replace the layer")

    constants = _constants(graphs)
    restricted: dict[str, list[str]] = {}
    for node in nodes:
        if node.domain not in _DEFAULT_DOMAINS:
            continue
        label = str(node.name or node.op_type)
        for index in table.constant_inputs.get(node.op_type, ()):
            if index < len(node.input) and node.input[index] and node.input[index] not in constants.names:
                restricted.setdefault(f"{node.op_type} input {index} must be an initializer", []).append(label)
        if node.op_type == "Pad" and table.pad_last_two_dims_only and (pad := _pad_problem(node, opset, constants)):
            restricted.setdefault(f"Pad parses zero padding of the last 2 dimensions only, but {pad}", []).append(label)
    for rule, labels in sorted(restricted.items()):
        problems.append(f"{rule} ({len(labels)} node(s): {_examples(labels)}; {table.source}): fold constants at "
                        "export (do_constant_folding=True) or change the layer")

    initializer_names = {init.name for graph in graphs for init in graph.initializer}
    for graph_input in model.graph.input:
        if graph_input.name in initializer_names:
            continue  # IR < 4 also lists weights as inputs
        tensor_type = graph_input.type.tensor_type
        if not tensor_type.HasField("shape"):
            problems.append(f"input {graph_input.name!r} has no shape: export with a static input shape")
            continue
        dims = [dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?") for dim in tensor_type.shape.dim]
        dynamic = [str(d) for d in dims if not (isinstance(d, int) and d > 0)]
        if dynamic:
            problems.append(f"input {graph_input.name!r} has dynamic dimension(s) {', '.join(dynamic)} (shape {dims}): "
                            "export with a static shape, the profile's batch_size included (no dynamic_axes); "
                            "a dynamic engine would need an optimization profile")
        if tensor_type.elem_type != TensorProto.FLOAT:
            problems.append(f"input {graph_input.name!r} is {TensorProto.DataType.Name(tensor_type.elem_type)}, not "
                            "FLOAT: the deployed model takes float32 images in [0, 1]")

    consumers: dict[str, list[tuple[str, int]]] = {}
    for node in nodes:
        for index, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node.op_type, index))

    copies: dict[str, list[str]] = {}
    for node in nodes:
        if node.op_type == "Identity" and node.input and node.output:
            copies.setdefault(node.input[0], []).append(node.output[0])

    def index_only(name: str, depth: int = 0) -> bool:
        """Whether every use of `name` (looking through Identity copies) is a shape/axis/index input."""
        for op, index in consumers.get(name, []):
            if op == "Identity":
                if depth > len(nodes) or not all(index_only(out, depth + 1) for out in copies.get(name, [])):
                    return False
            elif index not in _INDEX_INPUTS.get(op, ()):
                return False
        return True

    bad_weights: dict[str, list[str]] = {}
    integer_types = (TensorProto.INT64, TensorProto.INT32)
    for name, tensor in constants.tensors.items():
        copied_as = [alias for alias, src in constants.source.items() if src == name]
        if tensor.data_type == TensorProto.FLOAT or (
                tensor.data_type in integer_types and all(index_only(n) for n in [name, *copied_as])):
            continue
        bad_weights.setdefault(TensorProto.DataType.Name(tensor.data_type), []).append(name)
    for dtype, names in sorted(bad_weights.items()):
        problems.append(f"{len(names)} weight(s) are {dtype} ({_examples(names)}), where float32 weights (and integer "
                        "shape/axis/index constants) are expected: keep the model in float32 (no .double(), no "
                        "integer arithmetic on weights) and export again")
    return problems


def require_onnx_for_tensorrt(onnx_path: Path, *, max_opset: int, trt_version: str) -> None:
    """Raise a ConfigError listing every problem `check_onnx_for_tensorrt` finds, with what to do."""
    problems = check_onnx_for_tensorrt(onnx_path, max_opset=max_opset, trt_version=trt_version)
    if problems:
        listed = "\n".join(f"  - {problem}" for problem in problems)
        raise ConfigError(f"{onnx_path} will not parse in TensorRT {trt_version} (max opset {max_opset}):\n{listed}\n"
                          "Fix the export (gtnpipe.deploy.export.export_onnx with the profile's max_onnx_opset and batch "
                          "size) or target another runtime in the device profile.")


def summarize_onnx_check(onnx_path: Path, *, max_opset: int, trt_version: str) -> str:
    """A few lines for a terminal: the model's opset and ops, then 'OK' or each problem."""
    problems = check_onnx_for_tensorrt(onnx_path, max_opset=max_opset, trt_version=trt_version)
    return _summary(onnx_path, problems, max_opset=max_opset, trt_version=trt_version)


def _summary(onnx_path: Path, problems: list[str], *, max_opset: int, trt_version: str) -> str:
    import onnx

    head = f"{onnx_path}: TensorRT {trt_version} check (max opset {max_opset})"
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception:  # unreadable: the problems say so
        return "\n".join([head + f": {len(problems)} problem(s)", *(f"  - {p}" for p in problems)])
    opset = {entry.domain: entry.version for entry in model.opset_import}.get("", "?")
    ops = Counter(node.op_type for graph in _graphs(model.graph) for node in graph.node)
    lines = [f"{head}: {'OK' if not problems else f'{len(problems)} problem(s)'}",
             f"  opset {opset}, {sum(ops.values())} nodes: " + ", ".join(f"{op} x{n}" for op, n in ops.most_common())]
    lines += [f"  - {problem}" for problem in problems]
    return "\n".join(lines)

