"""Search: every pick and front member fits every budget; impossible budgets say how far to relax."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gtnpipe.config.profiles import DeviceProfile, known_profiles, load_profile
from gtnpipe.nas.evolution import InfeasibleBudget, SearchConfig, evolution_search, pool_minimums, random_search
from gtnpipe.space.counting import count
from gtnpipe.space.spaces import ArchConfig, TaskShape, get_space
from gtnpipe.stages.search import cost_model

SPACE = get_space("mbv3-28")
TASK = TaskShape(1, (28, 28), 10)
SMALL_SEARCH = SearchConfig(population=12, iterations=6, seed=0)


def macs_proxy(arch: ArchConfig) -> float:
    """A stand-in accuracy for testing the search mechanics: bigger students score higher."""
    return count(arch, SPACE, TASK).macs / 1e6


@functools.cache
def _budget_range(device: str) -> tuple[dict[str, float], dict[str, float]]:
    """Per budget field: the pool's lowest prediction and the largest student's."""
    base = cost_model(load_profile(device), SPACE, TASK)
    low, high = pool_minimums(base), base.estimate(SPACE.largest())
    names = ("latency_ms_p90", "peak_memory_mb", "model_size_mb")
    return {n: getattr(low[n], n) for n in names}, {n: getattr(high, n) for n in names}


def _with_budgets(profile: DeviceProfile, **budgets: float) -> DeviceProfile:
    return dataclasses.replace(profile, budgets=dataclasses.replace(profile.budgets, **budgets))


@pytest.mark.slow  # 25 s on 2 cores: ten searches, each on a new cost model that first finds the pool's minimums
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(device=st.sampled_from(known_profiles()), latency=st.floats(0.0, 1.0), memory=st.floats(0.0, 1.0),
       size=st.floats(0.0, 1.0), seed=st.integers(0, 1000))
def test_search_respects_every_budget(device: str, latency: float, memory: float, size: float, seed: int) -> None:
    # budgets drawn between the pool's cheapest and largest student on each axis
    low, high = _budget_range(device)
    budgets = {name: low[name] + frac * (high[name] - low[name]) + 1e-9
               for name, frac in (("latency_ms_p90", latency), ("peak_memory_mb", memory), ("model_size_mb", size))}
    profile = load_profile(device)
    budgets["latency_ms_p90"] /= 1 - profile.budgets.latency_margin_pct / 100  # what search plans for is in range
    model = cost_model(_with_budgets(profile, **budgets), SPACE, TASK)
    try:
        result = evolution_search(model, macs_proxy, dataclasses.replace(SMALL_SEARCH, seed=seed))
    except InfeasibleBudget as err:  # each budget alone is reachable, so only the joint case may fail
        assert "at once" in str(err)
        return
    for cand in [result.pick, *result.front]:
        assert cand.cost.violations(model.profile.budgets) == []
        assert cand.cost.latency_ms_p90 <= model.profile.budgets.planned_latency_ms_p90
        assert model.estimate(cand.arch) == cand.cost
    assert result.pick.accuracy == max(c.accuracy for c in result.front)
    lat = [c.cost.latency_ms_p90 for c in result.front]
    acc = [c.accuracy for c in result.front]
    assert lat == sorted(lat) and acc == sorted(acc)  # a front: slower members are more accurate


def test_infeasible_latency_names_the_budget_the_minimum_and_the_arch() -> None:
    base = cost_model(load_profile("raspberry-pi-4"), SPACE, TASK)
    fastest = pool_minimums(base)["latency_ms_p90"]
    model = cost_model(_with_budgets(base.profile, latency_ms_p90=fastest.latency_ms_p90 / 2), SPACE, TASK)
    with pytest.raises(InfeasibleBudget) as info:
        evolution_search(model, macs_proxy, SMALL_SEARCH)
    message = str(info.value)
    assert "latency_ms_p90 = " in message and f"{fastest.latency_ms_p90:.3f}" in message
    assert fastest.arch_id in message and "Relax [budgets]" in message
    assert "peak_memory_mb" not in message  # only the budget that is out of reach


def test_latency_margin_plans_inside_the_budget() -> None:
    base = _with_budgets(load_profile("host"), latency_margin_pct=0.0)
    plain = evolution_search(cost_model(base, SPACE, TASK), macs_proxy, SMALL_SEARCH)
    budget = plain.pick.cost.latency_ms_p90  # the margin-free pick sits right at this budget
    at_edge = _with_budgets(base, latency_ms_p90=budget)
    # a margin that plans halfway between the pool's fastest student and the budget (whatever the host table says)
    fastest = pool_minimums(cost_model(at_edge, SPACE, TASK))["latency_ms_p90"].latency_ms_p90
    margin_pct = round(100 * (1 - (fastest + budget) / 2 / budget), 1)
    assert margin_pct > 1, f"the host table leaves no room between the pool's fastest ({fastest}) and {budget}"
    margined = _with_budgets(at_edge, latency_margin_pct=margin_pct)
    planned = (1 - margin_pct / 100) * budget
    assert margined.budgets.planned_latency_ms_p90 == pytest.approx(planned)
    result = evolution_search(cost_model(margined, SPACE, TASK), macs_proxy, SMALL_SEARCH)
    assert all(c.cost.latency_ms_p90 <= planned for c in [result.pick, *result.front])
    over = cost_model(margined, SPACE, TASK).estimate(plain.pick.arch)
    assert over.violations(margined.budgets) == [
        f"latency_ms_p90: predicted {over.latency_ms_p90:.3f} > budget {budget:g} less the {margin_pct:g}% margin"]
    assert over.violations(at_edge.budgets) == []


def test_infeasible_margin_says_so() -> None:
    base = cost_model(load_profile("raspberry-pi-4"), SPACE, TASK)
    fastest = pool_minimums(base)["latency_ms_p90"].latency_ms_p90
    # the fastest student fits the budget but not the budget less a 50% margin
    model = cost_model(_with_budgets(base.profile, latency_ms_p90=1.5 * fastest, latency_margin_pct=50.0), SPACE, TASK)
    with pytest.raises(InfeasibleBudget, match=r"less the 50% latency_margin_pct: .* but the lowest in the pool is"):
        evolution_search(model, macs_proxy, SMALL_SEARCH)


def test_pool_minimum_latency_is_not_beaten_by_sampled_students() -> None:
    model = cost_model(load_profile("host"), SPACE, TASK)
    fastest = pool_minimums(model)["latency_ms_p90"].latency_ms_p90
    assert all(model.estimate(a).latency_ms_p90 >= fastest - 1e-12 for a in SPACE.sample_many(300, seed=11))


def test_generous_budgets_pick_the_best_and_random_gets_the_same_evaluations() -> None:
    model = cost_model(_with_budgets(load_profile("x86-server"), latency_ms_p90=1e3, peak_memory_mb=1e4,
                                    model_size_mb=1e3), SPACE, TASK)
    evolved = evolution_search(model, macs_proxy, SearchConfig(population=20, iterations=30, seed=1))
    assert evolved.pick.arch == SPACE.largest() or evolved.pick.accuracy > 0.9 * macs_proxy(SPACE.largest())
    baseline = random_search(model, macs_proxy, evaluations=evolved.evaluations, seed=1)
    assert baseline.evaluations == evolved.evaluations
    assert evolved.pick.accuracy >= baseline.pick.accuracy


def test_search_config_is_validated() -> None:
    with pytest.raises(ValueError, match="'mutate_prob' must be in"):
        SearchConfig(mutate_prob=0.0)


def test_pareto_plot_is_a_png_that_draws_the_pick(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from gtnpipe.nas.plots import plot_pareto

    model = cost_model(load_profile("host"), SPACE, TASK)
    result = evolution_search(model, macs_proxy, SMALL_SEARCH)
    path = plot_pareto(result, tmp_path / "pareto.png", device="host", latency_budget_ms=0.25)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (840, 540)  # figsize 7 x 4.5 in at 120 dpi
        rgb = np.asarray(image.convert("RGB"), dtype=np.int64)
    # the pick's star and its legend entry are the only crimson (220, 20, 60) areas: 428 pixels here, none when the
    # star is drawn in another colour (the 1-pixel budget line is antialiased away from it)
    crimson = (np.abs(rgb - (220, 20, 60)).sum(-1) < 30).sum()
    assert crimson > 300, crimson
