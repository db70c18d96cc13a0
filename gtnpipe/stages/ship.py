"""The deployment both `gtnpipe build` and `gtnpipe compile` end with: every precision the profile allows compiled and
parity-checked against the FP32 reference, measured here, one chosen, the budgets what ships breaks, and the device's
artifact folder (model files, manifest.json, report, reference images), written atomically next to the target and
swapped in (not cached: it is assembled from cached stages in seconds).

    compile_all -> measure_all -> choose  (deploy runs the three)   violations: the budget check of what ships
    Shipped (what ships and the evidence) -> write_device_artifact

The model comes in as an `Export`: a function that writes the FP32 ONNX (and, for converters reading torch, the torch
module) with its calibration images, and gives the reference logits. It is called once, and only when some precision
is not cached.
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from gtnpipe.cache import Cache
from gtnpipe.config.profiles import DeviceProfile
from gtnpipe.config.toml import as_dict
from gtnpipe.deploy.artifacts import write_artifact
from gtnpipe.deploy.backends import Backend, ExportedModel, backend_class
from gtnpipe.deploy.backends.accuracy_control import ACCURACY_CONTROL_IMAGES
from gtnpipe.deploy.parity import (
    BuildFailure,
    CompiledPrecision,
    PrecisionRow,
    choose_precision,
    failure_reason,
    lost_accuracy_only,
)
from gtnpipe.deploy.timing import Machine
from gtnpipe.devices.latency_table import measure_command
from gtnpipe.errors import BackendBuildError, ParityError
from gtnpipe.space.spaces import ArchConfig, SearchSpace, TaskShape
from gtnpipe.stages.deploy import (
    ARTIFACT_LOGITS,
    Compiled,
    Measured,
    ParityImages,
    SourceModel,
    calibration_indices,
    compile_input,
    compile_precision,
    measure_input,
    measure_precision,
)
from gtnpipe.stages.keys import package_versions
from gtnpipe.stages.search import cost_model
from gtnpipe.stages.training import DistillInput

__all__ = ["Deployment", "Export", "Shipped", "deploy", "measured_summary", "predicted_cost", "violations",
           "write_device_artifact"]

log = logging.getLogger("gtnpipe")

# (work dir, batch size, max opset, calibration indices into the train split) -> the backends' inputs, reference logits
Export = Callable[[Path, int, int, np.ndarray], tuple[ExportedModel, np.ndarray]]


@dataclass(frozen=True)
class Deployment:
    """Every precision compiled and measured, the one chosen, and a row per precision saying why."""

    chosen: str
    compiled: dict[str, Compiled]
    measured: dict[str, Measured]  # the precisions that could run here
    rows: list[PrecisionRow]
    not_built: dict[str, str]  # precision -> the toolchain failure that kept it from being built

    @property
    def shipped(self) -> Compiled:
        return self.compiled[self.chosen]

    @property
    def shipped_measured(self) -> Measured | None:
        return self.measured.get(self.chosen)

    @property
    def shipped_top1(self) -> float | None:
        parity = self.shipped.meta["parity"]
        return parity["artifact_top1"] if parity else None


def deploy(cache: Cache, profile: DeviceProfile, backend: Backend, model: DistillInput | SourceModel, export: Export,
           images: ParityImages, *, n_train: int, n_val: int, precisions: tuple[str, ...], strict: bool) -> Deployment:
    """compile_all -> measure_all -> choose."""
    compiled, failures, superseded = compile_all(cache, profile, backend, model, export, images, n_train=n_train,
                                                 n_val=n_val, precisions=precisions, strict=strict)
    measured = measure_all(cache, profile, compiled)
    chosen, rows = choose(profile, compiled, measured, failures, superseded, measure_all(cache, profile, superseded))
    return Deployment(chosen, compiled, measured, rows, failures)


def compile_all(cache: Cache, profile: DeviceProfile, backend: Backend, model: DistillInput | SourceModel,
                export: Export, images: ParityImages, *, n_train: int, n_val: int, precisions: tuple[str, ...],
                strict: bool) -> tuple[dict[str, Compiled], dict[str, str], dict[str, Compiled]]:
    """Each of `precisions` the backend builds; a toolchain failure (BackendBuildError) is recorded and the others
    go on (with `strict` it fails the build), any other error propagates. `export` runs once, and only if some
    precision is not cached.

    When plain INT8 loses more top-1 than the profile allows and the backend has NNCF's accuracy control, INT8 is
    built again with it (its choices made on the validation split); it takes plain INT8's place, which is returned
    as superseded (its row stays in the report). If that build fails, plain INT8 stays (rejected by its parity) and
    the failure is recorded."""
    compiled: dict[str, Compiled] = {}
    failures: dict[str, str] = {}
    superseded: dict[str, Compiled] = {}
    with tempfile.TemporaryDirectory(prefix="gtnpipe-export-") as tmp:
        @functools.cache
        def exported(batch_size: int, max_opset: int, calibration: tuple[int, ...]) -> tuple[ExportedModel, np.ndarray]:
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
                if (precision == "int8" and backend.accuracy_control and n_val
                        and lost_accuracy_only(compiled[precision].meta["parity"])):
                    controlled = replace(inp, accuracy_control=True, validation_images=min(n_val, ACCURACY_CONTROL_IMAGES))
                    log.info("%s int8 loses more top-1 than the profile allows: trying NNCF accuracy control",
                             profile.runtime.name)
                    plain = compiled[precision]
                    compiled[precision] = compile_precision(cache, controlled, backend, build, images)
                    superseded[precision] = plain
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
                          f"{failure_reason(fp32.meta['parity'])}. The compiled model is wrong, not just imprecise: "
                          "check the runtime version against the profile's, or report it")
    return compiled, failures, superseded


def measure_all(cache: Cache, profile: DeviceProfile, compiled: dict[str, Compiled]) -> dict[str, Measured]:
    """Latency and memory here of every precision that could run here."""
    return {p: measure_precision(cache, measure_input(profile, c), c) for p, c in compiled.items() if c.meta["parity"]}


def choose(profile: DeviceProfile, compiled: dict[str, Compiled], measured: dict[str, Measured],
           failures: dict[str, str], superseded: dict[str, Compiled], superseded_measured: dict[str, Measured]
           ) -> tuple[str, list[PrecisionRow]]:
    """The precision that ships (gtnpipe.deploy.parity.choose_precision) and a row per precision; a precision built
    (plain INT8 kept after its accuracy-controlled build failed) keeps its row and its build failure's note."""
    entries: dict[str, CompiledPrecision | BuildFailure] = {p: {"error": e} for p, e in failures.items() if p not in compiled}
    for p, c in compiled.items():
        entry: CompiledPrecision = {"parity": c.meta["parity"], "latency": measured[p].latency if p in measured else None,
                                    "size_bytes": c.meta["size_bytes"], "deployed_format": c.meta["deployed_format"]}
        if "unchecked_reason" in c.meta:
            entry["unchecked_reason"] = c.meta["unchecked_reason"]
        entries[p] = entry
    chosen, rows = choose_precision(profile, entries)
    for row in list(rows):
        p = row["precision"]
        if p in compiled and p in failures:  # accuracy control was tried and failed: plain INT8's row says so
            row["reason"] += f"; accuracy-control INT8 {failures[p]}"
        plain = superseded.get(p)
        if plain is None:
            continue
        # accuracy control: its row says so, and the plain INT8 it replaced gets its own
        plain_ms = superseded_measured[p].latency["p50_ms"] if p in superseded_measured else None
        notes = compiled[p].meta["notes"]
        row["variant"] = "accuracy-control"
        row["float_layers"] = list(notes.get("float_layers", []))
        if plain_ms is not None and row["latency_ms_p50"] is not None:
            row["latency_cost_ms_p50"] = row["latency_ms_p50"] - plain_ms
        parity = plain.meta["parity"]
        rows.insert(rows.index(row), {
            "precision": p, "variant": "plain", "status": "rejected",
            "reason": failure_reason(parity) if parity else "", "parity": parity, "latency_ms_p50": plain_ms,
            "size_bytes": plain.meta["size_bytes"]})
        row["reason"] = f"accuracy control kept {len(row['float_layers'])} layer(s) in float; " + row["reason"]
    return chosen, rows


