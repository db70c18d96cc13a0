"""Batches of a split as torch tensors, for training and evaluation, whatever the split's storage.

- In memory (numpy arrays): indexed straight from the arrays.
- On disk (`ImageFiles`): torch's DataLoader, each worker decoding whole batches of files (Pillow), `PREFETCH`
  batches per worker ahead, in order. Memory is bounded by the batches in flight, not by the dataset.

Which images make a batch is decided by the caller (the epoch's seeded permutation), never by the loader, so a
split gives the same batches, bit for bit, from memory and from disk.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from gtnpipe.data.datasets import ImageFiles, Split

__all__ = ["PREFETCH", "SplitLoader", "decode_workers", "in_order"]

PREFETCH = 2  # batches each worker decodes ahead


def decode_workers() -> int:
    """DataLoader workers for a split on disk: one per CPU core this process may use, at most 8."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def in_order(n: int, batch_size: int) -> list[torch.Tensor]:
    """Index batches 0..n-1 in order (evaluation)."""
    return [torch.arange(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


class _Batches(Dataset[torch.Tensor]):
    """Item i = the decoded images of index batch i (what a worker process computes)."""

    def __init__(self, files: ImageFiles, batches: Sequence[torch.Tensor]) -> None:
        self.files, self.batches = files, [b.numpy() for b in batches]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.files[self.batches[i]])


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # a worker decodes; the training process keeps the cores' compute


class SplitLoader:
    """(images uint8 (n, C, H, W), labels int64 (n,)) for each index batch of a split, in order, on the CPU (fit pins
    a batch for the GPU after augmenting it: pinning here would be lost on augmentation's new tensors)."""

    def __init__(self, split: Split, *, workers: int | None = None) -> None:
        self.split = split
        self.workers = decode_workers() if workers is None else workers
        self.y = torch.from_numpy(split.y)
        self.x = torch.from_numpy(split.x) if isinstance(split.x, np.ndarray) else None

    def __call__(self, batches: Sequence[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.x is not None:
            for idx in batches:
                yield self.x[idx], self.y[idx]
            return
        assert isinstance(self.split.x, ImageFiles)
        loader = DataLoader(_Batches(self.split.x, batches), batch_size=None, shuffle=False,
                            num_workers=self.workers, worker_init_fn=_one_thread,
                            prefetch_factor=PREFETCH if self.workers else None,
                            generator=torch.Generator())  # its workers' seeds: never drawn from the global RNG (dropout)
        for idx, x in zip(batches, loader, strict=True):
            yield x, self.y[idx]
