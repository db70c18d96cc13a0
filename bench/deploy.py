"""How fast is the shipped student in each runtime, against torch eager, and how close to the CPU's peak?

For the `host` pick (the student `gtnpipe build --device host` ships, read from its artifact): the
artifact's own model file (sha256 checked against its manifest) at its batch size, beside torch eager
and every backend installed here at every precision it builds, rebuilt from the same weights at
batch 1 and 32, each with its test top-1. Each row's achieved GFLOP/s (2 FLOPs per MAC x MACs x
batch / p50) is a fraction of the CPU's FP32 peak, derived from the CPU itself (cores used x clock x
FMA units per core x FP32 lanes per FMA x 2), as the device profiles' spec-sheet numbers are; the
Markdown says how. A float32 torch matmul is timed too, as a check on that derivation (a matmul
above 100% means the cores run faster than the clock read, e.g. boost in a VM).

    .venv/bin/gtnpipe build --device host --recipe quick      # (make demo does this)
    .venv/bin/python bench/deploy.py [--artifact artifacts/host] [--recipe quick] [--threads 2]

Targets (issue 5): the best backend at batch 1 at least 3x faster than torch eager; the precision
the build shipped is the fastest one within the profile's accuracy limit.
Results: bench/results/deploy-host.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gtnpipe import pipeline
from gtnpipe.config.profiles import load_profile
from gtnpipe.deploy.backends import get_backend
from gtnpipe.deploy.export import compile_inputs, to_unit_float
from gtnpipe.deploy.manifest import load_manifest, verify_files
from gtnpipe.deploy.parity import run_batched
from gtnpipe.deploy.timing import measure_latency
from gtnpipe.errors import BackendUnavailable
from gtnpipe.fsutil import sha256_file
from gtnpipe.stages.workspace import Workspace

HERE = Path(__file__).parent
RESULTS = HERE / "results"
BATCHES = (1, 32)
FLOPS_PER_MAC = 2

# FMA units per core when the command line does not say: 2 on Intel server cores since Haswell (Skylake-SP and
# later Xeon Gold 6xxx / Platinum: two 512-bit FMA units; Silver, Bronze and some Gold 5xxx have one: pass
# --fma-units 1) and on AMD Zen 1-5 (two FMA pipes per core: AMD's Software Optimization Guides for family 17h,
# 19h and 1Ah). Exceptions by core, where the pipe is narrower than the widest instruction set the flags list:
# Zen 1/Zen+ (family 17h, model < 30h) has 128-bit FMA pipes, Zen 4 (family 19h with avx512f) runs a 512-bit
# FMA as two 256-bit halves (same optimisation guides).
DEFAULT_FMA_UNITS = 2


def parse_cpuinfo(text: str) -> list[dict[str, str]]:
    """One dict per logical CPU of /proc/cpuinfo (its "key : value" lines)."""
    cpus = []
    for block in text.strip().split("\n\n"):
        fields = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if "processor" in fields:
            cpus.append(fields)
    return cpus


def fp32_lanes(cpu: dict[str, str]) -> tuple[int, str]:
    """FP32 lanes one FMA unit of this core processes per cycle, and why (from the flags, vendor and family)."""
    flags = set(cpu.get("flags", "").split())
    amd, family = cpu.get("vendor_id") == "AuthenticAMD", int(cpu.get("cpu family", "0"))
    model = int(cpu.get("model", "0"))
    if "avx512f" in flags:
        if amd and family == 0x19:
            return 8, "avx512f, but Zen 4 (AMD family 19h) runs 512-bit FMAs on 256-bit pipes: 8 FP32 lanes"
        return 16, "avx512f: 512-bit FMA, 16 FP32 lanes"
    if "fma" in flags and "avx2" in flags:
        if amd and family == 0x17 and model < 0x30:
            return 4, "avx2+fma, but Zen 1/Zen+ (AMD family 17h, model < 30h) has 128-bit FMA pipes: 4 FP32 lanes"
        return 8, "avx2+fma: 256-bit FMA, 8 FP32 lanes"
    if "avx" in flags:
        return 8, "avx without fma: 256-bit multiply and add pipes, counted as one FMA of 8 FP32 lanes"
    return 4, "sse only: 128-bit, 4 FP32 lanes"


def clock_mhz(*, max_freq_khz: str | None, lscpu: str | None, cpu: dict[str, str]) -> tuple[float, str]:
    """The clock to count peak at: the maximum the kernel reports, else lscpu's, else /proc/cpuinfo's current one."""
    if max_freq_khz:
        return int(max_freq_khz) / 1e3, "/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"
    for line in (lscpu or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "CPU max MHz" and value.strip():
            return float(value), 'lscpu "CPU max MHz"'
    return float(cpu["cpu MHz"]), ('/proc/cpuinfo "cpu MHz", as neither cpufreq nor lscpu reports a maximum here: '
                                   "the reported clock, which the cores may exceed when they boost")


def fp32_peak(cpus: list[dict[str, str]], *, allowed: set[int], threads: int, max_freq_khz: str | None,
              lscpu: str | None, fma_units: int | None = None, clock_override_mhz: float | None = None) -> dict[str, Any]:
    """The FP32 peak of the physical cores `threads` threads can use: cores x clock x FMA units x lanes x 2."""
    mine = [c for c in cpus if int(c["processor"]) in allowed] or cpus
    physical = {(c.get("physical id", "0"), c.get("core id", c["processor"])) for c in mine}
    cores = min(threads, len(physical))
    lanes, lanes_why = fp32_lanes(mine[0])
    if clock_override_mhz is not None:
        mhz, clock_why = clock_override_mhz, "--clock-mhz"
    else:
        mhz, clock_why = clock_mhz(max_freq_khz=max_freq_khz, lscpu=lscpu, cpu=mine[0])
    units = fma_units or DEFAULT_FMA_UNITS
    units_why = "--fma-units" if fma_units else (f"assumed {DEFAULT_FMA_UNITS}, as on recent Intel and AMD server "
                                                  "cores, per their optimisation guides (bench/deploy.py, DEFAULT_FMA_UNITS)")
    gflops = cores * mhz / 1e3 * units * lanes * FLOPS_PER_MAC
    return {
        "peak_gflops_fp32": gflops, "cpu": mine[0].get("model name", "unknown CPU"), "cores_used": cores,
        "logical_cpus_allowed": len(mine), "physical_cores_allowed": len(physical), "threads": threads,
        "clock_mhz": mhz, "clock_source": clock_why, "fma_units_per_core": units, "fma_units_source": units_why,
        "fp32_lanes_per_fma": lanes, "lanes_source": lanes_why, "flops_per_mac": FLOPS_PER_MAC,
        "derivation": (f"{cores} cores x {mhz / 1e3:.3f} GHz x {units} FMA units/core x {lanes} FP32 lanes x "
                       f"{FLOPS_PER_MAC} FLOPs per FMA = {gflops:.1f} GFLOP/s (cores: {threads} threads on "
                       f"{len(physical)} physical cores allowed; clock: {clock_why}; FMA units: {units_why}; "
                       f"lanes: {lanes_why})"),
    }


def host_fp32_peak(threads: int, *, fma_units: int | None, clock_override_mhz: float | None) -> dict[str, Any]:
    """fp32_peak of this machine, read from /proc/cpuinfo, cpufreq and lscpu."""
    freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        lscpu = None
    return fp32_peak(parse_cpuinfo(Path("/proc/cpuinfo").read_text()), allowed=os.sched_getaffinity(0),
                     threads=threads, max_freq_khz=freq.read_text().strip() if freq.is_file() else None, lscpu=lscpu,
                     fma_units=fma_units, clock_override_mhz=clock_override_mhz)


def torch_matmul_gflops(threads: int, *, n: int = 2048, reps: int = 5) -> float:
    """Best-of-reps float32 matmul throughput in torch (oneDNN/MKL): a check on the derived peak, not the peak."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return FLOPS_PER_MAC * n**3 / best / 1e9


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
    parser.add_argument("--fma-units", type=int, default=None, help=f"FMA units per core (default {DEFAULT_FMA_UNITS})")
    parser.add_argument("--clock-mhz", type=float, default=None, help="clock to count peak at (default: read here)")
    args = parser.parse_args()

    manifest = load_manifest(args.artifact)
    verify_files(args.artifact, manifest)  # the shipped file timed below is the one the manifest describes
    shipped = manifest["model"]
    arch, macs = shipped["arch"], shipped["macs"]
    ws = Workspace.open(args.recipe, cache_dir=args.cache_dir, progress=False)
    model, data = pipeline.load_distilled(ws, arch, teacher=manifest["provenance"]["teacher"]), ws.data
    x_test, y_test = to_unit_float(data.test.x), data.test.y
    profile = load_profile("host")
    load_before = os.getloadavg()[0]
    peak = host_fp32_peak(args.threads, fma_units=args.fma_units, clock_override_mhz=args.clock_mhz)
    matmul = torch_matmul_gflops(args.threads)
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []

    def record(runtime: str, precision: str, batch: int, runner: Any, *, model_file: str) -> dict[str, Any]:
        x = x_test[:batch]
        stats = measure_latency(runner, x, warmup=10, runs=args.runs if batch == 1 else max(20, args.runs // 5))
        gflops = FLOPS_PER_MAC * macs * batch / (stats.p50_ms / 1e3) / 1e9
        rows.append({"runtime": runtime, "precision": precision, "batch": batch, "model_file": model_file,
                     "p50_ms": stats.p50_ms, "p90_ms": stats.p90_ms, "throughput_per_s": stats.throughput_per_s,
                     "top1": top1(runner, x_test, y_test, batch), "gflops": gflops,
                     "fraction_of_peak": gflops / peak["peak_gflops_fp32"]})
        print(f"{runtime:12s} {precision:5s} batch {batch:2d} ({model_file}): p50 {stats.p50_ms:8.3f} ms, "
              f"top-1 {rows[-1]['top1']:.2f}%", flush=True)
        return rows[-1]

    runtime_name, shipped_batch = manifest["runtime"]["name"], int(shipped["input"]["shape"][0])
    shipped_backend = get_backend(runtime_name)
    record(runtime_name, shipped["precision"], shipped_batch,
           shipped_backend.load(args.artifact / shipped["file"], threads=args.threads, precision=shipped["precision"]),
           model_file="shipped")
    for batch in BATCHES:
        record("torch-eager", "fp32", batch, _TorchRunner(model), model_file="torch")
    skipped, rebuilt_sha = {}, None
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
                    if (runtime, precision, batch) == (runtime_name, shipped["precision"], shipped_batch):
                        rebuilt_sha = sha256_file(out / built.model_file)
                    record(runtime, precision, batch, backend.load(out / built.model_file, threads=args.threads,
                                                                   precision=precision), model_file="rebuilt")

    shipped_sha = manifest["files"][shipped["file"]]["sha256"]
    report = {
        "command": "python bench/deploy.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                                                         if v is not None),
        "machine": {"platform": platform.platform(), "cpu": peak["cpu"], "threads": args.threads,
                    "torch": torch.__version__, "load_average_1min_before_after": [load_before, os.getloadavg()[0]]},
        "arch": arch, "macs": macs, "peak": peak, "torch_matmul_gflops_fp32": matmul, "rows": rows, "skipped": skipped,
        "shipped": {"file": shipped["file"], "sha256": shipped_sha, "sha256_verified": True, "runtime": runtime_name,
                    "precision": shipped["precision"], "batch": shipped_batch,
                    "rebuilt_file_identical": rebuilt_sha == shipped_sha},
        "targets": targets(rows, profile, shipped_precision=shipped["precision"]),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "deploy-host.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "deploy-host.md").write_text(render(report))
    print(render(report))


def targets(rows: list[dict[str, Any]], profile: Any, *, shipped_precision: str) -> dict[str, Any]:
    """Issue 5's targets, over the rebuilt rows (every precision at every batch) and the shipped file's row."""
    rebuilt = [r for r in rows if r["model_file"] == "rebuilt"]
    torch_b1 = next(r for r in rows if r["runtime"] == "torch-eager" and r["batch"] == 1)
    best_b1 = min((r for r in rebuilt if r["batch"] == 1), key=lambda r: r["p50_ms"])
    host = {r["precision"]: r for r in rebuilt if r["runtime"] == profile.runtime.name and r["batch"] == profile.batch_size}
    fp32_top1 = host["fp32"]["top1"]
    within = [r for r in host.values() if fp32_top1 - r["top1"] <= profile.budgets.max_accuracy_drop_points]
    fastest_within = min(within, key=lambda r: r["p50_ms"])["precision"]
    shipped_row = next(r for r in rows if r["model_file"] == "shipped")
    return {
        "best_backend_batch1_speedup_over_torch": torch_b1["p50_ms"] / best_b1["p50_ms"],
        "best_backend_batch1": f"{best_b1['runtime']} {best_b1['precision']}",
        "best_backend_at_least_3x_torch_at_batch1": torch_b1["p50_ms"] / best_b1["p50_ms"] >= 3,
        "shipped_file_speedup_over_torch": torch_b1["p50_ms"] / shipped_row["p50_ms"],
        "shipped_file_over_rebuilt_p50": shipped_row["p50_ms"] / host[shipped_precision]["p50_ms"],
        "fastest_host_precision_within_limit": fastest_within,
        "shipped_is_fastest_within_limit": shipped_precision == fastest_within,
    }


def render(r: dict[str, Any]) -> str:
    t, p, s = r["targets"], r["peak"], r["shipped"]
    matmul = r["torch_matmul_gflops_fp32"]
    lines = [f"# Deploy benchmark: host pick `{r['arch']}` ({r['macs'] / 1e6:.2f}M MACs)", "",
             f"`{r['command']}`; {p['cpu']}, {r['machine']['platform']}, {r['machine']['threads']} threads; 1-min load "
             "average {:.1f} before, {:.1f} after.".format(*r["machine"]["load_average_1min_before_after"]), "",
             f"FP32 peak of the cores used: {p['derivation']}. A float32 torch 2048x2048 matmul reaches "
             f"{matmul:.1f} GFLOP/s here ({100 * matmul / p['peak_gflops_fp32']:.0f}% "
             "of that peak; above 100% would mean the cores run faster than the clock read). Achieved GFLOP/s = "
             f"{p['flops_per_mac']} x MACs x batch / p50.", "",
             f"`shipped` is the artifact's own `{s['file']}` (sha256 {s['sha256'][:16]}… checked against its manifest), "
             f"{s['runtime']} {s['precision']} at batch {s['batch']}; `rebuilt` rows export and build the same weights "
             f"here (the rebuilt {s['runtime']} {s['precision']} batch-{s['batch']} file is "
             f"{'byte-identical to' if s['rebuilt_file_identical'] else 'not byte-identical to'} the shipped one).", "",
             "| runtime | precision | batch | model file | p50 (ms) | p90 (ms) | images/s | test top-1 (%) | GFLOP/s | "
             "% of peak |", "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for row in sorted(r["rows"], key=lambda x: (x["batch"], x["p50_ms"])):
        lines.append(f"| {row['runtime']} | {row['precision']} | {row['batch']} | {row['model_file']} | {row['p50_ms']:.3f} | "
                     f"{row['p90_ms']:.3f} | {row['throughput_per_s']:.0f} | {row['top1']:.2f} | {row['gflops']:.2f} | "
                     f"{100 * row['fraction_of_peak']:.1f} |")
    lines += ["", f"- best backend at batch 1: {t['best_backend_batch1']}, "
              f"{t['best_backend_batch1_speedup_over_torch']:.1f}x torch eager (target >= 3x: "
              f"{'met' if t['best_backend_at_least_3x_torch_at_batch1'] else 'NOT met'}); the shipped file: "
              f"{t['shipped_file_speedup_over_torch']:.1f}x torch eager, p50 {t['shipped_file_over_rebuilt_p50']:.2f}x "
              "the rebuilt one's",
              f"- shipped precision {s['precision']}; fastest host precision within the accuracy limit here: "
              f"{t['fastest_host_precision_within_limit']} ({'met' if t['shipped_is_fastest_within_limit'] else 'NOT met'})"]
    for runtime, why in r["skipped"].items():
        lines.append(f"- {runtime} not run here: {why}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
