"""The Workspace: what every stage runs with (recipe, dataset, cache, progress), opened once per command."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import torch

from gtnpipe.cache import Cache, Entry
from gtnpipe.config.recipes import DataConfig, Recipe, load_recipe
from gtnpipe.data.datasets import Dataset, load_dataset
from gtnpipe.space.spaces import SearchSpace, TaskShape, get_space
from gtnpipe.stages.keys import Stage, stage_spec
from gtnpipe.training import distributed

__all__ = ["DataRef", "Workspace", "load_weights", "run_stage", "task_of"]

WEIGHTS = "weights.pt"
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

    @classmethod
    def open(cls, recipe: str | Path | Recipe = "quick", *, cache_dir: Path | None = None, data_source: str | None = None,
             progress: bool = True) -> Workspace:
        rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
        cfg = rec.data
        source = data_source or cfg.source
        data = load_dataset(source, val_size=cfg.val_size, train_subset=cfg.train_subset, test_subset=cfg.test_subset,
                            split_seed=cfg.split_seed)
        ref = DataRef(replace(cfg, source=source), data.fingerprint)
        return cls(rec, data, get_space(rec.space), task_of(data), Cache(cache_dir), ref, progress)




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
