"""The student pool: a search space of elastic MobileNetV3 students and `ArchConfig`, one of them.

An arch names, per stage, the active blocks (its depth) and each block's kernel size and
expand ratio. Its id spells that out and round-trips:

    k3e4-k5e6_k3e3-k3e3-k7e6_k7e6-k5e4_k3e3-k3e3
    └ stage 1 ┘ └── stage 2 ──┘ └ stage 3 ┘ └ stage 4 ┘

Only active blocks are named, so two different ids are always two different networks
(OFA's ids also list the choices of inactive blocks, so many ids name one network).

With elastic input resolution (a recipe's `resolutions_px`) an arch also names the square input side it runs at,
after an "@": `k3e4-k5e6_k3e3-k3e3-k7e6_k7e6-k5e4_k3e3-k3e3@160`. Without one it runs at the data's resolution.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal, NamedTuple

from gtnpipe.errors import ArchError

__all__ = ["AUTO", "SPACES", "ArchConfig", "Block", "SearchSpace", "StageSpec", "TaskShape", "get_space", "space_for"]


class Block(NamedTuple):
    kernel: int
    expand: int


@dataclass(frozen=True)
class TaskShape:
    """What the data fixes about every network: input channels, image size, classes."""

    in_channels: int
    image_hw: tuple[int, int]
    num_classes: int

    @classmethod
    def of(cls, task: Any) -> TaskShape:
        """A TaskShape from another with these fields or from its JSON dict (a latency table's, a kit's)."""
        if isinstance(task, dict):
            return cls(int(task["in_channels"]), (int(task["image_hw"][0]), int(task["image_hw"][1])),
                       int(task["num_classes"]))
        return cls(int(task.in_channels), (int(task.image_hw[0]), int(task.image_hw[1])), int(task.num_classes))

    def to_dict(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "image_hw": list(self.image_hw), "num_classes": self.num_classes}

    def for_arch(self, arch: ArchConfig) -> TaskShape:
        """The input `arch` runs at: its own resolution (square) when it names one, else this."""
        if not arch.resolution_px:
            return self
        return TaskShape(self.in_channels, (arch.resolution_px, arch.resolution_px), self.num_classes)


@dataclass(frozen=True)
class StageSpec:
    width: int
    stride: int
    se: bool
    act: Literal["relu", "hswish"]


@dataclass(frozen=True)
class SearchSpace:
    """Fixed skeleton (widths, strides, SE, activations) plus the elastic choices."""

    name: str
    stem_width: int
    first_width: int  # MobileNetV3's fixed first block: depthwise 3x3 + project, no expansion
    stages: tuple[StageSpec, ...]
    final_width: int  # 1x1 expansion before global pooling
    head_width: int  # hidden width of the classifier
    depths: tuple[int, ...] = (2, 3, 4)
    expand_ratios: tuple[int, ...] = (3, 4, 6)
    kernel_sizes: tuple[int, ...] = (3, 5, 7)
    stem_stride: int = 1
    # the input sides (px, the shorter one) this space is built for: `space = "auto"` picks the space whose range
    # holds the data's resolution, and `nominal_px` is where `gtnpipe pool info` counts MACs by default
    image_px: tuple[int, int] = (16, 31)
    nominal_px: int = 28
    head_dropout: float = 0.1
    se_divisor: int = 8  # SE width = make_divisible(mid / 4, se_divisor), as MobileNetV3

    def __post_init__(self) -> None:
        if any(k % 2 == 0 for k in self.kernel_sizes):
            raise ValueError(f"kernel_sizes must be odd, got {self.kernel_sizes}")
        if not self.image_px[0] <= self.nominal_px <= self.image_px[1]:
            raise ValueError(f"nominal_px={self.nominal_px} must lie in image_px={self.image_px}")
        for name in ("depths", "expand_ratios", "kernel_sizes"):
            values = getattr(self, name)
            if not values or list(values) != sorted(set(values)) or values[0] < 1:
                raise ValueError(f"{name} must be distinct positive values in ascending order, got {values}")

    @cached_property
    def choices(self) -> tuple[Block, ...]:
        """Every (kernel, expand) a block can take."""
        return tuple(Block(k, e) for k in self.kernel_sizes for e in self.expand_ratios)

    # --- the pool --------------------------------------------------------------------

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def max_depth(self) -> int:
        return self.depths[-1]

    @property
    def pool_size(self) -> int:
        """Distinct students: per stage, sum over depths d of (kernels x expands)^d."""
        per_block = len(self.choices)
        return math.prod(sum(per_block**d for d in self.depths) for _ in self.stages)

    def largest(self) -> ArchConfig:
        big = Block(self.kernel_sizes[-1], self.expand_ratios[-1])
        return ArchConfig(tuple((big,) * self.depths[-1] for _ in self.stages))

    def smallest(self) -> ArchConfig:
        small = Block(self.kernel_sizes[0], self.expand_ratios[0])
        return ArchConfig(tuple((small,) * self.depths[0] for _ in self.stages))

    def sample(self, rng: random.Random) -> ArchConfig:
        """Uniform over depth, then uniform per block (as OFA samples; not uniform over the pool)."""
        return ArchConfig(
            tuple(tuple(rng.choice(self.choices) for _ in range(rng.choice(self.depths))) for _ in self.stages)
        )

    def sample_many(self, n: int, *, seed: int, unique: bool = True) -> list[ArchConfig]:
        rng = random.Random(seed)
        out: list[ArchConfig] = []
        seen: set[ArchConfig] = set()
        while len(out) < n:
            arch = self.sample(rng)
            if unique and arch in seen:
                continue
            seen.add(arch)
            out.append(arch)
        return out

    def validate(self, arch: ArchConfig) -> ArchConfig:
        if arch.resolution_px and not self.image_px[0] <= arch.resolution_px <= self.image_px[1]:
            raise ArchError(f"arch {arch.id} runs at {arch.resolution_px} px; space {self.name!r} is built for "
                            f"{self.image_px[0]}-{self.image_px[1]} px")
        if len(arch.stages) != self.num_stages:
            raise ArchError(f"arch {arch.id} has {len(arch.stages)} stages; space {self.name!r} has {self.num_stages}")
        for i, stage in enumerate(arch.stages, 1):
            if len(stage) not in self.depths:
                raise ArchError(f"arch {arch.id}: stage {i} has depth {len(stage)}; allowed depths: {list(self.depths)}")
            for block in stage:
                if block.kernel not in self.kernel_sizes or block.expand not in self.expand_ratios:
                    raise ArchError(
                        f"arch {arch.id}: stage {i} block k{block.kernel}e{block.expand} is outside space {self.name!r}; "
                        f"kernels {list(self.kernel_sizes)}, expand ratios {list(self.expand_ratios)}"
                    )
        return arch

    def parse(self, text: str) -> ArchConfig:
        """An arch id, or 'largest' / 'smallest', checked against this space."""
        if text == "largest":
            return self.largest()
        if text == "smallest":
            return self.smallest()
        return self.validate(ArchConfig.from_id(text))

    def encode(self, arch: ArchConfig) -> list[float]:
        """Fixed-length numeric encoding for predictors (OFA style one-hots).

        Per stage: a one-hot of the depth; per block slot (max depth slots): one-hot kernel
        and one-hot expand ratio, all zeros for an inactive slot. Last, the input resolution relative to the
        space's nominal one, and its square (accuracy grows with resolution, flattening): 0, 0 when the arch runs at
        the data's resolution.
        """
        self.validate(arch)
        r = arch.resolution_px / self.nominal_px
        vec: list[float] = [r, r * r]
        for stage in arch.stages:
            vec += [float(len(stage) == d) for d in self.depths]
            for slot in range(self.max_depth):
                block = stage[slot] if slot < len(stage) else None
                vec += [float(block is not None and block.kernel == k) for k in self.kernel_sizes]
                vec += [float(block is not None and block.expand == e) for e in self.expand_ratios]
        return vec


_BLOCK_RE = re.compile(r"k(\d+)e(\d+)")


@dataclass(frozen=True)
class ArchConfig:
    """One student: per stage, the (kernel, expand) of each active block; and the square input side it runs at
    (elastic resolution; 0: the data's)."""

    stages: tuple[tuple[Block, ...], ...]
    resolution_px: int = 0

    def at(self, resolution_px: int) -> ArchConfig:
        """This network at another input resolution (0: the data's)."""
        return ArchConfig(self.stages, resolution_px)

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.stages)

    @property
    def id(self) -> str:
        blocks = "_".join("-".join(f"k{b.kernel}e{b.expand}" for b in stage) for stage in self.stages)
        return f"{blocks}@{self.resolution_px}" if self.resolution_px else blocks

    @classmethod
    def from_id(cls, text: str) -> ArchConfig:
        blocks_text, at, resolution = text.strip().partition("@")
        if at and not (resolution.isdigit() and int(resolution) > 0):
            raise ArchError(f"cannot parse arch id {text!r}: after '@' comes the input side in px (e.g. @160)")
        stages = []
        for stage_text in blocks_text.split("_"):
            blocks = []
            for block_text in stage_text.split("-"):
                match = _BLOCK_RE.fullmatch(block_text)
                if not match:
                    raise ArchError(
                        f"cannot parse arch id {text!r} at {block_text!r}: an id is stages joined by '_', each stage "
                        "blocks joined by '-', each block k<kernel>e<expand> (e.g. k3e4-k5e6_k3e3-k3e3); "
                        "'gtnpipe pool sample' prints valid ones"
                    )
                blocks.append(Block(int(match[1]), int(match[2])))
            stages.append(tuple(blocks))
        return cls(tuple(stages), int(resolution) if at else 0)

    def __str__(self) -> str:
        return self.id


