"""The fleet view: `artifacts/index.md` and `artifacts/fleet.png`, one row (and one point) per device folder.

Rebuilt from what the folders hold, never from memory: each `<device>/manifest.json` (the pick, runtime, precision,
accuracy, the cost model's prediction, what the build machine measured) and, where `gtnpipe bench` ran, its
`bench.json` (the device's own measurement and verdict, which then wins over the build machine's). A multi-device
`gtnpipe build` writes it; `gtnpipe bench` (local or --remote) rebuilds it when the artifact's parent folder has one.

A multi-device command builds every device it can (`run_fleet`): a device that fails is recorded in
`<out>/.build-failures/<device>.json` (what failed and why), listed in the index, and cleared by its next successful
build.

Torch-free; the figure needs matplotlib (`gtnpipe[plot]`, part of `[build]`): without it the index says so and
keeps its table.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from gtnpipe.deploy.device_bench import BENCH_FILE
from gtnpipe.deploy.manifest import MANIFEST, load_manifest
from gtnpipe.errors import GtnpipeError
from gtnpipe.fsutil import atomic_write_bytes, atomic_write_json

__all__ = ["FAILURES", "FIGURE", "INDEX", "FleetOutcome", "fleet_rows", "render_index", "run_fleet", "update_index",
           "write_index"]

INDEX = "index.md"
FIGURE = "fleet.png"
FAILURES = ".build-failures"  # under the artifacts folder: <device>.json per device whose last build failed
T = TypeVar("T")


@dataclass(frozen=True)
class FleetOutcome(Generic[T]):
    """A multi-device command's results: what was built, and per device that was not, what failed."""

    built: list[T]
    failed: dict[str, str] = field(default_factory=dict)


