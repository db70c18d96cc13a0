"""Cost models: a student's latency, peak memory and model size on a device, each with its source.

Latency (nn-Meter's approach at block level instead of kernel level):
- `measured-table`: the device's table (<device>.json in the user data directory, else the one shipped in
  device_profiles/tables/; written by `gtnpipe latency-table` in the device's runtime) gives the measured p50 latency of
  every distinct unit of the space (stem, each block configuration, head). Their sum
  misses whole-network effects (one session call instead of many, cache reuse), so the
  table also holds a linear correction `p50 = slope * sum + per_unit * units + intercept`
  fitted on a few dozen whole networks (a unit timed alone pays a runtime call's fixed cost
  that a whole network pays once), and the measured p90/p50 ratio that turns p50 into the budget's p90.
- `roofline-estimate`: without a table, per layer max(FLOPs / peak, bytes / bandwidth)
  plus the profile's per-layer overhead, from spec-sheet numbers. Depthwise convolutions
  run far below peak on real CPUs, so this is optimistic; bench/predictor.py shows by how much on host.

Memory: the runtime's fixed overhead + weights at the precision + the peak of live
activations in the arch's schedule (layer input and output, plus a block's input kept
for its residual). With a table, overhead and a slope on the model bytes are fitted on
the calibration networks' measured peak RSS (`measured-table`); without one, the
profile's overhead and a slope of 1 (`roofline-estimate`).

Model size: weights after BN folding at the precision plus a per-layer allowance for the
graph description (`formula`; bench/predictor.py checks it against real ONNX files).

The table's format is gtnpipe.devices.latency_table (torch-free, because the device writes it),
re-exported here. MB means 10^6 bytes everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from gtnpipe.config.profiles import Budgets, DeviceProfile
from gtnpipe.devices.latency_table import (
    TABLE_SCHEMA,
    LatencyTable,
    PrecisionTable,
    measure_command,
    table_dirs,
    table_path,
    table_write_path,
)
from gtnpipe.errors import ConfigError
from gtnpipe.space.counting import count
from gtnpipe.space.schedule import Layer, Unit, units
from gtnpipe.space.spaces import ArchConfig, SearchSpace, TaskShape

__all__ = [
    "TABLE_SCHEMA",
    "CostEstimate",
    "CostModel",
    "LatencyTable",
    "PrecisionTable",
    "activation_peak_elems",
    "SizeFactor",
    "model_size_bytes",
    "roofline_ms",
    "table_path",
    "table_write_path",
    "weight_bytes",
]

MB = 1e6
BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
GRAPH_BYTES_PER_LAYER = 160  # node, initializer names and attributes in an ONNX/TFLite graph (fit on ONNX exports)
GRAPH_BYTES_FIXED = 1500
Source = Literal["measured-table", "roofline-estimate", "formula"]


@dataclass(frozen=True)
class SizeFactor:
    """A runtime's INT8 file bytes over the formula's (an upper bound) and where the figure comes from: "measured:
    <results file>" or "guess: <why>" (the backend's int8_size_factor and int8_size_factor_source)."""

    value: float
    source: str

    @property
    def size_source(self) -> str:
        """The estimate's size source at INT8: the formula, times this factor, saying whether it was measured."""
        return f"formula x INT8 factor {self.value:g} ({self.source})"


def weight_bytes(schedule: list[Unit], precision: str) -> int:
    return sum(layer.deployed_params for unit in schedule for layer in unit.layers) * BYTES[precision]


def model_size_bytes(schedule: list[Unit], precision: str, *, int8_size_factor: float = 1.0) -> int:
    """Serialised size: weights at `precision` plus graph bytes; INT8 times the runtime's `int8_size_factor`.

    INT8 files hold more than one byte per weight: 32-bit biases, per-channel scales and zero points (TFLite stores an
    int64 zero point per channel), quantize/dequantize nodes. Each backend carries its factor and where it comes from
    (Backend.int8_size_factor / int8_size_factor_source: bench/int8_size.py measured ONNX Runtime, OpenVINO and
    TFLite; TensorRT's is a guess)."""
    n_layers = sum(len(unit.layers) for unit in schedule)
    size = weight_bytes(schedule, precision) + GRAPH_BYTES_PER_LAYER * n_layers + GRAPH_BYTES_FIXED
    return round(size * int8_size_factor) if precision == "int8" else size


def activation_peak_elems(schedule: list[Unit]) -> int:
    """Largest number of activation elements alive at once, per image, running units in order."""
    peak = 0
    for unit in schedule:
        for i, layer in enumerate(unit.layers):
            live = layer.in_elems + layer.out_elems
            if unit.residual and i > 0:
                live += unit.layers[0].in_elems
            peak = max(peak, live)
    return peak


def _layer_roofline_s(layer: Layer, profile: DeviceProfile, precision: str) -> float:
    hw = profile.hardware
    batch = profile.batch_size
    flops = 2.0 * layer.macs * batch
    moved = (layer.in_elems + layer.out_elems) * batch * BYTES[precision] + layer.deployed_params * BYTES[precision]
    return max(flops / (hw.peak_gflops(precision) * 1e9), moved / (hw.memory_gbps * 1e9)) + hw.layer_overhead_us * 1e-6


def roofline_ms(schedule: list[Unit], profile: DeviceProfile, precision: str) -> float:
    return 1e3 * sum(_layer_roofline_s(layer, profile, precision) for unit in schedule for layer in unit.layers)


@cache
def _read_table(path: Path, mtime_ns: int) -> LatencyTable:
    return LatencyTable.from_json(path.read_text(), where=str(path))


