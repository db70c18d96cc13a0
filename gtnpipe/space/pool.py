"""What a search space's pool holds (gtnpipe pool info / sample): pure Python, so those commands start without torch."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from gtnpipe.space.counting import count
from gtnpipe.space.spaces import ArchConfig, SearchSpace, TaskShape, get_space

__all__ = ["FASHION_MNIST_TASK", "NOMINAL_TASKS", "nominal_task", "pool_info", "pool_sample"]

FASHION_MNIST_TASK = TaskShape(in_channels=1, image_hw=(28, 28), num_classes=10)
# The task each space is sized for, where `gtnpipe pool info` counts its MACs: Fashion-MNIST, CIFAR-10, ImageNet
# (the last comparable with OFA's and MobileNetV3's published figures, all at 3x224x224 with 1000 classes).
NOMINAL_TASKS = {
    "mbv3-28": FASHION_MNIST_TASK,
    "mbv3-32": TaskShape(in_channels=3, image_hw=(32, 32), num_classes=10),
    "mbv3-224": TaskShape(in_channels=3, image_hw=(224, 224), num_classes=1000),
}


def nominal_task(space: str) -> TaskShape:
    """The task `space` is sized for (NOMINAL_TASKS); an unknown space is an error listing the known ones."""
    return NOMINAL_TASKS[get_space(space).name]


def _cost(arch: ArchConfig, space: SearchSpace, task: TaskShape) -> dict[str, int]:
    c = count(arch, space, task)
    return {"macs": c.macs, "params": c.params}


def pool_info(*, space: str = "mbv3-28", task: TaskShape | None = None) -> dict[str, Any]:
    """The space's stages, choices and pool size, with its smallest and largest student's MACs and parameters at
    `task` (default: the space's nominal task)."""
    sp = get_space(space)
    task = task or nominal_task(space)
    small, large = sp.smallest(), sp.largest()
    return {"space": sp.name, "task": asdict(task), "image_px": list(sp.image_px), "stages": [asdict(s) for s in sp.stages],
            "choices": {"depths": list(sp.depths), "kernel_sizes": list(sp.kernel_sizes),
                        "expand_ratios": list(sp.expand_ratios)},
            "pool_size": sp.pool_size, "smallest": {"arch": small.id, **_cost(small, sp, task)},
            "largest": {"arch": large.id, **_cost(large, sp, task)}}


def pool_sample(n: int, *, seed: int = 0, space: str = "mbv3-28", task: TaskShape | None = None
                ) -> list[dict[str, Any]]:
    """`n` students drawn uniformly from the pool (seeded), with their depths, MACs and parameters at `task`
    (default: the space's nominal task)."""
    sp = get_space(space)
    task = task or nominal_task(space)
    return [{"arch": a.id, "depths": list(a.depths), **_cost(a, sp, task)} for a in sp.sample_many(n, seed=seed)]
