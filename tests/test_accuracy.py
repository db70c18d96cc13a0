"""Accuracy estimation: rank correlation, the ridge predictor, BN recalibration on real data."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from gtnpipe.data.datasets import Dataset
from gtnpipe.models.supernet import Supernet
from gtnpipe.nas.accuracy import AccuracyPredictor, inherited_accuracy, recalibrate_bn, spearman
from gtnpipe.space.spaces import TaskShape, get_space
from gtnpipe.training.train import Normalizer

SPACE = get_space("mbv3-28")
TASK = TaskShape(1, (28, 28), 10)


def test_spearman_by_hand() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks [1,2,3,4] vs [2,1,4,3]: 1 - 6*sum(d^2)/(n(n^2-1)) = 1 - 6*4/60 = 0.6
    assert spearman([1, 2, 3, 4], [2, 1, 4, 3]) == pytest.approx(0.6)
    # ties get average ranks
    assert spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(np.corrcoef([1.5, 1.5, 3, 4], [1, 2, 3, 4])[0, 1])


def test_predictor_recovers_a_linear_accuracy_and_round_trips(tmp_path: Path) -> None:
    rng = random.Random(0)
    truth = np.random.default_rng(0).normal(size=len(SPACE.encode(SPACE.smallest())))
    archs = SPACE.sample_many(200, seed=1)
    top1 = [80 + float(np.dot(SPACE.encode(a), truth)) + rng.gauss(0, 0.1) for a in archs]
    predictor = AccuracyPredictor.fit(SPACE, archs[:150], top1[:150])
    held_out = [predictor.predict(SPACE, a) for a in archs[150:]]
    assert spearman(held_out, top1[150:]) > 0.95
    assert predictor.loo_rmse < 0.5 and predictor.n_samples == 150
    predictor.save(tmp_path / "p.json")
    assert AccuracyPredictor.load(tmp_path / "p.json") == predictor


def test_predictor_needs_enough_pairs() -> None:
    with pytest.raises(ValueError, match="need >= 5"):
        AccuracyPredictor.fit(SPACE, SPACE.sample_many(3, seed=0), [1.0, 2.0, 3.0])


def test_bn_recalibration_on_real_data(fmnist_small: Dataset) -> None:
    torch.manual_seed(0)
    supernet = Supernet(SPACE, TASK)
    norm = Normalizer(fmnist_small.mean, fmnist_small.std)
    student = supernet.extract(SPACE.smallest())
    bn = next(m for m in student.modules() if isinstance(m, torch.nn.BatchNorm2d))
    recalibrate_bn(student, fmnist_small.train, norm, images=256)
    assert not student.training and int(bn.num_batches_tracked) == 2  # 256 images in batches of 128
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))


def test_inherited_accuracy_scores_the_supernets_weights_on_val(fmnist_small: Dataset) -> None:
    # a supernet whose head always answers class 5: an arch inheriting its weights scores 5's share of the split
    # it is judged on, which differs between val (37 of 256 images) and train (51 of 512)
    torch.manual_seed(0)
    supernet = Supernet(SPACE, TASK)
    with torch.no_grad():
        supernet.head[-1].weight.zero_()
        supernet.head[-1].bias.copy_(torch.nn.functional.one_hot(torch.tensor(5), 10).float())
    val_share = float((fmnist_small.val.y == 5).mean() * 100)
    assert val_share != pytest.approx(float((fmnist_small.train.y == 5).mean() * 100), abs=1.0)
    norm = Normalizer(fmnist_small.mean, fmnist_small.std)
    for arch in (SPACE.smallest(), SPACE.largest()):
        top1 = inherited_accuracy(supernet, arch, fmnist_small.train, fmnist_small.val, norm, bn_images=256)
        assert top1 == pytest.approx(val_share, abs=1e-9)
