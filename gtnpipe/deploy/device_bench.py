"""`gtnpipe bench ARTIFACT_DIR`: the on-device benchmark of an artifact folder (timing: gtnpipe.deploy.timing).

Torch-free: a device needs the artifact folder, numpy and its runtime, nothing else.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gtnpipe.config.profiles import version_in_range
from gtnpipe.deploy.backends import get_backend
from gtnpipe.deploy.manifest import load_manifest, verify_files
from gtnpipe.deploy.parity import compare_on_device, run_batched
from gtnpipe.deploy.timing import LatencyStats, Machine, measure_fresh
from gtnpipe.fsutil import atomic_write_json

__all__ = ["BENCH_FAILED_EXIT", "BENCH_FILE", "bench_artifact"]

BENCH_FILE = "bench.json"
BENCH_FAILED_EXIT = 3  # `gtnpipe bench`'s exit status when a budget or the parity check fails (bench.json is written)


def _verdict(budgets: dict[str, Any], latency: LatencyStats, peak_mb: float, size_mb: float,
             parity_passed: bool, runtime_ok: bool) -> dict[str, Any]:
    checks = {
        "latency_ms_p90": {"measured": latency.p90_ms, "budget": budgets["latency_ms_p90"],
                           "ok": latency.p90_ms <= budgets["latency_ms_p90"]},
        "peak_memory_mb": {"measured": peak_mb, "budget": budgets["peak_memory_mb"], "ok": peak_mb <= budgets["peak_memory_mb"]},
        "model_size_mb": {"measured": size_mb, "budget": budgets["model_size_mb"], "ok": size_mb <= budgets["model_size_mb"]},
        "parity": {"ok": parity_passed},
        "runtime_version": {"ok": runtime_ok},
    }
    return {"ok": all(c["ok"] for c in checks.values()), "checks": checks}


def bench_artifact(folder: Path, *, runs: int = 200, warmup: int = 20, threads: int | None = None,
                   write: bool = True, say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Verify, re-check parity, time and measure an artifact folder here; write bench.json beside its manifest.

    The sha256 of every file is checked first: a modified or missing file is refused by name. `say` gets a
    status line per step (the CLI passes its progress policy's, silent with --no-progress).
    """
    folder = Path(folder)
    manifest = load_manifest(folder)
    verify_files(folder, manifest)
    say(f"{folder}: {len(manifest['files'])} files match the manifest's sha256")
    model, runtime = manifest["model"], manifest["runtime"]
    threads = threads or int(model["threads"])
    backend = get_backend(runtime["name"])
    version = backend.version()
    runtime_ok = version_in_range(version, runtime["version_range"])
    model_path = folder / model["file"]
    runner = backend.load(model_path, threads=threads, precision=model["precision"])

    ref = manifest["reference"]
    say(f"parity: {runtime['name']} {version} on the artifact's reference images")
    x_ref = np.load(folder / ref["inputs"])
    built = np.load(folder / ref["artifact_logits"]) if "artifact_logits" in ref else None
    parity = compare_on_device(run_batched(runner, x_ref, batch_size=model["input"]["shape"][0]),
                               np.load(folder / ref["logits"]),
                               np.load(folder / ref["labels"]) if "labels" in ref else None, built,
                               backend=runtime["name"], precision=model["precision"],
                               max_drop_points=float(manifest["budgets"]["max_accuracy_drop_points"]))
    shape = tuple(model["input"]["shape"])
    x = np.resize(x_ref, shape).astype(np.float32)  # real images, repeated if the batch is larger than the reference
    say(f"latency and peak memory: {warmup} warmup and {runs} timed runs at batch {shape[0]}, {threads} threads, "
        "in a fresh process")
    del runner  # one session alive at a time: the parity session ends before the timed one starts
    measured = measure_fresh(runtime["name"], model_path, threads=threads, input_shape=shape, precision=model["precision"],
                             warmup=warmup, runs=runs, x=x)  # the way gtnpipe build measured it
    latency, peak_mb = measured.latency, measured.peak_rss_mb
    size_mb = sum(manifest["files"][f]["bytes"] for f in model["files"]) / 1e6
    result = {
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"description": Machine.here().describe(), "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version()},
        "device_profile": manifest["device"]["name"],
        "runtime": {"name": runtime["name"], "version": version, "profile_range": runtime["version_range"],
                    "in_range": runtime_ok},
        "precision": model["precision"],
        "threads": threads,
        "warmup": warmup,
        "latency": latency.to_dict(),
        "peak_memory_mb": peak_mb,
        "model_size_mb": size_mb,
        "parity": parity.to_dict(),
        "predicted": manifest["predicted"],
        "verdict": _verdict(manifest["budgets"], latency, peak_mb, size_mb, parity.passed, runtime_ok),
    }
    if write:
        atomic_write_json(folder / BENCH_FILE, result)
    return result
