"""What does each training choice of the `quick` recipe cost and buy? (issue 18: a demo student worth shipping)

Rounds 1-2 (`--models student teacher`): one student (labels only, no teacher: the part of the demo every build
pays) and the quick teacher under variants of the `quick` recipe as it was until 2026-12-05 (crop-flip, batch 128,
lr 0.1): more steps (smaller batches), no augmentation, PreciseBN, AdamW, more training images with fewer epochs.
Round 3 (`--models distilled`): the student as `gtnpipe build` ships it, distilled from the recipe's default
teacher, under variants of today's `quick` (which took round 2's winner): more epochs, KD temperature and weight,
a teacher that learns from more images than its students. Reports VALIDATION top-1 (what the recipe is chosen on)
and the training seconds; test top-1 is recorded but not used to choose.

    .venv/bin/python bench/demo_recipe.py [--arch ARCH] [--variants NAME ...] [--models student teacher distilled]

Results: bench/results/demo_recipe.json and .md (one row per model and variant; reruns add to the table).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from gtnpipe import pipeline
from gtnpipe.config.recipes import Recipe, load_recipe
from gtnpipe.deploy.timing import Machine
from gtnpipe.stages.workspace import Workspace

RESULTS = Path(__file__).parent / "results"
DEMO_HOST_PICK = "k3e3_k7e3_k5e3_k5e3"  # the README's make demo host pick (a small student of the pool)

# Rounds 1-2 ran on `quick` as it was until 2026-12-05 (these training settings, 6k images); their variants are applied
# over it, so their rows keep their meaning
QUICK_UNTIL_2026_12_05 = {"train": {"augment": "crop-flip", "batch_size": 128, "lr": 0.1, "precise_bn_images": 0},
                          "data": {"train_subset": 6000}}
# variant -> overrides: "train" (the model's TrainConfig section), "data" (DataConfig), "distill" (DistillConfig)
DISTILLED_VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "kd": {},
    "kd-ep5": {"train": {"epochs": 5}},
    "kd-tau2": {"distill": {"temperature": 2.0}},
    "kd-alpha0.5": {"distill": {"alpha": 0.5}},
    "kd-ls0": {"train": {"label_smoothing": 0.0}},
    "kd-teacher12k": {"data": {"teacher_train_subset": 12000}},
    "kd-9k": {"data": {"train_subset": 9000}},
    "kd-12k": {"data": {"train_subset": 12000}},
}
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {},
    "precise-bn": {"train": {"precise_bn_images": 2000}},
    "bs64": {"train": {"batch_size": 64, "precise_bn_images": 2000}},
    "bs32": {"train": {"batch_size": 32, "lr": 0.05, "precise_bn_images": 2000}},
    "no-aug": {"train": {"augment": "none", "precise_bn_images": 2000}},
    "adamw": {"train": {"optimizer": "adamw", "lr": 0.003, "weight_decay": 0.01, "precise_bn_images": 2000}},
    "12k-2ep": {"train": {"epochs": 2, "precise_bn_images": 2000}, "data": {"train_subset": 12000}},
    "18k-1ep": {"train": {"epochs": 1, "warmup_epochs": 0.2, "precise_bn_images": 2000}, "data": {"train_subset": 18000}},
    # the second round: the first round's winners combined, then more images
    "no-aug-bs64": {"train": {"augment": "none", "batch_size": 64, "precise_bn_images": 2000}},
    "no-aug-bs32": {"train": {"augment": "none", "batch_size": 32, "lr": 0.05, "precise_bn_images": 2000}},
    "no-aug-bs32-ls0": {"train": {"augment": "none", "batch_size": 32, "lr": 0.05, "label_smoothing": 0.0,
                                  "precise_bn_images": 2000}},
    "no-aug-bs32-12k": {"train": {"augment": "none", "batch_size": 32, "lr": 0.05, "precise_bn_images": 2000},
                        "data": {"train_subset": 12000}},
    "no-aug-bs32-24k": {"train": {"augment": "none", "batch_size": 32, "lr": 0.05, "precise_bn_images": 2000},
                        "data": {"train_subset": 24000}},
    "no-aug-bs64-24k": {"train": {"augment": "none", "batch_size": 64, "precise_bn_images": 2000},
                        "data": {"train_subset": 24000}},
}


def variant(base: Recipe, name: str, o: dict[str, dict[str, Any]], model: str) -> Recipe:
    """`base` with variant `name`'s overrides `o` applied to `model`'s training section, data and distillation."""
    section = "teacher" if model == "teacher" else "student"
    old = {} if model == "distilled" else QUICK_UNTIL_2026_12_05
    train = replace(base.train, **{section: replace(getattr(base.train, section),
                                                    **{**old.get("train", {}), **o.get("train", {})})})
    data = replace(base.data, **{**old.get("data", {}), **o.get("data", {})})
    return replace(base, name=f"{base.name}+{name}", train=train, data=data,
                   distill=replace(base.distill, **o.get("distill", {})))


def run(ws: Workspace, model: str, arch: str) -> dict[str, Any]:
    """Train (or take from the cache) one model of a variant's workspace: the figures every row reports."""
    if model == "distilled":
        d = pipeline.distill_student(ws, arch)
        return {"arch": d.arch, "val_top1": d.val_top1, "test_top1": d.test_top1, "cached": d.cached,
                "epochs": ws.recipe.train.student.epochs, "train_seconds": round(d.train_seconds, 1),
                "teacher": d.teacher}
    out = pipeline.train_model(ws, "teacher" if model == "teacher" else arch)
    return {"arch": out.model, "val_top1": out.val_top1, "test_top1": out.test_top1, "cached": out.cached,
            "epochs": out.epochs, "train_seconds": round(out.seconds_per_epoch * out.epochs, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default=DEMO_HOST_PICK)
    parser.add_argument("--variants", nargs="+", default=None, choices=[*VARIANTS, *DISTILLED_VARIANTS],
                        help="default: every variant of each model's round")
    parser.add_argument("--models", nargs="+", default=["student"], choices=["student", "teacher", "distilled"])
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()
    base = load_recipe("quick")
    path = RESULTS / "demo_recipe.json"
    store: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"rows": {}}
    for model in args.models:
        table = DISTILLED_VARIANTS if model == "distilled" else VARIANTS
        for name in args.variants or list(table):
            if name not in table:
                parser.error(f"variant {name!r} is not one of --models {model}'s: {', '.join(table)}")
            ws = Workspace.open(variant(base, name, table[name], model), cache_dir=args.cache_dir, progress=False)
            started = time.time()
            row = {"model": model, "variant": name, "overrides": table[name], **run(ws, model, args.arch),
                   "wall_seconds": round(time.time() - started, 1), "train_images": len(ws.data.train),
                   "machine": Machine.here().describe()}
            key = f"{model}/{name}" + (f"/{row['arch']}" if model == "distilled" else "")
            if not row["cached"] or key not in store["rows"]:
                store["rows"][key] = row
            print(f"{model} {name}: val {row['val_top1']:.2f}% test {row['test_top1']:.2f}% in {row['train_seconds']} s")
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(store, indent=1) + "\n")
    lines = ["# `quick` recipe variants: validation top-1 and training time", "",
             "Command: `.venv/bin/python bench/demo_recipe.py --models student teacher` (labels only, no teacher, on "
             "`quick` as it was until 2026-12-05) and `--models distilled --arch ARCH` (the student distilled from "
             "the recipe's default teacher, on today's `quick`). One seed: differences under ~1 point are within "
             "seed noise. Chosen on validation.", "",
             "| model | variant | train images | epochs | val top-1 (%) | test top-1 (%) | train s | machine |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in store["rows"].values():
        lines.append(f"| {r['model']} `{r['arch']}` | {r['variant']} | {r['train_images']} | {r['epochs']} | "
                     f"{r['val_top1']:.2f} | {r['test_top1']:.2f} | {r['train_seconds']:.0f} | {r['machine']} |")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
