"""Bringing your own models (issue 15): three measurements.

1. A teacher file against the native teacher: the recipe's vanilla teacher exported to ONNX (run by ONNX Runtime)
   teaches the same pool student with the same seeds as the native teacher does. Reported: the max abs difference
   of their train-split logits, each teacher's test top-1, and the students' test top-1 per seed with the paired
   difference (file - native), its mean and standard error. With augmentation (the quick recipe's crop-flip) the
   teacher runs on every batch, so this exercises the per-batch ONNX Runtime path, not just cached logits.
2. Accuracy-aware INT8 on a student where plain INT8 is rejected: a trained pool student compiled for intel-nuc
   (OpenVINO) and host (ONNX Runtime) with max_accuracy_drop_points lowered to --max-drop: test top-1 and p50
   latency here of FP32, plain INT8 and accuracy-control INT8, and the layers it kept in float.
3. `gtnpipe compile` time for a model not from the pool (a hand-written CNN) on host and raspberry-pi-4 is timed
   with farm-bench (README), not here.

    .venv/bin/python bench/bring_your_own.py [--recipe quick] [--seeds 0 1 2] [--max-drop 0.1]

Results: bench/results/bring_your_own.json and .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gtnpipe.config.profiles import load_profile
from gtnpipe.deploy.export import Deployable, export_onnx
from gtnpipe.deploy.manifest import load_manifest
from gtnpipe.models.external import teacher_file
from gtnpipe.pipeline import CompileOptions, Workspace, compile_model, load_teacher, load_trained
from gtnpipe.stages import training

RESULTS = Path(__file__).parent / "results"


def teacher_file_vs_native(ws: Workspace, arch: str, seeds: list[int], work: Path) -> dict[str, Any]:
    native_net, native = load_teacher(ws, "vanilla")
    onnx_path = work / "teacher.onnx"
    deployable = Deployable(native_net, ws.data.mean, ws.data.std).train(False)
    torch.onnx.export(deployable, (torch.zeros(1, ws.task.in_channels, *ws.task.image_hw),), str(onnx_path),
                      dynamo=False, input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    external = teacher_file(onnx_path)
    file_net, file_out = training.load_teacher(ws, external)
    native_logits = training._teacher_logits(ws, native_net, training.LogitsInput(training.teacher_input(ws, "vanilla"),
                                                                                   ws.data_ref))
    file_logits = training._teacher_logits(ws, file_net, training.LogitsInput(external, ws.data_ref))
    rows = []
    for seed in seeds:
        started = time.perf_counter()
        a = training.distill_student(ws, training.distill_input(ws, arch, teacher="vanilla", seed=seed))
        b = training.distill_student(ws, training.distill_input(ws, arch, teacher=str(onnx_path), seed=seed))
        rows.append({"seed": seed, "native_top1": a.test_top1, "file_top1": b.test_top1,
                     "diff": b.test_top1 - a.test_top1, "native_train_s": a.train_seconds, "file_train_s": b.train_seconds,
                     "wall_s": round(time.perf_counter() - started, 1)})
    diffs = [r["diff"] for r in rows]
    return {"arch": arch, "augments": ws.recipe.train.student.augments,
            "max_abs_logit_diff": float((file_logits - native_logits).abs().max()),
            "native_teacher_top1": native.test_top1, "file_teacher_top1": file_out.test_top1, "seeds": rows,
            "mean_diff": statistics.mean(diffs),
            "se_diff": statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None}


def accuracy_control(arch: str, max_drop: float, devices: list[str], work: Path, cache: Path) -> list[dict[str, Any]]:
    deploy = Workspace.open(Path(__file__).parents[1] / "tests" / "data" / "deploy.toml", cache_dir=cache, progress=False)
    net = load_trained(deploy, arch)
    onnx_path = export_onnx(Deployable(net, deploy.data.mean, deploy.data.std), deploy.task, work / "student.onnx")
    data = work / "deploy.npz"
    d = deploy.data
    np.savez(data, x_train=np.concatenate([d.train.x, d.val.x]), y_train=np.concatenate([d.train.y, d.val.y]),
             x_test=d.test.x, y_test=d.test.y)
    out = []
    for name in devices:
        p = load_profile(name)
        p = dataclasses.replace(p, budgets=dataclasses.replace(p.budgets, max_accuracy_drop_points=max_drop))
        started = time.perf_counter()
        result = compile_model(onnx_path, p, CompileOptions(data=str(data), out=work / "artifacts", cache_dir=cache))
        for row in load_manifest(Path(result.folder))["precisions"]:
            parity = row.get("parity") or {}
            out.append({"device": name, "precision": row["precision"] + (f" ({row['variant']})" if row.get("variant")
                                                                        else ""),
                        "status": row["status"], "test_top1": parity.get("artifact_top1"),
                        "reference_top1": parity.get("torch_top1"), "latency_ms_p50": row.get("latency_ms_p50"),
                        "float_layers": row.get("float_layers"), "compile_s": round(time.perf_counter() - started, 1)})
    return out


def _fmt(v: Any, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown(result: dict[str, Any]) -> str:
    t = result["teacher_file"]
    lines = ["# Bringing your own models", "", f"`{result['command']}` ({result['machine']}, {result['date']})", "",
             "## An ONNX teacher file against the native teacher", "",
             f"Student `{t['arch']}`, recipe `{result['recipe']}` (augmentation: {t['augments']}: the teacher runs on every "
             f"batch). Max abs train-split logit difference {t['max_abs_logit_diff']:.2g}; teacher test top-1 native "
             f"{t['native_teacher_top1']:.2f}%, ONNX {t['file_teacher_top1']:.2f}%.", "",
             "| seed | native teacher (%) | ONNX teacher (%) | ONNX - native (points) |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['seed']} | {r['native_top1']:.2f} | {r['file_top1']:.2f} | {r['diff']:+.2f} |" for r in t["seeds"]]
    lines += ["", f"Paired difference: {t['mean_diff']:+.2f} points, standard error {_fmt(t['se_diff'])} "
              f"({len(t['seeds'])} seeds).", "", "## Accuracy-aware INT8", "",
              f"The deploy recipe's `{result['ac_arch']}` student, max_accuracy_drop_points lowered to {result['max_drop']}.",
              "", "| device | precision | status | test top-1 (%) | FP32 reference (%) | p50 here (ms) | layers kept in float |",
              "|---|---|---|---:|---:|---:|---|"]
    lines += [f"| {r['device']} | {r['precision']} | {r['status']} | {_fmt(r['test_top1'])} | {_fmt(r['reference_top1'])} | "
              f"{_fmt(r['latency_ms_p50'], 3)} | {', '.join(r['float_layers']) if r['float_layers'] is not None else ''} |"
              for r in result["accuracy_control"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="quick")
    parser.add_argument("--arch", default="smallest")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-drop", type=float, default=0.1)
    parser.add_argument("--devices", nargs="+", default=["intel-nuc", "host"])
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()
    from gtnpipe.deploy.timing import Machine

    with tempfile.TemporaryDirectory(prefix="gtnpipe-byo-") as tmp:
        ws = Workspace.open(args.recipe, cache_dir=args.cache_dir, progress=False)
        arch = ws.space.parse(args.arch).id
        result = {"command": "bench/bring_your_own.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in [
                      ("recipe", args.recipe), ("max_drop", args.max_drop)]),
                  "machine": Machine.here().describe(), "date": time.strftime("%Y-%m-%d"), "recipe": args.recipe,
                  "teacher_file": teacher_file_vs_native(ws, arch, args.seeds, Path(tmp)), "max_drop": args.max_drop,
                  "ac_arch": "smallest",
                  "accuracy_control": accuracy_control("smallest", args.max_drop, args.devices, Path(tmp),
                                                       ws.cache.root)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bring_your_own.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "bring_your_own.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
