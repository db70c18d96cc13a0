"""Training stages: a model trained from scratch (the vanilla teacher, or a pool student), a GTN/SFTN teacher,
a teacher's logits on the train split, and a distilled student. Each input dataclass is its cache key."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, replace
from typing import Any

import torch

from gtnpipe.config.recipes import DistillConfig, GTNConfig, TeacherConfig, TrainConfig
from gtnpipe.errors import ConfigError
from gtnpipe.models.counting import count_module
from gtnpipe.models.external import (
    TEACHER_FILE_KINDS,
    ExternalTeacher,
    HookedTeacher,
    as_training_teacher,
    load_external,
    teacher_file,
)
from gtnpipe.models.static import StagedNet, at_resolution, build_static
from gtnpipe.models.supernet import Supernet
from gtnpipe.models.teacher import build_teacher
from gtnpipe.space.counting import count
from gtnpipe.space.spaces import ArchConfig, SearchSpace, TaskShape
from gtnpipe.stages.keys import Stage
from gtnpipe.stages.workspace import WEIGHTS, DataRef, Workspace, load_weights, run_stage
from gtnpipe.training.accelerator import describe
from gtnpipe.training.distill import distill, teacher_logits
from gtnpipe.training.gtn import train_generic_teacher
from gtnpipe.training.train import Normalizer, fit, seed_everything

__all__ = [
    "TEACHER_METHODS",
    "DistillInput",
    "DistillOutcome",
    "ExternalTeacher",
    "LogitsInput",
    "TeacherCheckInput",
    "TeacherInput",
    "TeacherOutcome",
    "TrainInput",
    "TrainOutcome",
    "distill_input",
    "distill_student",
    "load_distilled_net",
    "load_teacher",
    "load_trained",
    "teacher_input",
    "train_input",
    "train_model",
    "train_teacher",
]

log = logging.getLogger("gtnpipe")
TEACHER_METHODS = ("vanilla", "gtn", "sftn")
# Each stage's CODE: the roots of its code, the modules its stage function below calls (keys.module_closure adds
# what they import: the data loading, decoding and augmentations under training.train, for one). This module's own
# code is keyed for every stage defined here; the distributions are those the closure imports (keys.closure_packages).
# The workspace: the data every stage reads (opened, split and decoded by it) and run_stage.
_RUN = ("gtnpipe.stages.workspace", "gtnpipe.training.accelerator")
_TRAIN_CODE = (*_RUN, "gtnpipe.training.train", "gtnpipe.models.teacher", "gtnpipe.models.static",
               "gtnpipe.models.counting", "gtnpipe.space.spaces")
# A teacher from outside runs through gtnpipe.models.external (ONNX Runtime for a .onnx file)
_EXTERNAL_CODE = (*_RUN, "gtnpipe.training.distill", "gtnpipe.training.train", "gtnpipe.models.external")


@dataclass(frozen=True)
class TrainInput(Stage):
    """The teacher (`arch` None) or a pool student, trained from scratch with plain CE."""

    STAGE = "models"
    CODE = _TRAIN_CODE

    arch: str | None
    teacher: TeacherConfig | None  # the teacher's shape; None for a student
    train: TrainConfig
    seed: int
    space: SearchSpace
    task: TaskShape
    data: DataRef

    @property
    def name(self) -> str:
        return self.arch or "teacher"

    def build_net(self) -> StagedNet:
        if self.arch is None:
            assert self.teacher is not None
            return build_teacher(self.teacher, self.space, self.task)
        return build_static(ArchConfig.from_id(self.arch), self.space, self.task)


@dataclass(frozen=True)
class TeacherInput(Stage):
    """A GTN teacher (for the whole pool) or an SFTN teacher (for `student`), trained with student branches."""

    STAGE = "teachers"
    CODE = (*_TRAIN_CODE, "gtnpipe.training.gtn", "gtnpipe.models.supernet", "gtnpipe.models.external")

    method: str  # "gtn" | "sftn"
    student: str | None  # SFTN's student
    teacher: TeacherConfig | ExternalTeacher  # our teacher's shape, or a user's module fine-tuned as a GTN
    train: TrainConfig  # as run: with gtn.teacher_init = "vanilla", the fine-tuning epochs
    gtn: GTNConfig
    seed: int
    init_from: TrainInput | None  # the vanilla teacher it fine-tunes (gtn.teacher_init = "vanilla")
    space: SearchSpace
    task: TaskShape
    data: DataRef


@dataclass(frozen=True)
class LogitsInput(Stage):
    """A teacher's eval-mode logits on the train split (cached: students without augmentation reuse them). A teacher
    from outside (a file, a module) is keyed by its content's sha256, so its logits are computed once per data."""

    STAGE = "teacher-logits"
    CODE = _EXTERNAL_CODE

    teacher: TrainInput | TeacherInput | ExternalTeacher
    data: DataRef


