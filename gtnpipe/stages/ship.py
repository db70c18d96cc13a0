"""The deployment both `gtnpipe build` and `gtnpipe compile` end with: every precision the profile allows compiled and
parity-checked against the FP32 reference, measured here, one chosen, and the budgets what ships breaks.

    compile_all -> measure_all -> choose  (deploy runs the three)   violations: the budget check of what ships

The model comes in as an `Export`: a function that writes the FP32 ONNX (and, for converters reading torch, the torch
module) with its calibration images, and gives the reference logits. It is called once, and only when some precision
is not cached.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from gtnpipe.cache import Cache
from gtnpipe.config.profiles import DeviceProfile
from gtnpipe.deploy.backends import Backend, CompileInputs
from gtnpipe.deploy.backends.accuracy_control import ACCURACY_CONTROL_IMAGES
from gtnpipe.deploy.parity import BuildFailure, CompiledPrecision, PrecisionRow, choose_precision, lost_accuracy_only
from gtnpipe.deploy.timing import Machine
from gtnpipe.devices.latency_table import measure_command
from gtnpipe.errors import BackendBuildError, ParityError
from gtnpipe.space.spaces import ArchConfig, SearchSpace, TaskShape
from gtnpipe.stages.deploy import (
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
from gtnpipe.stages.search import cost_model
from gtnpipe.stages.training import DistillInput

__all__ = ["Deployment", "Export", "deploy", "predicted_cost", "violations"]

log = logging.getLogger("gtnpipe")

# (work dir, batch size, max opset, calibration indices into the train split) -> the backends' inputs, reference logits
Export = Callable[[Path, int, int, np.ndarray], tuple[CompileInputs, np.ndarray]]


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
                          f"{'; '.join(fp32.meta['parity']['failures'])}. The compiled model is wrong, not just imprecise: "
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
            "reason": "; ".join(parity["failures"]) if parity else "", "parity": parity, "latency_ms_p50": plain_ms,
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
