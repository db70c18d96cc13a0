"""The flow, one function per command. Read `build_device` to see the whole pipeline for one device:

    profile -> search (cost model + accuracy predictor) -> teacher -> distill the pick -> export (ONNX)
        -> compile every allowed precision -> parity on the test split -> measure here -> choose -> artifacts/<device>/

Every stage lives in `gtnpipe.stages`, takes the `Workspace` (recipe, dataset, cache, progress) and one frozen
input dataclass that is its cache key; an unchanged rebuild is all cache hits and an interrupted one resumes.
`compile_model` is the same tail for a model the user brought. Each command's options are one dataclass
(gtnpipe.options), passed unchanged from the CLI or the Python API.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gtnpipe.cache import Cache
from gtnpipe.config.profiles import DeviceProfile
from gtnpipe.config.recipes import DataConfig
from gtnpipe.deploy.backends import ExportedModel, get_backend
from gtnpipe.deploy.backends.accuracy_control import ACCURACY_CONTROL_IMAGES
from gtnpipe.deploy.export import Deployable, compile_inputs, logits_of, to_unit_float
from gtnpipe.deploy.fleet import FleetOutcome, run_fleet
from gtnpipe.deploy.onnx_model import count_onnx, fold_constants, prepare_onnx, read_onnx
from gtnpipe.deploy.onnx_torch import onnx_to_torch
from gtnpipe.deploy.parity import top1_pct
from gtnpipe.deploy.timing import Machine
from gtnpipe.errors import ConfigError
from gtnpipe.measure.host_table import calibrate_device, calibration_wanted, make_calibration_kit, stale_table_reason
from gtnpipe.models.external import ExternalTeacher
from gtnpipe.options import BuildOptions, CompileOptions, WorkspaceOptions, as_teacher
from gtnpipe.progress import StageLog
from gtnpipe.space.pool import FASHION_MNIST_TASK
from gtnpipe.stages import search, training
from gtnpipe.stages.deploy import REFERENCE_IMAGES, SourceModel, random_images, split_images
from gtnpipe.stages.ship import Shipped, deploy, measured_summary, predicted_cost, violations, write_device_artifact
from gtnpipe.stages.source import COMPILE_VAL_SIZE, compile_data, compile_precisions, onnx_reference
from gtnpipe.stages.training import DistillOutcome, TeacherOutcome, TrainOutcome
from gtnpipe.stages.workspace import DataRef, Workspace

inherited_accuracies = search.inherited_accuracies  # a command of its own: students' val top-1, inherited weights
__all__ = [
    "FASHION_MNIST_TASK", "BuildOptions", "BuildOutcome", "CompileOptions", "CompileOutcome", "WorkspaceOptions",
    "Workspace", "accuracy_predictor", "build_device", "build_fleet", "calibrate_device", "compile_fleet", "compile_model",
    "distill_student", "inherited_accuracies", "load_distilled", "load_teacher", "load_trained", "make_calibration_kit",
    "search_device", "train_model", "train_teacher",
]

log = logging.getLogger("gtnpipe")


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
    not_built: dict[str, str]  # precision -> the toolchain failure that kept it from being built


def build_device(ws: Workspace, device: str | Path | DeviceProfile, options: BuildOptions, *,
                 say: Callable[[str], None] = lambda _: None) -> BuildOutcome:
    """profile -> search -> distill the pick from the cached teacher -> export -> compile every allowed precision
    -> parity on the test split -> measure here -> write out/<device>/ (manifest, report, model)."""
    profile = search.budgeted_profile(device, ws.space.name, options.budgets)  # the space's budgets, then --budget
    backend = get_backend(profile.runtime.name)  # a missing runtime SDK fails here, before any training
    teacher = as_teacher(options.teacher) or ws.default_teacher  # --teacher, else the recipe's
    log_stage = StageLog(say, stages=6)
    say(f"building {profile.name} ({profile.runtime.name}, precisions {', '.join(profile.precisions)}) "
        f"with recipe {ws.recipe.name}")

    calibrate_if_stale(ws, profile, options.calibrate_host, say)
    found = search.search_device(ws, search.search_input(ws, profile, config=options.search,
                                                         accuracy_samples=options.accuracy_samples))
    log_stage("search", found.cached, key=found.key, arch=found.result.pick.arch.id)

    student_in = training.distill_input(ws, found.result.pick.arch.id, teacher=teacher)
    student = training.distill_student(ws, student_in)
    log_stage("distill", student.cached, key=student.key, test_top1=student.test_top1)

    model = Deployable(training.load_distilled_net(ws, student_in), ws.data.mean, ws.data.std).train(False)
    ws = ws.for_student(found.result.pick.arch)  # from here on: at the student's input resolution
    torch_logits = logits_of(model, ws.data.test.chunks(512))

    def export(work: Path, batch_size: int, max_opset: int, calibration: np.ndarray) -> tuple[ExportedModel, np.ndarray]:
        inputs = compile_inputs(model, ws.task, work, batch_size=batch_size, max_opset=max_opset,
                                calibration_uint8=ws.deploy_images(ws.data.train.x[list(calibration)]))
        n_val = min(len(ws.data.val), ACCURACY_CONTROL_IMAGES)
        val = (to_unit_float(ws.deploy_images(ws.data.val.x[:n_val])), ws.data.val.y[:n_val])
        return replace(inputs, validation=val, max_drop_points=profile.budgets.max_accuracy_drop_points), torch_logits

    done = deploy(ws.cache, profile, backend, student_in, export, split_images(ws.data.test), n_train=len(ws.data.train),
                  n_val=len(ws.data.val), precisions=profile.precisions, strict=options.strict)
    log_stage("compile", all(c.cached for c in done.compiled.values()), precisions=sorted(done.compiled))
    log_stage("measure", all(m.cached for m in done.measured.values()), machine=Machine.here().describe())
    log_stage("check", True, precision=done.chosen)

    torch_top1 = top1_pct(torch_logits, ws.data.test.y)
    predicted, warnings = predicted_cost(profile, ws.space, ws.task, found.result.pick.arch, done)
    if student.teacher_test_top1 is not None and student.teacher_test_top1 < found.result.pick.accuracy:
        warnings.append(f"the {student.teacher} teacher's test top-1 ({student.teacher_test_top1:.2f}%) is below what search "
                        f"estimated for the student before distillation ({found.result.pick.accuracy:.2f}%): it may "
                        "teach the student less than the labels alone; compare with --teacher none")
    shipped = Shipped(
        profile, done.chosen, done.shipped, done.shipped_measured, done.rows,
        model={"arch": student.arch, "macs": student.macs, "params": student.params, "classes": list(ws.data.classes),
               "source": {"kind": "pool-student"},
               # the training images' size, and the sides elastic resolution chose this input's from ([]: the data's)
               "input": {"data_image_hw": list(ws.data.image_hw), "resolution_chosen_from_px": list(ws.recipe.resolutions_px)}},
        provenance={"recipe": ws.recipe.name, "teacher": teacher if isinstance(teacher, str) else teacher.name,
                    "teacher_key": student.teacher_key, "student_key": student.key, "search_key": found.key,
                    "student_trained_on": student.trained_on},
        reference="torch", reference_inputs=to_unit_float(ws.data.test.x[:REFERENCE_IMAGES]),
        reference_labels=ws.data.test.y, reference_logits=torch_logits, reference_top1=torch_top1,
        estimated_top1=found.result.pick.accuracy, predicted=predicted,
        violations=violations(profile, done.shipped, done.shipped_measured, check_measured=options.check_measured_budgets),
        warnings=warnings, data_name=ws.data.name, data_fingerprint=ws.data.fingerprint, pareto_png=found.pareto_png,
        budget_overrides=dict(options.budgets))
    folder = write_device_artifact(shipped, options.out)
    log_stage("artifact", False, folder=str(folder))
    return BuildOutcome(profile.name, str(folder), student.arch, profile.runtime.name, done.chosen, torch_top1,
                        done.shipped_top1, predicted, measured_summary(shipped), shipped.violations, warnings,
                        log_stage.stages, done.not_built)


def build_fleet(ws: Workspace, devices: Sequence[str | Path], options: BuildOptions, *,
                say: Callable[[str], None] = lambda _: None) -> FleetOutcome[BuildOutcome]:
    """build_device for each device (sharing the teacher and cached stages; one that fails is recorded, the others go
    on), then the fleet view out/index.md and out/fleet.png (gtnpipe.deploy.fleet)."""
    return run_fleet(devices, lambda d: build_device(ws, d, options, say=say), options.out, command="gtnpipe build",
                     say=say)


@dataclass(frozen=True)
class CompileOutcome:
    device: str
    folder: str
    model: str  # the user's file
    runtime: str
    precision: str
    reference_top1: float | None  # ONNX Runtime FP32 of the user's model on the test split; None without --data
    shipped_top1: float | None
    measured: dict[str, Any] | None
    budget_violations: list[str]
    warnings: list[str]
    not_built: dict[str, str]
    seconds: float


def compile_model(model_path: str | Path, device: str | Path | DeviceProfile, options: CompileOptions, *,
                  say: Callable[[str], None] = lambda _: None) -> CompileOutcome:
    """A user's ONNX classifier -> every precision the profile allows (INT8 calibrated on the data's train split)
    -> parity against ONNX Runtime FP32 on its test split (or random images) -> measure here -> choose
    -> out/<device>/, the same artifact `build_device` writes (`gtnpipe bench` takes it)."""
    started = time.perf_counter()
    onnx_model, facts = read_onnx(model_path, options.input_shape)
    profile = search.budgeted_profile(device, search.space_of_input(facts.chw[1:]), options.budgets)  # size's space
    backend = get_backend(profile.runtime.name)
    if options.input_shape is not None and options.input_shape.batch not in (None, profile.batch_size):
        raise ConfigError(f"--input-shape gives batch {options.input_shape.batch}; {profile.name} runs batch "
                          f"{profile.batch_size} (its profile's batch_size): give that or leave it out")
    wanted = compile_precisions(profile, options.precisions, has_data=options.data is not None)
    dataset = (compile_data(options.data, facts, options.cache_dir, val_data=options.val_data, resize=options.resize)
               if options.data else None)
    images = split_images(dataset.test) if dataset is not None else random_images(facts.chw)
    data_ref = DataRef(DataConfig(source=dataset.name, val_size=COMPILE_VAL_SIZE), dataset.fingerprint) if dataset else None
    mean, std = options.mean, options.std
    source = SourceModel(facts.sha256, (profile.batch_size, *facts.chw), mean, std, data_ref)
    say(f"compiling {facts.path.name} ({'x'.join(map(str, facts.chw))} input, {facts.num_classes} classes, opset "
        f"{facts.opset}) for {profile.name} ({profile.runtime.name}: {', '.join(wanted)}); parity on "
        + (f"{images.count} test images of {dataset.name}" if dataset else f"{images.count} random images (no --data)"))
    with tempfile.TemporaryDirectory(prefix="gtnpipe-compile-") as tmp:
        prepared = prepare_onnx(onnx_model, facts, Path(tmp) / "model.onnx", batch_size=profile.batch_size,
                                max_opset=profile.runtime.max_onnx_opset, mean=mean, std=std)
        macs, params = count_onnx(prepared)
        reference = onnx_reference(prepared, images, profile.batch_size)

        def export(work: Path, batch_size: int, max_opset: int, calibration: np.ndarray) -> tuple[ExportedModel, np.ndarray]:
            calib = (to_unit_float(dataset.train.x[list(calibration)]) if dataset is not None
                     else np.zeros((0, *facts.chw), dtype=np.float32))
            val = (to_unit_float(dataset.val.x[:ACCURACY_CONTROL_IMAGES]), dataset.val.y[:ACCURACY_CONTROL_IMAGES]) \
                if dataset is not None else None
            # the static graph with its constants folded, for the backends that want it (a strict parser, a translation)
            graph = fold_constants(prepared, work / "folded.onnx") if backend.fold_constants else prepared
            module = onnx_to_torch(graph) if "torch" in backend.converts_from else None  # e.g. litert-torch
            return ExportedModel(graph, (batch_size, *facts.chw), calib, max_opset, torch_module=module,
                                 validation=val, max_drop_points=profile.budgets.max_accuracy_drop_points), reference

        done = deploy(Cache(options.cache_dir), profile, backend, source, export, images,
                      n_train=len(dataset.train) if dataset else 0, n_val=len(dataset.val) if dataset else 0,
                      precisions=wanted, strict=options.strict)
    say(f"compiled {', '.join(sorted(done.compiled))}"
        + (f"; not built: {', '.join(sorted(done.not_built))}" if done.not_built else ""))
    shipped = Shipped(
        profile, done.chosen, done.shipped, done.shipped_measured, done.rows,
        model={"arch": facts.path.name, "macs": macs, "params": params,
               "classes": list(dataset.classes) if dataset else [str(i) for i in range(facts.num_classes)],
               "source": {"kind": "onnx", "file": facts.path.name, "sha256": facts.sha256,
                          "input_normalisation": {"mean": list(mean or ()), "std": list(std or ())}
                          if mean is not None or std is not None else None}},
        provenance={"source_model": str(model_path)}, reference="onnxruntime",
        reference_inputs=next(iter(images.chunks(REFERENCE_IMAGES))), reference_labels=images.labels,
        reference_logits=reference, reference_top1=top1_pct(reference, images.labels) if images.labels is not None else None,
        estimated_top1=None, predicted=None,
        violations=violations(profile, done.shipped, done.shipped_measured, check_measured=options.check_measured_budgets),
        warnings=[f"{p} {why}" for p, why in done.not_built.items()], data_name=dataset.name if dataset else None,
        data_fingerprint=dataset.fingerprint if dataset else None, budget_overrides=dict(options.budgets))
    folder = write_device_artifact(shipped, options.out)
    return CompileOutcome(profile.name, str(folder), str(model_path), profile.runtime.name, done.chosen,
                          shipped.reference_top1, done.shipped_top1, measured_summary(shipped), shipped.violations,
                          shipped.warnings, done.not_built, round(time.perf_counter() - started, 1))


def compile_fleet(model_path: str | Path, devices: Sequence[str | Path], options: CompileOptions, *,
                  say: Callable[[str], None] = lambda _: None) -> FleetOutcome[CompileOutcome]:
    """compile_model for each device (one that fails is recorded and the others go on), then the fleet view."""
    return run_fleet(devices, lambda d: compile_model(model_path, d, options, say=say), options.out, command="gtnpipe compile",
                     say=say)


# --- the other commands: each is one or two stages ------------------------------------------------

def train_model(ws: Workspace, model: str) -> TrainOutcome:
    """Train the teacher or a pool student (arch id, 'largest' or 'smallest') from scratch with plain CE (cached)."""
    return training.train_model(ws, training.train_input(ws, model))


def load_trained(ws: Workspace, model: str) -> torch.nn.Module:
    return training.load_trained(ws, training.train_input(ws, model))


def train_teacher(ws: Workspace, method: str, *, student: str | None = None) -> TeacherOutcome:
    """A teacher: vanilla (CE only), gtn (generic, for the whole pool) or sftn (specialised to `student`)."""
    return training.train_teacher(ws, training.teacher_input(ws, method, student=student))


def load_teacher(ws: Workspace, method: str, *, student: str | None = None) -> tuple[torch.nn.Module, TeacherOutcome]:
    return training.load_teacher(ws, training.teacher_input(ws, method, student=student))


def distill_student(ws: Workspace, arch: str, *, teacher: str | ExternalTeacher | None = None,
                    finetune: str | None = None, seed: int | None = None) -> DistillOutcome:
    """Distill pool student `arch` from a cached teacher ('gtn', 'vanilla', 'sftn', or 'none': labels only), a teacher
    file (.onnx, .pt2, TorchScript) or an ExternalTeacher (gtnpipe.teacher_from_module); finetune="gtn" fine-tunes
    a module teacher with named stages as a generic teacher first."""
    teacher = teacher if teacher is not None else ws.default_teacher  # --teacher, [teacher] source, [distill] teacher
    return training.distill_student(ws, training.distill_input(ws, arch, teacher=teacher, finetune=finetune, seed=seed))


def load_distilled(ws: Workspace, arch: str, *, teacher: str = "gtn") -> Deployable:
    """The distilled student as deployed: normalisation inside, eval mode."""
    net = training.load_distilled_net(ws, training.distill_input(ws, arch, teacher=teacher))
    return Deployable(net, ws.data.mean, ws.data.std).train(False)


def accuracy_predictor(ws: Workspace, *, samples: int | None = None) -> search.AccuracyOutcome:
    return search.accuracy_predictor(ws, search.accuracy_input(ws, samples=samples))


def search_device(ws: Workspace, device: str | Path | DeviceProfile, options: BuildOptions, *,
                  say: Callable[[str], None] = lambda _: None) -> search.SearchOutcome:
    """The best student for `device` (the same cached stage `gtnpipe build` runs, with the build's options)."""
    profile = search.budgeted_profile(device, ws.space.name, options.budgets)
    calibrate_if_stale(ws, profile, options.calibrate_host, say)
    return search.search_device(ws, search.search_input(ws, profile, config=options.search,
                                                        accuracy_samples=options.accuracy_samples))


def calibrate_if_stale(ws: Workspace, profile: DeviceProfile, wanted: bool | None, say: Callable[[str], None]) -> None:
    """For `host` (the machine running this): measure its latency table here first when the one found was measured on
    another machine or is missing (once per machine: the table goes to the user data directory, which wins)."""
    reason = stale_table_reason(profile, ws.space, ws.task)
    if reason is None:
        return
    if not calibration_wanted(wanted):
        log.warning("%s; not measuring this machine's table (--no-calibrate or GTNPIPE_CALIBRATE=0): latency "
                    "predictions may be off", reason)
        return
    say(f"{reason}: measuring this machine's latency table first (about a minute, once per machine; --no-calibrate "
        "skips it)")
    info = calibrate_device(profile, space=ws.space.name, task=ws.task, progress=say)
    say(f"host latency table measured in {info['seconds']:.0f} s; its fit predicts {info['fit_within_10pct']:.0%} of its "
        f"{info['networks']} calibration networks within ±10%; written to {info['table']}")
