"""Device profiles: one TOML file per target device (device_profiles/<name>.toml, shipped inside the wheel).

A profile says which runtime the device runs (and which versions of it, with what
follows from that, such as the highest ONNX opset its parser takes), which precisions
may ship, how the model is run (threads, batch), the budgets a student must meet
(units in the names), and spec-sheet numbers for the roofline latency estimate used
when no measured latency table exists for the device.

Loading is strict (gtnpipe.config.toml): unknown keys, wrong types, non-positive
budgets, an unknown runtime or precision, and a `name` that differs from the file
stem are errors naming the file, the field, the bad value and what is allowed.
This module imports no torch: `gtnpipe devices` runs on a device without it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Literal, get_args

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from gtnpipe.config.resources import shipped_dir
from gtnpipe.config.toml import as_dict, load_named
from gtnpipe.deploy.backends import runtimes  # the one exception to config's layer (pyproject: import-linter)
from gtnpipe.errors import ConfigError

__all__ = [
    "PRECISIONS",
    "Budgets",
    "DeviceProfile",
    "HardwareSpec",
    "Precision",
    "RuntimeSpec",
    "SpaceBudgets",
    "known_profiles",
    "load_profile",
    "parse_budget",
    "profiles_dir",
    "version_in_range",
    "with_budgets",
]

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


def version_in_range(version: str, version_range: str) -> bool:
    """Whether an installed runtime `version` is in a profile's `runtime.version` range (PEP 440, prereleases too)."""
    return SpecifierSet(version_range).contains(version, prereleases=True)