@dataclass(frozen=True)
class TeacherCheckInput(Stage):
    """A teacher from outside checked on the data: its val and test top-1 before it teaches anyone."""

    STAGE = "teacher-checks"
    CODE = _EXTERNAL_CODE

    teacher: ExternalTeacher
    data: DataRef


@dataclass(frozen=True)
class DistillInput(Stage):
    """A pool student trained with KD from a cached teacher (or with labels only: teacher None)."""

    STAGE = "students"
    CODE = (*_TRAIN_CODE, "gtnpipe.training.distill", "gtnpipe.models.supernet", "gtnpipe.models.external",
            "gtnpipe.space.counting")

    arch: str
    # "vanilla" | "gtn" | "sftn" | "none"; a teacher from outside: "onnx" | "pt2" | "torchscript" | "module", or
    # "gtn:module" | "gtn:pt2" (fine-tuned as a generic teacher first)
    method: str
    teacher: TrainInput | TeacherInput | ExternalTeacher | None
    distill: DistillConfig | None  # None without a teacher: alpha, tau and the logit scale must not re-key it
    init: str  # "scratch" | "inherited"
    init_from: TeacherInput | None  # the GTN run whose supernet weights the student inherits
    train: TrainConfig
    seed: int
    space: SearchSpace
    task: TaskShape
    data: DataRef


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
    trained_on: str = "cpu"  # gtnpipe.training.accelerator.describe of where it trained


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
    val_top1: float | None = None  # a teacher from outside: measured here (TeacherCheckInput)


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
    trained_on: str = "cpu"  # where it trained (gtnpipe.training.accelerator.describe)
    teacher_test_top1: float | None = None  # the teacher's own, on the same test split


# --- inputs from a workspace ---------------------------------------------------------------

def train_input(ws: Workspace, model: str) -> TrainInput:
    """The input that trains `model` ('teacher', an arch id, 'largest' or 'smallest') with the recipe's settings."""
    rec = ws.recipe
    if model == "teacher":
        return TrainInput(None, ws.teacher, rec.train.teacher, rec.seed, ws.space, ws.task, ws.teacher_data[1])
    return TrainInput(ws.space.parse(model).id, None, rec.train.student, rec.seed, ws.space, ws.task, ws.data_ref)


def teacher_input(ws: Workspace, method: str, *, student: str | None = None,
                  external: ExternalTeacher | None = None) -> TrainInput | TeacherInput:
    """The input of a teacher: vanilla (CE only), gtn (generic, for the whole pool) or sftn (for `student`).
    `external` with gtn: a user's module teacher (with named stages) fine-tuned with the branches for
    gtn.finetune_epochs, as `teacher_init = "vanilla"` fine-tunes ours."""
    if external is not None:
        if method != "gtn" or external.kind not in ("module", "pt2") or not external.stages:
            raise ConfigError("GTN fine-tuning of your teacher needs its stage features: a module with named stages "
                              "(gtnpipe.teacher_from_module(model, stages=[...])) or a .pt2 returning them as named "
                              "outputs (gtnpipe.teacher_file(path, stages=[...])), and finetune='gtn'; other files give "
                              "logits only: vanilla KD")
        rec = ws.recipe
        cfg = replace(rec.train.teacher, epochs=rec.gtn.finetune_epochs,
                      warmup_epochs=min(rec.train.teacher.warmup_epochs, rec.gtn.finetune_epochs / 2))
        return TeacherInput("gtn", None, external, cfg, rec.gtn, rec.seed, None, ws.space, ws.task, ws.teacher_data[1])
    if method not in TEACHER_METHODS:
        raise ConfigError(f"unknown teacher method {method!r}; choose one of: {', '.join(TEACHER_METHODS)}")
    if (method == "sftn") != (student is not None):
        raise ConfigError("--student ARCH_ID is required with --method sftn (the student the teacher specialises to), "
                          "and only then")
    if method == "vanilla":
        return train_input(ws, "teacher")
    rec = ws.recipe
    train_cfg, init = rec.train.teacher, None
    if rec.gtn.teacher_init == "vanilla":  # fine-tune the cached vanilla teacher with the branches
        init = train_input(ws, "teacher")
        train_cfg = replace(train_cfg, epochs=rec.gtn.finetune_epochs,
                            warmup_epochs=min(train_cfg.warmup_epochs, rec.gtn.finetune_epochs / 2))
    arch = ws.space.parse(student).id if student is not None else None
    return TeacherInput(method, arch, ws.teacher, train_cfg, rec.gtn, rec.seed, init, ws.space, ws.task,
                        ws.teacher_data[1])


