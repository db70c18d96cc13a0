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


def render_report(m: dict[str, Any]) -> str:
    """report.md: what ships, why this precision, predicted vs measured, parity, how to benchmark it."""
    model, dev, acc, pred = m["model"], m["device"], m["accuracy"], m["predicted"]
    budgets = m["budgets"]
    measured = m.get("measured_on_build_machine") or {}
    lines = [
        f"# {dev['name']}: {model['arch']}",
        "",
        f"{dev['profile']['description']}",
        "",
        f"- runtime: **{m['runtime']['name']}** (profile range `{m['runtime']['version_range']}`, built with "
        f"{_fmt(m['runtime']['built_with'])}), precision **{model['precision']}**, file `{model['file']}`",
        f"- student: {model['macs'] / 1e6:.2f}M MACs, {model['params'] / 1e6:.3f}M params, input "
        f"{model['input']['dtype']} {model['input']['layout']} {model['input']['shape']} in "
        f"[{model['input']['value_range'][0]}, {model['input']['value_range'][1]}]",
        *_resolution_line(model["input"]),
        f"- distilled from the **{m['provenance']['teacher']}** teacher (recipe `{m['provenance']['recipe']}`, "
        f"student cache key `{m['provenance']['student_key'][:16]}`)",
        f"- test top-1 ({acc['test_images']} images): torch FP32 **{acc['torch_fp32_top1']:.2f}%**, shipped "
        f"{model['precision']} **{_fmt(acc['shipped_top1'], 2)}%**; search estimated {acc['estimated_top1']:.2f}% "
        "(inherited weights, before distillation)",
        "",
        *[f"> warning: {w}\n" for w in m.get("warnings", [])],
        "## Predicted and measured",
        "",
        "| figure | budget | predicted (source) | measured on the build machine |",
        "|---|---:|---:|---:|",
        f"| latency p90 (ms) | {budgets['latency_ms_p90']:g} | {pred['latency_ms_p90']:.3f} ({pred['latency_source']}) | "
        f"{_fmt(measured.get('latency_ms_p90'))} |",
        f"| peak memory (MB) | {budgets['peak_memory_mb']:g} | {pred['peak_memory_mb']:.1f} ({pred['memory_source']}) | "
        f"{_fmt(measured.get('peak_memory_mb'), 1)} |",
        f"| model size (MB) | {budgets['model_size_mb']:g} | {pred['model_size_mb']:.3f} ({pred['size_source']}) | "
        f"{_fmt(measured.get('model_size_mb'))} |",
        "",
        "Measured figures come from the machine that ran `gtnpipe build`; they are the device's own only when that",
        "machine is the device. On the device, run `gtnpipe bench <this folder>`: it checks every file's sha256,",
        "re-checks parity on the reference images, times the model and writes `bench.json` with a verdict.",
        "",
        "## Precisions",
        "",
        "| precision | status | latency p50 here (ms) | size (bytes) | agreement with torch (%) | max abs logit diff | "
        "top-1 (%) | why |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for p in m["precisions"]:
        parity = p.get("parity") or {}
        lines.append(f"| {p['precision']} | {p['status']} | {_fmt(p.get('latency_ms_p50'))} | {_fmt(p.get('size_bytes'))} | "
                     f"{_fmt(parity.get('agreement_pct'), 2)} | {_fmt(parity.get('max_abs_diff'), 6)} | "
                     f"{_fmt(parity.get('artifact_top1'), 2)} | {p['reason']} |")
    if "pareto.png" in m["files"]:
        lines += ["", "## Search", "", "![Pareto front](pareto.png)", ""]
    if m["runtime"].get("engine_build_command"):
        lines += ["", "## TensorRT engine", "", "Build the engine on the device (or let `gtnpipe bench` do it):", "",
                  f"    {m['runtime']['engine_build_command']}", ""]
    lines += ["", f"Files (sha256 in `{MANIFEST}`): " + ", ".join(f"`{f}`" for f in sorted(m["files"])), ""]
    return "\n".join(lines)
