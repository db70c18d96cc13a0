"""The student pool: ids, sampling, encoding, pool size, extract parity, exact MACs/params."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gtnpipe.errors import ArchError
from gtnpipe.models.counting import count_module
from gtnpipe.models.static import build_static
from gtnpipe.models.supernet import Supernet
from gtnpipe.space.counting import count
from gtnpipe.space.spaces import SPACES, ArchConfig, Block, TaskShape, get_space, space_for

SPACE = get_space("mbv3-28")
TASK = TaskShape(1, (28, 28), 10)


def _randomise_stats(model: nn.Module, seed: int) -> None:
    """Non-trivial BN statistics and kernel transforms, so parity cannot pass by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
        for name, p in model.named_parameters():
            if "kernel_transforms" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def supernet() -> Supernet:
    torch.manual_seed(0)
    net = Supernet(SPACE, TASK)
    _randomise_stats(net, seed=1)
    return net.eval()


@st.composite
def archs(draw: st.DrawFn) -> ArchConfig:
    stages = []
    for _ in SPACE.stages:
        depth = draw(st.sampled_from(SPACE.depths))
        stages.append(tuple(draw(st.sampled_from(SPACE.choices)) for _ in range(depth)))
    return ArchConfig(tuple(stages))


@given(archs())
@settings(max_examples=200, deadline=None)
def test_arch_id_round_trips(arch: ArchConfig) -> None:
    assert ArchConfig.from_id(arch.id) == arch
    assert SPACE.parse(arch.id) == arch
    assert hash(ArchConfig.from_id(arch.id)) == hash(arch)


def test_arch_id_spells_out_the_choices() -> None:
    arch = ArchConfig(((Block(3, 4), Block(5, 6)), (Block(7, 3),), (Block(3, 3),), (Block(5, 4),)))
    assert arch.id == "k3e4-k5e6_k7e3_k3e3_k5e4"
    assert arch.depths == (2, 1, 1, 1)


@pytest.mark.parametrize("bad", ["", "k3e4_", "k3x4_k3e3_k3e3_k3e3", "largest-ish", "k3e4 k3e3"])
def test_malformed_id_is_a_clear_error(bad: str) -> None:
    with pytest.raises(ArchError, match="cannot parse arch id"):
        ArchConfig.from_id(bad)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("k3e3_k3e3_k3e3", "has 3 stages"),
        ("k9e3_k3e3_k3e3_k3e3", "kernels \\[3, 5, 7\\]"),
        ("k3e5_k3e3_k3e3_k3e3", "expand ratios \\[3, 4, 6\\]"),
        ("k3e3-k3e3-k3e3-k3e3-k3e3_k3e3_k3e3_k3e3", "allowed depths"),
    ],
)
def test_arch_outside_the_space_is_rejected(text: str, message: str) -> None:
    with pytest.raises(ArchError, match=message):
        SPACE.parse(text)


def test_largest_and_smallest() -> None:
    assert SPACE.parse("largest") == SPACE.largest()
    assert SPACE.largest().depths == (4, 4, 4, 4)
    assert all(b == Block(7, 6) for s in SPACE.largest().stages for b in s)
    assert SPACE.smallest().id == "k3e3_k3e3_k3e3_k3e3"


def test_sampling_is_seeded_and_distinct() -> None:
    a = SPACE.sample_many(50, seed=3)
    assert a == SPACE.sample_many(50, seed=3)
    assert a != SPACE.sample_many(50, seed=4)
    assert len(set(a)) == 50
    for arch in a:
        SPACE.validate(arch)
    # all depths and all block choices appear over a few hundred samples
    many = SPACE.sample_many(300, seed=0)
    assert {d for arch in many for d in arch.depths} == set(SPACE.depths)
    assert {b for arch in many for s in arch.stages for b in s} == set(SPACE.choices)


