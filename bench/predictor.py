"""How well does the cost model predict latency, memory and size on this machine (`host`)?

Needs the host's measured table for mbv3-28 at 1x28x28 (device_profiles/tables/host/mbv3-28_1x28x28_10cls.json,
from `gtnpipe latency-table --device host`). Draws 50 students with a seed the calibration
did not use (and checks none of them was a calibration network), exports each to ONNX,
measures its p50/p90 latency in ONNX Runtime at the profile's threads and batch, its peak
RSS in a fresh process and its file size, and compares with the predictions: the
measured-table model and, for reference, the spec-sheet roofline.

    .venv/bin/python bench/predictor.py [--device host] [--archs 50] [--runs 200]

Run it on an otherwise idle machine. Results: bench/results/predictor-<device>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from gtnpipe import pipeline
from gtnpipe.config.profiles import load_profile
from gtnpipe.deploy.backends import runtime_version
from gtnpipe.deploy.export import export_onnx
from gtnpipe.deploy.timing import measure_peak_rss_mb
from gtnpipe.devices.cost import roofline_ms, table_path
from gtnpipe.devices.latency_table import measure_command
from gtnpipe.measure.host_table import calibration_archs, time_models
from gtnpipe.models.static import build_static
from gtnpipe.space.schedule import units
from gtnpipe.space.spaces import ArchConfig, get_space
from gtnpipe.stages.search import cost_model

RESULTS = Path(__file__).parent / "results"
EVAL_SEED = 20261124


def model_table_networks(device: str) -> list[dict]:
    return json.loads(table_path(device, "mbv3-28", pipeline.FASHION_MNIST_TASK).read_text())["measured"]["networks"]


def errors(predicted: list[float], measured: list[float], tolerance: float) -> dict[str, float]:
    rel = np.array(predicted) / np.array(measured) - 1
    return {"within_share": float(np.mean(np.abs(rel) <= tolerance)), "tolerance": tolerance,
            "rmspe": float(np.sqrt(np.mean(rel**2))), "max_abs_rel": float(np.max(np.abs(rel))),
            "mean_rel": float(np.mean(rel))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="host")
    parser.add_argument("--archs", type=int, default=50)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()

    profile = load_profile(args.device)
    space, task = get_space("mbv3-28"), pipeline.FASHION_MNIST_TASK
    if not table_path(profile.name, space.name, task).exists():
        raise SystemExit(f"no measured table for {profile.name}: run '{measure_command(profile.name, space.name, task)}'")
    model = cost_model(profile, space, task)
    overhead = model.table.memory_overhead_mb if model.table else profile.hardware.runtime_overhead_mb
    calibrated = set(calibration_archs(space, 100))
    archs = [a for a in space.sample_many(args.archs + 10, seed=EVAL_SEED) if a not in calibrated][: args.archs]
    shape = (profile.batch_size, task.in_channels, *task.image_hw)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        paths = [export_onnx(build_static(a, space, task), task, Path(tmp) / f"{i}.onnx", batch_size=profile.batch_size,
                             max_opset=profile.runtime.max_onnx_opset) for i, a in enumerate(archs)]
        # this machine's speed drifts (a VM: the same model's p50 moved 2x between runs minutes apart), so the
        # calibration networks are re-timed in the same interleaved rounds as the evaluation ones: their ratio
        # now/then is the drift since the table was made, applied as one factor to every prediction
        table_nets = model_table_networks(profile.name)
        cal_paths = [export_onnx(build_static(ArchConfig.from_id(n["arch"]), space, task), task, Path(tmp) / f"c{i}.onnx",
                                 batch_size=profile.batch_size, max_opset=profile.runtime.max_onnx_opset)
                     for i, n in enumerate(table_nets)]
        both = time_models(paths + cal_paths, [shape] * (len(paths) + len(cal_paths)), profile, runs=args.runs,
                           rounds=args.rounds)
        timed, now = both[: len(paths)], both[len(paths):]
        drift = statistics.median(p50 / n["p50_ms"] for (p50, _), n in zip(now, table_nets))
        rss = [measure_peak_rss_mb(profile.runtime.name, p, threads=profile.threads, input_shape=shape) for p in paths]
        sizes = [p.stat().st_size / 1e6 for p in paths]
    rows = []
    for arch, (p50, p90), mem, size in zip(archs, timed, rss, sizes):
        est = model.estimate(arch)
        rows.append({"arch": arch.id, "macs": est.macs, "measured_p50_ms": p50, "measured_p90_ms": p90,
                     "predicted_p50_ms": est.latency_ms_p50, "predicted_p90_ms": est.latency_ms_p90,
                     "predicted_p50_drift_corrected_ms": est.latency_ms_p50 * drift,
                     "roofline_ms": roofline_ms(units(arch, space, task), profile, model.precision),
                     "measured_peak_rss_mb": mem, "predicted_peak_memory_mb": est.peak_memory_mb,
                     "measured_size_mb": size, "predicted_size_mb": est.model_size_mb})

    def col(name: str) -> list[float]:
        return [r[name] for r in rows]

    summary = {
        "latency_p50": errors(col("predicted_p50_ms"), col("measured_p50_ms"), 0.10),
        "latency_p90": errors(col("predicted_p90_ms"), col("measured_p90_ms"), 0.10),
        "latency_p50_drift_corrected": errors(col("predicted_p50_drift_corrected_ms"), col("measured_p50_ms"), 0.10),
        "speed_drift_since_calibration": drift,
        "roofline_vs_p50": errors(col("roofline_ms"), col("measured_p50_ms"), 0.10),
        "memory": errors(col("predicted_peak_memory_mb"), col("measured_peak_rss_mb"), 0.15),
        # the part of memory the student itself adds (the runtime's fixed overhead removed from both sides)
        "memory_above_overhead": errors([p - overhead for p in col("predicted_peak_memory_mb")],
                                        [m - overhead for m in col("measured_peak_rss_mb")], 0.15),
        "size": errors(col("predicted_size_mb"), col("measured_size_mb"), 0.10),
        "measured_p50_ms_range": [min(col("measured_p50_ms")), max(col("measured_p50_ms"))],
        "measured_rss_mb_range": [min(col("measured_peak_rss_mb")), max(col("measured_peak_rss_mb"))],
    }
    result = {
        "device": profile.name, "precision": model.precision, "source": model.table_note,
        "runtime": f"{profile.runtime.name} {runtime_version(profile.runtime.name)}", "threads": profile.threads,
        "batch_size": profile.batch_size, "archs": len(archs), "eval_seed": EVAL_SEED, "runs": args.runs,
        "rounds": args.rounds, "seconds": round(time.time() - started, 1), "machine": platform.processor() or platform.machine(),
        "summary": summary, "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"predictor-{profile.name}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    s = summary
    lines = [
        f"# Cost-model accuracy on `{profile.name}` ({result['runtime']}, {profile.threads} threads, batch "
        f"{profile.batch_size}, {model.precision})",
        "",
        f"{len(archs)} random students not used for calibration (seed {EVAL_SEED}); each timed {args.rounds} x "
        f"{args.runs} runs (median of the rounds' p50); peak RSS of a fresh process; ONNX file size. "
        f"Command: `.venv/bin/python bench/predictor.py --device {profile.name}`.",
        "",
        "| quantity | predictor | within tolerance | RMSPE | worst | mean bias |",
        "|---|---|---|---|---|---|",
    ]
    for key, what, pred in (("latency_p50", "latency p50", "measured table"), ("latency_p90", "latency p90", "measured table"),
                            ("latency_p50_drift_corrected", "latency p50",
                             "measured table x speed drift (calibration networks re-timed now)"),
                            ("roofline_vs_p50", "latency p50", "roofline (spec sheet)"),
                            ("memory", "peak memory", "measured overhead + fitted slope"),
                            ("memory_above_overhead", "peak memory minus the runtime's overhead", "fitted slope"),
                            ("size", "model size", "formula")):
        e = s[key]
        lines.append(f"| {what} | {pred} | {100 * e['within_share']:.0f}% within ±{100 * e['tolerance']:.0f}% | "
                     f"{100 * e['rmspe']:.1f}% | {100 * e['max_abs_rel']:.1f}% | {100 * e['mean_rel']:+.1f}% |")
    lo, hi = s["measured_p50_ms_range"]
    lines += ["", f"Speed drift since calibration (median ratio of the calibration networks' p50 now to then): "
              f"{s['speed_drift_since_calibration']:.3f}.", "", f"Measured p50 range: {lo:.3f} .. {hi:.3f} ms; "
              f"peak RSS range: {s['measured_rss_mb_range'][0]:.1f} .. {s['measured_rss_mb_range'][1]:.1f} MB; "
              f"median measured p50 {statistics.median(col('measured_p50_ms')):.3f} ms.", ""]
    stem.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
