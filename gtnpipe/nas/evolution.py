"""Budget-constrained student search: evolution (Once-for-All's) and a random-search baseline.

Maximises an accuracy estimate over the pool subject to every budget of a device
profile, each checked on the cost model's prediction at the profile's precision. Only
feasible students enter the population, as in OFA's evolution finder. Returns the pick
and the Pareto front (estimated accuracy vs predicted p90 latency) of every feasible
student evaluated.

Before searching, the smallest latency, memory and size reachable in the pool are
found stage by stage (exact for latency and size, which are sums over units; memory,
whose activation part is a maximum, by the same coordinate-wise descent): a budget below
them is an `InfeasibleBudget` error that says how far to relax it and which student
reaches the minimum.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from gtnpipe.devices.cost import CostEstimate, CostModel
from gtnpipe.errors import GtnpipeError
from gtnpipe.space.spaces import ArchConfig, Block, SearchSpace

__all__ = ["Candidate", "InfeasibleBudget", "SearchConfig", "SearchResult", "check_feasible", "evolution_search", "pool_minimums",
           "random_search"]


class InfeasibleBudget(GtnpipeError):
    """No student of the pool fits the device's budgets."""


@dataclass(frozen=True)
class SearchConfig:
    population: int = 100  # OFA's defaults
    iterations: int = 500
    parent_ratio: float = 0.25
    mutation_ratio: float = 0.5  # share of each new generation made by mutation, the rest by crossover
    mutate_prob: float = 0.1  # per-choice probability of a mutation
    seed: int = 0
    # elastic input resolution (OFA's): the square input sides a student may run at; () = the data's resolution only
    resolutions_px: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.resolutions_px and (list(self.resolutions_px) != sorted(set(self.resolutions_px))
                                    or self.resolutions_px[0] < 8):
            raise ValueError(f"'resolutions_px' must be distinct sides of 8 px or more in ascending order, got "
                             f"{list(self.resolutions_px)}")
        if self.population < 4 or self.iterations < 1:
            raise ValueError(f"'population' must be >= 4 and 'iterations' >= 1, got {self.population}, {self.iterations}")
        for name in ("parent_ratio", "mutation_ratio", "mutate_prob"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"'{name}' must be in (0, 1], got {getattr(self, name)}")

    @property
    def evaluations(self) -> int:
        """Accuracy/cost evaluations the evolution spends (the random baseline gets the same)."""
        n_parents = max(2, int(self.population * self.parent_ratio))
        return self.population + self.iterations * (self.population - n_parents)


@dataclass(frozen=True)
class Candidate:
    arch: ArchConfig
    accuracy: float
    cost: CostEstimate

    def to_dict(self) -> dict[str, object]:
        return {"arch": self.arch.id, "estimated_top1": self.accuracy, **self.cost.to_dict()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Candidate:
        cost = CostEstimate(**{f.name: raw[f.name] for f in fields(CostEstimate)})
        return cls(ArchConfig.from_id(raw["arch"]), float(raw["estimated_top1"]), cost)


@dataclass(frozen=True)
class SearchResult:
    method: str
    pick: Candidate
    front: list[Candidate]  # Pareto front, by increasing latency
    evaluations: int
    feasible_seen: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"method": self.method, "pick": self.pick.to_dict(), "front": [c.to_dict() for c in self.front],
                "evaluations": self.evaluations, "feasible_seen": self.feasible_seen, "seconds": self.seconds,
                "notes": self.notes}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SearchResult:
        """The result `to_dict` wrote (a cached search)."""
        return cls(raw["method"], Candidate.from_dict(raw["pick"]), [Candidate.from_dict(c) for c in raw["front"]],
                   raw["evaluations"], raw["feasible_seen"], raw["seconds"], list(raw["notes"]))


class _Evaluator:
    """Memoised accuracy and cost of archs; counts distinct evaluations."""

    def __init__(self, model: CostModel, accuracy: Callable[[ArchConfig], float]) -> None:
        self.model, self.accuracy = model, accuracy
        self.seen: dict[ArchConfig, Candidate | None] = {}
        self.calls = 0

    def __call__(self, arch: ArchConfig) -> Candidate | None:
        """The candidate if it fits every budget, else None."""
        self.calls += 1
        if arch not in self.seen:
            cost = self.model.estimate(arch)
            fits = not cost.violations(self.model.profile.budgets)
            self.seen[arch] = Candidate(arch, float(self.accuracy(arch)), cost) if fits else None
        return self.seen[arch]

    def feasible(self) -> list[Candidate]:
        return [c for c in self.seen.values() if c is not None]


