"""What each cached teacher gives its students: the soft targets on the training images.

KD here trains students on the teacher's logits for the training split (cached, no augmentation),
so what matters is not only the teacher's test top-1 but how much it still says beyond the label
on images it was trained on: its train top-1, the probability it gives the true class at the KD
temperature, the entropy of its soft targets and the share of the probability mass it puts on
other classes ("dark knowledge", Hinton et al. 2015).

    .venv/bin/python bench/teacher_targets.py --recipe kd-quick --cache-dir DIR [--sftn ARCH ...] [--name N]

Only reads teachers already in the cache (trains nothing). Writes bench/results/<name>.json and .md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from gtnpipe import pipeline
from gtnpipe.config.recipes import load_recipe
from gtnpipe.stages.workspace import Workspace
from gtnpipe.training.distill import teacher_logits
from gtnpipe.training.train import Normalizer

RESULTS = Path(__file__).parent / "results"


def target_stats(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> dict[str, float]:
    """Top-1 (%), and at `temperature`: mean p(true class), mean entropy (nats), mean mass off the argmax."""
    p = (logits / temperature).softmax(1)
    return {
        "top1": 100.0 * float((logits.argmax(1) == labels).float().mean()),
        "p_true": float(p.gather(1, labels[:, None]).mean()),
        "entropy_nats": float(-(p * p.clamp_min(1e-12).log()).sum(1).mean()),
        "off_argmax_mass": float(1 - p.max(1).values.mean()),
        "logit_std": float(logits.std(1).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", required=True, action="append", help="recipe(s) whose cached teachers to read")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--sftn", nargs="*", default=[], help="students whose SFTN teachers to include")
    parser.add_argument("--temperature", type=float, nargs="*", default=[],
                        help="also report these temperatures (default: the recipe's KD temperature only)")
    parser.add_argument("--name", default="teacher_targets")
    args = parser.parse_args()

    rows: list[dict[str, Any]] = []
    seen = set()
    for recipe in args.recipe:
        rec = load_recipe(recipe)
        ws = Workspace.open(rec, cache_dir=args.cache_dir)
        data = ws.data
        norm = Normalizer(data.mean, data.std)
        taus = [rec.distill.temperature, *args.temperature]
        wanted = [("vanilla", None), ("gtn", None)] + [("sftn", a) for a in args.sftn]
        for method, student in wanted:
            net, outcome = pipeline.load_teacher(ws, method, student=student)
            if outcome.key in seen:
                continue
            seen.add(outcome.key)
            train_logits, test_logits = teacher_logits(net, data.train, norm), teacher_logits(net, data.test, norm)
            for tau in taus:
                rows.append({"recipe": rec.name, "teacher": method + (f":{student}" if student else ""),
                             "key": outcome.key, "temperature": tau, "init_from": outcome.init_from,
                             "train": target_stats(train_logits, torch.from_numpy(data.train.y).long(), tau),
                             "test": target_stats(test_logits, torch.from_numpy(data.test.y).long(), tau)})
                print(rows[-1], flush=True)

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["Teachers' soft targets on the training split (what cached-logit KD trains on) and the test split; "
             "p, entropy and off-argmax mass at temperature tau.", "",
             "| recipe | teacher | tau | train top-1 | test top-1 | train p(true) | train entropy (nats) | "
             "train off-argmax mass | test off-argmax mass | train logit std |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        tr, te = r["train"], r["test"]
        lines.append(f"| {r['recipe']} | {r['teacher']} | {r['temperature']:g} | {tr['top1']:.2f} | {te['top1']:.2f} | "
                     f"{tr['p_true']:.3f} | "
                     f"{tr['entropy_nats']:.3f} | {tr['off_argmax_mass']:.3f} | {te['off_argmax_mass']:.3f} | "
                     f"{tr['logit_std']:.2f} |")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
