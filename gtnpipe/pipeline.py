"""The whole flow, one function per CLI command. Read this file to see how the pieces fit.

    recipe ──► data ──► teacher: vanilla (CE) | gtn (generic, once) | sftn (per student) ──► cache
                          │
                          ▼
             student from the pool ──► distill (KD from a cached teacher, or none) ──► cache

    device profile ──► search (cost model + accuracy predictor) ──► pick ──► distill from the generic teacher
                          ──► export (ONNX) ──► backend build per precision ──► parity + timing ──► artifacts/<device>/

Every stage is cached under a key of everything that determines it and resumes after an
interrupt: `build_device` is the whole flow for one device.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from rich.console import Console
from rich.progress import track

from gtnpipe.cache import Cache, cache_key
from gtnpipe.config.profiles import load_profile
from gtnpipe.config.recipes import Recipe, load_recipe
from gtnpipe.config.toml import as_dict
from gtnpipe.data.datasets import Dataset, load_dataset
from gtnpipe.deploy.parity import choose_precision
from gtnpipe.devices.cost import COST_MODEL_VERSION, CostModel, table_path
from gtnpipe.errors import ConfigError, ParityError
from gtnpipe.fsutil import sha256_file
from gtnpipe.measure.host_table import build_calibration_kit, calibrate
from gtnpipe.measure.kit import machine_description, table_summary
from gtnpipe.models.counting import count_module
from gtnpipe.models.static import StagedNet, build_static
from gtnpipe.models.supernet import Supernet
from gtnpipe.models.teacher import build_teacher
from gtnpipe.search.accuracy import AccuracyPredictor, inherited_accuracy
from gtnpipe.search.evolution import SearchConfig, SearchResult, check_feasible, evolution_search
from gtnpipe.space.counting import count
from gtnpipe.space.spaces import ArchConfig, SearchSpace, TaskShape, get_space
from gtnpipe.training import distributed
from gtnpipe.training.distill import distill, teacher_logits
from gtnpipe.training.gtn import train_generic_teacher
from gtnpipe.training.train import Normalizer, fit, seed_everything

__all__ = [
    "FASHION_MNIST_TASK",
    "TEACHER_METHODS",
    "BuildOutcome",
    "DistillOutcome",
    "TeacherOutcome",
    "TrainOutcome",
    "build_device",
    "data_info",
    "distill_student",
    "load_teacher",
    "load_data",
    "load_distilled",
    "load_trained",
    "pool_info",
    "pool_sample",
    "task_of",
    "train_model",
    "train_teacher",
]

log = logging.getLogger("gtnpipe")
# Fashion-MNIST's shape, for pool statistics when no dataset is named.
FASHION_MNIST_TASK = TaskShape(in_channels=1, image_hw=(28, 28), num_classes=10)
_MODELS = "models"  # cache kinds: trained-from-scratch models,
_TEACHERS = "teachers"  # GTN and SFTN teachers (with the supernet they trained),
_LOGITS = "teacher-logits"  # a teacher's logits on the train split,
_STUDENTS = "students"  # distilled students
_ACCURACY = "accuracy"  # inherited-weight accuracies of sampled students and the predictor fitted on them
_WEIGHTS = "weights.pt"
TEACHER_METHODS = ("vanilla", "gtn", "sftn")


@dataclass(frozen=True)
class TrainOutcome:
    model: str  # "teacher" or the student's arch id
    key: str
    cached: bool
    test_top1: float
    val_top1: float
    macs: int
    params: int
    epochs: int
    seconds_per_epoch: float
    entry_path: str
    resumed_from_epoch: int = 0  # > 0 when this call continued an interrupted run


def task_of(data: Dataset) -> TaskShape:
    return TaskShape(data.channels, data.image_hw, data.num_classes)


class _Context(NamedTuple):
    """A recipe with what it loads: loaded once per public call and passed down."""

    rec: Recipe
    space: SearchSpace
    data: Dataset
    task: TaskShape


def _context(recipe: str | Path) -> _Context:
    rec = load_recipe(recipe)
    space = get_space(rec.space)
    data = load_data(rec)
    return _Context(rec, space, data, task_of(data))


def _load_weights(net: torch.nn.Module, kind: str, key: str, *, cache_dir: Path | None,
                  file: str = _WEIGHTS) -> torch.nn.Module:
    """`net` with the state dict of a verified cache entry's `file`."""
    entry = Cache(cache_dir).verify(kind, key)
    net.load_state_dict(torch.load(entry.file(file), map_location="cpu", weights_only=True))
    return net


def load_data(recipe: Recipe, *, source: str | None = None) -> Dataset:
    cfg = recipe.data
    return load_dataset(source or cfg.source, val_size=cfg.val_size, train_subset=cfg.train_subset,
                        test_subset=cfg.test_subset, split_seed=cfg.split_seed)


def data_info(*, recipe: str | Path = "default", source: str | None = None) -> dict[str, Any]:
    data = load_data(load_recipe(recipe), source=source)
    return {
        "name": data.name,
        "fingerprint": data.fingerprint,
        "classes": list(data.classes),
        "channels": data.channels,
        "image_hw": list(data.image_hw),
        "splits": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "mean": list(data.mean),
        "std": list(data.std),
    }


def _macs_params(space: SearchSpace, task: TaskShape, arch: ArchConfig) -> dict[str, int]:
    cost = count(arch, space, task)
    return {"macs": cost.macs, "params": cost.params}


