"""Exact MACs and parameter counts of a student, computed from its arch alone (no forward pass).

Conventions (the usual ones, as fvcore/thop count): a convolution costs
H_out * W_out * k * k * C_in / groups * C_out multiply-accumulates, a linear layer
in * out; batch norm, activations, pooling and additions cost nothing (BN folds into the
convolution at export). Parameters count every weight and bias, BN scale and shift included.
Pure Python: the device-side cost model uses it without torch (gtnpipe.models.counting counts a torch module).
"""

from __future__ import annotations

from dataclasses import dataclass

from gtnpipe.space.schedule import Unit, units
from gtnpipe.space.spaces import ArchConfig, SearchSpace, TaskShape

__all__ = ["NetCost", "PartCosts", "count", "count_parts"]


@dataclass(frozen=True)
class NetCost:
    macs: int
    params: int

    def __add__(self, other: NetCost) -> NetCost:
        return NetCost(self.macs + other.macs, self.params + other.params)


_ZERO = NetCost(0, 0)


def _cost(unit: Unit) -> NetCost:
    return NetCost(unit.macs, unit.params)


@dataclass(frozen=True)
class PartCosts:
    """A student's cost split by part: stem (with the fixed first block), each stage, head."""

    stem: NetCost
    stages: tuple[NetCost, ...]
    head: NetCost

    def total(self) -> NetCost:
        out = self.stem + self.head
        for stage in self.stages:
            out += stage
        return out

    def tail(self, start_stage: int) -> NetCost:
        """Stages `start_stage`.. plus the head: what a GTN branch at that point runs of the student."""
        out = self.head
        for stage in self.stages[start_stage:]:
            out += stage
        return out


def count_parts(arch: ArchConfig, space: SearchSpace, task: TaskShape) -> PartCosts:
    schedule = units(arch, space, task)
    stages = [_ZERO] * space.num_stages
    for unit in schedule[1:-1]:
        stages[unit.stage] += _cost(unit)
    return PartCosts(_cost(schedule[0]), tuple(stages), _cost(schedule[-1]))


def count(arch: ArchConfig, space: SearchSpace, task: TaskShape) -> NetCost:
    """MACs and parameters of the static student `arch` at the task's input size (batch 1)."""
    return count_parts(arch, space, task).total()
