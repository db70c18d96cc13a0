"""How big is an INT8 artifact, per runtime, against the cost model's one-byte-per-weight formula?

INT8 files keep more than the int8 weights: 32-bit biases, per-channel scales and zero points,
quantize/dequantize nodes. This builds real INT8 artifacts of two disjoint sets of students in every
runtime installed here: a fit set (the smallest, the largest and random ones from --fit-seed; the
set the backends' int8_size_factor was first fit on) and a held-out set (random ones from --check-seed, none
of them in the fit set). The size factor is fit on the first set (largest ratio file / formula,
rounded up: size budgets are hard limits, so the prediction is meant as an upper bound) and checked
on the second, as is each backend's shipped int8_size_factor. The check fails (exit 1, after writing the
results) when a held-out file is larger than either factor predicts.

    .venv/bin/python bench/int8_size.py [--fit 8] [--check 8] [--fit-seed 3] [--check-seed 4]

Results: bench/results/int8_size.json and .md.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gtnpipe.deploy.backends import backend_class, get_backend
from gtnpipe.deploy.export import Deployable, compile_inputs
from gtnpipe.devices.cost import model_size_bytes
from gtnpipe.models.static import build_static
from gtnpipe.space.schedule import units
from gtnpipe.space.spaces import ArchConfig, SearchSpace, TaskShape, get_space

RESULTS = Path(__file__).parent / "results"
RUNTIMES = ("onnxruntime", "openvino", "tflite")
# each backend's shipped factor (Backend.int8_size_factor), what the held-out check judges
INT8_SIZE_FACTOR = {runtime: backend_class(runtime).int8_size_factor for runtime in RUNTIMES}


def pick_students(space: SearchSpace, *, fit: int, check: int, fit_seed: int, check_seed: int
                  ) -> tuple[list[ArchConfig], list[ArchConfig]]:
    """The fit set (smallest, largest, fit - 2 random) and `check` random others, disjoint from it."""
    fit_set = [space.smallest(), space.largest(), *space.sample_many(fit - 2, seed=fit_seed)]
    taken = {a.id for a in fit_set}
    held_out: list[ArchConfig] = []
    n = check
    while len(held_out) < check:  # draw more from the same seeded stream until enough are new
        held_out = [a for a in space.sample_many(n, seed=check_seed) if a.id not in taken][:check]
        n += check
    return fit_set, held_out


def fit_factor(ratios: list[float]) -> float:
    """The largest ratio, rounded up to 0.01: an upper bound on the fit set."""
    return math.ceil(max(ratios) * 100 - 1e-9) / 100


def _errors(factor: float, rows: list[dict[str, Any]], runtime: str) -> dict[str, Any]:
    # signed error of the prediction factor x formula against the real file: negative = the file is larger
    errs = [factor * r["formula_bytes"] / r[runtime] - 1 for r in rows]
    return {"factor": factor, "students_above_prediction": sum(e < 0 for e in errs),
            "mean_error": statistics.fmean(errs), "worst_underestimate": min(errs), "largest_overestimate": max(errs)}


def summarise(fit_rows: list[dict[str, Any]], check_rows: list[dict[str, Any]], *,
              shipped: dict[str, float] = INT8_SIZE_FACTOR, runtimes: tuple[str, ...] = RUNTIMES) -> dict[str, Any]:
    """Per runtime: the factor fit on `fit_rows`, its error on the held-out `check_rows`, and the cost model's."""
    out: dict[str, Any] = {}
    for runtime in runtimes:
        fit_ratios = [r[runtime] / r["formula_bytes"] for r in fit_rows]
        check_ratios = [r[runtime] / r["formula_bytes"] for r in check_rows]
        fitted = fit_factor(fit_ratios)
        held_out = _errors(fitted, check_rows, runtime)
        cost_model = _errors(shipped[runtime], check_rows, runtime)
        out[runtime] = {
            "fit": {"students": len(fit_rows), "ratio_min": min(fit_ratios), "ratio_max": max(fit_ratios),
                    "factor": fitted},
            "held_out": {"students": len(check_rows), "ratio_min": min(check_ratios), "ratio_max": max(check_ratios),
                         "fitted_factor": held_out, "INT8_SIZE_FACTOR": cost_model},
            "check_passed": held_out["students_above_prediction"] == 0 and cost_model["students_above_prediction"] == 0,
        }
    return out


