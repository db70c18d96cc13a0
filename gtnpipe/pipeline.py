"""The flow, one function per command. Read `build_device` to see the whole pipeline for one device:

    profile -> search (cost model + accuracy predictor) -> teacher -> distill the pick -> export (ONNX)
        -> compile every allowed precision -> parity on the test split -> measure here -> choose -> artifacts/<device>/

Every stage lives in `gtnpipe.stages`, takes the `Workspace` (recipe, dataset, cache, progress) and one frozen
input dataclass that is its cache key; an unchanged rebuild is all cache hits and an interrupted one resumes.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gtnpipe.cache import Cache
from gtnpipe.config.profiles import DeviceProfile, load_profile
from gtnpipe.config.recipes import DataConfig
from gtnpipe.data.datasets import Dataset, load_dataset
from gtnpipe.deploy.backends import Backend, CompileInputs, get_backend
from gtnpipe.deploy.backends.accuracy_control import ACCURACY_CONTROL_IMAGES
from gtnpipe.deploy.export import Deployable, compile_inputs, to_unit_float
from gtnpipe.deploy.fleet import update_index, write_index
from gtnpipe.deploy.onnx_model import OnnxFacts, count_onnx, prepare_onnx, read_onnx
from gtnpipe.deploy.onnx_torch import onnx_to_torch
from gtnpipe.deploy.parity import BuildFailure, CompiledPrecision, PrecisionRow, choose_precision, run_batched
from gtnpipe.deploy.timing import Machine
from gtnpipe.devices.cost import table_write_path
from gtnpipe.devices.latency_table import measure_command
from gtnpipe.errors import BackendBuildError, ConfigError, ParityError
from gtnpipe.measure.host_table import (
    build_calibration_kit,
    calibrate,
    calibration_wanted,
    stale_table_reason,
)
from gtnpipe.measure.kit import table_summary
from gtnpipe.models.external import ExternalTeacher
from gtnpipe.nas.evolution import SearchConfig
from gtnpipe.space.pool import FASHION_MNIST_TASK
from gtnpipe.space.spaces import TaskShape, get_space
from gtnpipe.stages import training
from gtnpipe.stages.artifact import Shipped, measured_summary, write_device_artifact
from gtnpipe.stages.deploy import (
    REFERENCE_IMAGES,
    Compiled,
    Measured,
    ParityImages,
    SourceModel,
    calibration_indices,
    compile_input,
    compile_precision,
    measure_input,
    measure_precision,
    random_images,
    split_images,
)
from gtnpipe.stages.search import AccuracyOutcome, SearchOutcome, accuracy_input, search_input
from gtnpipe.stages.search import accuracy_predictor as _accuracy_predictor
from gtnpipe.stages.search import cost_model as _cost_model
from gtnpipe.stages.search import inherited_accuracies as _inherited_accuracies
from gtnpipe.stages.search import search_device as _search_device
from gtnpipe.stages.training import DistillOutcome, TeacherOutcome, TrainOutcome
from gtnpipe.stages.workspace import DATA_INDEX, DataRef, Workspace

__all__ = [
    "FASHION_MNIST_TASK",
    "BuildOutcome",
    "CompileOutcome",
    "Workspace",
    "accuracy_predictor",
    "build_device",
    "build_fleet",
    "compile_model",
    "data_info",
    "distill_student",
    "inherited_accuracies",
    "load_distilled",
    "load_teacher",
    "load_trained",
    "search_device",
    "train_model",
    "train_teacher",
]

log = logging.getLogger("gtnpipe")
# gtnpipe compile --data: the share of the training images that become the validation split (accuracy-control INT8
# ranks layers on it); the rest calibrate INT8, the test split judges every precision
COMPILE_VAL_SIZE = 0.1


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


def build_device(ws: Workspace, device: str | Path | DeviceProfile, *, out: Path = Path("artifacts"),
                 teacher: str | ExternalTeacher | None = None,
                 config: SearchConfig | None = None, accuracy_samples: int | None = None,
                 check_measured_budgets: bool = False, strict: bool = False, calibrate_host: bool | None = None,
                 say: Callable[[str], None] = lambda _: None) -> BuildOutcome:
    """profile -> search -> distill the pick from the cached teacher -> export -> compile every allowed precision
    -> parity on the test split -> measure here -> write out/<device>/ (manifest, report, model).

    `strict`: a precision the profile allows that the toolchain failed to build fails the build (CI uses it).
    `calibrate_host`: measure this machine's latency table first when `host`'s was measured elsewhere (None: on,
    unless $GTNPIPE_CALIBRATE is 0).
    """
    profile = load_profile(device)
    backend = get_backend(profile.runtime.name)  # a missing runtime SDK fails here, before any training
    teacher = teacher if teacher is not None else ws.default_teacher  # --teacher, [teacher] source, [distill] teacher
    log_stage = _StageLog(say)
    say(f"building {profile.name} ({profile.runtime.name}, precisions {', '.join(profile.precisions)}) "
        f"with recipe {ws.recipe.name}")

    calibrate_if_stale(ws, profile, calibrate_host, say)
    search = _search_device(ws, search_input(ws, profile, config=config, accuracy_samples=accuracy_samples))
    log_stage("search", search.cached, key=search.key, arch=search.result.pick.arch.id)

    student_in = training.distill_input(ws, search.result.pick.arch.id, teacher=teacher)
    student = training.distill_student(ws, student_in)
    log_stage("distill", student.cached, key=student.key, test_top1=student.test_top1)

    model = Deployable(training.load_distilled_net(ws, student_in), ws.data.mean, ws.data.std).train(False)
    ws = ws.for_student(search.result.pick.arch)  # from here on: at the student's input resolution
    torch_logits = _torch_logits(model, ws)

    def export(work: Path, batch_size: int, max_opset: int, calibration: np.ndarray) -> tuple[CompileInputs, np.ndarray]:
        inputs = compile_inputs(model, ws.task, work, batch_size=batch_size, max_opset=max_opset,
                                calibration_uint8=ws.deploy_images(ws.data.train.x[list(calibration)]))
        val = ws.data.val
        n_val = min(len(val), ACCURACY_CONTROL_IMAGES)
        return replace(inputs, validation=(to_unit_float(ws.deploy_images(val.x[:n_val])), val.y[:n_val]),
                       max_drop_points=profile.budgets.max_accuracy_drop_points), torch_logits

    compiled, failures, superseded = _compile_all(
        ws.cache, profile, backend, student_in, export, split_images(ws.data.test), len(ws.data.train),
        len(ws.data.val), precisions=profile.precisions, strict=strict)
    log_stage("compile", all(c.cached for c in compiled.values()), precisions=sorted(compiled))

    measured = _measure_all(ws.cache, profile, compiled)
    log_stage("measure", all(m.cached for m in measured.values()), machine=Machine.here().describe())

    chosen, rows = _choose(profile, compiled, measured, failures, superseded, _measure_all(ws.cache, profile, superseded))
    log_stage("check", True, precision=chosen)

    torch_top1 = _top1(torch_logits, ws.data.test.y)
    predicted, violations, warnings = _predicted_and_checks(ws, profile, search, chosen, compiled[chosen],
                                                            measured.get(chosen), check_measured_budgets)
    if student.teacher_test_top1 is not None and student.teacher_test_top1 < search.result.pick.accuracy:
        warnings.append(f"the {student.teacher} teacher's test top-1 ({student.teacher_test_top1:.2f}%) is below what search "
                        f"estimated for the student before distillation ({search.result.pick.accuracy:.2f}%): it may "
                        "teach the student less than the labels alone; compare with --teacher none")
    shipped = Shipped(
        profile, chosen, compiled[chosen], measured.get(chosen), rows,
        model={"arch": student.arch, "macs": student.macs, "params": student.params, "classes": list(ws.data.classes),
               "source": {"kind": "pool-student"},
               # the training images' size, and the sides elastic resolution chose this input's from ([]: the data's)
               "input": {"data_image_hw": list(ws.data.image_hw), "resolution_chosen_from_px": list(ws.recipe.resolutions_px)}},
        provenance={"recipe": ws.recipe.name, "teacher": teacher if isinstance(teacher, str) else teacher.name,
                    "teacher_key": student.teacher_key, "student_key": student.key, "search_key": search.key,
                    "student_trained_on": student.trained_on},
        reference="torch", reference_inputs=to_unit_float(ws.data.test.x[:REFERENCE_IMAGES]),
        reference_labels=ws.data.test.y, reference_logits=torch_logits, reference_top1=torch_top1,
        estimated_top1=search.result.pick.accuracy, predicted=predicted, violations=violations, warnings=warnings,
        data_name=ws.data.name, data_fingerprint=ws.data.fingerprint, pareto_png=search.pareto_png)
    folder = write_device_artifact(shipped, out)
    log_stage("artifact", False, folder=str(folder))
    parity = compiled[chosen].meta["parity"]
    return BuildOutcome(profile.name, str(folder), student.arch, profile.runtime.name, chosen, torch_top1,
                        parity["artifact_top1"] if parity else None, predicted, measured_summary(shipped),
                        violations, warnings, log_stage.stages, failures)


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


def build_fleet(ws: Workspace, devices: Sequence[str | Path], *, out: Path = Path("artifacts"),
                **kw: Any) -> list[BuildOutcome]:
    """build_device for each device in turn (they share the teacher and the cached stages), then the fleet view
    out/index.md and out/fleet.png over every device folder in `out` (gtnpipe.deploy.fleet)."""
    results = [build_device(ws, device, out=out, **kw) for device in devices]
    refresh_fleet(out, built=len(results))
    return results


def refresh_fleet(out: Path, *, built: int) -> Path | None:
    """The fleet index after building `built` artifacts into `out`: written for more than one, else kept up to date
    where one exists."""
    return write_index(out) if built > 1 else update_index(out)


def compile_model(model_path: str | Path, device: str | Path | DeviceProfile, *, data: str | Dataset | None = None,
                  out: Path = Path("artifacts"), cache_dir: Path | None = None, precisions: tuple[str, ...] | None = None,
                  mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                  check_measured_budgets: bool = False, strict: bool = False,
                  say: Callable[[str], None] = lambda _: None) -> CompileOutcome:
    """A user's ONNX classifier -> every precision the profile allows (INT8 calibrated on `data`'s train split)
    -> parity against ONNX Runtime FP32 on `data`'s test split (or random images) -> measure here -> choose
    -> out/<device>/, the same artifact `build_device` writes (`gtnpipe bench` takes it).

    `data`: a path (image folder, .npz, fashion-mnist) or a loaded Dataset; `mean`/`std`: the normalisation the
    model expects, in [0, 1] pixel units, folded into the graph (the artifact then takes [0, 1] images)."""
    started = time.perf_counter()
    profile = load_profile(device)
    backend = get_backend(profile.runtime.name)
    onnx_model, facts = read_onnx(model_path)
    wanted = _compile_precisions(profile, precisions, has_data=data is not None)
    dataset = _compile_data(data, facts, cache_dir) if data is not None else None
    images = split_images(dataset.test) if dataset is not None else random_images(facts.chw)
    data_ref = DataRef(DataConfig(source=dataset.name, val_size=COMPILE_VAL_SIZE), dataset.fingerprint) if dataset else None
    source = SourceModel(facts.sha256, (profile.batch_size, *facts.chw), mean, std, data_ref)
    say(f"compiling {facts.path.name} ({'x'.join(map(str, facts.chw))} input, {facts.num_classes} classes, opset "
        f"{facts.opset}) for {profile.name} ({profile.runtime.name}: {', '.join(wanted)}); parity on "
        + (f"{images.count} test images of {dataset.name}" if dataset else f"{images.count} random images (no --data)"))
    cache = Cache(cache_dir)
    with tempfile.TemporaryDirectory(prefix="gtnpipe-compile-") as tmp:
        prepared = prepare_onnx(onnx_model, facts, Path(tmp) / "model.onnx", batch_size=profile.batch_size,
                                max_opset=profile.runtime.max_onnx_opset, mean=mean, std=std)
        macs, params = count_onnx(prepared)
        reference = _onnx_reference(prepared, images, profile.batch_size)

        def export(work: Path, batch_size: int, max_opset: int, calibration: np.ndarray) -> tuple[CompileInputs, np.ndarray]:
            calib = (to_unit_float(dataset.train.x[list(calibration)]) if dataset is not None
                     else np.zeros((0, *facts.chw), dtype=np.float32))
            val = (to_unit_float(dataset.val.x[:ACCURACY_CONTROL_IMAGES]), dataset.val.y[:ACCURACY_CONTROL_IMAGES]) \
                if dataset is not None else None
            # litert-torch reads torch: the graph as a torch module (only the LiteRT backend asks for it)
            module = onnx_to_torch(prepared) if "torch" in backend.converts_from else None
            return CompileInputs(prepared, (batch_size, *facts.chw), calib, max_opset, torch_module=module,
                                 validation=val, max_drop_points=profile.budgets.max_accuracy_drop_points), reference

        compiled, failures, superseded = _compile_all(
            cache, profile, backend, source, export, images, len(dataset.train) if dataset else 0,
            len(dataset.val) if dataset else 0, precisions=wanted, strict=strict)
    say(f"compiled {', '.join(sorted(compiled))}" + (f"; not built: {', '.join(sorted(failures))}" if failures else ""))
    measured = _measure_all(cache, profile, compiled)
    chosen, rows = _choose(profile, compiled, measured, failures, superseded, _measure_all(cache, profile, superseded))
    c = compiled[chosen]
    shipped = Shipped(
        profile, chosen, c, measured.get(chosen), rows,
        model={"arch": facts.path.name, "macs": macs, "params": params,
               "classes": list(dataset.classes) if dataset else [str(i) for i in range(facts.num_classes)],
               "source": {"kind": "onnx", "file": facts.path.name, "sha256": facts.sha256,
                          "input_normalisation": {"mean": list(mean or ()), "std": list(std or ())}
                          if mean is not None or std is not None else None}},
        provenance={"source_model": str(model_path)}, reference="onnxruntime",
        reference_inputs=next(iter(images.chunks(REFERENCE_IMAGES))), reference_labels=images.labels,
        reference_logits=reference, reference_top1=_top1(reference, images.labels) if images.labels is not None else None,
        estimated_top1=None, predicted=None, violations=_violations(profile, c, measured.get(chosen), check_measured_budgets),
        warnings=[f"{p} {why}" for p, why in failures.items()], data_name=dataset.name if dataset else None,
        data_fingerprint=dataset.fingerprint if dataset else None)
    folder = write_device_artifact(shipped, out)
    parity = c.meta["parity"]
    return CompileOutcome(profile.name, str(folder), str(model_path), profile.runtime.name, chosen, shipped.reference_top1,
                          parity["artifact_top1"] if parity else None, measured_summary(shipped), shipped.violations,
                          shipped.warnings, failures, round(time.perf_counter() - started, 1))


def _compile_precisions(profile: DeviceProfile, asked: tuple[str, ...] | None, *, has_data: bool) -> tuple[str, ...]:
    """The precisions gtnpipe compile builds: the profile's, or the subset asked for (in the profile's order)."""
    if asked is None:
        return tuple(profile.precisions)
    extra = sorted(set(asked) - set(profile.precisions))
    if extra:
        raise ConfigError(f"--precision {', '.join(extra)}: device {profile.name!r} allows {', '.join(profile.precisions)} "
                          "(the profile's 'precisions')")
    if "int8" in asked and not has_data:
        raise ConfigError("--precision int8 needs calibration data: pass --data with images like the ones the model will "
                          "see (an image folder, a .npz or fashion-mnist)")
    return tuple(p for p in profile.precisions if p in asked)


def _compile_data(data: str | Dataset, facts: OnnxFacts, cache_dir: Path | None) -> Dataset:
    """The user's data at the model's input size, checked against the model's channels and classes."""
    c, h, w = facts.chw
    if isinstance(data, str):
        if h != w:
            raise ConfigError(f"{facts.path.name} takes {h}x{w} images; --data resizes to squares only: pass the data as "
                              "a .npz of images at that size, or compile without --data")
        data = load_dataset(data, val_size=COMPILE_VAL_SIZE, image_size=h, index_dir=Cache(cache_dir).root / DATA_INDEX)
    if data.image_hw != (h, w):
        raise ConfigError(f"the data's images are {data.image_hw[0]}x{data.image_hw[1]}, {facts.path.name} takes {h}x{w}: "
                          "resize them to the model's input size")
    if data.channels != c:
        raise ConfigError(f"{facts.path.name} takes {c}-channel images, the data {data.name} has {data.channels}: "
                          f"give data with {c} channel(s)")
    if data.num_classes != facts.num_classes:
        raise ConfigError(f"{facts.path.name} has {facts.num_classes} outputs, the data {data.name} has "
                          f"{data.num_classes} classes: give the test data of the classes the model predicts")
    return data


