"""Static (fixed-architecture) MobileNetV3 students: what `Supernet.extract` returns and what ships.

Every network in gtnpipe (students and the teacher) has the same three parts, so the GTN
issue can splice one model's stages onto another's:
`stem` -> `stages[0..K-1]` (each an `nn.Sequential`) -> `head` (pool and classify).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gtnpipe.space.schedule import Unit, block_in_channels
from gtnpipe.space.spaces import ArchConfig, SearchSpace, TaskShape, make_divisible

__all__ = ["AtResolution", "MBBlock", "StagedNet", "at_resolution", "build_static", "build_unit", "init_weights", "make_act",
           "make_head", "make_stem", "resize_to"]


def make_act(name: str) -> nn.Module:
    return nn.ReLU(inplace=True) if name == "relu" else nn.Hardswish(inplace=True)


def conv_bn_act(c_in: int, c_out: int, kernel: int, stride: int = 1, *, groups: int = 1, act: str | None) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if act is not None:
        layers.append(make_act(act))
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """MobileNetV3 SE: global pool, 1x1 reduce + ReLU, 1x1 expand + hard sigmoid, rescale."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = torch.relu(self.reduce(s))
        return x * nn.functional.hardsigmoid(self.expand(s))


class MBBlock(nn.Module):
    """Inverted residual: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 project (+ identity)."""

    def __init__(
        self, c_in: int, c_out: int, *, mid: int, kernel: int, stride: int, se: bool, act: str, expand: bool = True,
        se_divisor: int = 8,
    ) -> None:
        super().__init__()
        self.expand = conv_bn_act(c_in, mid, 1, act=act) if expand else None
        self.depthwise = conv_bn_act(mid, mid, kernel, stride, groups=mid, act=act)
        self.se = SqueezeExcite(mid, make_divisible(mid / 4, se_divisor)) if se else None
        self.project = conv_bn_act(mid, c_out, 1, act=None)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(x) if self.expand is not None else x
        out = self.depthwise(out)
        if self.se is not None:
            out = self.se(out)
        out = self.project(out)
        return out + x if self.residual else out


class StagedNet(nn.Module):
    """stem -> stages -> head; `forward_stages` exposes each stage's output."""

    def __init__(self, stem: nn.Module, stages: list[nn.Sequential], head: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.head = head

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)


def make_stem(space: SearchSpace, task: TaskShape) -> nn.Sequential:
    return nn.Sequential(
        conv_bn_act(task.in_channels, space.stem_width, 3, space.stem_stride, act="hswish"),
        MBBlock(space.stem_width, space.first_width, mid=space.stem_width, kernel=3, stride=1, se=False, act="relu",
                expand=False),
    )


def make_head(space: SearchSpace, task: TaskShape) -> nn.Sequential:
    return nn.Sequential(
        conv_bn_act(space.stages[-1].width, space.final_width, 1, act="hswish"),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(space.final_width, space.head_width),
        nn.Hardswish(inplace=True),
        nn.Dropout(space.head_dropout),
        nn.Linear(space.head_width, task.num_classes),
    )


def init_weights(model: nn.Module) -> None:
    """Kaiming (fan_out) convs, unit BN, small-normal linears: MobileNetV3's reference init."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class AtResolution(nn.Module):
    """`net` fed its input resized to side x side (bilinear, antialiased when shrinking): how a student with its own
    input resolution (elastic resolution) trains and is evaluated on the data's images. Resizing commutes with the
    per-channel normalisation before it (its weights sum to 1), so this equals resizing the images first, as the
    device does; the artifact holds `net` alone, with a side x side input."""

    def __init__(self, net: nn.Module, side: int) -> None:
        super().__init__()
        self.net, self.side = net, side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(resize_to(x, self.side))


def resize_to(x: torch.Tensor, side: int) -> torch.Tensor:
    """Float images (N, C, H, W) as side x side: bilinear, antialiased when shrinking (what Pillow's resize does)."""
    if tuple(x.shape[-2:]) == (side, side):
        return x
    return F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)


def at_resolution(net: nn.Module, arch: ArchConfig) -> nn.Module:
    """`net` as it runs on the data's images: through `AtResolution` when `arch` names its own resolution."""
    return AtResolution(net, arch.resolution_px) if arch.resolution_px else net


def build_static(arch: ArchConfig, space: SearchSpace, task: TaskShape) -> StagedNet:
    """A freshly initialised student with architecture `arch` (for training from scratch)."""
    space.validate(arch)
    stages = []
    for s, (spec, blocks) in enumerate(zip(space.stages, arch.stages)):
        layers = []
        for i, block in enumerate(blocks):
            c_in = block_in_channels(space, s, i)
            layers.append(
                MBBlock(c_in, spec.width, mid=make_divisible(c_in * block.expand, 8), kernel=block.kernel,
                        stride=spec.stride if i == 0 else 1, se=spec.se, act=spec.act, se_divisor=space.se_divisor)
            )
        stages.append(nn.Sequential(*layers))
    net = StagedNet(make_stem(space, task), stages, make_head(space, task))
    init_weights(net)
    return net


def build_unit(unit: Unit, space: SearchSpace, task: TaskShape) -> nn.Module:
    """A freshly initialised stem, block or head on its own (what latency calibration times)."""
    if unit.kind == "stem":
        module: nn.Module = make_stem(space, task)
    elif unit.kind == "head":
        module = make_head(space, task)
    else:
        assert unit.block is not None
        spec = space.stages[unit.stage]
        module = MBBlock(unit.c_in, unit.c_out, mid=make_divisible(unit.c_in * unit.block.expand, 8),
                         kernel=unit.block.kernel, stride=unit.stride, se=spec.se, act=spec.act,
                         se_divisor=space.se_divisor)
    init_weights(module)
    return module