def pool_info(*, space: str = "mbv3-28", task: TaskShape = FASHION_MNIST_TASK) -> dict[str, Any]:
    sp = get_space(space)
    small, large = sp.smallest(), sp.largest()
    return {
        "space": sp.name,
        "task": asdict(task),
        "stages": [asdict(s) for s in sp.stages],
        "choices": {"depths": list(sp.depths), "kernel_sizes": list(sp.kernel_sizes),
                    "expand_ratios": list(sp.expand_ratios)},
        "pool_size": sp.pool_size,
        "smallest": {"arch": small.id, **_macs_params(sp, task, small)},
        "largest": {"arch": large.id, **_macs_params(sp, task, large)},
    }


def pool_sample(n: int, *, seed: int = 0, space: str = "mbv3-28",
                task: TaskShape = FASHION_MNIST_TASK) -> list[dict[str, Any]]:
    sp = get_space(space)
    return [{"arch": a.id, "depths": list(a.depths), **_macs_params(sp, task, a)}
            for a in sp.sample_many(n, seed=seed)]


def _model_spec(model: str, recipe: Recipe, space: SearchSpace) -> tuple[str, dict[str, Any]]:
    """The model's display name and the part of the cache key that describes it."""
    if model == "teacher":
        return "teacher", {"model": "teacher", "teacher": as_dict(recipe.teacher), "space": as_dict(space)}
    arch = space.parse(model)
    return arch.id, {"model": "student", "arch": arch.id, "space": as_dict(space)}


def _build(model_spec: dict[str, Any], recipe: Recipe, space: SearchSpace, task: TaskShape) -> StagedNet:
    if model_spec["model"] == "teacher":
        return build_teacher(recipe.teacher, space, task)
    return build_static(ArchConfig.from_id(model_spec["arch"]), space, task)


def train_model(model: str, *, recipe: str | Path = "quick", cache_dir: Path | None = None,
                progress: bool = True) -> TrainOutcome:
    """Train the teacher or a pool student (by arch id, 'largest' or 'smallest') from scratch with
    plain CE, and cache it.

    An unchanged second call is a cache hit; an interrupted call resumes from its last epoch.
    """
    return _train_model(_context(recipe), model, cache_dir=cache_dir, progress=progress)


def _train_model(ctx: _Context, model: str, *, cache_dir: Path | None, progress: bool) -> TrainOutcome:
    rec, space, data, task = ctx
    name, model_spec = _model_spec(model, rec, space)
    train_cfg = rec.train.teacher if model_spec["model"] == "teacher" else rec.train.student
    spec = {"kind": "trained-model", **model_spec, "train": as_dict(train_cfg), "seed": rec.seed,
            **_base_spec(rec, space, data, task)}
    key = cache_key(spec)
    resumed_from_epoch = 0

    def build(staging: Path, meta: dict[str, Any]) -> None:
        nonlocal resumed_from_epoch
        seed_everything(rec.seed)
        net = _build(model_spec, rec, space, task)
        result = fit(net, data, train_cfg, seed=rec.seed, run_id=key, checkpoint_dir=Cache(cache_dir).work_dir(_MODELS, key),
                     progress=progress, description=name if name == "teacher" else "student")
        resumed_from_epoch = result.resumed_from_epoch
        cost = count_module(net, task)  # equals the analytic count for students (tested)
        meta |= {
            "model": name,
            "test_top1": result.test_top1,
            "val_top1": result.history[-1].val_top1,
            "epochs": len(result.history),
            "seconds_per_epoch": sum(h.seconds for h in result.history) / len(result.history),
            "macs": cost.macs,
            "params": cost.params,
        }
        torch.save(net.state_dict(), staging / _WEIGHTS)

    entry, cached = _cached(_MODELS, key, spec, build, cache_dir=cache_dir)
    return TrainOutcome(**entry.meta, key=key, cached=cached, entry_path=str(entry.path),
                        resumed_from_epoch=resumed_from_epoch)


def load_trained(model: str, *, recipe: str | Path = "quick", cache_dir: Path | None = None) -> StagedNet:
    """The cached trained network (trains it first if it is not cached), in eval mode."""
    ctx = _context(recipe)
    outcome = _train_model(ctx, model, cache_dir=cache_dir, progress=False)
    net = _build(_model_spec(model, ctx.rec, ctx.space)[1], ctx.rec, ctx.space, ctx.task)
    return _load_weights(net, _MODELS, outcome.key, cache_dir=cache_dir).train(False)


@dataclass(frozen=True)
class TeacherOutcome:
    method: str
    key: str
    cached: bool
    test_top1: float
    train_seconds: float  # wall-clock of the training epochs (on the machine that trained it), init_from's included
    epochs: int  # this teacher's own epochs (GTN fine-tuning: not counting init_from's)
    student: str | None  # the SFTN teacher's student
    entry_path: str
    log: dict[str, Any] | None = None  # GTN: sampler entropy and branch KL over training
    init_from: str | None = None  # the vanilla teacher it was fine-tuned from (gtn.teacher_init = "vanilla")
    init_epochs: int = 0
    init_train_seconds: float = 0.0


@dataclass(frozen=True)
class DistillOutcome:
    arch: str
    teacher: str
    teacher_key: str | None
    key: str
    cached: bool
    test_top1: float
    val_top1: float
    macs: int
    params: int
    seed: int
    init: str
    train_seconds: float
    entry_path: str


