"""The weight-sharing supernet: every student of a `SearchSpace` is a path through it.

OFA's elastic MobileNetV3 (Cai et al., "Once-for-All", ICLR 2020), with its conventions:
- depth: a stage runs its first d blocks;
- expand ratio: a block uses the first `mid` channels of its expansion;
- kernel size: a smaller depthwise kernel is the centre of the next larger one, passed
  through a learned (k*k x k*k) transform shared by the block's channels (identity at init).
The active arch is an argument of `forward`, never module state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gtnpipe.models.static import (
    MBBlock,
    SqueezeExcite,
    StagedNet,
    build_static,
    conv_bn_act,
    init_weights,
    make_head,
    make_stem,
)
from gtnpipe.space.schedule import block_in_channels
from gtnpipe.space.spaces import ArchConfig, Block, SearchSpace, StageSpec, TaskShape, make_divisible

__all__ = ["DynamicMBBlock", "Supernet"]


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d, channels: int) -> torch.Tensor:
    # Slices of the running stats are views: training updates the shared buffers in place (as OFA).
    return F.batch_norm(
        x, bn.running_mean[:channels], bn.running_var[:channels], bn.weight[:channels], bn.bias[:channels],
        bn.training, bn.momentum, bn.eps,
    )


class DynamicMBBlock(nn.Module):
    """An inverted-residual block at its largest size whose forward runs any (kernel, expand)."""

    def __init__(self, c_in: int, c_out: int, *, spec: StageSpec, stride: int, space: SearchSpace) -> None:
        super().__init__()
        self.c_in, self.c_out, self.stride, self.act_name = c_in, c_out, stride, spec.act
        self.kernel_sizes, self.se_divisor = space.kernel_sizes, space.se_divisor
        max_mid = self.mid_channels(space.expand_ratios[-1])
        max_k = space.kernel_sizes[-1]
        self.expand = conv_bn_act(c_in, max_mid, 1, act=spec.act)
        self.depthwise = conv_bn_act(max_mid, max_mid, max_k, stride, groups=max_mid, act=spec.act)
        self.kernel_transforms = nn.ParameterDict({
            f"{big}to{small}": nn.Parameter(torch.eye(small * small))
            for big, small in zip(space.kernel_sizes[1:], space.kernel_sizes[:-1])
        })
        self.se = SqueezeExcite(max_mid, make_divisible(max_mid / 4, space.se_divisor)) if spec.se else None
        self.project = conv_bn_act(max_mid, c_out, 1, act=None)
        self.act = self.expand[2]

    def mid_channels(self, expand: int) -> int:
        return make_divisible(self.c_in * expand, 8)

    def depthwise_weight(self, kernel: int, mid: int) -> torch.Tensor:
        """The (mid, 1, kernel, kernel) depthwise weight: centre crops through the transforms."""
        weight = self.depthwise[0].weight[:mid]
        size = weight.shape[-1]
        for big, small in zip(reversed(self.kernel_sizes[1:]), reversed(self.kernel_sizes[:-1])):
            if size == kernel:
                break
            start = (big - small) // 2
            centre = weight[:, :, start : start + small, start : start + small]
            weight = F.linear(centre.reshape(mid, small * small), self.kernel_transforms[f"{big}to{small}"])
            weight = weight.reshape(mid, 1, small, small)
            size = small
        return weight

    def forward(self, x: torch.Tensor, block: Block) -> torch.Tensor:
        mid = self.mid_channels(block.expand)
        out = self.act(_bn(F.conv2d(x, self.expand[0].weight[:mid]), self.expand[1], mid))
        w = self.depthwise_weight(block.kernel, mid)
        out = F.conv2d(out, w, None, self.stride, block.kernel // 2, 1, mid)
        out = self.act(_bn(out, self.depthwise[1], mid))
        if self.se is not None:
            red = make_divisible(mid / 4, self.se_divisor)
            s = out.mean((2, 3), keepdim=True)
            s = torch.relu(F.conv2d(s, self.se.reduce.weight[:red, :mid], self.se.reduce.bias[:red]))
            out = out * F.hardsigmoid(F.conv2d(s, self.se.expand.weight[:mid, :red], self.se.expand.bias[:mid]))
        out = _bn(F.conv2d(out, self.project[0].weight[:, :mid]), self.project[1], self.c_out)
        return out + x if self.stride == 1 and self.c_in == self.c_out else out

    @torch.no_grad()
    def active_state(self, block: Block) -> dict[str, torch.Tensor]:
        """The weights of the static `MBBlock` for `block`, keyed as its state_dict."""
        mid = self.mid_channels(block.expand)
        state = {
            "expand.0.weight": self.expand[0].weight[:mid],
            "depthwise.0.weight": self.depthwise_weight(block.kernel, mid),
        }
        for name, bn, c in (("expand.1", self.expand[1], mid), ("depthwise.1", self.depthwise[1], mid),
                            ("project.1", self.project[1], self.c_out)):
            for key in ("weight", "bias", "running_mean", "running_var"):
                state[f"{name}.{key}"] = getattr(bn, key)[:c]
            state[f"{name}.num_batches_tracked"] = bn.num_batches_tracked
        if self.se is not None:
            red = make_divisible(mid / 4, self.se_divisor)
            state |= {
                "se.reduce.weight": self.se.reduce.weight[:red, :mid],
                "se.reduce.bias": self.se.reduce.bias[:red],
                "se.expand.weight": self.se.expand.weight[:mid, :red],
                "se.expand.bias": self.se.expand.bias[:mid],
            }
        state["project.0.weight"] = self.project[0].weight[:, :mid]
        return {k: v.detach().clone() for k, v in state.items()}


class Supernet(nn.Module):
    """All students of `space` in one network; `forward(x, arch)` runs one of them."""

    def __init__(self, space: SearchSpace, task: TaskShape) -> None:
        super().__init__()
        self.space, self.task = space, task
        self.stem = make_stem(space, task)
        self.stages = nn.ModuleList(
            nn.ModuleList(
                DynamicMBBlock(block_in_channels(space, s, i), spec.width, spec=spec,
                               stride=spec.stride if i == 0 else 1, space=space)
                for i in range(space.max_depth)
            )
            for s, spec in enumerate(space.stages)
        )
        self.head = make_head(space, task)
        init_weights(self)

    def forward_stages(self, x: torch.Tensor, arch: ArchConfig) -> list[torch.Tensor]:
        self.space.validate(arch)
        feats = []
        x = self.stem(x)
        for blocks, active in zip(self.stages, arch.stages):
            for block, choice in zip(blocks, active):
                x = block(x, choice)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor, arch: ArchConfig) -> torch.Tensor:
        return self.head(self.forward_stages(x, arch)[-1])

    def forward_from(self, h: torch.Tensor, arch: ArchConfig, *, start_stage: int) -> torch.Tensor:
        """Logits from features `h` entering stage `start_stage` (0-based): the tail of a branch."""
        self.space.validate(arch)
        for blocks, active in zip(self.stages[start_stage:], arch.stages[start_stage:]):
            for block, choice in zip(blocks, active):
                h = block(h, choice)
        return self.head(h)

    @torch.no_grad()
    def extract(self, arch: ArchConfig) -> StagedNet:
        """A standalone static student with this arch's weights copied out of the supernet."""
        net = build_static(self.space.validate(arch), self.space, self.task)
        net.stem.load_state_dict(self.stem.state_dict())
        net.head.load_state_dict(self.head.state_dict())
        for static_stage, blocks, active in zip(net.stages, self.stages, arch.stages):
            for static_block, block, choice in zip(static_stage, blocks, active):
                assert isinstance(static_block, MBBlock)
                static_block.load_state_dict(block.active_state(choice))
        return net.train(self.training)
