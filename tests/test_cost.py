"""Cost models on archs whose figures can be worked out by hand, plus the table/roofline switch."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from gtnpipe.config.profiles import load_profile
from gtnpipe.deploy.export import export_onnx
from gtnpipe.devices.cost import (
    MB,
    CostModel,
    LatencyTable,
    PrecisionTable,
    SizeFactor,
    activation_peak_elems,
    model_size_bytes,
    roofline_ms,
    table_path,
    weight_bytes,
)
from gtnpipe.errors import ConfigError
from gtnpipe.models.static import build_static
from gtnpipe.space.schedule import all_units, units
from gtnpipe.space.spaces import TaskShape, get_space
from gtnpipe.stages.search import cost_model

SPACE = get_space("mbv3-28")
TASK = TaskShape(1, (28, 28), 10)
HOST = load_profile("host")
ORT_INT8 = SizeFactor(2.27, "measured: bench/results/int8_size.md")  # host runs ONNX Runtime


def test_all_units_cover_every_key_any_student_uses() -> None:
    keys = {u.key for u in all_units(SPACE, TASK)}
    assert len(keys) == len(all_units(SPACE, TASK)) == 2 + SPACE.num_stages * 2 * len(SPACE.choices)
    for arch in [SPACE.smallest(), SPACE.largest(), *SPACE.sample_many(20, seed=3)]:
        assert {u.key for u in units(arch, SPACE, TASK)} <= keys


def test_smallest_student_activation_peak_by_hand() -> None:
    # the peak is stage 1's first expand conv at 28x28: input 16 channels, output 16*3 = 48 channels
    # (the stem conv: 784 + 12544; the first block's depthwise: 12544 in, 12544 out, no residual kept at i=0)
    assert activation_peak_elems(units(SPACE.smallest(), SPACE, TASK)) == 16 * 784 + 48 * 784


# The smallest student's parameters once BN is folded into its convs (conv weights, one bias per output channel,
# the head's linears): count() gives 395,066 with BN's two per channel. The ONNX test below checks weight_bytes
# against a real export's initializers, on this student among others.
SMALLEST_DEPLOYED_PARAMS = 393_354


def test_smallest_student_weight_bytes_by_precision() -> None:
    schedule = units(SPACE.smallest(), SPACE, TASK)
    assert [weight_bytes(schedule, p) for p in ("fp32", "fp16", "int8")] == [4 * SMALLEST_DEPLOYED_PARAMS,
                                                                             2 * SMALLEST_DEPLOYED_PARAMS,
                                                                             SMALLEST_DEPLOYED_PARAMS]


@pytest.mark.slow
def test_weight_bytes_match_the_exported_onnx_initializers(tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    torch.manual_seed(0)
    for arch in (SPACE.smallest(), SPACE.sample_many(1, seed=5)[0]):
        model = build_static(arch, SPACE, TASK)
        for p in model.parameters():  # a fresh model's zero biases are equal tensors, which the exporter dedupes
            torch.nn.init.normal_(p)
        path = export_onnx(model, TASK, tmp_path / "m.onnx")
        graph = onnx.load(path).graph
        n_float = sum(numpy_helper.to_array(t).size for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
        schedule = units(arch, SPACE, TASK)
        assert weight_bytes(schedule, "fp32") == 4 * n_float  # BN folded: conv weights + one bias per output channel
        predicted = model_size_bytes(schedule, "fp32")
        assert abs(predicted - path.stat().st_size) / path.stat().st_size < 0.05


def test_roofline_of_one_layer_by_hand() -> None:
    # one 3x3 stem conv, 1 -> 16 channels at 28x28: 784 * 9 * 16 = 112896 MACs
    stem_conv = units(SPACE.smallest(), SPACE, TASK)[0].layers[0]
    assert stem_conv.macs == 112896
    hw = dataclasses.replace(HOST.hardware, peak_gflops_fp32=1.0, memory_gbps=1.0, layer_overhead_us=10.0)
    profile = dataclasses.replace(HOST, hardware=hw)
    compute_s = 2 * 112896 / 1e9
    memory_s = ((784 + 16 * 784) * 4 + (9 * 16 + 16) * 4) / 1e9
    assert compute_s > memory_s
    fake_unit = dataclasses.replace(units(SPACE.smallest(), SPACE, TASK)[0], layers=(stem_conv,))
    assert roofline_ms([fake_unit], profile, "fp32") == pytest.approx(1e3 * (compute_s + 10e-6))


def _table(tmp_path: Path, **changes: object) -> Path:
    precision = PrecisionTable(units_ms={u.key: 0.01 for u in all_units(SPACE, TASK)}, slope=2.0, per_unit_ms=0.005,
                               intercept_ms=0.1, p90_over_p50=1.5, memory_overhead_mb=70.0, memory_slope=2.0)
    fields = {"device": "host", "runtime": "onnxruntime", "runtime_version": "1.32.0", "threads": HOST.threads,
              "batch_size": HOST.batch_size, "space": SPACE.name, "task": TASK, "precisions": {"fp32": precision},
              "measured": {}} | changes
    table = LatencyTable(**fields)  # type: ignore[arg-type]
    path = table_path("host", SPACE.name, TASK, tmp_path)
    table.save(path)
    assert LatencyTable.from_json(path.read_text(), where="t") == table
    return path


def test_measured_table_prediction_by_hand(tmp_path: Path) -> None:
    _table(tmp_path)
    est = CostModel(HOST, SPACE, TASK, int8_size=ORT_INT8, tables_dir=tmp_path).estimate(SPACE.smallest())
    # stem + 4 one-block stages + head = 6 units of 0.01 ms: 2 * 0.06 + 0.005 * 6 + 0.1
    assert est.latency_source == "measured-table"
    assert est.latency_ms_p50 == pytest.approx(0.25) and est.latency_ms_p90 == pytest.approx(0.375)
    # memory: overhead 70 + slope 2.0 x the model's MB at fp32 = 4 bytes x (SMALLEST_DEPLOYED_PARAMS weights + the
    # 50,176-element activation peak worked out by hand above) = 70 + 2.0 * (1_573_416 + 200_704) / 1e6
    assert est.peak_memory_mb == pytest.approx(73.54824, rel=1e-12)


def test_a_table_for_other_settings_falls_back_to_the_roofline(tmp_path: Path) -> None:
    _table(tmp_path, threads=8)
    model = CostModel(HOST, SPACE, TASK, int8_size=ORT_INT8, tables_dir=tmp_path)
    assert model.estimate(SPACE.smallest()).latency_source == "roofline-estimate"
    assert "recalibrate" in model.table_note
    int8 = CostModel(HOST, SPACE, TASK, int8_size=ORT_INT8, precision="int8", tables_dir=tmp_path)
    assert int8.estimate(SPACE.smallest()).latency_source == "roofline-estimate"


def test_a_corrupt_table_says_how_to_rebuild_it(tmp_path: Path) -> None:
    path = table_path("host", SPACE.name, TASK, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text('{"schema": 1, "device": "host"}')
    with pytest.raises(ConfigError, match="not a valid latency table.*gtnpipe latency-table --device NAME. on that device"):
        CostModel(HOST, SPACE, TASK, int8_size=ORT_INT8, tables_dir=tmp_path)


def test_precision_must_be_allowed_by_the_device() -> None:
    with pytest.raises(ConfigError, match="does not allow precision 'fp16'; its precisions: fp32, int8"):
        CostModel(HOST, SPACE, TASK, int8_size=ORT_INT8, precision="fp16")


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_costs_grow_with_the_student(precision: str, tmp_path: Path) -> None:
    model = CostModel(HOST, SPACE, TASK, int8_size=ORT_INT8, precision=precision, tables_dir=tmp_path)
    small, large = model.estimate(SPACE.smallest()), model.estimate(SPACE.largest())
    for name in ("macs", "params", "latency_ms_p90", "peak_memory_mb", "model_size_mb"):
        assert getattr(small, name) < getattr(large, name), name
    tight = dataclasses.replace(HOST.budgets, latency_ms_p90=small.latency_ms_p90 * 1.01, latency_margin_pct=0.0)
    assert small.violations(tight) == [] and large.violations(tight)[0].startswith("latency_ms_p90: predicted")


def test_int8_size_is_the_formula_times_the_runtimes_measured_factor() -> None:
    schedule = units(SPACE.smallest(), SPACE, TASK)
    plain = model_size_bytes(schedule, "int8")
    # one byte per deployed weight, GRAPH_BYTES_PER_LAYER (160) for each of its 22 layers, GRAPH_BYTES_FIXED (1500)
    assert plain == SMALLEST_DEPLOYED_PARAMS + 160 * 22 + 1500 == 398_374
    assert model_size_bytes(schedule, "int8", int8_size_factor=1.4) == 557_724  # round(398_374 x 1.4)
    assert model_size_bytes(schedule, "fp32", int8_size_factor=1.4) == model_size_bytes(schedule, "fp32")
    # raspberry-pi-4 plans for int8 in TFLite: the cost model takes TFLite's factor from its backend (1.40, measured)
    pi4 = cost_model(load_profile("raspberry-pi-4"), SPACE, TASK)
    estimate = pi4.estimate(SPACE.smallest())
    assert estimate.model_size_mb * MB == pytest.approx(557_724)
    assert estimate.size_source == "formula x INT8 factor 1.4 (measured: bench/results/int8_size.md)"


def test_an_int8_factor_nobody_measured_says_so_in_the_estimate() -> None:
    """TensorRT's INT8 factor is a guess (its engines are built on the device): the estimate's size source says so.
    (No shipped TensorRT profile allows INT8: a Jetson Orin-like user profile, jetson-nano's with INT8 allowed.)"""
    nano = load_profile("jetson-nano")
    orin = dataclasses.replace(nano, precisions=("int8", "fp16", "fp32"),
                               hardware=dataclasses.replace(nano.hardware, peak_gflops_int8=1000.0))
    assert cost_model(orin, SPACE, TASK).estimate(SPACE.smallest()).size_source.startswith(
        "formula x INT8 factor 1 (guess: TensorRT INT8")
    assert cost_model(nano, SPACE, TASK).estimate(SPACE.smallest()).size_source == "formula"


def test_a_table_is_read_only_for_its_space_and_input(tmp_path: Path) -> None:
    """The 1x28x28 table is not the table of a 3x64x64 task, nor of another space at 1x28x28: the cost model falls
    back to the roofline and names the command that measures the missing table."""
    _table(tmp_path)
    model = CostModel(HOST, SPACE, TASK, int8_size=ORT_INT8, tables_dir=tmp_path)
    assert model.estimate(SPACE.smallest()).latency_source == "measured-table"
    colour = TaskShape(3, (64, 64), 10)
    for space, task in ((get_space("mbv3-32"), colour), (SPACE, colour), (get_space("mbv3-32"), TASK)):
        model = CostModel(HOST, space, task, int8_size=ORT_INT8, tables_dir=tmp_path)
        assert model.table is None and model.estimate(space.smallest()).latency_source == "roofline-estimate"
        h, w = task.image_hw
        assert (f"gtnpipe latency-table --device host --space {space.name} --input {task.in_channels}x{h}x{w} "
                f"--classes {task.num_classes}") in model.table_note