def run_fleet(devices: Sequence[str | Path], build: Callable[[str | Path], T], out: Path, *, command: str,
              say: Callable[[str], None] = lambda _: None) -> FleetOutcome[T]:
    """`build` for each device: one that fails with a gtnpipe error (bad input, a toolchain or parity failure, a
    runtime missing here) is recorded and the others go on; any other exception is a bug and propagates. One device
    alone fails as before (its error is the command's). The index is written for more than one device."""
    built: list[T] = []
    failed: dict[str, str] = {}
    for device in devices:
        name = Path(str(device)).stem
        try:
            built.append(build(device))
        except GtnpipeError as err:
            if len(devices) == 1:
                raise
            failed[name] = f"{type(err).__name__}: {err}"
            atomic_write_json(Path(out) / FAILURES / f"{name}.json",
                              {"device": name, "command": command, "error": failed[name],
                               "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            say(f"{name}: FAILED, the other devices go on: {err}")
            continue
        (Path(out) / FAILURES / f"{name}.json").unlink(missing_ok=True)
    if len(devices) > 1:
        write_index(out)
    else:
        update_index(out)
    return FleetOutcome(built, failed)


def _top1(acc: dict[str, Any]) -> float | None:
    for key in ("shipped_top1", "reference_top1", "torch_fp32_top1"):
        if acc.get(key) is not None:
            return float(acc[key])
    return None


def _row(folder: Path) -> dict[str, Any]:
    m = load_manifest(folder)
    pred, built = m.get("predicted") or {}, m.get("measured_on_build_machine") or {}
    bench_path = folder / BENCH_FILE
    bench = json.loads(bench_path.read_text()) if bench_path.is_file() else None
    row: dict[str, Any] = {
        "device": m["device"]["name"], "folder": folder.name, "arch": m["model"]["arch"],
        "runtime": m["runtime"]["name"], "precision": m["model"]["precision"], "top1": _top1(m["accuracy"]),
        "labelled": m["accuracy"].get("labelled", True), "budgets": m["budgets"],
        "predicted_latency_ms_p90": pred.get("latency_ms_p90"), "predicted_latency_source": pred.get("latency_source"),
        "predicted_memory_mb": pred.get("peak_memory_mb"), "predicted_memory_source": pred.get("memory_source"),
    }
    if bench is not None:
        machine = bench["machine"].get("description") or bench["machine"]["platform"]
        failed = [name for name, check in bench["verdict"]["checks"].items() if not check["ok"]]
        row.update(measured_latency_ms_p90=bench["latency"]["p90_ms"], measured_memory_mb=bench["peak_memory_mb"],
                   measured_source=f"gtnpipe bench, {machine}, {bench['at']}", measured_on_device=True,
                   verdict="within budgets" if not failed else "FAILS " + ", ".join(failed),
                   runtime_version=bench["runtime"]["version"])
    else:
        violations = m.get("budget_violations", [])
        row.update(measured_latency_ms_p90=built.get("latency_ms_p90"), measured_memory_mb=built.get("peak_memory_mb"),
                   measured_source=f"build machine, {built['machine']}" if built else "not measured",
                   measured_on_device=False, runtime_version=m["runtime"].get("built_with"),
                   verdict=(f"not benched on the device (gtnpipe bench {folder.name}); build: "
                            + ("over budget: " + "; ".join(violations) if violations else "within budgets")))
    return row


def fleet_rows(out_dir: Path) -> list[dict[str, Any]]:
    """One row per artifact folder in `out_dir` (sub-folders with a manifest), by device name, then one per device
    whose last build failed."""
    rows = []
    for folder in sorted(p for p in Path(out_dir).iterdir() if (p / MANIFEST).is_file()):
        try:
            rows.append(_row(folder))
        except (GtnpipeError, ValueError, KeyError) as err:  # one broken folder does not hide the others
            rows.append({"device": folder.name, "folder": folder.name, "error": f"{type(err).__name__}: {err}"})
    for record in sorted((Path(out_dir) / FAILURES).glob("*.json")):
        failure = json.loads(record.read_text())
        rows.append({"device": failure["device"], "folder": None, "failed": failure["error"],
                     "failed_command": failure["command"], "failed_at": failure["at"]})
    return rows


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render_index(rows: list[dict[str, Any]], *, figure: bool, figure_note: str = "") -> str:
    lines = ["# Fleet", "",
             "One row per device folder here, rebuilt from its manifest.json and, where `gtnpipe bench` ran on the "
             "device, its bench.json (which then gives the measured figures and the verdict). Latency is p90 at the "
             "profile's batch and threads; memory is peak RSS; accuracy is the shipped model's test top-1.", "",
             "| device | pick | runtime | precision | top-1 (%) | latency p90 predicted (ms) | latency p90 measured (ms) | "
             "peak memory predicted (MB) | peak memory measured (MB) | measured by | verdict |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['device']} | unreadable: {r['error']} | | | | | | | | | rebuild it with gtnpipe build |")
            continue
        if "failed" in r:
            reason = r["failed"].replace("|", "/").replace("\n", " ")
            lines.append(f"| {r['device']} | not built ({r['failed_command']}, {r['failed_at']}) | | | | | | | | | "
                         f"FAILED: {reason} |")
            continue
        pred_lat = (f"{r['predicted_latency_ms_p90']:.3f} ({r['predicted_latency_source']})"
                    if r["predicted_latency_ms_p90"] is not None else "– (not a pool student)")
        pred_mem = (f"{r['predicted_memory_mb']:.1f} ({r['predicted_memory_source']})"
                    if r["predicted_memory_mb"] is not None else "–")
        lines.append(f"| [{r['device']}]({r['folder']}/report.md) | `{r['arch']}` | {r['runtime']} {r['runtime_version'] or ''} "
                     f"| {r['precision']} | {_fmt(r['top1'], 2)} | {pred_lat} | {_fmt(r['measured_latency_ms_p90'], 3)} "
                     f"| {pred_mem} | {_fmt(r['measured_memory_mb'], 1)} | {r['measured_source']} | {r['verdict']} |")
    lines += ["", f"![accuracy vs latency, every device]({FIGURE})" if figure else figure_note, ""]
    return "\n".join(lines)


def _figure(rows: list[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    xs = []
    for r in rows:
        # the device's own measurement where gtnpipe bench ran there; else the cost model's prediction for the device
        # (the build machine's measurement describes the build machine, not the device)
        on_device = r.get("measured_on_device", False)
        x = r.get("measured_latency_ms_p90") if on_device else r.get("predicted_latency_ms_p90")
        if not x or r.get("top1") is None:  # no latency (a user's model not measured here) or no accuracy (no labels)
            continue
        xs.append(x)
        ax.scatter([x], [r["top1"]], s=50, marker="o" if on_device else "s",
                   facecolors="C0" if on_device else "none", edgecolors="C0" if on_device else "C1",
                   label="measured on the device (gtnpipe bench)" if on_device else "predicted (not benched yet)")
        ax.annotate(f"{r['device']} ({r['precision']})", (x, r["top1"]), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
    if xs:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=8, loc="best")
    ax.margins(x=0.15, y=0.15)
    ax.set_xlabel("latency p90 (ms, log scale)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("gtnpipe fleet: accuracy vs latency")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def write_index(out_dir: Path) -> Path:
    """Write out_dir/index.md (and fleet.png where matplotlib is installed) from the device folders there."""
    out_dir = Path(out_dir)
    rows = fleet_rows(out_dir)
    try:
        atomic_write_bytes(out_dir / FIGURE, _figure([r for r in rows if "error" not in r and "failed" not in r]))
        figure, note = True, ""
    except ImportError:
        figure, note = False, ("(no figure: matplotlib is not installed here; pip install 'gtnpipe[plot]' and run "
                               "gtnpipe bench again to draw it)")
    path = out_dir / INDEX
    atomic_write_bytes(path, render_index(rows, figure=figure, figure_note=note).encode())
    return path


def update_index(out_dir: Path) -> Path | None:
    """Rebuild out_dir/index.md if it exists (a multi-device build made it); None where there is none."""
    return write_index(out_dir) if (Path(out_dir) / INDEX).is_file() else None