def violations(profile: DeviceProfile, compiled: Compiled, measured: Measured | None, *, check_measured: bool
               ) -> list[str]:
    """The budgets what ships breaks: its file size always; latency and memory measured here with `check_measured`."""
    found = []
    size_mb = compiled.meta["size_bytes"] / 1e6
    if compiled.meta["deployed_format"] and size_mb > profile.budgets.model_size_mb:
        found.append(f"model_size_mb: {size_mb:.3f} > {profile.budgets.model_size_mb:g}")
    if check_measured and measured is not None:
        for name, value in (("latency_ms_p90", measured.latency["p90_ms"]), ("peak_memory_mb", measured.peak_memory_mb)):
            if value > getattr(profile.budgets, name):
                found.append(f"{name}: measured {value:.3f} > budget {getattr(profile.budgets, name):g}")
    return found


def predicted_cost(profile: DeviceProfile, space: SearchSpace, task: TaskShape, pick: ArchConfig, done: Deployment
                   ) -> tuple[dict[str, Any], list[str]]:
    """The cost model's prediction for the pool student that ships, and warnings worth a person's eye about it."""
    model = cost_model(profile, space, task, precision=done.chosen)
    at = task.for_arch(pick)  # the input the shipped student runs at
    table, table_note, table_machine = model.table_at(at)
    warnings = []
    here = Machine.here().describe()
    if done.shipped_measured is not None and table_machine not in (None, here):
        warnings.append(f"the {profile.name} latency table was measured on '{table_machine}', this build ran on "
                        f"'{here}': predicted and measured-here latencies describe different machines; if this machine "
                        f"is the device, run '{measure_command(profile.name, space.name, at)}' and rebuild")
    if table is None:  # e.g. no table for this space and input: say so, and how to measure one
        warnings.append(f"latency predicted by the roofline estimate: {table_note}")
    return model.estimate(pick).to_dict(), warnings


