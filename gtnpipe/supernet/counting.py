"""Exact MACs and parameter counts of a student, computed from its arch alone (no forward pass).

Conventions (the usual ones, as fvcore/thop count): a convolution costs
H_out * W_out * k * k * C_in / groups * C_out multiply-accumulates, a linear layer
in * out; batch norm, activations, pooling and additions cost nothing (BN folds into the
convolution at export). Parameters count every weight and bias, BN scale and shift included.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gtnpipe.supernet.schedule import Unit, units
from gtnpipe.supernet.space import ArchConfig, SearchSpace, TaskShape

__all__ = ["NetCost", "PartCosts", "count", "count_module", "count_parts"]


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


def count_module(model: nn.Module, task: TaskShape) -> NetCost:
    """MACs and parameters of any module by running one input through it with hooks.

    The reference that `count` is tested against, and the counter for models outside the
    pool (the teacher). Same conventions as `count`.
    """
    macs = 0

    def on_conv(module: nn.Conv2d, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal macs
        kh, kw = module.kernel_size
        macs += output.shape[2] * output.shape[3] * kh * kw * module.in_channels // module.groups * module.out_channels

    def on_linear(module: nn.Linear, _inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        nonlocal macs
        macs += module.in_features * module.out_features

    handles = [m.register_forward_hook(on_conv) for m in model.modules() if isinstance(m, nn.Conv2d)]
    handles += [m.register_forward_hook(on_linear) for m in model.modules() if isinstance(m, nn.Linear)]
    was_training = model.training
    try:
        model.train(False)
        with torch.no_grad():
            model(torch.zeros(1, task.in_channels, *task.image_hw))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return NetCost(macs, sum(p.numel() for p in model.parameters()))
