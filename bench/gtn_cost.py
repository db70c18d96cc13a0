"""Wall-clock cost of a GTN (and an SFTN) teacher step against a vanilla teacher step, interleaved.

This machine's speed drifts (a VM; the same ONNX models timed minutes apart differed up to 2x), so
comparing two teachers trained one after the other mixes their cost with the drift. Here blocks of
vanilla, GTN and SFTN training steps alternate on the same batches, and the ratio is taken within
each round: drift moves all three alike. Real optimiser steps on the recipe's models and GTN config,
batch from the recipe, random images (the cost does not depend on the pixels).

    .venv/bin/python bench/gtn_cost.py [--recipe kd] [--rounds 8] [--steps 6]

Run it on an otherwise idle machine (the results record the load average before and after). Results:
bench/results/gtn_cost.json and .md for the default recipe, gtn_cost-<recipe>.* for another.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from gtnpipe import pipeline
from gtnpipe.config.recipes import load_recipe
from gtnpipe.models.supernet import Supernet
from gtnpipe.models.teacher import build_teacher
from gtnpipe.stages.workspace import resolve
from gtnpipe.training.gtn import GenericTeacherTrainer

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="kd")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="steps per model per round")
    args = parser.parse_args()
    task = pipeline.FASHION_MNIST_TASK
    rec, space = resolve(load_recipe(args.recipe), task.image_hw)
    assert rec.teacher is not None
    torch.manual_seed(0)
    batch = rec.train.teacher.batch_size
    x, y = torch.randn(batch, task.in_channels, *task.image_hw), torch.randint(0, task.num_classes, (batch,))

    vanilla = build_teacher(rec.teacher, space, task).train()
    gtn = GenericTeacherTrainer(build_teacher(rec.teacher, space, task), Supernet(space, task), rec.gtn,
                                label_smoothing=rec.train.teacher.label_smoothing).train()
    sftn = GenericTeacherTrainer(build_teacher(rec.teacher, space, task), Supernet(space, task), rec.gtn,
                                 label_smoothing=rec.train.teacher.label_smoothing, fixed_arch=space.largest()).train()
    steps = {
        "vanilla": (vanilla, lambda: F.cross_entropy(vanilla(x), y)),
        "gtn": (gtn, lambda: gtn(x, y)[0]),
        "sftn-largest": (sftn, lambda: sftn(x, y)[0]),
    }
    optimizers = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, (m, _) in steps.items()}

    def block(name: str, n: int) -> float:
        _, loss_fn = steps[name]
        start = time.perf_counter()
        for _ in range(n):
            optimizers[name].zero_grad(set_to_none=True)
            loss_fn().backward()
            optimizers[name].step()
        return (time.perf_counter() - start) / n

    load_before = os.getloadavg()
    started = time.perf_counter()
    for name in steps:  # warm-up
        block(name, 2)
    rounds = []
    for _ in range(args.rounds):
        rounds.append({name: block(name, args.steps) for name in steps})
        print({k: f"{1e3 * v:.0f} ms" for k, v in rounds[-1].items()}, flush=True)
    ratios = {name: [r[name] / r["vanilla"] for r in rounds] for name in ("gtn", "sftn-largest")}
    result = {
        "recipe": args.recipe, "batch_size": batch, "threads": torch.get_num_threads(), "rounds": rounds,
        "machine": {"cpu": _cpu_name(), "platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_average_1min_before_after": [load_before[0], os.getloadavg()[0]], "torch": torch.__version__},
        "wall_seconds": time.perf_counter() - started,
        "gtn_config": {k: getattr(rec.gtn, k) for k in ("branch_batch_fraction", "branch_points", "archs_per_step")},
        "ratio_median": {k: statistics.median(v) for k, v in ratios.items()},
        "ratio_range": {k: [min(v), max(v)] for k, v in ratios.items()},
        "command": f"python bench/gtn_cost.py --recipe {args.recipe} --rounds {args.rounds} --steps {args.steps}",
    }
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / ("gtn_cost" if args.recipe == "kd" else f"gtn_cost-{args.recipe}")
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    m = result["machine"]
    lines = [f"# GTN and SFTN teacher step cost against the vanilla teacher's (recipe `{args.recipe}`)", "",
             f"Command: `{result['command']}` ({result['threads']} threads, batch {batch}; {m['cpu']}, {m['cpus']} "
             f"CPUs; 1-min load average {m['load_average_1min_before_after'][0]:.1f} before, "
             f"{m['load_average_1min_before_after'][1]:.1f} after; {result['wall_seconds']:.0f} s); per-step "
             "wall-clock relative to the vanilla teacher's step in the same round.", "",
             "| teacher | median ratio | range over rounds | median step (ms) |", "|---|---:|---:|---:|",
             f"| vanilla | 1.00 | – | {1e3 * statistics.median(r['vanilla'] for r in rounds):.0f} |"]
    for name in ("gtn", "sftn-largest"):
        lo, hi = result["ratio_range"][name]
        lines.append(f"| {name} | {result['ratio_median'][name]:.2f}x | {lo:.2f}-{hi:.2f}x | "
                     f"{1e3 * statistics.median(r[name] for r in rounds):.0f} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