def render(report: dict[str, Any]) -> str:
    n_fit, n_check = len(report["fit_rows"]), len(report["check_rows"])
    lines = ["# INT8 artifact size vs the cost model's one-byte-per-weight formula", "", f"`{report['command']}`", "",
             f"Factor fit on {n_fit} students (the smallest, the largest, {n_fit - 2} random, seed "
             f"{report['fit_seed']}), checked on {n_check} others (random, seed {report['check_seed']}, none in the fit "
             "set). Held-out error = factor x formula / file - 1 (negative: the file is larger than predicted).", "",
             "| runtime | fit: file / formula | fitted factor | held-out: file / formula | held-out error, fitted factor "
             "(worst / mean) | above it | INT8_SIZE_FACTOR | held-out error (worst / mean) | above it | check |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for runtime, r in report["runtimes"].items():
        f, h = r["fit"], r["held_out"]
        a, c = h["fitted_factor"], h["INT8_SIZE_FACTOR"]
        lines.append(f"| {runtime} | {f['ratio_min']:.3f}-{f['ratio_max']:.3f} | {f['factor']:.2f} | "
                     f"{h['ratio_min']:.3f}-{h['ratio_max']:.3f} | {100 * a['worst_underestimate']:+.1f}% / "
                     f"{100 * a['mean_error']:+.1f}% | {a['students_above_prediction']} of {n_check} | {c['factor']:.2f} | "
                     f"{100 * c['worst_underestimate']:+.1f}% / {100 * c['mean_error']:+.1f}% | "
                     f"{c['students_above_prediction']} of {n_check} | {'passed' if r['check_passed'] else 'FAILED'} |")
    lines += ["", "A check passes when no held-out file exceeds the size predicted with the fitted factor or with "
              "the backend's int8_size_factor (gtnpipe/deploy/backends/<runtime>.py)."]
    return "\n".join(lines) + "\n"


def measure(archs: list[ArchConfig], space: SearchSpace, task: TaskShape, tmp: Path) -> list[dict[str, Any]]:
    """Each student's formula size and its INT8 file size in every runtime (random weights, fixed seed)."""
    calibration = (np.random.default_rng(0).random((64, 1, 28, 28)) * 255).astype(np.uint8)
    rows = []
    for arch in archs:
        torch.manual_seed(0)
        net = build_static(arch, space, task)
        for p in net.parameters():  # random non-zero values: zero biases would be deduplicated by exporters
            torch.nn.init.normal_(p, std=0.1)
        work = tmp / arch.id
        inputs = compile_inputs(Deployable(net, (0.5,), (0.25,)), task, work, batch_size=1, max_opset=17,
                                calibration_uint8=calibration)
        row = {"arch": arch.id, "formula_bytes": model_size_bytes(units(arch, space, task), "int8")}
        for runtime in RUNTIMES:
            built = get_backend(runtime).build(inputs, "int8", work / runtime)
            row[runtime] = sum((work / runtime / f).stat().st_size for f in built.files)
        rows.append(row)
        print(row, flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fit", type=int, default=8, help="students to fit the factor on (at least 3)")
    parser.add_argument("--check", type=int, default=8, help="held-out students to check it on")
    parser.add_argument("--fit-seed", type=int, default=3)
    parser.add_argument("--check-seed", type=int, default=4)
    args = parser.parse_args()
    space, task = get_space("mbv3-28"), TaskShape(1, (28, 28), 10)
    fit_set, held_out = pick_students(space, fit=args.fit, check=args.check, fit_seed=args.fit_seed,
                                      check_seed=args.check_seed)
    with tempfile.TemporaryDirectory() as tmp:
        fit_rows = measure(fit_set, space, task, Path(tmp) / "fit")
        check_rows = measure(held_out, space, task, Path(tmp) / "check")
    report = {"command": f"python bench/int8_size.py --fit {args.fit} --check {args.check} --fit-seed {args.fit_seed} "
                         f"--check-seed {args.check_seed}",
              "fit_seed": args.fit_seed, "check_seed": args.check_seed, "fit_rows": fit_rows, "check_rows": check_rows,
              "runtimes": summarise(fit_rows, check_rows)}
    report["check_passed"] = all(r["check_passed"] for r in report["runtimes"].values())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "int8_size.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "int8_size.md").write_text(render(report))
    print(render(report))
    return 0 if report["check_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