def _require_positive(obj: object, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"'{name}' must be a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class RuntimeSpec:
    name: str  # a runtime of the backend registry (gtnpipe.deploy.backends.runtimes())
    version: str  # the runtime versions this profile targets, a PEP 440 range such as ">=8.0,<8.3"
    max_onnx_opset: int  # the highest ONNX opset the runtime's importer parses; export uses at most this

    def __post_init__(self) -> None:
        known = runtimes()
        if self.name not in known:
            raise ValueError(f"'name' = {self.name!r} is not allowed; allowed values: {', '.join(map(repr, known))} (the "
                             "runtimes of gtnpipe's backend registry)")
        try:
            SpecifierSet(self.version)
        except InvalidSpecifier as err:
            raise ValueError(f"'version' = {self.version!r} is not a version range; write e.g. '>=8.0,<8.3'") from err
        if not 7 <= self.max_onnx_opset <= 30:
            raise ValueError(f"'max_onnx_opset' must be an ONNX opset between 7 and 30, got {self.max_onnx_opset}")


@dataclass(frozen=True)
class Budgets:
    latency_ms_p90: float  # 90th percentile latency of one batch of `batch_size` images
    peak_memory_mb: float  # peak resident memory of the process running the model, runtime included
    model_size_mb: float  # serialised model file(s) at the shipped precision
    max_accuracy_drop_points: float = 1.0  # top-1 points an FP16/INT8 artifact may lose against FP32
    # search plans for a predicted p90 of at most (100 - latency_margin_pct)% of latency_ms_p90, leaving room for
    # the prediction's error and the device's run-to-run noise; measured latency is still judged against the budget
    latency_margin_pct: float = 0.0

    def __post_init__(self) -> None:
        _require_positive(self, ("latency_ms_p90", "peak_memory_mb", "model_size_mb"))
        if not (math.isfinite(self.max_accuracy_drop_points) and self.max_accuracy_drop_points >= 0):
            raise ValueError(f"'max_accuracy_drop_points' must be a number >= 0, got {self.max_accuracy_drop_points!r}")
        if not (math.isfinite(self.latency_margin_pct) and 0 <= self.latency_margin_pct < 100):
            raise ValueError(f"'latency_margin_pct' must be a percentage in [0, 100), got {self.latency_margin_pct!r}")

    @property
    def planned_latency_ms_p90(self) -> float:
        """The p90 latency search plans for: the budget less the margin."""
        return self.latency_ms_p90 * (1 - self.latency_margin_pct / 100)


@dataclass(frozen=True)
class SpaceBudgets:
    """[[space_budgets]]: the budgets for students of one search space (a device's 28-px targets do not fit a 224-px
    model): the fields given replace the profile's [budgets] when the build's space (or, for `gtnpipe compile`, the
    space the model's input size belongs to) is `space`."""

    space: str
    latency_ms_p90: float | None = None
    peak_memory_mb: float | None = None
    model_size_mb: float | None = None

    def __post_init__(self) -> None:
        given = tuple(n for n in ("latency_ms_p90", "peak_memory_mb", "model_size_mb") if getattr(self, n) is not None)
        if not given:
            raise ValueError(f"space_budgets for {self.space!r} give no budget: set latency_ms_p90, peak_memory_mb or "
                             "model_size_mb")
        _require_positive(self, given)


@dataclass(frozen=True)
class HardwareSpec:
    """Spec-sheet numbers for the roofline estimate (each profile's comments give the sources).

    A peak of 0 means the device has no fast path for that precision; a profile may only
    allow precisions whose peak it gives.
    """

    peak_gflops_fp32: float
    memory_gbps: float
    layer_overhead_us: float  # fixed cost per layer (kernel launch, scheduling), from the runtime's profiles
    runtime_overhead_mb: float  # resident memory of the runtime with a tiny model loaded
    peak_gflops_fp16: float = 0.0
    peak_gflops_int8: float = 0.0  # GOP/s

    def __post_init__(self) -> None:
        _require_positive(self, ("peak_gflops_fp32", "memory_gbps", "runtime_overhead_mb"))
        for name in ("layer_overhead_us", "peak_gflops_fp16", "peak_gflops_int8"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"'{name}' must be a finite number >= 0, got {value!r}")

    def peak_gflops(self, precision: str) -> float:
        return float(getattr(self, f"peak_gflops_{precision}"))


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    runtime: RuntimeSpec
    # allowed precisions, most preferred first: search and the cost model use the first;
    # the build falls back along the list when the accuracy guard rejects one
    precisions: tuple[Precision, ...]
    threads: int
    batch_size: int
    budgets: Budgets
    hardware: HardwareSpec
    space_budgets: tuple[SpaceBudgets, ...] = ()  # per search space: what replaces [budgets] for its students

    def __post_init__(self) -> None:
        if not self.precisions or len(set(self.precisions)) != len(self.precisions):
            raise ValueError(f"'precisions' must list distinct values from {list(PRECISIONS)}, got {list(self.precisions)}")
        for name in ("threads", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"'{name}' must be >= 1, got {getattr(self, name)}")
        for precision in self.precisions:
            if self.hardware.peak_gflops(precision) <= 0:
                raise ValueError(
                    f"precision {precision!r} is allowed but [hardware] gives no 'peak_gflops_{precision}'; "
                    "add it (from the spec sheet) or remove the precision"
                )
        if self.runtime.name == "tensorrt" and "fp32" not in self.precisions and "fp16" not in self.precisions:
            raise ValueError("a tensorrt profile needs 'fp16' or 'fp32' among its precisions (INT8 engines fall back to them)")

        spaces = [b.space for b in self.space_budgets]
        if len(set(spaces)) != len(spaces):
            raise ValueError(f"'space_budgets' names a space more than once: {spaces}")

    def for_space(self, space: str) -> DeviceProfile:
        """The profile whose [budgets] are those for students of `space` (its [[space_budgets]] entry, if any)."""
        entry = next((b for b in self.space_budgets if b.space == space), None)
        if entry is None:
            return self
        given = {n: v for n, v in as_dict(entry).items() if n != "space" and v is not None}
        return replace(self, budgets=replace(self.budgets, **given))

    @property
    def precision(self) -> Precision:
        """The precision the device ships by preference (what search plans for)."""
        return self.precisions[0]

    def to_dict(self) -> dict[str, object]:
        return as_dict(self)

    def sha256(self) -> str:
        """Hash of the profile's content (not its file's formatting): recorded in manifests and tables."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def profiles_dir() -> Path:
    """The shipped profiles' folder: `device_profiles/` of the checkout, packaged in the wheel (gtnpipe.config.resources)."""
    return shipped_dir("device_profiles")


def known_profiles() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.toml"))


def parse_budget(text: str) -> tuple[str, float]:
    """`--budget NAME=VALUE` (e.g. latency_ms_p90=2.0)."""
    name, sep, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not sep or not name or not math.isfinite(number):
        raise ConfigError(f"--budget {text!r}: give NAME=VALUE, a [budgets] field and a number (e.g. latency_ms_p90=2.0)")
    return name.strip(), number


def with_budgets(profile: DeviceProfile, overrides: tuple[tuple[str, float], ...]) -> DeviceProfile:
    """The profile with some [budgets] replaced (--budget NAME=VALUE), checked as a profile file's would be."""
    if not overrides:
        return profile
    allowed = [f.name for f in fields(Budgets)]
    unknown = sorted({name for name, _ in overrides} - set(allowed))
    if unknown:
        raise ConfigError(f"--budget {', '.join(unknown)}: not a budget; the budgets are {', '.join(allowed)}")
    try:
        budgets = replace(profile.budgets, **dict(overrides))
    except ValueError as err:
        raise ConfigError(f"--budget {', '.join(f'{n}={v:g}' for n, v in overrides)}: {err}") from err
    return replace(profile, budgets=budgets)


def load_profile(name_or_path: str | Path | DeviceProfile) -> DeviceProfile:
    """A shipped profile by name (device_profiles/<name>.toml) or the user's own by path (a profile: itself)."""
    if isinstance(name_or_path, DeviceProfile):
        return name_or_path
    return load_named(DeviceProfile, name_or_path, profiles_dir(), kind="device",
                      hint="or pass the path to your own profile .toml; 'gtnpipe devices show host' prints one to start from")