def _onnx_reference(path: Path, images: ParityImages, batch_size: int) -> np.ndarray:
    """ONNX Runtime FP32 logits of the prepared user's model: what every compiled precision is compared with."""
    from gtnpipe.deploy.backends.onnxruntime import OrtRunner

    runner = OrtRunner(path, threads=os.cpu_count() or 1)
    chunk = batch_size * max(1, 512 // batch_size)
    return np.concatenate([run_batched(runner, x, batch_size=batch_size) for x in images.chunks(chunk)])


# --- build_device's steps ------------------------------------------------------------------------

class _StageLog:
    """One line per finished stage (cache hit or done, seconds since the build started), kept for the outcome."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say, self.started = say, time.perf_counter()
        self.stages: dict[str, dict[str, Any]] = {}

    def __call__(self, name: str, cached: bool, **info: Any) -> None:
        self.stages[name] = {"cached": cached, **info, "seconds": round(time.perf_counter() - self.started, 1)}
        self.say(f"[{len(self.stages)}/6] {name}: {'cache hit' if cached else 'done'} "
                 f"({self.stages[name]['seconds']:.1f} s in all)")


def _torch_logits(model: Deployable, ws: Workspace) -> np.ndarray:
    with torch.no_grad():  # 512 images at a time: a test split on disk is decoded a chunk at a time
        return np.concatenate([model(torch.from_numpy(to_unit_float(x))).numpy() for x in ws.data.test.chunks(512)])


def _top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean() * 100)


# (work dir, batch size, max opset, calibration indices into the train split) -> the backends' inputs, reference logits
Export = Callable[[Path, int, int, np.ndarray], tuple[CompileInputs, np.ndarray]]


def _compile_all(cache: Cache, profile: DeviceProfile, backend: Backend, model: training.DistillInput | SourceModel,
                 export: Export, images: ParityImages, n_train: int, n_val: int, *, precisions: tuple[str, ...],
                 strict: bool) -> tuple[dict[str, Compiled], dict[str, str], dict[str, Compiled]]:
    """Each of `precisions` the backend builds; a toolchain failure (BackendBuildError) is recorded and the others
    go on (with `strict` it fails the build), any other error propagates. `export` runs once, and only if some
    precision is not cached.

    When plain INT8 loses more top-1 than the profile allows and the backend has NNCF's accuracy control, INT8 is
    built again with it (its choices made on the validation split); it takes plain INT8's place, which is returned
    as superseded (its row stays in the report)."""
    compiled: dict[str, Compiled] = {}
    failures: dict[str, str] = {}
    superseded: dict[str, Compiled] = {}
    with tempfile.TemporaryDirectory(prefix="gtnpipe-export-") as tmp:
        @functools.cache
        def exported(batch_size: int, max_opset: int, calibration: tuple[int, ...]) -> tuple[CompileInputs, np.ndarray]:
            return export(Path(tmp), batch_size, max_opset, np.asarray(calibration, dtype=np.int64))

        for precision in precisions:
            if precision not in backend.precisions:
                continue
            inp = compile_input(profile, model, precision, backend)
            if precision == "int8" and n_train == 0:
                failures[precision] = "not built: INT8 needs calibration data; pass --data with your images"
                continue
            idx = tuple(int(i) for i in calibration_indices(inp, n_train))
            build = functools.partial(exported, inp.batch_size, inp.runtime.max_onnx_opset, idx)
            try:
                compiled[precision] = compile_precision(cache, inp, backend, build, images)
                if precision == "int8" and backend.accuracy_control and n_val and _lost_accuracy_only(compiled[precision]):
                    controlled = replace(inp, accuracy_control=True, validation_images=min(n_val, ACCURACY_CONTROL_IMAGES))
                    log.info("%s int8 loses more top-1 than the profile allows: trying NNCF accuracy control",
                             profile.runtime.name)
                    superseded[precision] = compiled.pop(precision)
                    compiled[precision] = compile_precision(cache, controlled, backend, build, images)
            except BackendBuildError as err:
                if precision == "fp32":
                    raise
                if strict:
                    raise BackendBuildError(f"--strict: {profile.name} allows {precision}, which the toolchain could not "
                                            f"build: {err}") from err
                log.warning("%s %s build failed: %s", profile.runtime.name, precision, err)
                failures[precision] = f"build failed: {err}" + (f" (cause: {err.__cause__!r})" if err.__cause__ else "")
    fp32 = compiled.get("fp32")
    if fp32 is not None and fp32.meta["parity"] and not fp32.meta["parity"]["passed"]:
        raise ParityError(f"{profile.runtime.name} fp32 artifact fails parity with the PyTorch student: "
                          f"{'; '.join(fp32.meta['parity']['failures'])}. The compiled model is wrong, not just imprecise: "
                          "check the runtime version against the profile's, or report it")
    return compiled, failures, superseded


def _lost_accuracy_only(c: Compiled) -> bool:
    """Parity failed on the accuracy drop alone (the model runs, it just loses too much top-1)."""
    parity = c.meta["parity"]
    return parity is not None and not parity["passed"] and all("points below" in f for f in parity["failures"])


def _measure_all(cache: Cache, profile: DeviceProfile, compiled: dict[str, Compiled]) -> dict[str, Measured]:
    """Latency and memory here of every precision that could run here."""
    return {p: measure_precision(cache, measure_input(profile, c), c) for p, c in compiled.items() if c.meta["parity"]}


def _choose(profile: DeviceProfile, compiled: dict[str, Compiled], measured: dict[str, Measured],
            failures: dict[str, str], superseded: dict[str, Compiled], superseded_measured: dict[str, Measured]
            ) -> tuple[str, list[PrecisionRow]]:
    entries: dict[str, CompiledPrecision | BuildFailure] = {p: {"error": e} for p, e in failures.items()}
    for p, c in compiled.items():
        entry: CompiledPrecision = {"parity": c.meta["parity"], "latency": measured[p].latency if p in measured else None,
                                    "size_bytes": c.meta["size_bytes"], "deployed_format": c.meta["deployed_format"]}
        if "unchecked_reason" in c.meta:
            entry["unchecked_reason"] = c.meta["unchecked_reason"]
        entries[p] = entry
    chosen, rows = choose_precision(profile, entries)
    for row in list(rows):  # accuracy control: its row says so, and the plain INT8 it replaced gets its own
        plain = superseded.get(row["precision"])
        if plain is None:
            continue
        plain_ms = superseded_measured[row["precision"]].latency["p50_ms"] if row["precision"] in superseded_measured \
            else None
        notes = compiled[row["precision"]].meta["notes"]
        row["variant"] = "accuracy-control"
        row["float_layers"] = list(notes.get("float_layers", []))
        if plain_ms is not None and row["latency_ms_p50"] is not None:
            row["latency_cost_ms_p50"] = row["latency_ms_p50"] - plain_ms
        parity = plain.meta["parity"]
        rows.insert(rows.index(row), {
            "precision": row["precision"], "variant": "plain", "status": "rejected",
            "reason": "; ".join(parity["failures"]) if parity else "", "parity": parity, "latency_ms_p50": plain_ms,
            "size_bytes": plain.meta["size_bytes"]})
        row["reason"] = (f"accuracy control kept {len(row['float_layers'])} layer(s) in float; " + row["reason"])
    return chosen, rows


def _predicted_and_checks(ws: Workspace, profile: DeviceProfile, search: SearchOutcome, chosen: str, compiled: Compiled,
                          measured: Measured | None, check_measured_budgets: bool
                          ) -> tuple[dict[str, Any], list[str], list[str]]:
    """The cost model's prediction for what ships, the budgets it misses, and warnings worth a person's eye."""
    cost_model = _cost_model(profile, ws.space, ws.task, precision=chosen)
    pick = search.result.pick.arch
    predicted = cost_model.estimate(pick).to_dict()
    task = ws.task.for_arch(pick)  # the input the shipped student runs at
    table, table_note, table_machine = cost_model.table_at(task)
    warnings = []
    here = Machine.here().describe()
    if measured is not None and table_machine not in (None, here):
        warnings.append(f"the {profile.name} latency table was measured on '{table_machine}', this build ran on "
                        f"'{here}': predicted and measured-here latencies describe different machines; if this machine "
                        f"is the device, run '{measure_command(profile.name, ws.space.name, task)}' and rebuild")
    if table is None:  # e.g. no table for this space and input: say so, and how to measure one
        warnings.append(f"latency predicted by the roofline estimate: {table_note}")
    return predicted, _violations(profile, compiled, measured, check_measured_budgets), warnings


def _violations(profile: DeviceProfile, compiled: Compiled, measured: Measured | None, check_measured: bool) -> list[str]:
    """The budgets what ships breaks: its file size always; latency and memory measured here with `check_measured`."""
    violations = []
    size_mb = compiled.meta["size_bytes"] / 1e6
    if compiled.meta["deployed_format"] and size_mb > profile.budgets.model_size_mb:
        violations.append(f"model_size_mb: {size_mb:.3f} > {profile.budgets.model_size_mb:g}")
    if check_measured and measured is not None:
        for name, value in (("latency_ms_p90", measured.latency["p90_ms"]), ("peak_memory_mb", measured.peak_memory_mb)):
            if value > getattr(profile.budgets, name):
                violations.append(f"{name}: measured {value:.3f} > budget {getattr(profile.budgets, name):g}")
    return violations


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


def accuracy_predictor(ws: Workspace, *, samples: int | None = None) -> AccuracyOutcome:
    return _accuracy_predictor(ws, accuracy_input(ws, samples=samples))


def inherited_accuracies(ws: Workspace, archs: list[str]) -> list[float]:
    return _inherited_accuracies(ws, archs)


def search_device(ws: Workspace, device: str | Path | DeviceProfile, *, config: SearchConfig | None = None,
                  calibrate_host: bool | None = None, say: Callable[[str], None] = lambda _: None) -> SearchOutcome:
    """The best student for `device` (the same cached stage `gtnpipe build` runs)."""
    profile = load_profile(device)
    calibrate_if_stale(ws, profile, calibrate_host, say)
    return _search_device(ws, search_input(ws, profile, config=config))


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


def data_info(ws: Workspace) -> dict[str, Any]:
    data = ws.data
    return {"name": data.name, "fingerprint": data.fingerprint, "classes": list(data.classes), "channels": data.channels,
            "image_hw": list(data.image_hw), "splits": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
            "mean": list(data.mean), "std": list(data.std), "space": ws.space.name, "skipped": list(data.skipped),
            "storage": data.storage}


def calibrate_device(device: str | Path | DeviceProfile, *, space: str = "mbv3-28", task: TaskShape = FASHION_MNIST_TASK,
                     n_networks: int = 30, runs: int = 100, rounds: int = 10, tables_dir: Path | None = None,
                     progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Measure the device's latency table here (run this ON the device) and write it where search reads it."""
    profile = load_profile(device)
    table = calibrate(profile, get_space(space), task, n_networks=n_networks, runs=runs, rounds=rounds, progress=progress)
    path = table_write_path(profile.name, space, task, tables_dir)  # the user data directory unless told: never the package
    table.save(path)
    return table_summary(table, path)


def make_calibration_kit(device: str | Path, out: Path, *, space: str = "mbv3-28", task: TaskShape = FASHION_MNIST_TASK,
                         n_networks: int = 30, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """On the host: export and compile the device's latency-table models into `out` (the device times them)."""
    profile = load_profile(device)
    started = time.time()
    kit = build_calibration_kit(profile, get_space(space), task, Path(out), n_networks=n_networks, progress=progress)
    return {"device": profile.name, "kit": str(out), "runtime": kit["runtime"], "units": len(kit["units"]),
            "networks": len(kit["networks"]), "files": len(kit["files"]),
            "size_mb": sum(r["bytes"] for r in kit["files"].values()) / 1e6, "seconds": round(time.time() - started, 1),
            "device_command": f"gtnpipe latency-table --device {profile.name} --kit {out}"}
