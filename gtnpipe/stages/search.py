"""Search stages: the accuracy predictor fitted on the GTN-trained supernet, and a device's search result."""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import track

from gtnpipe.config.profiles import DeviceProfile, load_profile, with_budgets
from gtnpipe.config.recipes import PredictorConfig
from gtnpipe.deploy.backends import backend_class
from gtnpipe.devices.cost import CostModel, SizeFactor, table_path
from gtnpipe.errors import ConfigError
from gtnpipe.fsutil import canonical_json, sha256_file
from gtnpipe.models.supernet import Supernet
from gtnpipe.nas.accuracy import AccuracyPredictor, inherited_accuracy
from gtnpipe.nas.evolution import SearchConfig, SearchResult, check_feasible, evolution_search
from gtnpipe.space.spaces import SPACES, ArchConfig, SearchSpace, TaskShape
from gtnpipe.stages.keys import Stage
from gtnpipe.stages.training import TeacherInput, load_supernet, teacher_input
from gtnpipe.stages.workspace import DataRef, Workspace, run_stage
from gtnpipe.training.train import Normalizer

__all__ = [
    "AccuracyInput",
    "AccuracyOutcome",
    "SearchInput",
    "accuracy_input",
    "accuracy_predictor",
    "budgeted_profile",
    "space_of_input",
    "cost_model",
    "inherited_accuracies",
    "int8_size",
    "search_device",
    "search_input",
]

ACCURACY_SEED = 4242


@dataclass(frozen=True)
class AccuracyInput(Stage):
    """Inherited-weight val top-1 of sampled students (smallest and largest included) and the ridge predictor."""

    STAGE = "accuracy"
    CODE = ("gtnpipe.stages.workspace", "gtnpipe.nas.accuracy", "gtnpipe.models.supernet", "gtnpipe.training.train",
            "gtnpipe.space.spaces")  # the roots (keys.Stage.CODE); its packages: those they import

    supernet_from: TeacherInput
    predictor: PredictorConfig  # how many students, BN recalibration images, eval batch (the recipe's [predictor])
    seed: int
    resolutions_px: tuple[int, ...]  # the recipe's elastic resolutions: students are measured at random ones of them
    space: SearchSpace
    task: TaskShape
    data: DataRef


@dataclass(frozen=True)
class AccuracyOutcome:
    key: str
    cached: bool
    predictor: AccuracyPredictor
    measured: list[dict[str, Any]]  # arch id and inherited-weight val top-1 of each measured student
    seconds: float


@dataclass(frozen=True)
class SearchInput(Stage):
    """Evolutionary search of the pool for one device under its cost model, ranked by the accuracy predictor."""

    STAGE = "searches"
    # the roots (keys.Stage.CODE): nas.accuracy for the predictor it ranks by (AccuracyPredictor.predict)
    CODE = ("gtnpipe.stages.workspace", "gtnpipe.nas.evolution", "gtnpipe.nas.accuracy", "gtnpipe.nas.plots",
            "gtnpipe.devices.cost")

    profile: DeviceProfile
    predictor: AccuracyInput
    config: SearchConfig
    table_sha256: str | None  # the device's measured latency table, if it has one
    int8_size: SizeFactor  # the runtime's INT8 size factor (its backend's): the size budget's prediction at INT8
    space: SearchSpace
    task: TaskShape


def accuracy_input(ws: Workspace, *, samples: int | None = None) -> AccuracyInput:
    """The recipe's [predictor] settings; `samples` overrides its student count (gtnpipe build --accuracy-samples)."""
    gtn = teacher_input(ws, "gtn")
    assert isinstance(gtn, TeacherInput)
    config = ws.recipe.predictor if samples is None else replace(ws.recipe.predictor, samples=samples)
    return AccuracyInput(gtn, config, ACCURACY_SEED, ws.recipe.resolutions_px, ws.space, ws.task, ws.data_ref)


def accuracy_predictor(ws: Workspace, inp: AccuracyInput) -> AccuracyOutcome:
    """Fit (or find in the cache) the accuracy predictor on the GTN-trained supernet's students."""
    supernet = None if ws.cache.lookup(inp.STAGE, inp.key) else load_supernet(ws, inp.supernet_from)

    def build(staging: Any, meta: dict[str, Any]) -> None:
        start = time.perf_counter()
        net = supernet if supernet is not None else load_supernet(ws, inp.supernet_from)
        space = inp.space
        archs = [space.smallest(), space.largest(), *space.sample_many(inp.predictor.samples - 2, seed=inp.seed)]
        if inp.resolutions_px:  # the extremes at the extremes, the others at random resolutions
            rng = random.Random(inp.seed)
            archs = [archs[0].at(inp.resolutions_px[0]), archs[1].at(inp.resolutions_px[-1]),
                     *(a.at(rng.choice(inp.resolutions_px)) for a in archs[2:])]
        top1 = [_inherited(ws, net, a, inp.predictor)
                for a in track(archs, description="accuracy predictor: students measured", disable=not ws.progress,
                               console=Console(stderr=True))]
        AccuracyPredictor.fit(space, archs, top1).save(staging / "predictor.json")
        meta |= {"measured": [{"arch": a.id, "val_top1": t} for a, t in zip(archs, top1)],
                 "seconds": time.perf_counter() - start}

    entry, cached = run_stage(ws.cache, inp, build)
    return AccuracyOutcome(inp.key, cached, AccuracyPredictor.load(entry.file("predictor.json")), entry.meta["measured"],
                           entry.meta["seconds"])


