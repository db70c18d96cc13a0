"""The teacher: a ResNet-like CNN whose stages match the supernet's stage resolutions.

It has the same stem -> stages -> head layout as every student (`StagedNet`), so the GTN
issue can run teacher stages 1..i, an adapter, then student stages i+1..K.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from gtnpipe.config.recipes import TeacherConfig
from gtnpipe.errors import ConfigError
from gtnpipe.models.static import StagedNet, init_weights
from gtnpipe.space.spaces import SearchSpace, TaskShape

# The teacher of each search space, used when a recipe has no [teacher]: one ResNet stage per student stage, at the
# student's strides (the GTN's branches join the teacher at any stage boundary). At each space's nominal task the
# teacher has 1.6-2.5x the largest student's MACs: 88.8M (mbv3-28, 1x28x28), 76.5M (mbv3-32, 3x32x32), 937M
# (mbv3-224, 3x224x224, 1000 classes).
SPACE_TEACHERS: dict[str, TeacherConfig] = {
    "mbv3-28": TeacherConfig(stem_width=32, widths=(64, 128, 192, 256), blocks=(2, 2, 2, 1)),
    "mbv3-32": TeacherConfig(stem_width=32, widths=(48, 96, 160, 224, 320), blocks=(1, 2, 2, 2, 1)),
    "mbv3-224": TeacherConfig(stem_width=32, widths=(48, 96, 160, 224, 320), blocks=(1, 2, 2, 2, 1)),
}

__all__ = ["SPACE_TEACHERS", "BasicBlock", "build_teacher", "teacher_for"]


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN, ReLU, identity or 1x1 projection shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (
            nn.Identity() if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def teacher_for(space: SearchSpace, configured: TeacherConfig | None = None) -> TeacherConfig:
    """The recipe's [teacher] when it has one, else the space's (SPACE_TEACHERS). A [teacher] that names only a
    teacher file (`source`) keeps the space's shape for the teachers gtnpipe trains."""
    if configured is not None and not (configured.source and replace(configured, source="") == TeacherConfig()):
        return configured
    try:
        return replace(SPACE_TEACHERS[space.name], source=configured.source if configured is not None else "")
    except KeyError as err:
        raise ConfigError(f"search space {space.name!r} has no default teacher; give the recipe a [teacher] section with "
                          f"one width and block count per stage ({space.num_stages} stages)") from err


def build_teacher(config: TeacherConfig, space: SearchSpace, task: TaskShape) -> StagedNet:
    if len(config.widths) != space.num_stages:
        raise ConfigError(
            f"teacher has {len(config.widths)} stages but space {space.name!r} has {space.num_stages}; "
            "set [teacher] widths and blocks to one entry per stage"
        )
    stem = nn.Sequential(
        nn.Conv2d(task.in_channels, config.stem_width, 3, space.stem_stride, 1, bias=False),
        nn.BatchNorm2d(config.stem_width),
        nn.ReLU(inplace=True),
    )
    stages, c_in = [], config.stem_width
    for spec, width, n_blocks in zip(space.stages, config.widths, config.blocks):
        stages.append(nn.Sequential(*(BasicBlock(c_in if i == 0 else width, width, spec.stride if i == 0 else 1)
                                      for i in range(n_blocks))))
        c_in = width
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, task.num_classes))
    net = StagedNet(stem, stages, head)
    init_weights(net)
    return net
