"""Peak memory of running a model, measured in a fresh process (python -m gtnpipe.deploy.backends.probe).

The figure is the process's peak resident set: interpreter, runtime, model and
activations together, which is what a device's memory budget constrains. On Linux it is
VmHWM from /proc/self/status (ru_maxrss would also count the parent's memory, which a
forked child carries until exec); elsewhere ru_maxrss.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np

__all__ = ["measure_peak_rss_mb"]


def measure_peak_rss_mb(runtime: str, model_path: Path, *, threads: int, input_shape: tuple[int, ...],
                        runs: int = 20, precision: str = "fp32") -> float:
    out = subprocess.run(
        [sys.executable, "-m", "gtnpipe.deploy.backends.probe", runtime, str(model_path), "--threads", str(threads),
         "--shape", ",".join(map(str, input_shape)), "--runs", str(runs), "--precision", precision],
        check=True, capture_output=True, text=True,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runtime")
    parser.add_argument("model", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shape", required=True, help="input shape, comma separated (N,C,H,W)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    from gtnpipe.deploy.backends import load_runner

    runner = load_runner(args.runtime, args.model, threads=args.threads, precision=args.precision)
    x = np.random.default_rng(0).random(tuple(int(d) for d in args.shape.split(",")), dtype=np.float32)  # images in [0, 1]
    for _ in range(args.runs):
        runner.run(x)
    print(json.dumps({"peak_rss_mb": _peak_rss_bytes() / 1e6}))


def _peak_rss_bytes() -> int:
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


if __name__ == "__main__":
    main()