def pool_minimums(model: CostModel, resolutions_px: tuple[int, ...] = ()) -> dict[str, CostEstimate]:
    """Per budget field, the student predicted lowest on it and its estimate (at the lowest resolution offered:
    every cost grows with the input)."""
    space = model.space
    r = min(resolutions_px, default=0)

    def stage_min(unit_cost: Callable[[ArchConfig], float]) -> ArchConfig:
        # costs add over stages and blocks: pick each stage's cheapest (depth, first block, later block)
        # by trying it inside an otherwise smallest arch
        stages = list(space.smallest().stages)
        for s in range(space.num_stages):
            options = [tuple([first] + [rest] * (d - 1)) for d in space.depths
                       for first in space.choices for rest in (space.choices if d > 1 else space.choices[:1])]
            best = min(options, key=lambda st: unit_cost(ArchConfig(tuple(stages[:s] + [st] + stages[s + 1:]), r)))
            stages[s] = best
        return ArchConfig(tuple(stages), r)

    fastest = stage_min(lambda a: model.estimate(a).latency_ms_p90)
    smallest_file = stage_min(lambda a: model.estimate(a).model_size_mb)
    leanest = stage_min(lambda a: model.estimate(a).peak_memory_mb)
    return {"latency_ms_p90": model.estimate(fastest), "peak_memory_mb": model.estimate(leanest),
            "model_size_mb": model.estimate(smallest_file)}


_SOURCE = {"latency_ms_p90": "latency_source", "peak_memory_mb": "memory_source", "model_size_mb": "size_source"}


def check_feasible(model: CostModel, resolutions_px: tuple[int, ...] = ()) -> None:
    """Raise `InfeasibleBudget` when a budget is below the pool's lowest prediction for it."""
    budgets = model.profile.budgets
    limits = {"latency_ms_p90": budgets.planned_latency_ms_p90, "peak_memory_mb": budgets.peak_memory_mb,
              "model_size_mb": budgets.model_size_mb}
    problems = []
    for name, best in pool_minimums(model, resolutions_px).items():
        reached = getattr(best, name)
        if reached > limits[name]:
            margin = (f" (less the {budgets.latency_margin_pct:g}% latency_margin_pct: {limits[name]:.3f})"
                      if name == "latency_ms_p90" and budgets.latency_margin_pct else "")
            problems.append(f"{name} = {getattr(budgets, name):g}{margin} but the lowest in the pool is {reached:.3f} "
                            f"({getattr(best, _SOURCE[name])}), reached by {best.arch_id}")
    if problems:
        raise InfeasibleBudget(
            f"no student fits device {model.profile.name!r} at {model.precision}: " + "; ".join(problems)
            + ". Relax [budgets] in the profile to at least these values (or allow another precision)."
        )


def _mutate(arch: ArchConfig, cfg: SearchConfig, rng: random.Random, space_choices: tuple[Block, ...],
            depths: tuple[int, ...], max_depth: int) -> ArchConfig:
    stages = []
    for stage in arch.stages:
        blocks = list(stage) + [rng.choice(space_choices) for _ in range(max_depth - len(stage))]
        blocks = [rng.choice(space_choices) if rng.random() < cfg.mutate_prob else b for b in blocks]
        depth = rng.choice(depths) if rng.random() < cfg.mutate_prob else len(stage)
        stages.append(tuple(blocks[:depth]))
    resolution = arch.resolution_px
    if cfg.resolutions_px and rng.random() < cfg.mutate_prob:  # no draw without elastic resolution: same streams
        resolution = rng.choice(cfg.resolutions_px)
    return ArchConfig(tuple(stages), resolution)


def _sample(space: SearchSpace, rng: random.Random, resolutions_px: tuple[int, ...]) -> ArchConfig:
    """A random student (SearchSpace.sample), at a random resolution of `resolutions_px` when given."""
    arch = space.sample(rng)
    return arch.at(rng.choice(resolutions_px)) if resolutions_px else arch


