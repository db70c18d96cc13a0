"""The measured latency table's format (<device>/<space>_<C>x<H>x<W>_<N>cls.json) and where tables are found.

A table is keyed by the device, the search space and the input (channels, size, classes): the units it times are
that space's blocks at that resolution, so a table measured at 1x28x28 is never read for 3x224x224 (search falls
back to the roofline estimate and names the command that measures the missing table). Its precisions are inside.

Tables are searched in the user data directory first (`user_tables_dir()`: what `gtnpipe latency-table`
measured on this machine or was copied from a device), then among the tables shipped with gtnpipe
(`device_profiles/tables/` of the checkout, packaged in the wheel). `gtnpipe latency-table` writes
it (gtnpipe.measure.kit, on the device) and the cost model
reads it (gtnpipe.devices.cost, on the host). Torch-free, like everything a device runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gtnpipe.config.profiles import profiles_dir
from gtnpipe.config.resources import user_data_dir
from gtnpipe.errors import ConfigError
from gtnpipe.fsutil import atomic_write_bytes
from gtnpipe.space.spaces import TaskShape

__all__ = ["TABLE_SCHEMA", "LatencyTable", "PrecisionTable", "device_tables", "measure_command", "shipped_tables_dir",
           "table_dirs", "table_name", "table_path", "table_write_path", "user_tables_dir"]

TABLE_SCHEMA = 1


@dataclass(frozen=True)
class PrecisionTable:
    """What calibration measured for one precision on one device."""

    units_ms: dict[str, float]  # p50 latency of each unit run alone, one batch
    # whole-network p50 = slope * sum(units) + per_unit_ms * len(units) + intercept_ms: each unit timed alone
    # also paid one runtime call's fixed cost, which the whole network pays once
    slope: float
    per_unit_ms: float
    intercept_ms: float
    p90_over_p50: float
    memory_overhead_mb: float  # peak RSS = overhead + memory_slope * (weights + peak activations)
    memory_slope: float

    def network_p50_ms(self, units_sum_ms: float, n_units: int) -> float:
        """The whole-network p50 the fit predicts from the sum and the number of its units' p50s."""
        return self.slope * units_sum_ms + self.per_unit_ms * n_units + self.intercept_ms

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class LatencyTable:
    device: str
    runtime: str
    runtime_version: str
    threads: int
    batch_size: int
    space: str
    task: TaskShape
    precisions: dict[str, PrecisionTable]
    measured: dict[str, Any]  # provenance: when, the calibration networks, their measured and fitted figures

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", TaskShape.of(self.task))

    def to_json(self) -> str:
        return json.dumps({
            "schema": TABLE_SCHEMA, "device": self.device, "runtime": self.runtime,
            "runtime_version": self.runtime_version, "threads": self.threads, "batch_size": self.batch_size,
            "space": self.space, "task": self.task.to_dict(),
            "precisions": {p: t.to_dict() for p, t in self.precisions.items()},
            "measured": self.measured,
        }, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, where: str) -> LatencyTable:
        try:
            raw = json.loads(text)
            if raw.get("schema") != TABLE_SCHEMA:
                raise ConfigError(f"{where}: latency table schema {raw.get('schema')!r}, this gtnpipe reads "
                                  f"{TABLE_SCHEMA}; re-run 'gtnpipe latency-table --device {raw.get('device')}'")
            return cls(raw["device"], raw["runtime"], raw["runtime_version"], raw["threads"], raw["batch_size"],
                       raw["space"], TaskShape.of(raw["task"]),
                       {p: PrecisionTable(**t) for p, t in raw["precisions"].items()}, raw["measured"])
        except (ValueError, KeyError, TypeError, IndexError) as err:  # ValueError includes JSONDecodeError
            raise ConfigError(f"{where}: not a valid latency table ({err!r}); "
                              "re-run 'gtnpipe latency-table --device NAME' on that device") from err

    def save(self, path: Path) -> None:
        atomic_write_bytes(path, (self.to_json() + "\n").encode())


def user_tables_dir() -> Path:
    """Tables measured by the user: `tables/` in the user data directory (`$GTNPIPE_DATA_DIR` overrides it)."""
    return user_data_dir() / "tables"


def shipped_tables_dir() -> Path:
    """Tables that ship with gtnpipe (device_profiles/tables/, in the wheel too)."""
    return profiles_dir() / "tables"


def table_dirs() -> tuple[Path, ...]:
    """Where tables are searched, first match wins: the user's own, then the shipped ones."""
    return user_tables_dir(), shipped_tables_dir()


def table_name(device: str, space: str, task: TaskShape) -> str:
    """The table's path below a tables folder: `<device>/<space>_<C>x<H>x<W>_<N>cls.json`."""
    h, w = task.image_hw
    return f"{device}/{space}_{task.in_channels}x{h}x{w}_{task.num_classes}cls.json"


def measure_command(device: str, space: str, task: TaskShape) -> str:
    """The command that measures this table on the device."""
    h, w = task.image_hw
    return (f"gtnpipe latency-table --device {device} --space {space} --input {task.in_channels}x{h}x{w} "
            f"--classes {task.num_classes}")


def table_path(device: str, space: str, task: TaskShape, tables_dir: Path | None = None) -> Path:
    """The table the cost model reads for `device` at (`space`, `task`): in `tables_dir` when given, else the first of
    `table_dirs()` that has one; with none anywhere, where `gtnpipe latency-table` would write it (`table_write_path`)."""
    name = table_name(device, space, task)
    if tables_dir is not None:
        return tables_dir / name
    for folder in table_dirs():
        if (folder / name).is_file():
            return folder / name
    return table_write_path(device, space, task)


def table_write_path(device: str, space: str, task: TaskShape, tables_dir: Path | None = None) -> Path:
    """Where a table measured for `device` is written: in `tables_dir` when given, else in the user data directory
    (never into the installed package: it may be read-only, and a reinstall would lose the table)."""
    return (tables_dir or user_tables_dir()) / table_name(device, space, task)


def device_tables(device: str) -> list[Path]:
    """Every table measured for `device`, the user's own and the shipped ones (any space and input)."""
    return sorted(p for folder in table_dirs() for p in (folder / device).glob("*.json") if p.is_file())