def distill_input(ws: Workspace, arch: str, *, teacher: str | ExternalTeacher = "gtn", finetune: str | None = None,
                  seed: int | None = None) -> DistillInput:
    """The input that distills pool student `arch` from `teacher`: 'gtn', 'vanilla', 'sftn', 'none' (labels only), a
    teacher file (.onnx, .pt2, TorchScript) or an ExternalTeacher (gtnpipe.teacher_from_module); `finetune="gtn"`:
    an ExternalTeacher module with named stages, fine-tuned as a generic teacher first."""
    rec = ws.recipe
    student = ws.space.parse(arch)
    t_in: TrainInput | TeacherInput | ExternalTeacher | None
    if finetune is not None:
        if finetune != "gtn" or not isinstance(teacher, ExternalTeacher):
            raise ConfigError(f"finetune={finetune!r}: only 'gtn', and only for a teacher from "
                              "gtnpipe.teacher_from_module(model, stages=[...])")
        t_in = teacher_input(ws, "gtn", external=teacher)
    elif isinstance(teacher, ExternalTeacher):
        t_in = teacher
    elif teacher in (*TEACHER_METHODS, "none"):
        t_in = None if teacher == "none" else teacher_input(ws, teacher, student=student.id if teacher == "sftn" else None)
    elif any(teacher.lower().endswith(suffix) for suffix in TEACHER_FILE_KINDS):
        t_in = teacher_file(teacher)
    else:
        raise ConfigError(f"unknown teacher {teacher!r}; choose one of: {', '.join((*TEACHER_METHODS, 'none'))}, or a "
                          f"teacher file ending in {', '.join(TEACHER_FILE_KINDS)}")
    method = (t_in.kind if isinstance(t_in, ExternalTeacher)
              else f"gtn:{teacher.kind}" if isinstance(teacher, ExternalTeacher) else str(teacher))
    init_from = teacher_input(ws, "gtn") if rec.distill.init == "inherited" else None  # every method: same weights
    assert init_from is None or isinstance(init_from, TeacherInput)
    return DistillInput(student.id, method, t_in, rec.distill if t_in is not None else None, rec.distill.init, init_from,
                        rec.train.student, rec.seed if seed is None else seed, ws.space, ws.task, ws.data_ref)


# --- the stages -----------------------------------------------------------------------------

def train_model(ws: Workspace, inp: TrainInput) -> TrainOutcome:
    """Train the teacher or a pool student from scratch with plain CE, and cache it.

    An unchanged second call is a cache hit; an interrupted call resumes from its last epoch.
    """
    resumed_from_epoch = 0

    def build(staging: Any, meta: dict[str, Any]) -> None:
        nonlocal resumed_from_epoch
        seed_everything(inp.seed)
        net = inp.build_net()
        arch = ArchConfig.from_id(inp.arch) if inp.arch is not None else ArchConfig(())
        data = ws.teacher_data[0] if inp.arch is None else ws.data
        result = fit(at_resolution(net, arch), data, inp.train, seed=inp.seed, run_id=inp.key,
                     checkpoint_dir=ws.cache.work_dir(inp.STAGE, inp.key), progress=ws.progress,
                     description="teacher" if inp.arch is None else "student", device=ws.train_device)
        resumed_from_epoch = result.resumed_from_epoch
        cost = count_module(net, inp.task.for_arch(arch))  # equals the analytic count for students (tested)
        meta |= {"model": inp.name, "test_top1": result.test_top1, "val_top1": result.history[-1].val_top1,
                 "epochs": len(result.history),
                 "seconds_per_epoch": sum(h.seconds for h in result.history) / len(result.history),
                 "macs": cost.macs, "params": cost.params, "trained_on": describe(ws.train_device)}
        torch.save(net.state_dict(), staging / WEIGHTS)

    entry, cached = run_stage(ws.cache, inp, build)
    return TrainOutcome(**entry.meta, key=inp.key, cached=cached, entry_path=str(entry.path),
                        resumed_from_epoch=resumed_from_epoch)


