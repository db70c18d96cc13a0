"""Writing an artifacts/<device>/ folder atomically, and its human report (report.md).

The folder is assembled in a hidden staging folder beside the target and swapped into place
with renames, so a reader (or a CI upload) sees the old folder or the new one, never a mix;
an interrupted build leaves the previous artifact untouched.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gtnpipe.deploy.manifest import MANIFEST, file_records, write_manifest
from gtnpipe.fsutil import atomic_write_bytes

__all__ = ["REPORT", "render_report", "write_artifact"]

REPORT = "report.md"


def write_artifact(folder: Path, manifest: dict[str, Any], fill: Callable[[Path], list[str]]) -> Path:
    """Create `folder` whole: `fill(staging)` writes the files and returns their names; the manifest
    gets their sha256 (`files`) and is written last; then the staging folder replaces `folder`."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        names = fill(staging)
        manifest = {**manifest, "files": file_records(staging, names)}
        atomic_write_bytes(staging / REPORT, render_report(manifest).encode())
        manifest["files"] |= file_records(staging, [REPORT])
        write_manifest(staging, manifest)
        if folder.exists():
            os.replace(folder, old)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return folder


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _resolution_line(inp: dict[str, Any]) -> list[str]:
    """The report's line on elastic resolution, when the search chose the input's side."""
    chosen_from = inp.get("resolution_chosen_from_px")
    if not chosen_from:
        return []
    h, w = inp["data_image_hw"]
    return [f"- input resolution **{inp['shape'][2]}x{inp['shape'][3]} px**, chosen by search from {chosen_from} px "
            f"(elastic resolution); the data's images are {h}x{w}: resize them (shorter side, centre square) first"]


def _origin_lines(m: dict[str, Any]) -> list[str]:
    """Where the model came from, and its accuracy against the FP32 reference."""
    model, acc, prov = m["model"], m["accuracy"], m["provenance"]
    source = model.get("source", {"kind": "pool-student"})
    shipped = f"shipped {model['precision']} **{_fmt(acc['shipped_top1'], 2)}%**"
    if source["kind"] == "onnx":
        norm = source.get("input_normalisation")
        lines = [f"- your model `{prov.get('source_model', model['arch'])}` (sha256 `{source['sha256'][:16]}`), "
                 f"{model['macs'] / 1e6:.2f}M MACs, {model['params'] / 1e6:.3f}M params"
                 + (f"; input normalisation folded in: mean {norm['mean']}, std {norm['std']}" if norm else "")]
        if not acc.get("labelled", True):
            return [*lines, f"- parity on {acc['test_images']} random images against ONNX Runtime FP32 (no data given: "
                    "agreement and logit difference only, no accuracy)"]
        return [*lines, f"- test top-1 ({acc['test_images']} images of {prov['dataset']}): ONNX Runtime FP32 "
                f"**{acc['reference_top1']:.2f}%**, {shipped}"]
    estimated = acc.get("estimated_top1")
    return [f"- student: {model['macs'] / 1e6:.2f}M MACs, {model['params'] / 1e6:.3f}M params",
            f"- distilled from the **{prov['teacher']}** teacher (recipe `{prov['recipe']}`, "
            f"student cache key `{prov['student_key'][:16]}`)",
            f"- test top-1 ({acc['test_images']} images): torch FP32 "
            f"**{acc.get('reference_top1', acc.get('torch_fp32_top1')):.2f}%**, {shipped}"  # before 0.2: torch_fp32_top1
            + (f"; search estimated {estimated:.2f}% (inherited weights, before distillation)" if estimated is not None
               else "")]


def _budget_rows(m: dict[str, Any]) -> list[str]:
    budgets, pred = m["budgets"], m["predicted"]
    measured = m.get("measured_on_build_machine") or {}
    rows = [("latency p90 (ms)", "latency_ms_p90", "latency_source", "latency_ms_p90", 3),
            ("peak memory (MB)", "peak_memory_mb", "memory_source", "peak_memory_mb", 1),
            ("model size (MB)", "model_size_mb", "size_source", "model_size_mb", 3)]
    return [f"| {label} | {budgets[name]:g} | "
            + (f"{pred[name]:.{digits}f} ({pred[source]})" if pred else "– (not a pool architecture)")
            + f" | {_fmt(measured.get(name), digits)} |" for label, name, source, _, digits in rows]


def render_report(m: dict[str, Any]) -> str:
    """report.md: what ships, why this precision, predicted vs measured, parity, how to benchmark it."""
    model, dev = m["model"], m["device"]
    lines = [
        f"# {dev['name']}: {model['arch']}",
        "",
        f"{dev['profile']['description']}",
        "",
        f"- runtime: **{m['runtime']['name']}** (profile range `{m['runtime']['version_range']}`, built with "
        f"{_fmt(m['runtime']['built_with'])}), precision **{model['precision']}**, file `{model['file']}`",
        f"- input {model['input']['dtype']} {model['input']['layout']} {model['input']['shape']} in "
        f"[{model['input']['value_range'][0]}, {model['input']['value_range'][1]}]",
        *_resolution_line(model["input"]),
        *_origin_lines(m),
        "",
        *[f"> warning: {w}\n" for w in m.get("warnings", [])],
        "## Predicted and measured",
        "",
        "| figure | budget | predicted (source) | measured on the build machine |",
        "|---|---:|---:|---:|",
        *_budget_rows(m),
        "",
        "Measured figures come from the machine that ran `gtnpipe build`; they are the device's own only when that",
        "machine is the device. On the device, run `gtnpipe bench <this folder>`: it checks every file's sha256,",
        "re-checks parity on the reference images, times the model and writes `bench.json` with a verdict.",
        "",
        "## Precisions",
        "",
        "| precision | status | latency p50 here (ms) | size (bytes) | agreement with FP32 (%) | max abs logit diff | "
        "top-1 (%) | why |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for p in m["precisions"]:
        parity = p.get("parity") or {}
        label = p["precision"] + (f" ({p['variant']})" if p.get("variant") else "")
        lines.append(f"| {label} | {p['status']} | {_fmt(p.get('latency_ms_p50'))} | {_fmt(p.get('size_bytes'))} | "
                     f"{_fmt(parity.get('agreement_pct'), 2)} | {_fmt(parity.get('max_abs_diff'), 6)} | "
                     f"{_fmt(parity.get('artifact_top1'), 2)} | {p['reason']} |")
    for p in m["precisions"]:
        if p.get("variant") == "accuracy-control":
            cost = p.get("latency_cost_ms_p50")
            lines += ["", f"Accuracy-control INT8 (NNCF) kept {len(p.get('float_layers', []))} layer(s) in float"
                      + (f", {cost:+.3f} ms p50 against plain INT8 here" if cost is not None else "") + ": "
                      + (", ".join(f"`{name}`" for name in p.get("float_layers", [])) or "none")]
    if "pareto.png" in m["files"]:
        lines += ["", "## Search", "", "![Pareto front](pareto.png)", ""]
    if m["runtime"].get("engine_build_command"):
        lines += ["", "## TensorRT engine", "", "Build the engine on the device (or let `gtnpipe bench` do it):", "",
                  f"    {m['runtime']['engine_build_command']}", ""]
    lines += ["", f"Files (sha256 in `{MANIFEST}`): " + ", ".join(f"`{f}`" for f in sorted(m["files"])), ""]
    return "\n".join(lines)
