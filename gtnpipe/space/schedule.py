"""A student as an execution schedule: its units (stem, each block, head) and their layers, with shapes.

This is what the cost models read: MACs and parameters (gtnpipe.space.counting sums
them), the latency table's keys (one per distinct unit of the space: the table is
measured per unit on each device), the roofline estimate and the activation memory
(both per layer). Plain Python, no torch: computed from the arch alone.

A unit's key names everything that fixes its shapes in a given space and input size:
`stem`, `head`, and `s<stage>a-k<kernel>e<expand>` for a stage's first (strided) block or
`s<stage>b-k<kernel>e<expand>` for its later blocks (all identical in shape).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Literal

from gtnpipe.space.spaces import ArchConfig, Block, SearchSpace, TaskShape, make_divisible

__all__ = ["Layer", "Unit", "all_units", "block_in_channels", "units"]


def _out(size: int, stride: int) -> int:
    return (size - 1) // stride + 1  # odd kernel, padding k // 2


@dataclass(frozen=True)
class Layer:
    """One convolution or linear layer (BN folds into it at export; activations are free)."""

    op: Literal["conv", "linear"]
    c_in: int
    c_out: int
    kernel: int
    groups: int
    hw_in: tuple[int, int]
    hw_out: tuple[int, int]
    bias: bool  # a bias in the trained model (SE convs, linears)
    bn: bool  # followed by batch norm (scale and shift)

    @cached_property
    def weights(self) -> int:
        return self.kernel * self.kernel * self.c_in // self.groups * self.c_out

    @cached_property
    def macs(self) -> int:
        return self.hw_out[0] * self.hw_out[1] * self.weights

    @cached_property
    def params(self) -> int:
        """Trainable parameters: weights, bias, BN scale and shift."""
        return self.weights + (self.c_out if self.bias else 0) + (2 * self.c_out if self.bn else 0)

    @cached_property
    def deployed_params(self) -> int:
        """Parameters after export, BN folded into the weights and a bias."""
        return self.weights + (self.c_out if self.bias or self.bn else 0)

    @cached_property
    def in_elems(self) -> int:
        return self.c_in * self.hw_in[0] * self.hw_in[1]

    @cached_property
    def out_elems(self) -> int:
        return self.c_out * self.hw_out[0] * self.hw_out[1]


def _conv(c_in: int, c_out: int, k: int, hw_in: tuple[int, int], stride: int = 1, *, groups: int = 1,
          bias: bool = False, bn: bool = True) -> Layer:
    return Layer("conv", c_in, c_out, k, groups, hw_in, (_out(hw_in[0], stride), _out(hw_in[1], stride)), bias, bn)


def _linear(c_in: int, c_out: int) -> Layer:
    return Layer("linear", c_in, c_out, 1, 1, (1, 1), (1, 1), True, False)


@dataclass(frozen=True)
class Unit:
    """A stem, one inverted-residual block, or the head."""

    key: str
    kind: Literal["stem", "block", "head"]
    stage: int  # 0-based stage of a block; -1 for the stem, num_stages for the head
    hw_in: tuple[int, int]
    c_in: int
    c_out: int
    residual: bool  # the unit's input stays live until its output is added to it
    layers: tuple[Layer, ...]
    block: Block | None = None  # a block's kernel and expand ratio
    stride: int = 1

    @cached_property
    def hw_out(self) -> tuple[int, int]:
        return self.layers[-1].hw_out if self.kind != "head" else (1, 1)

    @cached_property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @cached_property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)


def _mbconv_layers(c_in: int, c_out: int, mid: int, k: int, hw_in: tuple[int, int], stride: int, *, se: bool,
                   expand: bool, se_divisor: int) -> tuple[Layer, ...]:
    layers = [_conv(c_in, mid, 1, hw_in)] if expand else []
    dw = _conv(mid, mid, k, hw_in, stride, groups=mid)
    layers.append(dw)
    if se:
        red = make_divisible(mid / 4, se_divisor)
        layers += [_conv(mid, red, 1, (1, 1), bias=True, bn=False), _conv(red, mid, 1, (1, 1), bias=True, bn=False)]
    layers.append(_conv(mid, c_out, 1, dw.hw_out))
    return tuple(layers)


def block_in_channels(space: SearchSpace, stage: int, index: int) -> int:
    if index > 0:
        return space.stages[stage].width
    return space.first_width if stage == 0 else space.stages[stage - 1].width


@lru_cache(maxsize=4096)
def _stem(space: SearchSpace, task: TaskShape) -> Unit:
    conv = _conv(task.in_channels, space.stem_width, 3, task.image_hw, space.stem_stride)
    first = _mbconv_layers(space.stem_width, space.first_width, space.stem_width, 3, conv.hw_out, 1, se=False,
                           expand=False, se_divisor=space.se_divisor)
    return Unit("stem", "stem", -1, task.image_hw, task.in_channels, space.first_width,
                False, (conv, *first))


# Units are frozen and a pure function of their arguments: search builds ~500k of them for ~30k students out of a
# few hundred distinct ones, so they are built once (with their figures cached too, the
# cost model's estimate fell from 0.75 to about 0.2 ms per student).
@lru_cache(maxsize=4096)
def _block(space: SearchSpace, stage: int, index: int, block: Block, hw_in: tuple[int, int]) -> Unit:
    spec = space.stages[stage]
    c_in = block_in_channels(space, stage, index)
    stride = spec.stride if index == 0 else 1
    layers = _mbconv_layers(c_in, spec.width, make_divisible(c_in * block.expand, 8), block.kernel, hw_in, stride,
                            se=spec.se, expand=True, se_divisor=space.se_divisor)
    key = f"s{stage + 1}{'a' if index == 0 else 'b'}-k{block.kernel}e{block.expand}"
    return Unit(key, "block", stage, hw_in, c_in, spec.width, stride == 1 and c_in == spec.width, layers, block, stride)


@lru_cache(maxsize=4096)
def _head(space: SearchSpace, task: TaskShape, hw_in: tuple[int, int]) -> Unit:
    layers = (_conv(space.stages[-1].width, space.final_width, 1, hw_in),
              _linear(space.final_width, space.head_width), _linear(space.head_width, task.num_classes))
    return Unit("head", "head", space.num_stages, hw_in, space.stages[-1].width, task.num_classes, False, layers)


def units(arch: ArchConfig, space: SearchSpace, task: TaskShape) -> list[Unit]:
    """The arch's units in execution order: stem, every active block, head; at the arch's resolution when it names
    one (task.for_arch)."""
    space.validate(arch)
    task = task.for_arch(arch)
    out = [_stem(space, task)]
    hw = out[0].hw_out
    for s, blocks in enumerate(arch.stages):
        for i, block in enumerate(blocks):
            out.append(_block(space, s, i, block, hw))
            hw = out[-1].hw_out
    out.append(_head(space, task, hw))
    return out


def all_units(space: SearchSpace, task: TaskShape) -> list[Unit]:
    """Every distinct unit any student of the space can contain: what a latency table measures."""
    out = [_stem(space, task)]
    hw = out[0].hw_out
    for s in range(space.num_stages):
        firsts = [_block(space, s, 0, block, hw) for block in space.choices]
        hw_next = firsts[0].hw_out
        out += firsts
        if space.max_depth > 1:
            out += [_block(space, s, 1, block, hw_next) for block in space.choices]
        hw = hw_next
    out.append(_head(space, task, hw))
    return out