def load_trained(ws: Workspace, inp: TrainInput) -> StagedNet:
    """The trained network (trained first if it is not cached), in eval mode."""
    train_model(ws, inp)
    return load_weights(ws, inp.build_net(), inp).train(False)


def train_teacher(ws: Workspace, inp: TrainInput | TeacherInput) -> TeacherOutcome:
    """Train (or find in the cache) a teacher: vanilla (a TrainInput) or a GTN/SFTN teacher."""
    if isinstance(inp, TrainInput):
        out = train_model(ws, inp)
        return TeacherOutcome("vanilla", out.key, out.cached, out.test_top1, out.seconds_per_epoch * out.epochs,
                              out.epochs, None, out.entry_path)
    init = train_model(ws, inp.init_from) if inp.init_from is not None else None

    def build(staging: Any, meta: dict[str, Any]) -> None:
        seed_everything(inp.seed)
        teacher, supernet = _teacher_net(ws, inp), Supernet(inp.space, inp.task)
        if inp.init_from is not None:
            load_weights(ws, teacher, inp.init_from)
        result, trainer = train_generic_teacher(
            teacher, supernet, ws.teacher_data[0], inp.train, inp.gtn, seed=inp.seed, run_id=inp.key,
            checkpoint_dir=ws.cache.work_dir(inp.STAGE, inp.key),
            fixed_arch=ArchConfig.from_id(inp.student) if inp.student else None, progress=ws.progress,
            device=ws.train_device)
        meta |= {"method": inp.method, "student": inp.student, "test_top1": result.test_top1,
                 "epochs": len(result.history), "train_seconds": sum(h.seconds for h in result.history),
                 "log": trainer.log.summary(), "init_from": init.key if init else None,
                 "init_epochs": init.epochs if init else 0,
                 "init_train_seconds": init.seconds_per_epoch * init.epochs if init else 0.0,
                 "init_test_top1": init.test_top1 if init else None, "trained_on": describe(ws.train_device)}
        torch.save(teacher.state_dict(), staging / WEIGHTS)
        torch.save(supernet.state_dict(), staging / "supernet.pt")

    entry, cached = run_stage(ws.cache, inp, build)
    m = entry.meta
    init_seconds = m.get("init_train_seconds", 0.0)
    return TeacherOutcome(inp.method, inp.key, cached, m["test_top1"], m["train_seconds"] + init_seconds, m["epochs"],
                          inp.student, str(entry.path), m["log"], m.get("init_from"), m.get("init_epochs", 0),
                          init_seconds)


def load_teacher(ws: Workspace, inp: TrainInput | TeacherInput | ExternalTeacher) -> tuple[torch.nn.Module, TeacherOutcome]:
    """The teacher network (trained first if needed; a teacher from outside loaded and checked), in eval mode. It
    takes images normalised with the data's mean and std."""
    if isinstance(inp, ExternalTeacher):
        return _external_teacher(ws, inp)
    outcome = train_teacher(ws, inp)
    net = _teacher_net(ws, inp) if isinstance(inp, TeacherInput) else build_teacher(ws.teacher, inp.space, inp.task)
    return load_weights(ws, net, inp).train(False), outcome


def _teacher_net(ws: Workspace, inp: TeacherInput) -> StagedNet | HookedTeacher:
    """The network a GTN/SFTN run trains: our teacher, or a copy of the user's module with hooks on its stages."""
    if isinstance(inp.teacher, ExternalTeacher):
        module = copy.deepcopy(load_external(inp.teacher))  # fine-tuning must not change the caller's object
        return HookedTeacher(module.train(True), inp.teacher.stages, ws.data.mean, ws.data.std,
                             from_outputs=inp.teacher.kind == "pt2")
    return build_teacher(inp.teacher, inp.space, inp.task)


