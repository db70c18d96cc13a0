"""What a search space's pool holds (gtnpipe pool info / sample): pure Python, so those commands start without torch."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from gtnpipe.space.counting import count
from gtnpipe.space.spaces import ArchConfig, SearchSpace, TaskShape, get_space

__all__ = ["FASHION_MNIST_TASK", "pool_info", "pool_sample"]

FASHION_MNIST_TASK = TaskShape(in_channels=1, image_hw=(28, 28), num_classes=10)


def _cost(arch: ArchConfig, space: SearchSpace, task: TaskShape) -> dict[str, int]:
    c = count(arch, space, task)
    return {"macs": c.macs, "params": c.params}


def pool_info(*, space: str = "mbv3-28", task: TaskShape = FASHION_MNIST_TASK) -> dict[str, Any]:
    """The space's stages, choices and pool size, with its smallest and largest student's MACs and parameters."""
    sp = get_space(space)
    small, large = sp.smallest(), sp.largest()
    return {"space": sp.name, "task": asdict(task), "stages": [asdict(s) for s in sp.stages],
            "choices": {"depths": list(sp.depths), "kernel_sizes": list(sp.kernel_sizes),
                        "expand_ratios": list(sp.expand_ratios)},
            "pool_size": sp.pool_size, "smallest": {"arch": small.id, **_cost(small, sp, task)},
            "largest": {"arch": large.id, **_cost(large, sp, task)}}


def pool_sample(n: int, *, seed: int = 0, space: str = "mbv3-28", task: TaskShape = FASHION_MNIST_TASK
                ) -> list[dict[str, Any]]:
    """`n` students drawn uniformly from the pool (seeded), with their depths, MACs and parameters."""
    sp = get_space(space)
    return [{"arch": a.id, "depths": list(a.depths), **_cost(a, sp, task)} for a in sp.sample_many(n, seed=seed)]
