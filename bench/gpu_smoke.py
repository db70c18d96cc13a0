"""GPU smoke test, for a machine with CUDA (the `device` tool lends one to some sessions): does gtnpipe train there?

1. The tests' tiny recipe end to end on the GPU: the generic teacher, then the smallest student distilled from it
   (Workspace(train_device=cuda), a fresh cache), with test top-1 and seconds.
2. One 224-px training step of the mbv3-224 teacher and of its largest and smallest student at batch 32, bf16
   autocast, channels-last (bench/train_speed.py's `step_seconds`), with the peak GPU memory.

Short by design (about a minute on a recent GPU, mostly imports and the first CUDA kernels); also runs on the CPU
(`--device cpu`, to check the script itself: a few minutes on 2 cores).

    python bench/gpu_smoke.py [--device cuda]

Writes bench/results/gpu_smoke.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from gtnpipe import pipeline
from gtnpipe.training.accelerator import describe, train_device

sys.path.insert(0, str(Path(__file__).parent))
from train_speed import rows_at_224  # noqa: E402  (bench/ is not a package)

RESULTS = Path(__file__).parent / "results"
TINY = Path(__file__).parents[1] / "tests" / "data" / "tiny.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--steps-224", type=int, default=3)
    args = parser.parse_args()
    device = train_device(args.device)  # a clear error when there is no GPU
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        ws = pipeline.Workspace.open(TINY, cache_dir=Path(cache), train_device=args.device, progress=False)
        t0 = time.perf_counter()
        teacher = pipeline.train_teacher(ws, "gtn")
        t1 = time.perf_counter()
        student = pipeline.distill_student(ws, "smallest", teacher="gtn")
        t2 = time.perf_counter()
    tiny = {"teacher_test_top1": teacher.test_top1, "teacher_seconds": t1 - t0,
            "student_test_top1": student.test_top1, "student_seconds": t2 - t1, "trained_on": student.trained_on}
    print(f"tiny recipe on {describe(device)}: gtn teacher {tiny['teacher_test_top1']:.1f}% in {t1 - t0:.1f} s, "
          f"smallest student {tiny['student_test_top1']:.1f}% in {t2 - t1:.1f} s")
    rows = rows_at_224(args.steps_224, device)
    report = {"command": f"python bench/gpu_smoke.py --device {args.device} --steps-224 {args.steps_224}",
              "device": describe(device), "torch": torch.__version__, "cuda": torch.version.cuda,
              "host": platform.processor() or platform.machine(), "tiny_recipe": tiny, "rows_224": rows,
              "seconds": time.perf_counter() - started}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gpu_smoke.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"Command: `{report['command']}` on {report['device']} (torch {report['torch']}, CUDA {report['cuda']}), "
             f"{report['seconds']:.0f} s in all", "",
             f"Tiny recipe: GTN teacher {tiny['teacher_test_top1']:.1f}% test top-1 in {tiny['teacher_seconds']:.1f} s, "
             f"smallest student (KD) {tiny['student_test_top1']:.1f}% in {tiny['student_seconds']:.1f} s.", "",
             "| 224 px, batch 32 | MACs (M) | s/step | peak GPU memory (MB) |", "|---|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['macs'] / 1e6:.1f} | {r['seconds_per_step']:.4f} | {r['peak_gpu_mb'] or '-'} |"
              for r in rows]
    (RESULTS / "gpu_smoke.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