def _base_spec(rec: Recipe, space: SearchSpace, data: Dataset, task: TaskShape) -> dict[str, Any]:
    return {"space": as_dict(space), "task": asdict(task), "data": as_dict(rec.data),
            "data_fingerprint": data.fingerprint}


def _teacher_spec(method: str, student: str | None, rec: Recipe, space: SearchSpace, data: Dataset,
                  task: TaskShape) -> tuple[str | None, dict[str, Any]]:
    if method not in TEACHER_METHODS:
        raise ConfigError(f"unknown teacher method {method!r}; choose one of: {', '.join(TEACHER_METHODS)}")
    if (method == "sftn") != (student is not None):
        raise ConfigError("--student ARCH_ID is required with --method sftn (the student the teacher specialises to), "
                          "and only then")
    arch = space.parse(student).id if student is not None else None
    spec = {"kind": "teacher", "method": method, "student": arch, "teacher": as_dict(rec.teacher),
            "train": as_dict(rec.train.teacher), "gtn": as_dict(rec.gtn), "seed": rec.seed,
            **_base_spec(rec, space, data, task)}
    return arch, spec


def train_teacher(method: str, *, student: str | None = None, recipe: str | Path = "quick",
                  cache_dir: Path | None = None, progress: bool = True) -> TeacherOutcome:
    """Train (or find in the cache) a teacher: vanilla (CE only), gtn (generic, for the whole pool)
    or sftn (specialised to `student`)."""
    return _train_teacher(_context(recipe), method, student=student, cache_dir=cache_dir, progress=progress)


def _train_teacher(ctx: _Context, method: str, *, student: str | None, cache_dir: Path | None,
                   progress: bool) -> TeacherOutcome:
    if method == "vanilla":
        if student is not None:
            raise ConfigError("--student is only for --method sftn")
        out = _train_model(ctx, "teacher", cache_dir=cache_dir, progress=progress)
        return TeacherOutcome("vanilla", out.key, out.cached, out.test_top1, out.seconds_per_epoch * out.epochs,
                              out.epochs, None, out.entry_path)
    rec, space, data, task = ctx
    arch, spec = _teacher_spec(method, student, rec, space, data, task)
    init = None  # gtn.teacher_init = "vanilla": fine-tune the cached vanilla teacher with the branches
    train_cfg = rec.train.teacher
    if rec.gtn.teacher_init == "vanilla":
        init = _train_model(ctx, "teacher", cache_dir=cache_dir, progress=progress)
        spec["init_from"] = init.key
        train_cfg = replace(train_cfg, epochs=rec.gtn.finetune_epochs,
                            warmup_epochs=min(train_cfg.warmup_epochs, rec.gtn.finetune_epochs / 2))
    key = cache_key(spec)

    def build(staging: Path, meta: dict[str, Any]) -> None:
        seed_everything(rec.seed)
        teacher, supernet = build_teacher(rec.teacher, space, task), Supernet(space, task)
        if init is not None:
            _load_weights(teacher, _MODELS, init.key, cache_dir=cache_dir)
        result, trainer = train_generic_teacher(
            teacher, supernet, data, train_cfg, rec.gtn, seed=rec.seed, run_id=key,
            checkpoint_dir=Cache(cache_dir).work_dir(_TEACHERS, key),
            fixed_arch=ArchConfig.from_id(arch) if arch else None, progress=progress)
        meta |= {"method": method, "student": arch, "test_top1": result.test_top1, "epochs": len(result.history),
                 "train_seconds": sum(h.seconds for h in result.history), "log": trainer.log.summary(),
                 "init_from": init.key if init else None,
                 "init_epochs": init.epochs if init else 0,
                 "init_train_seconds": init.seconds_per_epoch * init.epochs if init else 0.0,
                 "init_test_top1": init.test_top1 if init else None}
        torch.save(teacher.state_dict(), staging / _WEIGHTS)
        torch.save(supernet.state_dict(), staging / "supernet.pt")

    entry, cached = _cached(_TEACHERS, key, spec, build, cache_dir=cache_dir)
    m = entry.meta
    init_seconds = m.get("init_train_seconds", 0.0)
    return TeacherOutcome(method, key, cached, m["test_top1"], m["train_seconds"] + init_seconds, m["epochs"], arch,
                          str(entry.path), m["log"], m.get("init_from"), m.get("init_epochs", 0), init_seconds)


def _cached(kind: str, key: str, spec: dict[str, Any], build: Any, *, cache_dir: Path | None) -> tuple[Any, bool]:
    """The cache entry for `key`, building it with `build(staging, meta)` if missing.

    Under torchrun every rank builds (trains) together and rank 0 writes the entry.
    """
    cache = Cache(cache_dir)
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
            with cache.writing(kind, key, spec=spec, meta=meta) as staging:
                build(staging, meta)
            cache.clear_work(kind, key)
    else:
        with tempfile.TemporaryDirectory() as scratch:
            build(Path(scratch), {})
    distributed.barrier()
    return cache.verify(kind, key), False


def load_teacher(method: str, *, student: str | None = None, recipe: str | Path = "quick",
                 cache_dir: Path | None = None) -> tuple[StagedNet, TeacherOutcome]:
    """The cached teacher network (trained first if needed), in eval mode."""
    return _load_teacher(_context(recipe), method, student=student, cache_dir=cache_dir)