def _crossover(a: ArchConfig, b: ArchConfig, rng: random.Random, max_depth: int) -> ArchConfig:
    stages = []
    for sa, sb in zip(a.stages, b.stages):
        depth = rng.choice((len(sa), len(sb)))
        pa, pb = list(sa) + list(sb[len(sa):]), list(sb) + list(sa[len(sb):])  # fill slots from the other parent
        stages.append(tuple(rng.choice((pa[i], pb[i])) if i < min(len(pa), len(pb)) else (pa + pb)[i]
                            for i in range(depth)))
    resolution = a.resolution_px if a.resolution_px == b.resolution_px else rng.choice((a.resolution_px, b.resolution_px))
    return ArchConfig(tuple(stages), resolution)


def _front(candidates: list[Candidate]) -> list[Candidate]:
    front: list[Candidate] = []
    for c in sorted(candidates, key=lambda c: (c.cost.latency_ms_p90, -c.accuracy)):
        if not front or c.accuracy > front[-1].accuracy:
            front.append(c)
    return front


def _result(method: str, ev: _Evaluator, started: float, evaluations: int) -> SearchResult:
    feasible = ev.feasible()
    pick = max(feasible, key=lambda c: (c.accuracy, -c.cost.latency_ms_p90))
    return SearchResult(method, pick, _front(feasible), evaluations, len(feasible), time.perf_counter() - started,
                        ev.model.table_notes())


def _initial(ev: _Evaluator, n: int, rng: random.Random, max_tries: int,
             resolutions_px: tuple[int, ...]) -> list[Candidate]:
    space = ev.model.space
    population: list[Candidate] = []
    for _ in range(max_tries):
        if len(population) == n:
            break
        c = ev(_sample(space, rng, resolutions_px))
        if c is not None:
            population.append(c)
    return population


def _offspring(ev: _Evaluator, count: int, make: Callable[[], ArchConfig]) -> list[Candidate]:
    """Up to `count` feasible children (a tight budget may reject most tries: give up after 50 per child)."""
    out: list[Candidate] = []
    for _ in range(50 * max(count, 1)):
        if len(out) == count:
            break
        c = ev(make())
        if c is not None:
            out.append(c)
    return out


def evolution_search(model: CostModel, accuracy: Callable[[ArchConfig], float],
                     cfg: SearchConfig = SearchConfig()) -> SearchResult:
    check_feasible(model, cfg.resolutions_px)
    started, rng, space = time.perf_counter(), random.Random(cfg.seed), model.space
    ev = _Evaluator(model, accuracy)
    max_tries = 200 * cfg.population
    population = _initial(ev, cfg.population, rng, max_tries, cfg.resolutions_px)
    if not population:  # random sampling rarely lands in a tight corner: start from the cheapest students
        population = [c for c in (ev(ArchConfig.from_id(m.arch_id))
                                  for m in pool_minimums(model, cfg.resolutions_px).values()) if c]
    if not population:
        raise InfeasibleBudget(
            f"no student fits all budgets of device {model.profile.name!r} at once (each budget alone is reachable): "
            "relax one of [budgets] latency_ms_p90, peak_memory_mb, model_size_mb"
        )
    n_parents = max(2, int(cfg.population * cfg.parent_ratio))
    n_mutate = int((cfg.population - n_parents) * cfg.mutation_ratio)
    n_cross = cfg.population - n_parents - n_mutate
    for _ in range(cfg.iterations):
        parents = sorted(population, key=lambda c: -c.accuracy)[:n_parents]

        def mutant(p: list[Candidate] = parents) -> ArchConfig:
            return _mutate(rng.choice(p).arch, cfg, rng, space.choices, space.depths, space.max_depth)

        def cross(p: list[Candidate] = parents) -> ArchConfig:
            return _crossover(rng.choice(p).arch, rng.choice(p).arch, rng, space.max_depth)

        mutants = _offspring(ev, n_mutate, mutant)
        crosses = _offspring(ev, n_cross, cross)
        children = mutants + crosses
        population = parents + children
    return _result("evolution", ev, started, ev.calls)


def random_search(model: CostModel, accuracy: Callable[[ArchConfig], float], *, evaluations: int,
                  seed: int = 0, resolutions_px: tuple[int, ...] = ()) -> SearchResult:
    """The baseline: `evaluations` uniform samples of the pool, the best feasible one wins."""
    check_feasible(model, resolutions_px)
    started, rng = time.perf_counter(), random.Random(seed)
    ev = _Evaluator(model, accuracy)
    for _ in range(evaluations):
        ev(_sample(model.space, rng, resolutions_px))
    if not ev.feasible():
        raise InfeasibleBudget(f"random search found no student within the budgets of {model.profile.name!r} "
                               f"in {evaluations} samples")
    return _result("random", ev, started, evaluations)