@dataclass(frozen=True)
class CostEstimate:
    arch_id: str
    precision: str
    macs: int
    params: int
    latency_ms_p50: float
    latency_ms_p90: float
    latency_source: Source
    peak_memory_mb: float
    memory_source: Source
    model_size_mb: float
    size_source: str  # "formula", or at INT8 the formula times the runtime's factor and whether that was measured

    def violations(self, budgets: Budgets) -> list[str]:
        """Each budget this student exceeds, as 'field: predicted > budget' (latency: the budget less its margin)."""
        out = []
        if self.latency_ms_p90 > budgets.planned_latency_ms_p90:
            margin = f" less the {budgets.latency_margin_pct:g}% margin" if budgets.latency_margin_pct else ""
            out.append(f"latency_ms_p90: predicted {self.latency_ms_p90:.3f} > budget {budgets.latency_ms_p90:g}{margin}")
        for predicted, budget, name in ((self.peak_memory_mb, budgets.peak_memory_mb, "peak_memory_mb"),
                                        (self.model_size_mb, budgets.model_size_mb, "model_size_mb")):
            if predicted > budget:
                out.append(f"{name}: predicted {predicted:.3f} > budget {budget:g}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class CostModel:
    """Predicts a student's cost on one device at one precision."""

    def __init__(self, profile: DeviceProfile, space: SearchSpace, task: TaskShape, *, int8_size: SizeFactor,
                 precision: str | None = None, tables_dir: Path | None = None) -> None:
        """`int8_size`: the profile's runtime's INT8 size factor (gtnpipe.deploy.backends: this layer does not import
        the backends; the search stage passes it)."""
        self.profile, self.space, self.task, self.int8_size = profile, space, task, int8_size
        self.precision = precision or profile.precision
        if self.precision not in profile.precisions:
            raise ConfigError(f"device {profile.name!r} does not allow precision {self.precision!r}; "
                              f"its precisions: {', '.join(profile.precisions)}")
        self.tables_dir = tables_dir
        # per input shape (an arch with its own resolution runs at another): (table or None, note, measured on)
        self._tables: dict[TaskShape, tuple[PrecisionTable | None, str, str | None]] = {}
        self.table, self.table_note, self.table_machine = self.table_at(self.task)  # at the data's resolution
        self._memo: dict[ArchConfig, CostEstimate] = {}

    def table_at(self, task: TaskShape) -> tuple[PrecisionTable | None, str, str | None]:
        """The measured table for inputs of `task` (None with the reason and the command that measures one), and
        the CPU it was measured on when it says."""
        task = TaskShape.of(task)
        if task not in self._tables:
            self._tables[task] = self._find_table(task)
        return self._tables[task]

    def table_notes(self) -> list[str]:
        """Where each input shape estimated so far took its latency from (the data's resolution first)."""
        return list(dict.fromkeys(note for _, note, _ in self._tables.values()))

    def _find_table(self, task: TaskShape) -> tuple[PrecisionTable | None, str, str | None]:
        # the user's own table first, then the shipped one; only one measured for this space and input
        path = table_path(self.profile.name, self.space.name, task, self.tables_dir)
        if not path.exists():
            looked = [self.tables_dir] if self.tables_dir is not None else list(table_dirs())
            h, w = task.image_hw
            return None, (f"no measured table for {self.profile.name} at {self.space.name} {task.in_channels}x{h}x{w} "
                          f"({task.num_classes} classes) in {' or '.join(map(str, looked))}; measure one on the device: "
                          f"{measure_command(self.profile.name, self.space.name, task)}"), None
        table = _read_table(path, path.stat().st_mtime_ns)
        expected = (self.profile.name, self.profile.runtime.name, self.profile.threads, self.profile.batch_size,
                    self.space.name, task)
        found = (table.device, table.runtime, table.threads, table.batch_size, table.space, table.task)
        if found != expected:
            return None, f"{path} was measured for {found}, the profile needs {expected}; recalibrate", None
        if self.precision not in table.precisions:
            return None, f"{path} has no {self.precision} measurements (has {', '.join(table.precisions)})", None
        return table.precisions[self.precision], f"measured table {path}", table.measured.get("machine")

    def estimate(self, arch: ArchConfig) -> CostEstimate:
        if arch not in self._memo:
            self._memo[arch] = self._estimate(arch)
        return self._memo[arch]

    def _estimate(self, arch: ArchConfig) -> CostEstimate:
        schedule = units(arch, self.space, self.task)
        net = count(arch, self.space, self.task)
        model_bytes = (weight_bytes(schedule, self.precision)
                       + activation_peak_elems(schedule) * self.profile.batch_size * BYTES[self.precision])
        size_mb = model_size_bytes(schedule, self.precision, int8_size_factor=self.int8_size.value) / MB
        size_source = self.int8_size.size_source if self.precision == "int8" else "formula"
        t, _, _ = self.table_at(self.task.for_arch(arch))
        if t is not None:
            p50 = t.network_p50_ms(sum(t.units_ms[u.key] for u in schedule), len(schedule))
            return CostEstimate(arch.id, self.precision, net.macs, net.params, p50, p50 * t.p90_over_p50,
                                "measured-table", t.memory_overhead_mb + t.memory_slope * model_bytes / MB,
                                "measured-table", size_mb, size_source)
        p50 = roofline_ms(schedule, self.profile, self.precision)
        return CostEstimate(arch.id, self.precision, net.macs, net.params, p50, p50, "roofline-estimate",
                            self.profile.hardware.runtime_overhead_mb + model_bytes / MB, "roofline-estimate",
                            size_mb, size_source)

