"""Is a host verdict noise or the profile's threads against the cores? (issue 31's first question)

Times one pool student (default: the pick `make demo` shipped for host on 2026-12-08; latency does not depend on the
weights, so it is built with random ones) with ONNX Runtime the way `gtnpipe bench` does (gtnpipe.deploy.timing.
measure_fresh: a fresh process, 20 warm-up and 200 timed runs), at 1 thread and at the host profile's threads, in
`--processes` fresh processes per setting, the settings interleaved round by round against drift. Reports each
setting's per-process p50 and p90 (median, min, max) and how often the p90 would pass the host budget.

    .venv/bin/python bench/threads_noise.py [--processes 10] [--arch ID] [--busy-core]

`--busy-core` keeps one core busy (a Python busy loop in another process) while timing: what a neighbour's load, or a
process left running, does to each setting. Writes bench/results/threads_noise[-busy].json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gtnpipe.config.profiles import load_profile
from gtnpipe.deploy.export import Deployable, export_onnx
from gtnpipe.deploy.timing import Machine, measure_fresh
from gtnpipe.models.static import build_static
from gtnpipe.space.spaces import TaskShape, get_space

RESULTS = Path(__file__).parent / "results"
DEMO_PICK = "k3e6_k7e6-k7e4-k3e6-k7e6_k3e6-k5e3-k5e3-k7e4_k5e3-k5e4"  # host's pick in make demo, 2026-12-08


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=10, help="fresh processes per thread setting")
    parser.add_argument("--arch", default=DEMO_PICK)
    parser.add_argument("--busy-core", action="store_true", help="keep one core busy while timing")
    args = parser.parse_args()
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy_core else None
    try:
        report = measure(args)
    finally:
        if hog is not None:
            hog.kill()
    name = "threads_noise-busy" if args.busy_core else "threads_noise"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(render(report) + "\n")
    print(render(report))


def measure(args: argparse.Namespace) -> dict[str, Any]:
    host = load_profile("host")
    space, task = get_space("mbv3-28"), TaskShape(1, (28, 28), 10)
    settings = sorted({1, host.threads})
    samples: dict[int, list[tuple[float, float]]] = {t: [] for t in settings}
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(Deployable(build_static(space.parse(args.arch), space, task), (0.286,), (0.353,)).eval(),
                           task, Path(tmp) / "student.onnx")
        for _ in range(args.processes):
            for threads in settings:
                m = measure_fresh("onnxruntime", path, threads=threads, input_shape=(1, 1, 28, 28), warmup=20, runs=200)
                samples[threads].append((m.latency.p50_ms, m.latency.p90_ms))
    budget = host.budgets.latency_ms_p90
    rows: list[dict[str, Any]] = []
    for threads, values in samples.items():
        p50s, p90s = [v[0] for v in values], [v[1] for v in values]
        rows.append({"threads": threads, "processes": len(values), "p50_ms": _spread(p50s), "p90_ms": _spread(p90s),
                     "p90_within_budget": sum(p <= budget for p in p90s), "per_process": values})
    busy = " --busy-core" if args.busy_core else ""
    return {"command": f"python bench/threads_noise.py --processes {args.processes} --arch {args.arch}{busy}",
            "date": time.strftime("%Y-%m-%d"), "machine": Machine.here().describe(), "arch": args.arch,
            "busy_core": args.busy_core, "budget_latency_ms_p90": budget, "host_threads": host.threads, "rows": rows}


def render(report: dict[str, Any]) -> str:
    budget, n = report["budget_latency_ms_p90"], report["rows"][0]["processes"]
    load = "one core kept busy by another process" if report["busy_core"] else "nothing else running"
    lines = [f"Command: `{report['command']}` on {report['machine']}, {report['date']}: the student timed as `gtnpipe "
             f"bench` times it, {n} fresh processes per setting, interleaved; {load}.", "",
             f"| threads | p50 ms: median (min-max) | p90 ms: median (min-max) | p90 within the {budget:g} ms budget |",
             "|---:|---|---|---:|"]
    lines += [f"| {r['threads']} | {_fmt(r['p50_ms'])} | {_fmt(r['p90_ms'])} | {r['p90_within_budget']} of "
              f"{r['processes']} |" for r in report["rows"]]
    return "\n".join(lines)


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _fmt(s: dict[str, float]) -> str:
    return f"{s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f})"


if __name__ == "__main__":
    main()