def _load_teacher(ctx: _Context, method: str, *, student: str | None,
                  cache_dir: Path | None) -> tuple[StagedNet, TeacherOutcome]:
    outcome = _train_teacher(ctx, method, student=student, cache_dir=cache_dir, progress=False)
    net = build_teacher(ctx.rec.teacher, ctx.space, ctx.task)
    kind = _MODELS if method == "vanilla" else _TEACHERS
    _load_weights(net, kind, outcome.key, cache_dir=cache_dir)
    return net.train(False), outcome


def _teacher_logits(teacher: StagedNet, teacher_key: str, data: Dataset, spec: dict[str, Any], *,
                    cache_dir: Path | None) -> torch.Tensor:
    key = cache_key({"kind": "teacher-logits", "teacher_key": teacher_key, "data": spec["data"],
                     "data_fingerprint": spec["data_fingerprint"]})

    def build(staging: Path, meta: dict[str, Any]) -> None:
        torch.save(teacher_logits(teacher, data.train, Normalizer(data.mean, data.std)), staging / "logits.pt")

    entry, _ = _cached(_LOGITS, key, {"teacher_key": teacher_key}, build, cache_dir=cache_dir)
    return torch.load(entry.file("logits.pt"), weights_only=True)


def distill_student(arch: str, *, teacher: str = "gtn", recipe: str | Path = "quick", seed: int | None = None,
                    cache_dir: Path | None = None, progress: bool = True) -> DistillOutcome:
    """Distill pool student `arch` from a cached teacher ('gtn', 'vanilla', 'sftn' for a teacher
    specialised to this very student, or 'none' for plain training with the same settings)."""
    return _distill_student(_context(recipe), arch, teacher=teacher, seed=seed, cache_dir=cache_dir, progress=progress)


def _distill_student(ctx: _Context, arch: str, *, teacher: str, seed: int | None, cache_dir: Path | None,
                     progress: bool) -> DistillOutcome:
    rec, space, data, task = ctx
    student = space.parse(arch)
    if teacher not in (*TEACHER_METHODS, "none"):
        raise ConfigError(f"unknown teacher {teacher!r}; choose one of: {', '.join((*TEACHER_METHODS, 'none'))}")
    seed = rec.seed if seed is None else seed
    teacher_net, teacher_key = None, None
    if teacher != "none":
        teacher_net, t_out = _load_teacher(ctx, teacher, student=student.id if teacher == "sftn" else None,
                                           cache_dir=cache_dir)
        teacher_key = t_out.key
    init_key = None
    if rec.distill.init == "inherited":  # every method starts from the same GTN-trained supernet weights
        init_key = _train_teacher(ctx, "gtn", student=None, cache_dir=cache_dir, progress=progress).key
    # the no-KD baseline trains on labels alone: alpha, tau and the logit scale must not re-key (and re-train) it
    distill_cfg = as_dict(rec.distill) if teacher != "none" else {"init": rec.distill.init}
    spec = {"kind": "distilled", "arch": student.id, "teacher": teacher, "teacher_key": teacher_key,
            "distill": distill_cfg, "train": as_dict(rec.train.student), "init_from": init_key, "seed": seed,
            **_base_spec(rec, space, data, task)}
    key = cache_key(spec)

    def build(staging: Path, meta: dict[str, Any]) -> None:
        seed_everything(seed)
        if init_key is not None:
            supernet = _load_weights(Supernet(space, task), _TEACHERS, init_key, cache_dir=cache_dir, file="supernet.pt")
            net = supernet.extract(student).train()
        else:
            net = build_static(student, space, task)
        logits = None
        if teacher_net is not None and rec.train.student.augment == "none":
            logits = _teacher_logits(teacher_net, teacher_key, data, spec, cache_dir=cache_dir)
        result = distill(net, teacher_net, data, rec.train.student, rec.distill, seed=seed, run_id=key,
                         checkpoint_dir=Cache(cache_dir).work_dir(_STUDENTS, key), cached_logits=logits,
                         progress=progress)
        cost = count(student, space, task)
        meta |= {"test_top1": result.test_top1, "val_top1": result.history[-1].val_top1, "macs": cost.macs,
                 "params": cost.params, "train_seconds": sum(h.seconds for h in result.history)}
        torch.save(net.state_dict(), staging / _WEIGHTS)

    entry, cached = _cached(_STUDENTS, key, spec, build, cache_dir=cache_dir)
    m = entry.meta
    return DistillOutcome(student.id, teacher, teacher_key, key, cached, m["test_top1"], m["val_top1"], m["macs"],
                          m["params"], seed, rec.distill.init, m["train_seconds"], str(entry.path))


# --- devices and search ------------------------------------------------------------------

ACCURACY_SAMPLES = 150  # students measured with inherited weights to fit the accuracy predictor
ACCURACY_SEED = 4242


@dataclass(frozen=True)
class AccuracyOutcome:
    key: str
    cached: bool
    predictor: AccuracyPredictor
    measured: list[dict[str, Any]]  # arch id and inherited-weight val top-1 of each measured student
    seconds: float


def accuracy_predictor(*, recipe: str | Path = "quick", cache_dir: Path | None = None,
                       samples: int = ACCURACY_SAMPLES, progress: bool = True) -> AccuracyOutcome:
    """Fit (or find in the cache) the accuracy predictor on the GTN-trained supernet's students."""
    return _accuracy_predictor(_context(recipe), cache_dir=cache_dir, samples=samples, progress=progress)


