"""The Workspace: what every stage runs with (recipe, dataset, cache, progress), opened once per command."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from gtnpipe.cache import Cache, Entry
from gtnpipe.config.recipes import DataConfig, Recipe, TeacherConfig, load_recipe
from gtnpipe.data.datasets import Dataset, load_dataset, resize_images
from gtnpipe.errors import ConfigError
from gtnpipe.models.teacher import teacher_for
from gtnpipe.space.spaces import AUTO, ArchConfig, SearchSpace, TaskShape, get_space, space_for
from gtnpipe.stages.keys import Stage, stage_spec
from gtnpipe.training import distributed
from gtnpipe.training.accelerator import train_device as resolve_train_device

__all__ = ["DataRef", "Workspace", "load_weights", "resolve", "run_stage", "task_of"]

WEIGHTS = "weights.pt"
DATA_INDEX = "data-index"  # under the cache root: image folders' file hashes and decode facts (gtnpipe.data.datasets)
N = TypeVar("N", bound=torch.nn.Module)


def task_of(data: Dataset) -> TaskShape:
    return TaskShape(data.channels, data.image_hw, data.num_classes)


@dataclass(frozen=True)
class DataRef:
    """The data a stage trains or evaluates on, as a key: how it was loaded and its content fingerprint."""

    config: DataConfig  # the recipe's [data], with the source actually loaded
    fingerprint: str


@dataclass
class Workspace:
    """A recipe with what it loads (dataset, space, task), the cache and the progress policy.

    Open it once per command (`Workspace.open`) and pass it to every stage."""

    recipe: Recipe
    data: Dataset
    space: SearchSpace
    task: TaskShape
    cache: Cache
    data_ref: DataRef
    progress: bool = True
    # where training and the accuracy predictor's evaluations run; recorded in cache entries, not in their keys
    train_device: torch.device = torch.device("cpu")
    # Where the images are kept (data.storage: memory or disk) is not a key either: a test trains from both to the
    # same weights, bit for bit.
    # [data] teacher_train_subset: what the teachers gtnpipe trains learn from (more images than the students'), with
    # the students' normalisation; None: the students' data
    teacher_subset: Dataset | None = None
    teacher_subset_ref: DataRef | None = None

    @property
    def teacher_data(self) -> tuple[Dataset, DataRef]:
        """The data (and its key) the teachers gtnpipe trains learn from: the teacher subset, else the students'."""
        if self.teacher_subset is not None and self.teacher_subset_ref is not None:
            return self.teacher_subset, self.teacher_subset_ref
        return self.data, self.data_ref

    @classmethod
    def open(cls, recipe: str | Path | Recipe = "quick", *, cache_dir: Path | None = None, data_source: str | None = None,
             image_size: int | None = None, skip_unreadable: bool | None = None, storage: str = "auto",
             train_device: str = "auto", progress: bool = True) -> Workspace:
        """Load the recipe and its data. `data_source` (the CLI's --data) brings the user's own data: it replaces the
        recipe's [data] with `DataConfig(source=data_source)` (val_size 10%, every image) and makes the space and
        the teacher follow the data ("auto", the space's teacher); the recipe's training settings stay.
        `image_size` (--image-size) resizes every image to that square size; `skip_unreadable` (--skip-unreadable)
        overrides [data] skip_unreadable. `storage` (--storage): where an image folder's images are kept while
        training (gtnpipe.data.datasets.STORAGES: auto, memory, disk). `train_device` (--train-device):
        auto (CUDA when available), cpu, cuda[:N]. An image folder's index is kept under the cache (DATA_INDEX)."""
        rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
        if data_source is not None:
            source = rec.teacher.source if rec.teacher is not None else ""  # a teacher file stays
            rec = replace(rec, data=DataConfig(source=data_source), space=AUTO,
                          teacher=TeacherConfig(source=source) if source else None)
        if image_size is not None:
            rec = replace(rec, data=replace(rec.data, image_size=image_size))
        if skip_unreadable is not None:
            rec = replace(rec, data=replace(rec.data, skip_unreadable=skip_unreadable))
        cfg, cache = rec.data, Cache(cache_dir)

        def load(train_subset: int) -> Dataset:
            return load_dataset(cfg.source, val_size=cfg.val_size, train_subset=train_subset,
                                test_subset=cfg.test_subset, split_seed=cfg.split_seed, image_size=cfg.image_size,
                                skip_unreadable=cfg.skip_unreadable, storage=storage, index_dir=cache.root / DATA_INDEX)

        data = load(cfg.train_subset)
        student_cfg = replace(cfg, teacher_train_subset=0)  # what students see does not depend on the teacher's share
        teacher_data = teacher_ref = None
        if cfg.teacher_train_subset:
            teacher_data = replace(load(cfg.teacher_train_subset), mean=data.mean, std=data.std)
            teacher_ref = DataRef(replace(student_cfg, train_subset=cfg.teacher_train_subset), teacher_data.fingerprint)
        rec, space = resolve(rec, data.image_hw)
        return cls(rec, data, space, task_of(data), cache, DataRef(student_cfg, data.fingerprint), progress,
                   resolve_train_device(train_device), teacher_data, teacher_ref)

    def info(self) -> dict[str, Any]:
        """What `gtnpipe data info` prints: the data as loaded, its splits and normalisation, the space it picks."""
        data = self.data
        return {"name": data.name, "fingerprint": data.fingerprint, "classes": list(data.classes),
                "channels": data.channels, "image_hw": list(data.image_hw),
                "splits": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
                "mean": list(data.mean), "std": list(data.std), "space": self.space.name, "skipped": list(data.skipped),
                "storage": data.storage}

    def for_student(self, arch: ArchConfig) -> Workspace:
        """The workspace a student is deployed from: with its own input resolution (elastic resolution), the task at
        that resolution and the test images resized to it (the training images stay: calibration resizes the few
        it takes, `deploy_images`)."""
        if not arch.resolution_px:
            return self
        return replace(self, task=self.task.for_arch(arch),
                       data=replace(self.data, test=self.data.test.resized(arch.resolution_px)))

    def deploy_images(self, x_uint8: np.ndarray) -> np.ndarray:
        """Images of the data (N, C, H, W) at this workspace's input size."""
        return x_uint8 if tuple(x_uint8.shape[2:]) == self.task.image_hw else resize_images(x_uint8, self.task.image_hw[0])

    @property
    def teacher(self) -> TeacherConfig:
        """The shape of the teachers gtnpipe trains (the recipe's [teacher] or the space's own, resolved when the
        workspace opened), without [teacher] source: a trained teacher's key names what was trained."""
        assert self.recipe.teacher is not None
        return replace(self.recipe.teacher, source="")

    @property
    def teacher_source(self) -> str | None:
        """[teacher] source: the teacher file students distill from when a command names none."""
        return self.recipe.teacher.source or None if self.recipe.teacher is not None else None

    @property
    def default_teacher(self) -> str:
        """What students distill from when a command names no teacher: [teacher] source, else [distill] teacher."""
        return self.teacher_source or self.recipe.distill.teacher




