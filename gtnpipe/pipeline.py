"""The whole flow, one function per CLI command. Read this file to see how the pieces fit.

    recipe ──► data ──► model (teacher | student from the pool) ──► train (resumable) ──► cache

Later stages (generic teacher, distillation, search, export, bench) plug in here.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from gtnpipe.cache import Cache, cache_key
from gtnpipe.data import Dataset, load_dataset
from gtnpipe.recipes import Recipe, load_recipe
from gtnpipe.supernet import ArchConfig, SearchSpace, StagedNet, TaskShape, build_static, count, count_module, get_space
from gtnpipe.teacher import build_teacher
from gtnpipe.tomlconfig import as_dict
from gtnpipe.train import fit, seed_everything

__all__ = [
    "FASHION_MNIST_TASK",
    "TrainOutcome",
    "data_info",
    "load_data",
    "load_trained",
    "pool_info",
    "pool_sample",
    "task_of",
    "train_model",
]

log = logging.getLogger("gtnpipe")
# Fashion-MNIST's shape, for pool statistics when no dataset is named.
FASHION_MNIST_TASK = TaskShape(in_channels=1, image_hw=(28, 28), num_classes=10)
_MODELS = "models"  # cache kind of trained models
_WEIGHTS = "weights.pt"


@dataclass(frozen=True)
class TrainOutcome:
    model: str  # "teacher" or the student's arch id
    key: str
    cached: bool
    test_top1: float
    val_top1: float
    macs: int
    params: int
    epochs: int
    seconds_per_epoch: float
    entry_path: str
    resumed_from_epoch: int = 0  # > 0 when this call continued an interrupted run


def task_of(data: Dataset) -> TaskShape:
    return TaskShape(data.channels, data.image_hw, data.num_classes)


def load_data(recipe: Recipe, *, source: str | None = None) -> Dataset:
    cfg = recipe.data
    return load_dataset(source or cfg.source, val_size=cfg.val_size, train_subset=cfg.train_subset,
                        test_subset=cfg.test_subset, split_seed=cfg.split_seed)


def data_info(*, recipe: str | Path = "default", source: str | None = None) -> dict[str, Any]:
    data = load_data(load_recipe(recipe), source=source)
    return {
        "name": data.name,
        "fingerprint": data.fingerprint,
        "classes": list(data.classes),
        "channels": data.channels,
        "image_hw": list(data.image_hw),
        "splits": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "mean": list(data.mean),
        "std": list(data.std),
    }


def _macs_params(space: SearchSpace, task: TaskShape, arch: ArchConfig) -> dict[str, int]:
    cost = count(arch, space, task)
    return {"macs": cost.macs, "params": cost.params}


def pool_info(*, space: str = "mbv3-28", task: TaskShape = FASHION_MNIST_TASK) -> dict[str, Any]:
    sp = get_space(space)
    small, large = sp.smallest(), sp.largest()
    return {
        "space": sp.name,
        "task": asdict(task),
        "stages": [asdict(s) for s in sp.stages],
        "choices": {"depths": list(sp.depths), "kernel_sizes": list(sp.kernel_sizes),
                    "expand_ratios": list(sp.expand_ratios)},
        "pool_size": sp.pool_size,
        "smallest": {"arch": small.id, **_macs_params(sp, task, small)},
        "largest": {"arch": large.id, **_macs_params(sp, task, large)},
    }


def pool_sample(n: int, *, seed: int = 0, space: str = "mbv3-28",
                task: TaskShape = FASHION_MNIST_TASK) -> list[dict[str, Any]]:
    sp = get_space(space)
    return [{"arch": a.id, "depths": list(a.depths), **_macs_params(sp, task, a)}
            for a in sp.sample_many(n, seed=seed)]


def _model_spec(model: str, recipe: Recipe, space: SearchSpace) -> tuple[str, dict[str, Any]]:
    """The model's display name and the part of the cache key that describes it."""
    if model == "teacher":
        return "teacher", {"model": "teacher", "teacher": as_dict(recipe.teacher), "space": as_dict(space)}
    arch = space.parse(model)
    return arch.id, {"model": "student", "arch": arch.id, "space": as_dict(space)}


def _build(model_spec: dict[str, Any], recipe: Recipe, space: SearchSpace, task: TaskShape) -> StagedNet:
    if model_spec["model"] == "teacher":
        return build_teacher(recipe.teacher, space, task)
    return build_static(ArchConfig.from_id(model_spec["arch"]), space, task)


def train_model(model: str, *, recipe: str | Path = "quick", cache_dir: Path | None = None,
                progress: bool = True) -> TrainOutcome:
    """Train the teacher or a pool student (by arch id, 'largest' or 'smallest') and cache it.

    An unchanged second call is a cache hit; an interrupted call resumes from its last epoch.
    """
    rec = load_recipe(recipe)
    space = get_space(rec.space)
    name, model_spec = _model_spec(model, rec, space)
    data = load_data(rec)
    task = task_of(data)
    train_cfg = rec.train.teacher if model_spec["model"] == "teacher" else rec.train.student
    spec = {"kind": "trained-model", **model_spec, "task": asdict(task), "train": as_dict(train_cfg),
            "data": as_dict(rec.data), "data_fingerprint": data.fingerprint, "seed": rec.seed}
    key = cache_key(spec)
    cache = Cache(cache_dir)
    with cache.locked(_MODELS, key):
        entry = cache.lookup(_MODELS, key)
        if entry is not None:
            return TrainOutcome(**entry.meta, key=key, cached=True, entry_path=str(entry.path))
        seed_everything(rec.seed)
        net = _build(model_spec, rec, space, task)
        result = fit(net, data, train_cfg, seed=rec.seed, run_id=key, checkpoint_dir=cache.work_dir(_MODELS, key),
                     progress=progress, description=name if name == "teacher" else "student")
        cost = count_module(net, task)  # equals the analytic count for students (tested)
        meta = {
            "model": name,
            "test_top1": result.test_top1,
            "val_top1": result.history[-1].val_top1,
            "epochs": len(result.history),
            "seconds_per_epoch": sum(h.seconds for h in result.history) / len(result.history),
            "macs": cost.macs,
            "params": cost.params,
        }
        with cache.writing(_MODELS, key, spec=spec, meta=meta) as staging:
            torch.save(net.state_dict(), staging / _WEIGHTS)
        cache.clear_work(_MODELS, key)
    entry_path = str(cache.entry_dir(_MODELS, key))
    return TrainOutcome(**meta, key=key, cached=False, entry_path=entry_path,
                        resumed_from_epoch=result.resumed_from_epoch)


def load_trained(model: str, *, recipe: str | Path = "quick", cache_dir: Path | None = None) -> StagedNet:
    """The cached trained network (trains it first if it is not cached), in eval mode."""
    outcome = train_model(model, recipe=recipe, cache_dir=cache_dir, progress=False)
    rec = load_recipe(recipe)
    space = get_space(rec.space)
    entry = Cache(cache_dir).verify(_MODELS, outcome.key)
    task = entry.record["spec"]["task"]
    net = _build(entry.record["spec"], rec, space,
                 TaskShape(task["in_channels"], tuple(task["image_hw"]), task["num_classes"]))
    net.load_state_dict(torch.load(entry.file(_WEIGHTS), map_location="cpu", weights_only=True))
    return net.eval()
