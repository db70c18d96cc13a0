"""What does each training choice of the `quick` recipe cost and buy? (issue 18: a demo student worth shipping)

Trains one student (labels only, no teacher: the part of the demo every build pays) and the quick teacher under
variants of the `quick` recipe: more steps (smaller batches), no augmentation, PreciseBN, AdamW, more training
images with fewer epochs. Reports VALIDATION top-1 (what the recipe is chosen on) and the training seconds; test
top-1 is recorded but not used to choose.

    .venv/bin/python bench/demo_recipe.py [--arch ARCH] [--variants NAME ...] [--models student teacher]

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

# variant -> overrides: "train.student" / "train.teacher" TrainConfig fields, "data" DataConfig fields
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


def variant(base: Recipe, name: str, model: str) -> Recipe:
    o = VARIANTS[name]
    section = "teacher" if model == "teacher" else "student"
    train_cfg = getattr(base.train, section)
    train = replace(base.train, **{section: replace(train_cfg, **o.get("train", {}))})
    return replace(base, name=f"{base.name}+{name}", train=train, data=replace(base.data, **o.get("data", {})))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default=DEMO_HOST_PICK)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--models", nargs="+", default=["student"], choices=["student", "teacher"])
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()
    base = load_recipe("quick")
    path = RESULTS / "demo_recipe.json"
    store: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"rows": {}}
    for model in args.models:
        for name in args.variants:
            recipe = variant(base, name, model)
            ws = Workspace.open(recipe, cache_dir=args.cache_dir, progress=False)
            started = time.time()
            out = pipeline.train_model(ws, "teacher" if model == "teacher" else args.arch)
            row = {"model": model, "arch": out.model, "variant": name, "overrides": VARIANTS[name],
                   "val_top1": out.val_top1, "test_top1": out.test_top1, "epochs": out.epochs,
                   "train_seconds": round(out.seconds_per_epoch * out.epochs, 1), "cached": out.cached,
                   "wall_seconds": round(time.time() - started, 1), "train_images": len(ws.data.train),
                   "machine": Machine.here().describe()}
            if not out.cached or f"{model}/{name}" not in store["rows"]:
                store["rows"][f"{model}/{name}"] = row
            print(f"{model} {name}: val {out.val_top1:.2f}% test {out.test_top1:.2f}% in {row['train_seconds']} s")
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(store, indent=1) + "\n")
    lines = ["# `quick` recipe variants: validation top-1 and training time", "",
             f"Command: `.venv/bin/python bench/demo_recipe.py --models {' '.join(args.models)}` (labels only, no "
             "teacher; one seed: differences under ~1 point are within seed noise). Chosen on validation.", "",
             "| model | variant | train images | epochs | val top-1 (%) | test top-1 (%) | train s | machine |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in store["rows"].values():
        lines.append(f"| {r['model']} `{r['arch']}` | {r['variant']} | {r['train_images']} | {r['epochs']} | "
                     f"{r['val_top1']:.2f} | {r['test_top1']:.2f} | {r['train_seconds']:.0f} | {r['machine']} |")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
