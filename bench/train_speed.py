"""Training speed on this machine: seconds per full Fashion-MNIST epoch of the teacher and of the
largest and smallest students, with the `default` recipe's settings (batch 128, crop/flip); then seconds per
training step at 224 px (space mbv3-224: its teacher, largest and smallest student, batch 32, 1000 classes).

Each model trains for `--steps` timed steps (after a short warm-up) on the real data; the
epoch time is the measured time per step x steps per epoch (55,000 images / batch). The 224-px rows time
`--steps-224` SGD steps on random images (speed does not depend on the pixels), after one untimed step; on CUDA
(`--device cuda`) with bf16 autocast and channels-last, as gtnpipe trains there, and with the peak GPU memory.

    .venv/bin/python bench/train_speed.py [--steps 40] [--steps-224 3] [--device cpu|cuda]

Writes bench/results/train_speed.json and .md.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from gtnpipe.config.recipes import load_recipe
from gtnpipe.data.datasets import load_dataset
from gtnpipe.models.counting import count_module
from gtnpipe.models.static import build_static
from gtnpipe.models.teacher import build_teacher, teacher_for
from gtnpipe.space.pool import NOMINAL_TASKS
from gtnpipe.space.spaces import TaskShape, get_space
from gtnpipe.stages.workspace import resolve, task_of
from gtnpipe.training.train import fit, seed_everything

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per model")
    parser.add_argument("--recipe", default="default")
    parser.add_argument("--steps-224", type=int, default=3, help="timed steps per model at 224 px (0: skip those rows)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N], for the 224-px rows")
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
    rows_224 = rows_at_224(args.steps_224, torch.device(args.device)) if args.steps_224 else []
    report = {
        "command": f"python bench/train_speed.py --steps {args.steps} --recipe {args.recipe} --steps-224 {args.steps_224} "
                   f"--device {args.device}",
        "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "rows": rows,
        "rows_224": rows_224,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_speed.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"Command: `{report['command']}` ({report['machine']['torch_threads']} torch threads)", "",
             "| model | MACs (M) | params (M) | s/step (batch 128) | s/epoch (55k images) |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['macs'] / 1e6:.2f} | {r['params'] / 1e6:.3f} | {r['seconds_per_step']:.3f} | "
              f"{r['seconds_per_epoch']:.0f} |" for r in rows]
    if rows_224:
        lines += ["", f"At 224 px (mbv3-224, 3x224x224, 1000 classes, random images), on {args.device}:", "",
                  "| model | MACs (M) | params (M) | s/step (batch 32) | peak GPU memory (MB) |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['model']} | {r['macs'] / 1e6:.1f} | {r['params'] / 1e6:.2f} | {r['seconds_per_step']:.3f} | "
                  f"{r['peak_gpu_mb'] if r['peak_gpu_mb'] is not None else '-'} |" for r in rows_224]
    (RESULTS / "train_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def step_seconds(model: torch.nn.Module, *, batch: int, task: TaskShape, device: torch.device,
                 steps: int) -> tuple[float, int | None]:
    """Median seconds per SGD step (forward, backward, update) of `model` on random images of `task`, after one
    untimed step, and the peak GPU memory (MB) on CUDA. bf16 autocast and channels-last on CUDA, as gtnpipe's fit."""
    on_gpu = device.type == "cuda"
    model = model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch, task.in_channels, *task.image_hw, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, task.num_classes, (batch,), device=device)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(steps + 1):
        if on_gpu:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if on_gpu:
            torch.cuda.synchronize(device)
        if step:
            times.append(time.perf_counter() - t0)
    peak = round(torch.cuda.max_memory_allocated(device) / 2**20) if on_gpu else None
    model.to("cpu")
    return statistics.median(times), peak


def rows_at_224(steps: int, device: torch.device, *, batch: int = 32) -> list[dict]:
    space, task = get_space("mbv3-224"), NOMINAL_TASKS["mbv3-224"]
    rows = []
    for name in ("teacher", "largest", "smallest"):
        seed_everything(0)
        model = (build_teacher(teacher_for(space), space, task) if name == "teacher"
                 else build_static(space.parse(name), space, task))
        cost = count_module(model, task)
        seconds, peak = step_seconds(model, batch=batch, task=task, device=device, steps=steps)
        rows.append({"model": name if name == "teacher" else f"{name} student", "macs": cost.macs, "params": cost.params,
                     "batch_size": batch, "timed_steps": steps, "seconds_per_step": seconds, "peak_gpu_mb": peak,
                     "device": str(device)})
        print(f"224 px {rows[-1]['model']}: {seconds:.3f} s/step" + (f", peak {peak} MB" if peak is not None else ""))
    return rows


if __name__ == "__main__":
    main()