def test_encoding_is_fixed_length_and_injective() -> None:
    sample = SPACE.sample_many(300, seed=1) + [SPACE.largest(), SPACE.smallest()]
    sample += [a.at(r) for a, r in zip(sample[:40], itertools.cycle((16, 20, 24)))]  # with elastic resolutions
    codes = [tuple(SPACE.encode(a)) for a in sample]
    per_stage = len(SPACE.depths) + SPACE.max_depth * (len(SPACE.kernel_sizes) + len(SPACE.expand_ratios))
    assert {len(c) for c in codes} == {2 + SPACE.num_stages * per_stage}  # 2: the resolution and its square
    assert set(itertools.chain.from_iterable(c[2:] for c in codes)) == {0.0, 1.0}
    assert len(set(codes)) == len(set(sample))


def test_pool_size_matches_brute_force_on_a_small_space() -> None:
    tiny = replace(SPACE, stages=SPACE.stages[:2], depths=(1, 2), kernel_sizes=(3, 5), expand_ratios=(3,))
    rng = random.Random(0)
    seen = {tiny.sample(rng) for _ in range(20000)}
    # per stage: 2 + 2^2 = 6 options, two stages: 36
    assert tiny.pool_size == 36 == len(seen)


def test_pool_is_large_and_spans_macs() -> None:
    assert SPACE.pool_size >= 10**6
    small, large = count(SPACE.smallest(), SPACE, TASK), count(SPACE.largest(), SPACE, TASK)
    assert large.macs / small.macs >= 8.0
    assert large.params > small.params


def test_extract_matches_supernet(supernet: Supernet) -> None:
    """Max abs diff <= 1e-5 over many random archs (plus the extremes), both in eval mode."""
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    archs_ = SPACE.sample_many(40, seed=11) + [SPACE.largest(), SPACE.smallest()]
    worst = 0.0
    with torch.no_grad():
        for arch in archs_:
            static = supernet.extract(arch).eval()
            ref = supernet(x, arch)
            assert ref.abs().max() > 1e-3  # a non-degenerate output
            worst = max(worst, float((static(x) - ref).abs().max()))
    assert worst <= 1e-5


def test_extract_is_not_trivially_equal(supernet: Supernet) -> None:
    """Guard for the parity test: a different arch's weights give a clearly different output."""
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    a, b = SPACE.sample_many(2, seed=5)
    with torch.no_grad():
        assert float((supernet.extract(a).eval()(x) - supernet(x, b)).abs().max()) > 1e-3


def test_kernel_transform_changes_smaller_kernels_only(supernet: Supernet) -> None:
    block = supernet.stages[0][0]
    full = block.depthwise[0].weight
    w7 = block.depthwise_weight(7, 48)
    w3 = block.depthwise_weight(3, 48)
    assert torch.equal(w7, full[:48])
    assert w3.shape == (48, 1, 3, 3)
    # with identity transforms the 3x3 kernel would be the exact centre of the 7x7 one
    assert not torch.allclose(w3, full[:48, :, 2:5, 2:5])


def test_supernet_trains_shared_weights() -> None:
    """A step on one arch moves the weights of the blocks it uses, not those of inactive blocks."""
    torch.manual_seed(0)
    net = Supernet(SPACE, TASK).train()
    arch = SPACE.smallest()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    loss = net(torch.randn(4, 1, 28, 28), arch).logsumexp(1).mean()
    loss.backward()
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    changed = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    assert "stages.0.0.expand.0.weight" in changed
    assert not any(n.startswith("stages.0.1.") for n in changed)  # depth 1: block 2 inactive


@pytest.mark.parametrize("seed", range(3))
def test_macs_and_params_are_exact(seed: int) -> None:
    archs_ = SPACE.sample_many(10, seed=seed) + ([SPACE.largest(), SPACE.smallest()] if seed == 0 else [])
    for arch in archs_:
        net = build_static(arch, SPACE, TASK)
        assert count(arch, SPACE, TASK) == count_module(net, TASK), arch.id