def inherited_accuracies(ws: Workspace, archs: list[str]) -> list[float]:
    """Val top-1 of each arch with the GTN-trained supernet's weights (BN recalibrated), as the predictor is fitted."""
    inp = accuracy_input(ws)
    supernet = load_supernet(ws, inp.supernet_from)
    return [_inherited(ws, supernet, ws.space.parse(a), inp.predictor) for a in archs]


def _inherited(ws: Workspace, supernet: Supernet, arch: ArchConfig, cfg: PredictorConfig) -> float:
    """Val top-1 of `arch` with the supernet's weights, BN recalibrated, as the predictor's settings say."""
    return inherited_accuracy(supernet, arch, ws.data.train, ws.data.val, Normalizer(ws.data.mean, ws.data.std),
                              bn_images=cfg.bn_images, eval_batch_size=cfg.eval_batch_size, device=ws.train_device)


def search_input(ws: Workspace, profile: DeviceProfile, *, config: SearchConfig | None = None,
                 accuracy_samples: int | None = None) -> SearchInput:
    """Search for `profile` with the recipe's elastic resolutions (resolutions_px) in the config."""
    config = replace(config or SearchConfig(), resolutions_px=ws.recipe.resolutions_px)
    return SearchInput(profile, accuracy_input(ws, samples=accuracy_samples), config,
                       _tables_sha256(profile, ws, config.resolutions_px), int8_size(profile), ws.space, ws.task)


def budgeted_profile(device: str | Path | DeviceProfile, space: str | None,
                     overrides: tuple[tuple[str, float], ...] = ()) -> DeviceProfile:
    """The device's profile with the budgets for students of `space` ([[space_budgets]]; None: its [budgets]), then
    --budget NAME=VALUE."""
    profile = load_profile(device)
    unknown = sorted({b.space for b in profile.space_budgets} - set(SPACES))
    if unknown:
        raise ConfigError(f"device {profile.name!r}: [[space_budgets]] names unknown space(s) {', '.join(unknown)}; the "
                          f"spaces are {', '.join(SPACES)}")
    return with_budgets(profile.for_space(space) if space else profile, overrides)


def space_of_input(image_hw: tuple[int, ...]) -> str | None:
    """The space built for a model input of this size (whose budgets a user's model of that size gets), if any."""
    side = min(image_hw)
    return next((s.name for s in SPACES.values() if s.image_px[0] <= side <= s.image_px[1]), None)


def int8_size(profile: DeviceProfile) -> SizeFactor:
    """The INT8 size factor of the profile's runtime, as its backend states it (measured or a guess)."""
    cls = backend_class(profile.runtime.name)
    return SizeFactor(cls.int8_size_factor, cls.int8_size_factor_source)


def cost_model(profile: DeviceProfile, space: SearchSpace, task: TaskShape, *, precision: str | None = None,
               tables_dir: Path | None = None) -> CostModel:
    """The device's cost model, with its runtime's INT8 size factor."""
    return CostModel(profile, space, task, int8_size=int8_size(profile), precision=precision, tables_dir=tables_dir)


def _tables_sha256(profile: DeviceProfile, ws: Workspace, resolutions_px: tuple[int, ...]) -> str | None:
    """sha256 of the device's measured latency table at the data's input; with elastic resolutions, of the list of
    the tables (or their absence) at each resolution, which every estimate may read."""
    def sha(task: TaskShape) -> str | None:
        path = table_path(profile.name, ws.space.name, task)
        return sha256_file(path) if path.exists() else None

    if not resolutions_px:
        return sha(ws.task)
    per_side = [[r, sha(TaskShape(ws.task.in_channels, (r, r), ws.task.num_classes))] for r in resolutions_px]
    return hashlib.sha256(canonical_json(per_side).encode()).hexdigest()


@dataclass(frozen=True)
class SearchOutcome:
    key: str
    cached: bool
    result: SearchResult
    table_note: str
    pareto_png: str  # the Pareto plot in the cache entry
    predictor: AccuracyOutcome


def search_device(ws: Workspace, inp: SearchInput) -> SearchOutcome:
    """The best student for the device: evolution over the pool, every budget checked on the cost model (cached
    with its Pareto plot). An infeasible budget fails before anything is trained."""
    model = CostModel(inp.profile, inp.space, inp.task, int8_size=inp.int8_size)
    check_feasible(model, inp.config.resolutions_px)
    acc = accuracy_predictor(ws, inp.predictor)

    def build(staging: Any, meta: dict[str, Any]) -> None:
        from gtnpipe.nas.plots import plot_pareto

        result = evolution_search(model, lambda a: acc.predictor.predict(inp.space, a), inp.config)
        budgets = inp.profile.budgets
        plot_pareto(result, staging / "pareto.png", device=inp.profile.name, latency_budget_ms=budgets.latency_ms_p90,
                    latency_planned_ms=budgets.planned_latency_ms_p90)
        meta |= {"result": result.to_dict(), "table_note": "; ".join(model.table_notes())}

    entry, cached = run_stage(ws.cache, inp, build)
    return SearchOutcome(inp.key, cached, SearchResult.from_dict(entry.meta["result"]), entry.meta["table_note"],
                         str(entry.file("pareto.png")), acc)
