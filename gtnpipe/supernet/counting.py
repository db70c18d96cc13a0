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

from gtnpipe.supernet.space import ArchConfig, SearchSpace, TaskShape, make_divisible
from gtnpipe.supernet.static import block_in_channels

__all__ = ["NetCost", "PartCosts", "count", "count_module", "count_parts"]


@dataclass(frozen=True)
class NetCost:
    macs: int
    params: int

    def __add__(self, other: NetCost) -> NetCost:
        return NetCost(self.macs + other.macs, self.params + other.params)


_ZERO = NetCost(0, 0)


def _out(size: int, stride: int) -> int:
    return (size - 1) // stride + 1  # odd kernel, padding k // 2


def _conv(c_in: int, c_out: int, k: int, hw_out: tuple[int, int], *, groups: int = 1, bias: bool = False,
          bn: bool = True) -> NetCost:
    weights = k * k * c_in // groups * c_out
    params = weights + (c_out if bias else 0) + (2 * c_out if bn else 0)
    return NetCost(hw_out[0] * hw_out[1] * weights, params)


def _linear(c_in: int, c_out: int) -> NetCost:
    return NetCost(c_in * c_out, c_in * c_out + c_out)


def _block(c_in: int, c_out: int, mid: int, k: int, hw_in: tuple[int, int], stride: int, *, se: bool,
           expand: bool, se_divisor: int) -> tuple[NetCost, tuple[int, int]]:
    hw_out = (_out(hw_in[0], stride), _out(hw_in[1], stride))
    cost = _conv(c_in, mid, 1, hw_in) if expand else _ZERO
    cost += _conv(mid, mid, k, hw_out, groups=mid)
    if se:
        red = make_divisible(mid / 4, se_divisor)
        cost += _conv(mid, red, 1, (1, 1), bias=True, bn=False) + _conv(red, mid, 1, (1, 1), bias=True, bn=False)
    cost += _conv(mid, c_out, 1, hw_out)
    return cost, hw_out


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
    space.validate(arch)
    hw = (_out(task.image_hw[0], space.stem_stride), _out(task.image_hw[1], space.stem_stride))
    stem = _conv(task.in_channels, space.stem_width, 3, hw)
    first, hw = _block(space.stem_width, space.first_width, space.stem_width, 3, hw, 1, se=False, expand=False,
                       se_divisor=space.se_divisor)
    stages = []
    for s, (spec, blocks) in enumerate(zip(space.stages, arch.stages)):
        stage = _ZERO
        for i, block in enumerate(blocks):
            c_in = block_in_channels(space, s, i)
            cost, hw = _block(c_in, spec.width, make_divisible(c_in * block.expand, 8), block.kernel, hw,
                              spec.stride if i == 0 else 1, se=spec.se, expand=True, se_divisor=space.se_divisor)
            stage += cost
        stages.append(stage)
    head = _conv(space.stages[-1].width, space.final_width, 1, hw)
    head += _linear(space.final_width, space.head_width) + _linear(space.head_width, task.num_classes)
    return PartCosts(stem + first, tuple(stages), head)


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