@pytest.mark.parametrize("name", sorted(SPACES))
def test_every_space_counts_exactly_and_round_trips_ids_at_its_resolution(name: str) -> None:
    space = SPACES[name]
    task = TaskShape(3, (space.nominal_px, space.nominal_px), 100)
    for arch in [space.smallest(), space.largest(), *space.sample_many(3, seed=1)]:
        assert count(arch, space, task) == count_module(build_static(arch, space, task), task), (name, arch.id)
    for arch in space.sample_many(200, seed=2):
        assert space.parse(arch.id) == arch


@pytest.mark.parametrize("task", [TaskShape(3, (32, 32), 100), TaskShape(1, (27, 31), 2)])
def test_macs_follow_the_task_shape(task: TaskShape) -> None:
    arch = SPACE.sample_many(1, seed=9)[0]
    assert count(arch, SPACE, task) == count_module(build_static(arch, SPACE, task), task)


@pytest.mark.parametrize("name", sorted(SPACES))
def test_every_registered_space_builds_and_extracts(name: str) -> None:
    space = SPACES[name]
    assert space.name == name
    torch.manual_seed(0)
    net = Supernet(space, TASK).eval()
    x = torch.randn(2, 1, 28, 28)
    for arch in (space.smallest(), space.largest()):
        assert net(x, arch).shape == (2, 10)
        assert torch.allclose(net.extract(arch).eval()(x), net(x, arch), atol=1e-5)


@pytest.mark.parametrize(("side", "expected"), [(16, "mbv3-28"), (28, "mbv3-28"), (31, "mbv3-28"), (32, "mbv3-32"),
                                               (64, "mbv3-32"), (95, "mbv3-32"), (96, "mbv3-224"), (224, "mbv3-224")])
def test_auto_space_follows_the_shorter_side(side: int, expected: str) -> None:
    assert space_for((side, side)).name == expected
    assert space_for((side, side + 40)).name == expected  # the shorter side decides
    space = get_space(expected)
    assert space.image_px[0] <= side <= space.image_px[1] and space.image_px[0] <= space.nominal_px <= space.image_px[1]


def test_auto_space_outside_every_range_names_the_ranges() -> None:
    with pytest.raises(ArchError, match=r"no search space is built for 8x8 images .*mbv3-28 16-31 px.*--image-size"):
        space_for((8, 8))


def test_unknown_space_lists_the_known_ones() -> None:
    with pytest.raises(ArchError, match="known spaces: mbv3-224, mbv3-28, mbv3-32"):
        get_space("resnet")


def test_part_costs_add_up_and_match_module_parts() -> None:
    from gtnpipe.space.counting import count_parts

    arch = SPACE.sample_many(1, seed=21)[0]
    parts = count_parts(arch, SPACE, TASK)
    assert parts.total() == count(arch, SPACE, TASK)
    assert parts.tail(0).macs == parts.total().macs - parts.stem.macs
    net = build_static(arch, SPACE, TASK)
    x = net.stem(torch.zeros(1, 1, 28, 28))
    for i, stage in enumerate(net.stages):
        assert parts.stages[i] == count_module(stage, TaskShape(x.shape[1], tuple(x.shape[2:]), 10)), i
        x = stage(x)


@pytest.mark.parametrize("name", sorted(SPACES))
def test_every_space_has_a_nominal_task_at_its_nominal_resolution(name: str) -> None:
    from gtnpipe.space.pool import NOMINAL_TASKS, pool_info

    task = NOMINAL_TASKS[name]
    assert task.image_hw == (SPACES[name].nominal_px,) * 2
    info = pool_info(space=name)
    assert info["task"] == {"in_channels": task.in_channels, "image_hw": task.image_hw, "num_classes": task.num_classes}
    assert info["smallest"]["macs"] == count(SPACES[name].smallest(), SPACES[name], task).macs < info["largest"]["macs"]