def make_divisible(value: float, divisor: int) -> int:
    """Round to the nearest multiple of `divisor`, never going below 90% (MobileNet's rule)."""
    out = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * value else out


# MobileNetV3's stage skeleton (Howard et al. 2019, Table 1): widths, strides, SE and activations per stage.
_MBV3_STAGES = (
    StageSpec(width=24, stride=2, se=False, act="relu"),
    StageSpec(width=40, stride=2, se=True, act="relu"),
    StageSpec(width=80, stride=2, se=False, act="hswish"),
    StageSpec(width=112, stride=1, se=True, act="hswish"),
    StageSpec(width=160, stride=2, se=True, act="hswish"),
)

SPACES: dict[str, SearchSpace] = {
    # 28-31 px (Fashion-MNIST): stem at full resolution, then 14, 7, 4, 4 for 28 px (total stride 8).
    "mbv3-28": SearchSpace(
        name="mbv3-28",
        stem_width=16,
        first_width=16,
        stages=_MBV3_STAGES[:4],
        final_width=448,
        head_width=512,
        # OFA uses depths 2-4; allowing 1 (the stride block alone) widens the MACs range
        # from 4.8x to 8.6x at 28 px, which the device budgets of small targets need.
        depths=(1, 2, 3, 4),
        image_px=(16, 31),
        nominal_px=28,
    ),
    # 32-95 px (CIFAR-size): MobileNetV3's five stages with the stem at full resolution (total stride 16: 2x2 at
    # the last stage for 32 px, 4x4 for 64 px), and a head sized for tens of classes rather than ImageNet's 1000.
    "mbv3-32": SearchSpace(
        name="mbv3-32",
        stem_width=16,
        first_width=16,
        stages=_MBV3_STAGES,
        final_width=640,
        head_width=1024,
        depths=(1, 2, 3, 4),
        image_px=(32, 95),
        nominal_px=32,
    ),
    # 96-224 px and up: Once-for-All's MobileNetV3 space, `ofa_mbv3_d234_e346_k357_w1.0` (Cai et al. 2020): stem
    # stride 2, MobileNetV3-Large's stages (total stride 32: 7x7 at 224 px), final 960, head 1280, depths 2-4,
    # expand ratios 3/4/6, kernels 3/5/7.
    "mbv3-224": SearchSpace(
        name="mbv3-224",
        stem_width=16,
        first_width=16,
        stages=_MBV3_STAGES,
        final_width=960,
        head_width=1280,
        depths=(2, 3, 4),
        stem_stride=2,
        image_px=(96, 1024),
        nominal_px=224,
    ),
}

AUTO = "auto"  # a recipe's `space`: the space whose image_px range holds the data's resolution (space_for)


def get_space(name: str) -> SearchSpace:
    try:
        return SPACES[name]
    except KeyError as err:
        raise ArchError(f"unknown search space {name!r}; known spaces: {', '.join(sorted(SPACES))}") from err


def space_for(image_hw: tuple[int, int]) -> SearchSpace:
    """The space built for images of this size: the one whose `image_px` range holds the shorter side."""
    side = min(image_hw)
    for space in SPACES.values():
        if space.image_px[0] <= side <= space.image_px[1]:
            return space
    ranges = ", ".join(f"{s.name} {s.image_px[0]}-{s.image_px[1]} px" for s in SPACES.values())
    raise ArchError(f"no search space is built for {image_hw[0]}x{image_hw[1]} images (shorter side {side} px): "
                    f"{ranges}; resize the data with --image-size (or [data] image_size in the recipe)")