def _accuracy_predictor(ctx: _Context, *, cache_dir: Path | None, samples: int, progress: bool) -> AccuracyOutcome:
    rec, space, data, task = ctx
    gtn_key = _train_teacher(ctx, "gtn", student=None, cache_dir=cache_dir, progress=progress).key
    spec = {"kind": "accuracy-predictor", "supernet_from": gtn_key, "samples": samples, "seed": ACCURACY_SEED,
            "bn_images": 512, "split": "val", **_base_spec(rec, space, data, task)}
    key = cache_key(spec)

    def build(staging: Path, meta: dict[str, Any]) -> None:
        start = time.perf_counter()
        supernet = _load_weights(Supernet(space, task), _TEACHERS, gtn_key, cache_dir=cache_dir, file="supernet.pt")
        norm = Normalizer(data.mean, data.std)
        archs = [space.smallest(), space.largest(), *space.sample_many(samples - 2, seed=ACCURACY_SEED)]
        top1 = [inherited_accuracy(supernet, a, data.train, data.val, norm)
                for a in track(archs, description="accuracy predictor: students measured", disable=not progress,
                               console=Console(stderr=True))]
        predictor = AccuracyPredictor.fit(space, archs, top1)
        predictor.save(staging / "predictor.json")
        meta |= {"measured": [{"arch": a.id, "val_top1": t} for a, t in zip(archs, top1)],
                 "seconds": time.perf_counter() - start}

    entry, cached = _cached(_ACCURACY, key, spec, build, cache_dir=cache_dir)
    return AccuracyOutcome(key, cached, AccuracyPredictor.load(entry.file("predictor.json")), entry.meta["measured"],
                           entry.meta["seconds"])


def inherited_accuracies(archs: list[str], *, recipe: str | Path = "quick", cache_dir: Path | None = None) -> list[float]:
    """Val top-1 of each arch with the GTN-trained supernet's weights (BN recalibrated), as the predictor is fitted."""
    ctx = _context(recipe)
    gtn_key = _train_teacher(ctx, "gtn", student=None, cache_dir=cache_dir, progress=False).key
    supernet = _load_weights(Supernet(ctx.space, ctx.task), _TEACHERS, gtn_key, cache_dir=cache_dir, file="supernet.pt")
    norm = Normalizer(ctx.data.mean, ctx.data.std)
    return [inherited_accuracy(supernet, ctx.space.parse(a), ctx.data.train, ctx.data.val, norm) for a in archs]


def search_device(device: str | Path, *, recipe: str | Path = "quick", cache_dir: Path | None = None,
                  config: SearchConfig | None = None, progress: bool = True) -> tuple[SearchResult, AccuracyOutcome]:
    """The best student for `device`: evolution over the pool, every budget checked on the cost model."""
    ctx = _context(recipe)
    profile = load_profile(device)
    model = CostModel(profile, ctx.space, ctx.task)  # before training anything: a bad profile fails fast
    check_feasible(model)
    acc = _accuracy_predictor(ctx, cache_dir=cache_dir, samples=ACCURACY_SAMPLES, progress=progress)
    return evolution_search(model, lambda a: acc.predictor.predict(ctx.space, a), config or SearchConfig()), acc




