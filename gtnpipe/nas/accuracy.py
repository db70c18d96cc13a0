"""Accuracy estimates for ranking students during search (Once-for-All's approach).

1. Measure: a student's inherited-weight accuracy, taken straight from the trained supernet
   (the one GTN training shares with its branches), batch-norm statistics recomputed on a
   few training batches (a sub-network's activations differ from the supernet's mix, so the
   supernet's running statistics do not fit it), top-1 on the validation split.
2. Predict: a ridge regression on the space's one-hot arch encoding, fitted on such
   measurements, scores any arch in microseconds (search evaluates tens of thousands).
   OFA fits a 3-layer MLP; with the few hundred measurements we can afford on a CPU a
   linear model with an L2 penalty chosen by leave-one-out error generalises better here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gtnpipe.data.datasets import Split
from gtnpipe.fsutil import atomic_write_bytes
from gtnpipe.models.static import at_resolution
from gtnpipe.models.supernet import Supernet
from gtnpipe.space.spaces import ArchConfig, SearchSpace
from gtnpipe.training.train import Normalizer, evaluate, recalibrate_bn

__all__ = ["AccuracyPredictor", "inherited_accuracy", "recalibrate_bn", "spearman"]


def inherited_accuracy(supernet: Supernet, arch: ArchConfig, train: Split, val: Split, norm: Normalizer, *,
                       bn_images: int = 512, eval_batch_size: int = 100, device: torch.device | None = None) -> float:
    """Top-1 (%) on `val` of `arch` with the supernet's weights and recalibrated BN statistics (run on `device`)."""
    student = at_resolution(supernet.extract(arch), arch).to(device or "cpu")  # at its own resolution, if it has one
    recalibrate_bn(student, train, norm, images=bn_images, device=device)
    return evaluate(student, val, norm, batch_size=eval_batch_size, device=device)


def spearman(a: list[float] | np.ndarray, b: list[float] | np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for value in np.unique(v):  # average ranks of ties
            mask = v == value
            r[mask] = r[mask].mean()
        return r

    ra, rb = ranks(np.asarray(a, dtype=float)), ranks(np.asarray(b, dtype=float))
    return float(np.corrcoef(ra, rb)[0, 1])


@dataclass(frozen=True)
class AccuracyPredictor:
    """top-1 ~ encode(arch) . weights + bias, fitted by ridge regression."""

    space: str
    weights: tuple[float, ...]
    bias: float
    l2: float
    loo_rmse: float  # leave-one-out error of the fit, top-1 points
    n_samples: int

    @classmethod
    def fit(cls, space: SearchSpace, archs: list[ArchConfig], top1: list[float],
            l2_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 3.0, 10.0, 30.0, 100.0)) -> AccuracyPredictor:
        if len(archs) != len(top1) or len(archs) < 5:
            raise ValueError(f"need >= 5 (arch, top-1) pairs of equal count, got {len(archs)} and {len(top1)}")
        x = np.array([space.encode(a) for a in archs])
        y = np.array(top1, dtype=float)
        mean_x, mean_y = x.mean(0), y.mean()
        xc, yc = x - mean_x, y - mean_y
        best = None
        for l2 in l2_grid:
            # leave-one-out residuals of ridge in closed form: e_i / (1 - h_ii)
            hat = xc @ np.linalg.solve(xc.T @ xc + l2 * np.eye(x.shape[1]), xc.T)
            resid = (yc - hat @ yc) / (1 - np.diag(hat) - 1.0 / len(y))
            loo = float(np.sqrt(np.mean(resid**2)))
            if best is None or loo < best[0]:
                best = (loo, l2)
        assert best is not None
        loo, l2 = best
        w = np.linalg.solve(xc.T @ xc + l2 * np.eye(x.shape[1]), xc.T @ yc)
        return cls(space.name, tuple(float(v) for v in w), float(mean_y - mean_x @ w), l2, loo, len(y))

    def predict(self, space: SearchSpace, arch: ArchConfig) -> float:
        return float(np.dot(space.encode(arch), self.weights) + self.bias)

    def save(self, path: Path) -> None:
        atomic_write_bytes(path, json.dumps(self.__dict__, indent=1).encode())

    @classmethod
    def load(cls, path: Path) -> AccuracyPredictor:
        raw = json.loads(path.read_text())
        return cls(**{**raw, "weights": tuple(raw["weights"])})
