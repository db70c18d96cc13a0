"""How fast is the shipped student in each runtime, against torch eager, and how close to the machine's peak?

For the `host` pick (the student `gtnpipe build --device host` ships, read from its artifact):
torch eager and every backend installed here at every precision it builds, at batch 1 and 32,
each with its test top-1; the machine's peak (a large float32 matmul in torch) and each
runtime's achieved GFLOP/s (2 x MACs x batch / latency) as a fraction of it.

    .venv/bin/gtnpipe build --device host --recipe quick      # (make demo does this)
    .venv/bin/python bench/deploy.py [--artifact artifacts/host] [--recipe quick] [--threads 2]

Targets (issue 5): the best backend at batch 1 at least 3x faster than torch eager; the precision
the build shipped is the fastest one within the profile's accuracy limit.
Results: bench/results/deploy-host.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gtnpipe import pipeline
from gtnpipe.config.profiles import load_profile
from gtnpipe.deploy.backends import get_backend
from gtnpipe.deploy.bench import measure_latency
from gtnpipe.deploy.export import compile_inputs, to_unit_float
from gtnpipe.deploy.manifest import load_manifest
from gtnpipe.deploy.parity import run_batched
from gtnpipe.errors import BackendUnavailable
from gtnpipe.stages.workspace import Workspace

HERE = Path(__file__).parent
RESULTS = HERE / "results"
BATCHES = (1, 32)


def machine_peak_gflops(threads: int, *, n: int = 2048, reps: int = 5) -> float:
    """Best-of-reps float32 matmul throughput in torch (oneDNN/MKL): the practical FP32 peak here."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


class _TorchRunner:
    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    @torch.inference_mode()
    def run(self, x: np.ndarray) -> np.ndarray:
        return self.model(torch.from_numpy(x)).numpy()