def calibrate_device(device: str | Path, *, space: str = "mbv3-28", task: TaskShape = FASHION_MNIST_TASK,
                     n_networks: int = 30, runs: int = 100, rounds: int = 10, tables_dir: Path | None = None,
                     progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Measure the device's latency table here (run this ON the device) and write it where search reads it.

    A device without torch times a calibration kit instead (`make_calibration_kit` on the host, then
    gtnpipe.measure.kit.calibrate_device_from_kit on the device).
    """
    profile = load_profile(device)
    table = calibrate(profile, get_space(space), task, n_networks=n_networks, runs=runs, rounds=rounds,
                      progress=progress)
    path = table_path(profile.name, tables_dir)
    table.save(path)
    return table_summary(table, path)


# --- build: profile -> search -> distill -> export -> compile + parity -> measure -> artifact ----------

_SEARCHES = "searches"  # cache kinds: a device's search result and Pareto plot,
_COMPILED = "compiled"  # a student compiled for a runtime at one precision, with its parity and timing
REFERENCE_IMAGES = 500  # test images (and torch logits) an artifact carries for the on-device parity check
CALIBRATION_IMAGES = 300  # INT8 calibration images from the train split (NNCF's default subset size)
CALIBRATION_SEED = 1234
_MEASURE_RUNS = 200
_COMPILED_VERSION = 3  # bump when a compiled entry's contents change (2: deployed_format, 3: artifact logits)
_ARTIFACT_LOGITS = "artifact_logits.npy"


@dataclass(frozen=True)
class BuildOutcome:
    device: str
    folder: str
    arch: str
    runtime: str
    precision: str
    torch_top1: float
    shipped_top1: float | None
    predicted: dict[str, Any]
    measured: dict[str, Any] | None  # on this machine, when its runtime is installed here
    budget_violations: list[str]  # measured size always; measured latency/memory with check_measured_budgets
    warnings: list[str]  # e.g. a latency table measured on another CPU than this one
    stages: dict[str, dict[str, Any]]  # per stage: cached, seconds


def _package_versions() -> dict[str, str]:
    from importlib import metadata

    names = ("gtnpipe", "torch", "numpy", "onnx", "onnxruntime", "openvino", "nncf", "ai-edge-litert", "litert-torch",
             "ai-edge-quantizer", "tensorrt")
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _search_stage(ctx: _Context, profile: Any, *, cache_dir: Path | None, config: SearchConfig, accuracy_samples: int,
                  progress: bool) -> tuple[Any, dict[str, Any]]:
    """The device's search result (cached with its Pareto plot): the pick and the front as dicts."""
    model = CostModel(profile, ctx.space, ctx.task)
    check_feasible(model)
    acc = _accuracy_predictor(ctx, cache_dir=cache_dir, samples=accuracy_samples, progress=progress)
    table = table_path(profile.name)
    spec = {"kind": "search", "profile": profile.to_dict(), "predictor_key": acc.key, "config": asdict(config),
            "cost_model_version": COST_MODEL_VERSION,
            "table_sha256": sha256_file(table) if table.exists() else None, **_base_spec(ctx.rec, ctx.space, ctx.data, ctx.task)}
    key = cache_key(spec)

    def build(staging: Path, meta: dict[str, Any]) -> None:
        from gtnpipe.search.plots import plot_pareto

        result = evolution_search(model, lambda a: acc.predictor.predict(ctx.space, a), config)
        budgets = profile.budgets
        plot_pareto(result, staging / "pareto.png", device=profile.name, latency_budget_ms=budgets.latency_ms_p90,
                    latency_planned_ms=budgets.planned_latency_ms_p90)
        meta |= {"result": result.to_dict(), "table_note": model.table_note}

    entry, cached = _cached(_SEARCHES, key, spec, build, cache_dir=cache_dir)
    return entry, {"cached": cached, "key": key}


def _threads_here(profile: Any) -> int:
    """The profile's threads, capped at this machine's cores: more threads than cores only measures contention."""
    return min(profile.threads, os.cpu_count() or 1)


def _compile_stage(ctx: _Context, profile: Any, student_key: str, precision: str, exported: Callable[[], Any], *,
                   cache_dir: Path | None) -> tuple[Any, bool]:
    """One precision compiled for the device's runtime, parity-checked on the test split and timed here."""
    import numpy as np

    from gtnpipe.deploy.backends import get_backend
    from gtnpipe.deploy.bench import measure_latency
    from gtnpipe.deploy.export import to_unit_float
    from gtnpipe.deploy.parity import compare, run_batched
    from gtnpipe.errors import BackendUnavailable

    backend = get_backend(profile.runtime.name)
    try:
        version: str | None = backend.version()
    except BackendUnavailable:
        version = None  # TensorRT on a machine without it: the artifact carries ONNX and the engine build command
    spec = {"kind": "compiled", "student_key": student_key, "runtime": as_dict(profile.runtime), "runtime_version": version,
            "precision": precision, "batch_size": profile.batch_size, "threads": profile.threads,
            "max_accuracy_drop_points": profile.budgets.max_accuracy_drop_points, "calibration_images": CALIBRATION_IMAGES,
            "calibration_seed": CALIBRATION_SEED, "entry_version": _COMPILED_VERSION}
    key = cache_key(spec)

    threads = _threads_here(profile)

    def build(staging: Path, meta: dict[str, Any]) -> None:
        inputs, torch_logits = exported()
        result = backend.build(inputs, precision, staging)
        meta |= {"model_file": result.model_file, "files": list(result.files), "notes": result.notes, "runtime_version": version,
                 "deployed_format": result.deployed_format,
                 "size_bytes": sum((staging / f).stat().st_size for f in result.files if f != "calibration.npy")}
        try:
            runner = backend.load(staging / result.model_file, threads=threads, precision=precision)
        except BackendUnavailable as err:
            meta |= {"parity": None, "latency": None, "unchecked_reason": str(err)}
            return
        test = ctx.data.test
        logits = run_batched(runner, to_unit_float(test.x), batch_size=profile.batch_size)
        report = compare(logits, torch_logits, test.y, backend=profile.runtime.name, precision=precision,
                         max_drop_points=profile.budgets.max_accuracy_drop_points)
        np.save(staging / _ARTIFACT_LOGITS, logits[:REFERENCE_IMAGES])  # what gtnpipe bench on the device compares with
        x = to_unit_float(test.x[:profile.batch_size])
        meta |= {"parity": report.to_dict(), "threads": threads,
                 "latency": measure_latency(runner, x, warmup=20, runs=_MEASURE_RUNS).to_dict()}

    return _cached(_COMPILED, key, spec, build, cache_dir=cache_dir)


def load_distilled(arch: str, *, teacher: str = "gtn", recipe: str | Path = "quick",
                   cache_dir: Path | None = None) -> tuple[Any, Dataset]:
    """The distilled student (distilled first if not cached) as deployed: normalisation inside, eval mode;
    and the recipe's dataset."""
    from gtnpipe.deploy.export import Deployable

    ctx = _context(recipe)
    out = _distill_student(ctx, arch, teacher=teacher, seed=None, cache_dir=cache_dir, progress=False)
    net = _load_weights(build_static(ctx.space.parse(out.arch), ctx.space, ctx.task), _STUDENTS, out.key, cache_dir=cache_dir)
    return Deployable(net, ctx.data.mean, ctx.data.std).train(False), ctx.data


def build_device(device: str | Path, *, recipe: str | Path = "quick", out: Path = Path("artifacts"),
                 teacher: str = "gtn", cache_dir: Path | None = None, config: SearchConfig | None = None,
                 accuracy_samples: int = ACCURACY_SAMPLES, check_measured_budgets: bool = False, progress: bool = True,
                 say: Callable[[str], None] = lambda _: None) -> BuildOutcome:
    """profile -> search -> distill the pick from the cached teacher -> export -> compile every allowed
    precision -> parity on the test split -> measure here -> write out/<device>/ (manifest, report, model).

    Every stage is cached: a second device reuses the teacher and predictor, an unchanged rebuild is cache hits.
    """
    import numpy as np

    from gtnpipe.deploy.artifacts import write_artifact
    from gtnpipe.deploy.backends import get_backend
    from gtnpipe.deploy.backends.probe import measure_peak_rss_mb
    from gtnpipe.deploy.export import Deployable, compile_inputs, to_unit_float

    profile = load_profile(device)
    ctx = _context(recipe)
    backend = get_backend(profile.runtime.name)  # a missing runtime SDK fails here, before any training
    stages: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()

    def stage(name: str, info: dict[str, Any]) -> None:
        info["seconds"] = round(time.perf_counter() - started, 1)
        stages[name] = info
        say(f"[{len(stages)}/5] {name}: {'cache hit' if info.get('cached') else 'done'} ({info['seconds']:.1f} s in all)")

    say(f"building {profile.name} ({profile.runtime.name}, precisions {', '.join(profile.precisions)}) "
        f"with recipe {ctx.rec.name}")
    search_entry, info = _search_stage(ctx, profile, cache_dir=cache_dir, config=config or SearchConfig(),
                                       accuracy_samples=accuracy_samples, progress=progress)
    pick = search_entry.meta["result"]["pick"]
    stage("search", {**info, "arch": pick["arch"]})

    distilled = _distill_student(ctx, pick["arch"], teacher=teacher, seed=None, cache_dir=cache_dir, progress=progress)
    stage("distill", {"cached": distilled.cached, "key": distilled.key, "test_top1": distilled.test_top1})

    student = ArchConfig.from_id(distilled.arch)
    net = _load_weights(build_static(student, ctx.space, ctx.task), _STUDENTS, distilled.key, cache_dir=cache_dir)
    model = Deployable(net, ctx.data.mean, ctx.data.std).train(False)
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(to_unit_float(ctx.data.test.x))).numpy()
    torch_top1 = float((torch_logits.argmax(1) == ctx.data.test.y).mean() * 100)

    with tempfile.TemporaryDirectory(prefix="gtnpipe-export-") as tmp:
        @functools.cache
        def exported() -> tuple[Any, Any]:
            """The ONNX export and calibration images, made once and only if some precision is not cached."""
            idx = np.random.default_rng(CALIBRATION_SEED).choice(
                len(ctx.data.train), size=min(CALIBRATION_IMAGES, len(ctx.data.train)), replace=False)
            inputs = compile_inputs(model, ctx.task, Path(tmp), batch_size=profile.batch_size,
                                    max_opset=profile.runtime.max_onnx_opset, calibration_uint8=ctx.data.train.x[np.sort(idx)])
            return inputs, torch_logits

        compiled: dict[str, Any] = {}
        entries: dict[str, Any] = {}
        all_cached = True
        for precision in profile.precisions:
            if precision not in backend.precisions:
                continue
            try:
                entries[precision], cached = _compile_stage(ctx, profile, distilled.key, precision, exported,
                                                            cache_dir=cache_dir)
            except ParityError:
                raise
            except Exception as err:  # an FP16/INT8 conversion the toolchain cannot do: recorded, the build goes on
                if precision == "fp32":
                    raise
                log.warning("%s %s build failed: %s", profile.runtime.name, precision, err)
                compiled[precision] = {"error": f"build failed: {type(err).__name__}: {err}"}
                continue
            all_cached &= cached
            compiled[precision] = entries[precision].meta
        stage("compile", {"cached": all_cached, "precisions": sorted(entries)})

    fp32 = compiled.get("fp32")
    if fp32 and fp32.get("parity") and not fp32["parity"]["passed"]:
        raise ParityError(f"{profile.runtime.name} fp32 artifact fails parity with the PyTorch student: "
                          f"{'; '.join(fp32['parity']['failures'])}. The compiled model is wrong, not just imprecise: "
                          "check the runtime version against the profile's, or report it")
    chosen, rows = choose_precision(profile, compiled)
    shipped = compiled[chosen]
    entry = entries[chosen]
    stage("check", {"cached": all_cached, "precision": chosen})

    measured = None
    if shipped.get("latency"):
        shape = (profile.batch_size, ctx.task.in_channels, *ctx.task.image_hw)
        peak_mb = measure_peak_rss_mb(profile.runtime.name, entry.file(shipped["model_file"]), threads=shipped["threads"],
                                      input_shape=shape, precision=chosen)
        lat = shipped["latency"]
        measured = {"latency_ms_p50": lat["p50_ms"], "latency_ms_p90": lat["p90_ms"], "latency_ms_p99": lat["p99_ms"],
                    "throughput_per_s": lat["throughput_per_s"], "peak_memory_mb": peak_mb,
                    "model_size_mb": shipped["size_bytes"] / 1e6, "runs": lat["runs"], "threads": shipped["threads"]}
    cost_model = CostModel(profile, ctx.space, ctx.task, precision=chosen)
    predicted = cost_model.estimate(student).to_dict()
    warnings = []
    here = machine_description()
    if measured is not None and cost_model.table_machine not in (None, here):
        warnings.append(f"the {profile.name} latency table was measured on '{cost_model.table_machine}', this build ran on "
                        f"'{here}': predicted and measured-here latencies describe different machines; if this machine "
                        f"is the device, run 'gtnpipe bench --calibrate --device {profile.name}' and rebuild")
    for w in warnings:
        say(f"warning: {w}")
    violations = []
    if shipped["deployed_format"] and shipped["size_bytes"] / 1e6 > profile.budgets.model_size_mb:
        violations.append(f"model_size_mb: {shipped['size_bytes'] / 1e6:.3f} > {profile.budgets.model_size_mb:g}")
    if check_measured_budgets and measured is not None:
        for name, value in (("latency_ms_p90", measured["latency_ms_p90"]), ("peak_memory_mb", measured["peak_memory_mb"])):
            if value > getattr(profile.budgets, name):
                violations.append(f"{name}: measured {value:.3f} > budget {getattr(profile.budgets, name):g}")

    n_ref = min(REFERENCE_IMAGES, len(ctx.data.test))
    model_files = [f for f in shipped["files"] if f != "calibration.npy"]
    manifest = {
        "schema_version": 1,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "gtnpipe_version": _package_versions().get("gtnpipe", "unknown"),
        "device": {"name": profile.name, "profile": profile.to_dict(), "profile_sha256": profile.sha256()},
        "runtime": {"name": profile.runtime.name, "version_range": profile.runtime.version,
                    "built_with": shipped["runtime_version"], "max_onnx_opset": profile.runtime.max_onnx_opset,
                    **({"engine_build_command": shipped["notes"]["engine_build_command"]}
                       if "engine_build_command" in shipped["notes"] else {})},
        "model": {"arch": student.id, "macs": distilled.macs, "params": distilled.params, "precision": chosen,
                  "file": shipped["model_file"], "files": model_files, "threads": profile.threads,
                  "input": {"name": "input", "shape": [profile.batch_size, ctx.task.in_channels, *ctx.task.image_hw],
                            "dtype": "float32", "layout": "NCHW", "value_range": [0.0, 1.0]},
                  "output": {"name": "logits", "shape": [profile.batch_size, ctx.task.num_classes],
                             "meaning": "unnormalised class scores (softmax gives probabilities)"},
                  "classes": list(ctx.data.classes), "build_notes": shipped["notes"]},
        "provenance": {"recipe": ctx.rec.name, "teacher": teacher, "teacher_key": distilled.teacher_key,
                       "student_key": distilled.key, "search_key": stages["search"]["key"], "dataset": ctx.data.name,
                       "dataset_fingerprint": ctx.data.fingerprint, "packages": _package_versions()},
        "accuracy": {"test_images": len(ctx.data.test), "torch_fp32_top1": torch_top1,
                     "shipped_top1": shipped["parity"]["artifact_top1"] if shipped.get("parity") else None,
                     "estimated_top1": pick["estimated_top1"]},
        "precisions": rows,
        "predicted": predicted,
        "measured_on_build_machine": measured,
        "budgets": as_dict(profile.budgets),
        "budget_violations": violations,
        "warnings": warnings,
        "reference": {"inputs": "reference/inputs.npy", "logits": "reference/logits.npy", "labels": "reference/labels.npy",
                      "images": n_ref, **({"artifact_logits": f"reference/{_ARTIFACT_LOGITS}"} if shipped.get("parity") else {})},
    }

    def fill(staging: Path) -> list[str]:
        import shutil

        for name in shipped["files"]:
            shutil.copyfile(entry.file(name), staging / name)
        (staging / "reference").mkdir()
        np.save(staging / "reference/inputs.npy", to_unit_float(ctx.data.test.x[:n_ref]))
        np.save(staging / "reference/logits.npy", torch_logits[:n_ref])
        np.save(staging / "reference/labels.npy", ctx.data.test.y[:n_ref].astype(np.int64))
        shutil.copyfile(search_entry.file("pareto.png"), staging / "pareto.png")
        names = [*shipped["files"], "reference/inputs.npy", "reference/logits.npy", "reference/labels.npy", "pareto.png"]
        if shipped.get("parity"):
            shutil.copyfile(entry.file(_ARTIFACT_LOGITS), staging / "reference" / _ARTIFACT_LOGITS)
            names.append(f"reference/{_ARTIFACT_LOGITS}")
        return names

    folder = write_artifact(Path(out) / profile.name, manifest, fill)
    stage("artifact", {"cached": False, "folder": str(folder)})
    return BuildOutcome(profile.name, str(folder), student.id, profile.runtime.name, chosen, torch_top1,
                        manifest["accuracy"]["shipped_top1"], predicted, measured, violations, warnings, stages)


def make_calibration_kit(device: str | Path, out: Path, *, space: str = "mbv3-28", task: TaskShape = FASHION_MNIST_TASK,
                         n_networks: int = 30, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """On the host: export and compile the device's calibration models into `out` (the device times them)."""
    profile = load_profile(device)
    started = time.time()
    kit = build_calibration_kit(profile, get_space(space), task, Path(out), n_networks=n_networks, progress=progress)
    return {"device": profile.name, "kit": str(out), "runtime": kit["runtime"], "units": len(kit["units"]),
            "networks": len(kit["networks"]), "files": len(kit["files"]),
            "size_mb": sum(r["bytes"] for r in kit["files"].values()) / 1e6, "seconds": round(time.time() - started, 1),
            "device_command": f"gtnpipe bench --calibrate --device {profile.name} --kit {out}"}