# the manifest's package versions: gtnpipe, what exported the model, and what compiled it (the runtime's backend)
MANIFEST_PACKAGES = ("gtnpipe", "torch", "numpy", "onnx")


@dataclass(frozen=True)
class Shipped:
    """What a build (or gtnpipe compile) chose to ship for one device, and the evidence for it."""

    profile: DeviceProfile
    precision: str
    compiled: Compiled
    measured: Measured | None  # None where the runtime cannot run here (TensorRT on a CPU host)
    rows: list[PrecisionRow]  # every precision: measured, chosen or rejected and why
    model: dict[str, Any]  # the manifest's model facts beyond the compiled file: arch, macs, params, classes, source
    provenance: dict[str, Any]  # how the model came to be: recipe, teacher and student keys, or the user's file
    reference: str  # what the FP32 reference is: "torch" (a distilled student) or "onnxruntime" (a user's model)
    reference_inputs: np.ndarray  # float32 [0, 1] images the artifact carries for gtnpipe bench's parity check
    reference_labels: np.ndarray | None  # None: random images (gtnpipe compile without --data)
    reference_logits: np.ndarray  # the FP32 reference's logits on every image parity ran on
    reference_top1: float | None  # the FP32 reference's top-1 on the labelled test split
    estimated_top1: float | None  # what search estimated before distillation (None: not from search)
    predicted: dict[str, Any] | None  # the cost model's prediction (None: not a pool architecture)
    violations: list[str]
    warnings: list[str]
    data_name: str | None
    data_fingerprint: str | None
    pareto_png: str | None = None  # the search's Pareto plot
    budget_overrides: dict[str, float] = field(default_factory=dict)  # --budget NAME=VALUE: what replaced the profile's


def measured_summary(shipped: Shipped) -> dict[str, Any] | None:
    if shipped.measured is None:
        return None
    lat, c = shipped.measured.latency, shipped.compiled
    return {"latency_ms_p50": lat["p50_ms"], "latency_ms_p90": lat["p90_ms"], "latency_ms_p99": lat["p99_ms"],
            "throughput_per_s": lat["throughput_per_s"], "peak_memory_mb": shipped.measured.peak_memory_mb,
            "model_size_mb": c.meta["size_bytes"] / 1e6, "runs": lat["runs"], "threads": shipped.measured.inp.threads,
            "machine": shipped.measured.inp.machine.describe(),
            "method": f"median of {shipped.measured.inp.processes} fresh processes, one session each"}


