"""Elastic input resolution: an arch may name its own input side (id `...@160`); costs, search, the accuracy
predictor, training and deployment follow it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from gtnpipe.config.profiles import load_profile
from gtnpipe.config.recipes import load_recipe
from gtnpipe.data.datasets import Dataset, Split
from gtnpipe.errors import ArchError, ConfigError
from gtnpipe.models.counting import count_module
from gtnpipe.models.static import AtResolution, build_static, resize_to
from gtnpipe.nas.evolution import InfeasibleBudget, SearchConfig, evolution_search, pool_minimums
from gtnpipe.space.counting import count
from gtnpipe.space.spaces import ArchConfig, TaskShape, get_space
from gtnpipe.stages.search import cost_model
from gtnpipe.stages.workspace import Workspace, resolve

SPACE = get_space("mbv3-32")
TASK = TaskShape(3, (64, 64), 10)
RESOLUTIONS = (32, 48, 64)


def test_an_arch_id_carries_its_resolution_and_round_trips() -> None:
    arch = SPACE.sample_many(1, seed=3)[0]
    at48 = arch.at(48)
    assert at48.id == f"{arch.id}@48" and ArchConfig.from_id(at48.id) == at48 and SPACE.parse(at48.id) == at48
    assert ArchConfig.from_id(arch.id).resolution_px == 0 and at48.at(0) == arch
    for bad in (f"{arch.id}@", f"{arch.id}@0", f"{arch.id}@4x"):
        with pytest.raises(ArchError, match="after '@' comes the input side"):
            ArchConfig.from_id(bad)
    with pytest.raises(ArchError, match="runs at 200 px; space 'mbv3-32' is built for 32-95 px"):
        SPACE.validate(arch.at(200))


@pytest.mark.parametrize("side", [32, 48])
def test_costs_follow_the_arch_resolution(side: int) -> None:
    arch = SPACE.sample_many(1, seed=5)[0]
    at_side = TaskShape(3, (side, side), 10)
    assert count(arch.at(side), SPACE, TASK) == count(arch, SPACE, at_side)
    assert count(arch.at(side), SPACE, TASK).macs < count(arch, SPACE, TASK).macs
    assert count_module(build_static(arch, SPACE, TASK), TASK.for_arch(arch.at(side))) == count(arch.at(side), SPACE, TASK)
    model = cost_model(load_profile("host"), SPACE, TASK)
    assert model.estimate(arch.at(side)).latency_ms_p90 < model.estimate(arch).latency_ms_p90
    assert any(f"3x{side}x{side}" in note for note in model.table_notes())  # it looked for that input's table


def test_at_resolution_resizes_and_commutes_with_normalisation() -> None:
    net = build_static(SPACE.smallest(), SPACE, TASK).train(False)
    x = torch.rand(4, 3, 64, 64) * 255
    mean, std = torch.tensor([100.0, 120.0, 90.0]).view(1, 3, 1, 1), torch.tensor([50.0, 60.0, 40.0]).view(1, 3, 1, 1)
    assert torch.allclose(resize_to((x - mean) / std, 32), (resize_to(x, 32) - mean) / std, atol=1e-4)
    with torch.no_grad():
        assert torch.equal(AtResolution(net, 32)(x), net(resize_to(x, 32)))
    # shrinking is antialiased: a checkerboard averages to its mean grey instead of aliasing
    board = (torch.arange(64).view(1, 64) + torch.arange(64).view(64, 1)) % 2 * 255.0
    assert resize_to(board.expand(1, 3, 64, 64), 32).std() < 1.0


def test_search_with_elastic_resolution_gives_a_tight_device_a_smaller_input() -> None:
    profile = load_profile("host")
    base = cost_model(profile, SPACE, TASK)
    at_full, at_32 = pool_minimums(base)["latency_ms_p90"], pool_minimums(base, RESOLUTIONS)["latency_ms_p90"]
    assert at_32.arch_id.endswith("@32") and at_32.latency_ms_p90 < at_full.latency_ms_p90
    # a budget between the cheapest 32-px student and the cheapest at the data's 64 px
    budget = (at_32.latency_ms_p90 + at_full.latency_ms_p90) / 2 / (1 - profile.budgets.latency_margin_pct / 100)
    tight = dataclasses.replace(profile, budgets=dataclasses.replace(
        profile.budgets, latency_ms_p90=budget, peak_memory_mb=1e3, model_size_mb=1e3))
    cfg = SearchConfig(population=12, iterations=6, seed=0)
    with pytest.raises(InfeasibleBudget, match="latency_ms_p90"):
        evolution_search(cost_model(tight, SPACE, TASK), lambda a: 1.0, cfg)
    model = cost_model(tight, SPACE, TASK)
    result = evolution_search(model, lambda a: count(a, SPACE, TASK).macs / 1e6,
                              dataclasses.replace(cfg, resolutions_px=RESOLUTIONS))
    assert result.pick.arch.resolution_px in (32, 48)
    assert all(c.arch.resolution_px in RESOLUTIONS and not c.cost.violations(tight.budgets) for c in result.front)
    # without elastic resolution the streams of random numbers are the ones they were: no resolution drawn
    loose = cost_model(dataclasses.replace(tight, budgets=dataclasses.replace(tight.budgets, latency_ms_p90=1e3)),
                      SPACE, TASK)
    assert all(c.arch.resolution_px == 0 for c in evolution_search(loose, lambda a: 1.0, cfg).front)


def test_the_predictor_encoding_tells_resolutions_apart() -> None:
    arch = SPACE.smallest()
    assert SPACE.encode(arch.at(32)) != SPACE.encode(arch.at(48))
    assert SPACE.encode(arch)[:2] == [0.0, 0.0] and len(SPACE.encode(arch)) == len(SPACE.encode(arch.at(32)))


def test_a_recipe_resolution_above_the_data_is_refused() -> None:
    recipe = dataclasses.replace(load_recipe("quick"), resolutions_px=(16, 24, 40))
    with pytest.raises(ConfigError, match=r"resolutions_px = \[16, 24, 40\].*from 16 .* to 28 px.*\[40\] fall outside"):
        resolve(recipe, (28, 28))
    with pytest.raises(ConfigError, match="ascending"):
        resolve(dataclasses.replace(recipe, resolutions_px=(24, 16)), (28, 28))
    assert resolve(dataclasses.replace(recipe, resolutions_px=(16, 24)), (28, 28))[0].resolutions_px == (16, 24)


def test_a_student_with_its_own_resolution_is_deployed_from_resized_test_images() -> None:
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (6, 3, 64, 64), dtype=np.uint8), np.arange(6) % 2)
    data = Dataset("gen", ("a", "b"), split, split, split, "0" * 64, (0.5,) * 3, (0.25,) * 3)
    ws = Workspace(load_recipe("quick"), data, SPACE, TASK, None, None)  # type: ignore[arg-type]
    arch = SPACE.smallest()
    assert ws.for_student(arch) is ws
    student_ws = ws.for_student(arch.at(32))
    assert student_ws.task == TaskShape(3, (32, 32), 10) and student_ws.data.test.x.shape == (6, 3, 32, 32)
    assert student_ws.data.train.x.shape == (6, 3, 64, 64)  # training images stay; calibration resizes what it takes
    assert student_ws.deploy_images(split.x[:2]).shape == (2, 3, 32, 32)
    assert np.array_equal(student_ws.data.test.y, split.y)
