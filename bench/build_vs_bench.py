"""Do build-time latency and `gtnpipe bench` agree? (issue 13's target: p50 within 10% on one idle machine.)

Takes an artifact folder made by `gtnpipe build` on this machine and compares
1. the p50 the build recorded in its manifest (`measured_on_build_machine`: the median of MEASURE_PROCESSES fresh
   processes, each holding one session),
2. the same build-time measurement repeated now (`gtnpipe.deploy.timing.measure_fresh`, median of as many), and
3. `gtnpipe bench ARTIFACT --json` run as a user runs it (a new CLI process each time),
the last two interleaved `--repeats` times so that a drift of the machine's speed moves both alike.

    .venv/bin/python bench/build_vs_bench.py [artifacts/host] [--repeats 11]

Results: bench/results/build_vs_bench.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from gtnpipe.deploy.manifest import load_manifest
from gtnpipe.deploy.timing import Machine, measure_fresh
from gtnpipe.stages.deploy import MEASURE_PROCESSES

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("artifact", type=Path, nargs="?", default=Path("artifacts/host"))
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()
    manifest = load_manifest(args.artifact)
    model, recorded = manifest["model"], manifest["measured_on_build_machine"]
    if recorded is None:
        raise SystemExit(f"{args.artifact} has no build-time measurement (its runtime could not run on the build machine)")
    gtnpipe = Path(sys.executable).with_name("gtnpipe")
    build_p50, bench_p50 = [], []
    for _ in range(args.repeats):
        p50s = sorted(measure_fresh(manifest["runtime"]["name"], args.artifact / model["file"],
                                    threads=int(recorded["threads"]), input_shape=tuple(model["input"]["shape"]),
                                    precision=model["precision"], warmup=20, runs=int(recorded["runs"])).latency.p50_ms
                      for _ in range(MEASURE_PROCESSES))
        build_p50.append(p50s[len(p50s) // 2])
        out = subprocess.run([str(gtnpipe), "bench", str(args.artifact), "--json", "--threads", str(recorded["threads"])],
                             capture_output=True, text=True)
        if out.returncode not in (0, 3):  # 3: a budget verdict, still a measurement
            raise SystemExit(f"gtnpipe bench failed ({out.returncode}): {out.stderr}")
        bench_p50.append(json.loads(out.stdout)["latency"]["p50_ms"])
    b, g = statistics.median(build_p50), statistics.median(bench_p50)
    result = {
        "artifact": str(args.artifact), "device": manifest["device"]["name"], "arch": model["arch"],
        "precision": model["precision"], "runtime": manifest["runtime"]["name"], "machine": Machine.here().describe(),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "repeats": args.repeats,
        "manifest_p50_ms": recorded["latency_ms_p50"], "build_method_p50_ms": build_p50, "bench_p50_ms": bench_p50,
        "build_over_bench": b / g, "manifest_over_bench": recorded["latency_ms_p50"] / g,
        "within_10pct": abs(b / g - 1) <= 0.10 and abs(recorded["latency_ms_p50"] / g - 1) <= 0.10,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "build_vs_bench.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"# Build-time vs `gtnpipe bench` latency ({result['device']}, {result['runtime']} {result['precision']}, "
        f"{result['machine']})",
        "",
        f"Command: `.venv/bin/python bench/build_vs_bench.py {args.artifact} --repeats {args.repeats}` ({result['at']}).",
        "",
        "| measurement | p50 (ms), median of repeats | ratio to gtnpipe bench |",
        "|---|---:|---:|",
        f"| recorded in the manifest at build time | {recorded['latency_ms_p50']:.4f} | {result['manifest_over_bench']:.3f} |",
        f"| build-time method now (median of {MEASURE_PROCESSES} fresh processes) | {b:.4f} | "
        f"{result['build_over_bench']:.3f} |",
        f"| `gtnpipe bench` (a new CLI process each) | {g:.4f} | 1.000 |",
        "",
        f"Within 10%: {'yes' if result['within_10pct'] else 'NO'}. Repeats: build-time "
        f"{', '.join(f'{v:.4f}' for v in build_p50)}; bench {', '.join(f'{v:.4f}' for v in bench_p50)}.",
    ]
    (RESULTS / "build_vs_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
