"""Measuring a compiled model the way a device runs it: one runtime session alive in a fresh process.

`gtnpipe build` times every precision with `measure_fresh` (python -m gtnpipe.deploy.timing, torch-free), as
`gtnpipe bench` does on the device: a process that holds one session, warms it up, then times `runs` batches
and reports its peak resident memory. Timing several live sessions interleaved in one process slows each
(ONNX Runtime's intra-op threads of idle sessions keep spinning on the same cores), which is not how a device
runs a model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gtnpipe.deploy.backends.probe import _peak_rss_bytes
from gtnpipe.deploy.bench import LatencyStats, measure_latency

__all__ = ["FreshMeasurement", "Machine", "measure_fresh"]

MEASURE_TIMEOUT_S = 600  # one model's warmup and runs; a hung runtime still ends


@dataclass(frozen=True)
class Machine:
    """What a timing or memory figure was measured on: it describes only machines like this one."""

    cpu: str
    cpu_count: int
    arch: str
    system: str

    @classmethod
    def here(cls) -> Machine:
        cpu = platform.processor() or platform.machine()
        cpuinfo = Path("/proc/cpuinfo")
        if cpuinfo.exists():
            for line in cpuinfo.read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        return cls(cpu, os.cpu_count() or 1, platform.machine(), platform.system())

    def describe(self) -> str:
        return f"{self.cpu}, {self.cpu_count} CPUs"


@dataclass(frozen=True)
class FreshMeasurement:
    latency: LatencyStats
    peak_rss_mb: float  # the whole process: interpreter, runtime, model and activations


def measure_fresh(runtime: str, model_path: Path, *, threads: int, input_shape: tuple[int, ...], precision: str,
                  warmup: int, runs: int) -> FreshMeasurement:
    """Latency and peak memory of one model, measured in a fresh torch-free process that holds only its session."""
    cmd = [sys.executable, "-m", "gtnpipe.deploy.timing", runtime, str(model_path), "--threads", str(threads),
           "--shape", ",".join(map(str, input_shape)), "--precision", precision, "--warmup", str(warmup),
           "--runs", str(runs)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=MEASURE_TIMEOUT_S)
    raw = json.loads(out.stdout.strip().splitlines()[-1])
    lat = raw["latency"]
    lat.pop("throughput_per_s", None)
    return FreshMeasurement(LatencyStats(**lat), float(raw["peak_rss_mb"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runtime")
    parser.add_argument("model", type=Path)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--shape", required=True, help="input shape, comma separated (N,C,H,W)")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    from gtnpipe.deploy.backends import load_runner

    runner = load_runner(args.runtime, args.model, threads=args.threads, precision=args.precision)
    x = np.random.default_rng(0).random(tuple(int(d) for d in args.shape.split(",")), dtype=np.float32)  # in [0, 1]
    stats = measure_latency(runner, x, warmup=args.warmup, runs=args.runs)
    print(json.dumps({"latency": stats.to_dict(), "peak_rss_mb": _peak_rss_bytes() / 1e6}))


if __name__ == "__main__":
    main()