def write_device_artifact(shipped: Shipped, out: Path) -> Path:
    """Write out/<device>/ and return it."""
    profile, c = shipped.profile, shipped.compiled
    meta, shape = c.meta, list(c.inp.input_shape)
    n_ref = min(c.inp.reference_images, len(shipped.reference_inputs))
    packages = (*MANIFEST_PACKAGES, *backend_class(profile.runtime.name).packages)
    versions = {k: v for k, v in package_versions(packages).items() if v is not None}
    parity = meta.get("parity")
    model = {**shipped.model, "precision": shipped.precision, "file": meta["model_file"],
             "files": [f for f in meta["files"] if f != "calibration.npy"], "threads": profile.threads}
    model["input"] = {"name": "input", "shape": shape, "dtype": "float32", "layout": "NCHW", "value_range": [0.0, 1.0],
                      **model.get("input", {})}
    model["output"] = {"name": "logits", "shape": [shape[0], len(model["classes"])],
                       "meaning": "unnormalised class scores (softmax gives probabilities)"}
    model["build_notes"] = meta["notes"]
    manifest = {
        "schema_version": 1,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "gtnpipe_version": versions.get("gtnpipe", "unknown"),
        "device": {"name": profile.name, "profile": profile.to_dict(), "profile_sha256": profile.sha256()},
        "runtime": {"name": profile.runtime.name, "version_range": profile.runtime.version,
                    "built_with": meta["runtime_version"], "max_onnx_opset": profile.runtime.max_onnx_opset,
                    **({"engine_build_command": meta["notes"]["engine_build_command"]}
                       if "engine_build_command" in meta["notes"] else {})},
        "model": model,
        "provenance": {**shipped.provenance, "dataset": shipped.data_name, "dataset_fingerprint": shipped.data_fingerprint,
                       "packages": versions},
        "accuracy": {"test_images": len(shipped.reference_logits), "reference": shipped.reference,
                     "labelled": shipped.reference_labels is not None,
                     **({"torch_fp32_top1": shipped.reference_top1} if shipped.reference == "torch" else {}),
                     "reference_top1": shipped.reference_top1,
                     "shipped_top1": parity["artifact_top1"] if parity else None,
                     "estimated_top1": shipped.estimated_top1},
        "precisions": shipped.rows,
        "predicted": shipped.predicted,
        "measured_on_build_machine": measured_summary(shipped),
        "budgets": as_dict(profile.budgets),
        **({"budget_overrides": shipped.budget_overrides} if shipped.budget_overrides else {}),
        "budget_violations": shipped.violations,
        "warnings": shipped.warnings,
        "reference": {"inputs": "reference/inputs.npy", "logits": "reference/logits.npy", "images": n_ref,
                      **({"labels": "reference/labels.npy"} if shipped.reference_labels is not None else {}),
                      **({"artifact_logits": f"reference/{ARTIFACT_LOGITS}"} if parity else {})},
    }

    def fill(staging: Path) -> list[str]:
        for name in meta["files"]:
            shutil.copyfile(c.file(name), staging / name)
        (staging / "reference").mkdir()
        np.save(staging / "reference/inputs.npy", shipped.reference_inputs[:n_ref])  # at the model's resolution
        np.save(staging / "reference/logits.npy", shipped.reference_logits[:n_ref])
        names = [*meta["files"], "reference/inputs.npy", "reference/logits.npy"]
        if shipped.reference_labels is not None:
            np.save(staging / "reference/labels.npy", shipped.reference_labels[:n_ref].astype(np.int64))
            names.append("reference/labels.npy")
        if shipped.pareto_png is not None:
            shutil.copyfile(shipped.pareto_png, staging / "pareto.png")
            names.append("pareto.png")
        if parity:
            shutil.copyfile(c.file(ARTIFACT_LOGITS), staging / "reference" / ARTIFACT_LOGITS)
            names.append(f"reference/{ARTIFACT_LOGITS}")
        return names

    return write_artifact(Path(out) / profile.name, manifest, fill)
