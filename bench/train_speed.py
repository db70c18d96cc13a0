"""Training speed on this machine: seconds per full Fashion-MNIST epoch of the teacher and of the
largest and smallest students, with the `default` recipe's settings (batch 128, crop/flip).

Each model trains for `--steps` timed steps (after a short warm-up) on the real data; the
epoch time is the measured time per step x steps per epoch (55,000 images / batch).

    .venv/bin/python bench/train_speed.py [--steps 40]

Writes bench/results/train_speed.json and .md.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from gtnpipe.config.recipes import load_recipe
from gtnpipe.data.datasets import load_dataset
from gtnpipe.models.counting import count_module
from gtnpipe.models.static import build_static
from gtnpipe.models.teacher import build_teacher, teacher_for
from gtnpipe.stages.workspace import resolve, task_of
from gtnpipe.training.train import fit, seed_everything

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per model")
    parser.add_argument("--recipe", default="default")
    args = parser.parse_args()

    full = load_dataset(load_recipe(args.recipe).data.source, val_size=load_recipe(args.recipe).data.val_size)
    recipe, space = resolve(load_recipe(args.recipe), full.image_hw)
    n_train = len(full.train)
    rows = []
    for name in ("teacher", "largest", "smallest"):
        cfg = recipe.train.teacher if name == "teacher" else recipe.train.student
        cfg = replace(cfg, epochs=1, warmup_epochs=0.0)
        steps_per_epoch = math.ceil(n_train / cfg.batch_size)
        seed_everything(0)
        timed = load_dataset(recipe.data.source, val_size=1, train_subset=args.steps * cfg.batch_size, test_subset=1)
        task = task_of(timed)
        model = (build_teacher(teacher_for(space, recipe.teacher), space, task) if name == "teacher"
                 else build_static(space.parse(name), space, task))
        warm = load_dataset(recipe.data.source, val_size=1, train_subset=5 * cfg.batch_size, test_subset=1)
        fit(model, warm, cfg, seed=0, run_id="warmup", progress=False)
        t0 = time.perf_counter()
        fit(model, timed, cfg, seed=0, run_id="timed", progress=False)
        seconds = time.perf_counter() - t0
        cost = count_module(model, task)
        rows.append({
            "model": name if name == "teacher" else f"{name} student ({space.parse(name).id})",
            "macs": cost.macs,
            "params": cost.params,
            "timed_steps": args.steps,
            "seconds_per_step": seconds / args.steps,
            "seconds_per_epoch": seconds / args.steps * steps_per_epoch,
            "steps_per_epoch": steps_per_epoch,
            "batch_size": cfg.batch_size,
        })
        print(f"{rows[-1]['model']}: {rows[-1]['seconds_per_step']:.3f} s/step, "
              f"{rows[-1]['seconds_per_epoch']:.0f} s/epoch")
    report = {
        "command": f"python bench/train_speed.py --steps {args.steps} --recipe {args.recipe}",
        "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_speed.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"Command: `{report['command']}` ({report['machine']['torch_threads']} torch threads)", "",
             "| model | MACs (M) | params (M) | s/step (batch 128) | s/epoch (55k images) |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['macs'] / 1e6:.2f} | {r['params'] / 1e6:.3f} | {r['seconds_per_step']:.3f} | "
              f"{r['seconds_per_epoch']:.0f} |" for r in rows]
    (RESULTS / "train_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