def top1(runner: Any, x: np.ndarray, y: np.ndarray, batch: int) -> float:
    return float((run_batched(runner, x, batch_size=batch).argmax(1) == y).mean() * 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artifact", type=Path, default=Path("artifacts/host"))
    parser.add_argument("--recipe", default="quick")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=200, help="timed runs at batch 1 (batch 32: a fifth)")
    args = parser.parse_args()

    manifest = load_manifest(args.artifact)
    arch, macs = manifest["model"]["arch"], manifest["model"]["macs"]
    ws = Workspace.open(args.recipe, cache_dir=args.cache_dir)
    model, data = pipeline.load_distilled(ws, arch, teacher=manifest["provenance"]["teacher"]), ws.data
    x_test, y_test = to_unit_float(data.test.x), data.test.y
    profile = load_profile("host")
    peak = machine_peak_gflops(args.threads)
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []

    def record(runtime: str, precision: str, batch: int, runner: Any) -> None:
        x = x_test[:batch]
        stats = measure_latency(runner, x, warmup=10, runs=args.runs if batch == 1 else max(20, args.runs // 5))
        gflops = 2 * macs * batch / (stats.p50_ms / 1e3) / 1e9
        rows.append({"runtime": runtime, "precision": precision, "batch": batch, "p50_ms": stats.p50_ms,
                     "p90_ms": stats.p90_ms, "throughput_per_s": stats.throughput_per_s,
                     "top1": top1(runner, x_test, y_test, batch), "gflops": gflops, "fraction_of_peak": gflops / peak})
        print(f"{runtime:12s} {precision:5s} batch {batch:2d}: p50 {stats.p50_ms:8.3f} ms, top-1 {rows[-1]['top1']:.2f}%")

    for batch in BATCHES:
        record("torch-eager", "fp32", batch, _TorchRunner(model))
    skipped = {}
    with tempfile.TemporaryDirectory(prefix="gtnpipe-deploy-") as tmp:
        for batch in BATCHES:
            inputs = compile_inputs(model, ws.task, Path(tmp) / f"b{batch}", batch_size=batch, max_opset=17,
                                    calibration_uint8=data.train.x[:320])
            for runtime in ("onnxruntime", "openvino", "tflite", "tensorrt"):
                try:
                    backend = get_backend(runtime)
                    backend.version()
                except BackendUnavailable as err:
                    skipped[runtime] = str(err)
                    continue
                for precision in backend.precisions:
                    out = Path(tmp) / f"{runtime}-{precision}-b{batch}"
                    built = backend.build(inputs, precision, out)
                    record(runtime, precision, batch, backend.load(out / built.model_file, threads=args.threads,
                                                                   precision=precision))

    torch_b1 = next(r for r in rows if r["runtime"] == "torch-eager" and r["batch"] == 1)
    best_b1 = min((r for r in rows if r["runtime"] != "torch-eager" and r["batch"] == 1), key=lambda r: r["p50_ms"])
    ort_b1 = {r["precision"]: r for r in rows if r["runtime"] == profile.runtime.name and r["batch"] == profile.batch_size}
    fp32_top1 = ort_b1["fp32"]["top1"]
    within = [r for r in ort_b1.values() if fp32_top1 - r["top1"] <= profile.budgets.max_accuracy_drop_points]
    fastest_within = min(within, key=lambda r: r["p50_ms"])["precision"]
    report = {
        "command": "python bench/deploy.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                                                         if v is not None),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "threads": args.threads,
                    "torch": torch.__version__},
        "arch": arch, "macs": macs, "machine_peak_gflops_fp32": peak, "rows": rows, "skipped": skipped,
        "shipped_precision": manifest["model"]["precision"],
        "targets": {
            "best_backend_batch1_speedup_over_torch": torch_b1["p50_ms"] / best_b1["p50_ms"],
            "best_backend_batch1": f"{best_b1['runtime']} {best_b1['precision']}",
            "best_backend_at_least_3x_torch_at_batch1": torch_b1["p50_ms"] / best_b1["p50_ms"] >= 3,
            "fastest_host_precision_within_limit": fastest_within,
            "shipped_is_fastest_within_limit": manifest["model"]["precision"] == fastest_within,
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "deploy-host.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "deploy-host.md").write_text(render(report))
    print(render(report))


def render(r: dict[str, Any]) -> str:
    t = r["targets"]
    lines = [f"# Deploy benchmark: host pick `{r['arch']}` ({r['macs'] / 1e6:.2f}M MACs)", "",
             f"`{r['command']}`; {r['machine']['platform']}, {r['machine']['threads']} threads; machine peak "
             f"(torch float32 2048x2048 matmul) {r['machine_peak_gflops_fp32']:.1f} GFLOP/s.", "",
             "| runtime | precision | batch | p50 (ms) | p90 (ms) | images/s | test top-1 (%) | GFLOP/s | % of peak |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in sorted(r["rows"], key=lambda x: (x["batch"], x["p50_ms"])):
        lines.append(f"| {row['runtime']} | {row['precision']} | {row['batch']} | {row['p50_ms']:.3f} | {row['p90_ms']:.3f} | "
                     f"{row['throughput_per_s']:.0f} | {row['top1']:.2f} | {row['gflops']:.2f} | "
                     f"{100 * row['fraction_of_peak']:.2f} |")
    lines += ["", f"- best backend at batch 1: {t['best_backend_batch1']}, "
              f"{t['best_backend_batch1_speedup_over_torch']:.1f}x torch eager (target >= 3x: "
              f"{'met' if t['best_backend_at_least_3x_torch_at_batch1'] else 'NOT met'})",
              f"- shipped precision {r['shipped_precision']}; fastest host precision within the accuracy limit here: "
              f"{t['fastest_host_precision_within_limit']} ({'met' if t['shipped_is_fastest_within_limit'] else 'NOT met'})"]
    for runtime, why in r["skipped"].items():
        lines.append(f"- {runtime} not run here: {why}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