def _external_teacher(ws: Workspace, teacher: ExternalTeacher) -> tuple[torch.nn.Module, TeacherOutcome]:
    """A teacher from outside, checked against the data (shape, classes) and its top-1 measured once (cached)."""
    net = as_training_teacher(teacher, ws.data.mean, ws.data.std, (ws.task.in_channels, *ws.task.image_hw),
                              ws.task.num_classes)
    inp = TeacherCheckInput(teacher, ws.data_ref)

    def build(staging: Any, meta: dict[str, Any]) -> None:
        norm = Normalizer(ws.data.mean, ws.data.std)
        for split in ("val", "test"):
            data = getattr(ws.data, split)
            logits = teacher_logits(net, data, norm, device=ws.train_device)
            meta[f"{split}_top1"] = float((logits.argmax(1).numpy() == data.y).mean() * 100) if len(data) else None
        meta |= {"teacher": teacher.name, "kind": teacher.kind}

    entry, cached = run_stage(ws.cache, inp, build)
    return net, TeacherOutcome(teacher.kind, inp.key, cached, entry.meta["test_top1"], 0.0, 0, None, str(entry.path),
                               val_top1=entry.meta["val_top1"])


def load_supernet(ws: Workspace, inp: TeacherInput) -> Supernet:
    """The weight-sharing supernet that GTN run `inp` trained (trained first if needed)."""
    train_teacher(ws, inp)
    return load_weights(ws, Supernet(inp.space, inp.task), inp, file="supernet.pt")


def _teacher_logits(ws: Workspace, teacher: torch.nn.Module, inp: LogitsInput) -> torch.Tensor:
    def build(staging: Any, meta: dict[str, Any]) -> None:
        torch.save(teacher_logits(teacher, ws.data.train, Normalizer(ws.data.mean, ws.data.std), device=ws.train_device),
                   staging / "logits.pt")

    entry, _ = run_stage(ws.cache, inp, build)
    logits: torch.Tensor = torch.load(entry.file("logits.pt"), weights_only=True)
    return logits


def distill_student(ws: Workspace, inp: DistillInput) -> DistillOutcome:
    """Distill a pool student from a cached teacher (or train it on labels alone: `inp.teacher` None)."""
    student = ArchConfig.from_id(inp.arch)
    teacher_net, teacher_out = load_teacher(ws, inp.teacher) if inp.teacher is not None else (None, None)
    if isinstance(inp.teacher, ExternalTeacher) and teacher_out is not None:
        log.info("teacher %s: test top-1 %.2f%%, val top-1 %s (measured here, before it teaches)", inp.teacher.name,
                 teacher_out.test_top1, f"{teacher_out.val_top1:.2f}%" if teacher_out.val_top1 is not None else "-")
    if inp.init_from is not None:
        train_teacher(ws, inp.init_from)

    def build(staging: Any, meta: dict[str, Any]) -> None:
        seed_everything(inp.seed)
        if inp.init_from is not None:
            net = load_supernet(ws, inp.init_from).extract(student).train()
        else:
            net = build_static(student, inp.space, inp.task)
        logits = None
        if teacher_net is not None and inp.teacher is not None and not inp.train.augments:
            logits = _teacher_logits(ws, teacher_net, LogitsInput(inp.teacher, inp.data))
        result = distill(at_resolution(net, student), teacher_net, ws.data, inp.train, inp.distill, seed=inp.seed,
                         run_id=inp.key, checkpoint_dir=ws.cache.work_dir(inp.STAGE, inp.key), cached_logits=logits,
                         progress=ws.progress, device=ws.train_device)
        cost = count(student, inp.space, inp.task)
        meta |= {"test_top1": result.test_top1, "val_top1": result.history[-1].val_top1, "macs": cost.macs,
                 "params": cost.params, "train_seconds": sum(h.seconds for h in result.history),
                 "trained_on": describe(ws.train_device)}
        torch.save(net.state_dict(), staging / WEIGHTS)

    entry, cached = run_stage(ws.cache, inp, build)
    m = entry.meta
    teacher_key = (None if inp.teacher is None else inp.teacher.sha256 if isinstance(inp.teacher, ExternalTeacher)
                   else inp.teacher.key)
    return DistillOutcome(student.id, inp.method, teacher_key, inp.key, cached, m["test_top1"], m["val_top1"], m["macs"],
                          m["params"], inp.seed, inp.init, m["train_seconds"], str(entry.path), m.get("trained_on", "cpu"),
                          teacher_out.test_top1 if teacher_out is not None else None)


def load_distilled_net(ws: Workspace, inp: DistillInput) -> StagedNet:
    """The distilled student (distilled first if not cached), in eval mode."""
    distill_student(ws, inp)
    return load_weights(ws, build_static(ArchConfig.from_id(inp.arch), inp.space, inp.task), inp).train(False)