def resolve(recipe: Recipe, image_hw: tuple[int, int]) -> tuple[Recipe, SearchSpace]:
    """The recipe as it runs on images of `image_hw`: a concrete space ("auto" resolved by the data's resolution) and
    teacher (the space's own when the recipe has no [teacher]), so the cache keys name what was trained; its
    resolutions_px checked against the data and the space."""
    space = space_for(image_hw) if recipe.space == AUTO else get_space(recipe.space)
    side = min(image_hw)
    bad = [r for r in recipe.resolutions_px if not space.image_px[0] <= r <= min(side, space.image_px[1])]
    if bad or list(recipe.resolutions_px) != sorted(set(recipe.resolutions_px)):
        raise ConfigError(
            f"resolutions_px = {list(recipe.resolutions_px)} in recipe {recipe.name!r}: give distinct sides in ascending "
            f"order from {space.image_px[0]} (the least space {space.name!r} is built for) to {min(side, space.image_px[1])} "
            f"px (the data's {image_hw[0]}x{image_hw[1]} images are not enlarged)" + (f"; {bad} fall outside" if bad else "")
            + ", or [] for the data's resolution only")
    return replace(recipe, space=space.name, teacher=teacher_for(space, recipe.teacher)), space


def run_stage(cache: Cache, inp: Stage, build: Callable[[Path, dict[str, Any]], None]) -> tuple[Entry, bool]:
    """The cache entry of `inp`, built with `build(staging, meta)` if missing; True when it was a cache hit.

    Under torchrun every rank builds (trains) together and rank 0 writes the entry.
    """
    kind, key = inp.STAGE, inp.key
    entry = cache.lookup(kind, key) if distributed.is_main() else None
    if distributed.broadcast_object(entry is not None):
        distributed.barrier()
        return (entry if entry is not None else cache.verify(kind, key)), True
    if distributed.is_main():
        with cache.locked(kind, key):
            entry = cache.lookup(kind, key)
            if entry is not None:
                return entry, True
            meta: dict[str, Any] = {}
            with cache.writing(kind, key, spec=stage_spec(inp), meta=meta) as staging:
                build(staging, meta)
            cache.clear_work(kind, key)
    else:
        with tempfile.TemporaryDirectory() as scratch:
            build(Path(scratch), {})
    distributed.barrier()
    return cache.verify(kind, key), False


def load_weights(ws: Workspace, net: N, inp: Stage, *, file: str = WEIGHTS) -> N:
    """`net` with the state dict of `inp`'s verified cache entry's `file`."""
    entry = ws.cache.verify(inp.STAGE, inp.key)
    net.load_state_dict(torch.load(entry.file(file), map_location="cpu", weights_only=True))
    return net
