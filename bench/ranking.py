"""Does the accuracy estimate rank distilled students? One row per supernet training (accuracy recipe).

For each accuracy recipe (its GTN teacher's supernet, and the ridge predictor fitted on that supernet's
inherited-weight accuracies): the Spearman correlation of (a) the inherited-weight validation accuracy and (b) the
predictor with the distilled test top-1 of the benchmark's 10 students (bench/results/search.json's
rank_correlation rows: bench/kd_effect.py's students on recipe kd, distilled from the GTN teacher, mean over seeds;
a later kd_effect.py run with 3 students replaced kd_effect.json), beside the benchmark's own seed-vs-seed
repeatability and the ceiling it implies. Also the cost of each supernet's training (the GTN teacher stage).

    .venv/bin/python bench/ranking.py --accuracy-recipes quick bench/recipes/quick-sandwich.toml

Results: bench/results/ranking.json and ranking.md (reruns add to the table).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from gtnpipe import pipeline
from gtnpipe.nas.accuracy import spearman
from gtnpipe.space.spaces import ArchConfig
from gtnpipe.stages.workspace import Workspace

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accuracy-recipes", nargs="+", default=["quick"])
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()
    bench = json.loads((RESULTS / "search.json").read_text())["rank_correlation"]
    students = bench["rows"]
    archs = [ArchConfig.from_id(r["arch"]) for r in students]
    distilled = [r["distilled_top1"] for r in students]
    seed_r = bench["spearman_by_method"]["gtn"]["seed_vs_seed"]
    path = RESULTS / "ranking.json"
    store = json.loads(path.read_text()) if path.exists() else {"rows": {}}
    for recipe in args.accuracy_recipes:
        started = time.time()
        ws = Workspace.open(recipe, cache_dir=args.cache_dir)
        gtn = pipeline.train_teacher(ws, "gtn")
        acc = pipeline.accuracy_predictor(ws)
        inherited = pipeline.inherited_accuracies(ws, [a.id for a in archs])
        predicted = [acc.predictor.predict(ws.space, a) for a in archs]
        store["rows"][recipe] = {
            "accuracy_recipe": recipe, "students_source": bench["source"], "gtn": ws.recipe.gtn.__dict__,
            "teacher_test_top1": gtn.test_top1, "teacher_train_seconds": gtn.train_seconds,
            "predictor_loo_rmse": acc.predictor.loo_rmse, "predictor_samples": acc.predictor.n_samples,
            "spearman_inherited_vs_distilled": spearman(inherited, distilled),
            "spearman_predictor_vs_distilled": spearman(predicted, distilled),
            "spearman_macs_vs_distilled": spearman([r.get("macs", 0) for r in students], distilled)
            if all("macs" in r for r in students) else None,
            "seed_vs_seed": seed_r, "ceiling": math.sqrt(2 * seed_r / (1 + seed_r)),
            "rows": [{"arch": a.id, "distilled_top1": d, "inherited_top1": i, "predicted_top1": p}
                     for a, d, i, p in zip(archs, distilled, inherited, predicted)],
            "wall_seconds": round(time.time() - started, 1)}
        row = store["rows"][recipe]
        print(f"{recipe}: inherited {row['spearman_inherited_vs_distilled']:.2f}, "
              f"predictor {row['spearman_predictor_vs_distilled']:.2f}")
    path.write_text(json.dumps(store, indent=1) + "\n")
    lines = ["# Rank correlation of the accuracy estimate with distilled top-1", "",
             "Command: `.venv/bin/python bench/ranking.py --accuracy-recipes ...`. Students: the benchmark's 10 "
             f"({bench['source']} as bench/results/search.json records them: recipe kd, distilled from the GTN teacher, "
             f"test top-1 mean over seeds). Seed vs seed r = {seed_r:.2f}; ceiling sqrt(2r / (1 + r)) = "
             f"{math.sqrt(2 * seed_r / (1 + seed_r)):.2f} (Spearman-Brown). Target: 0.7.", "",
             "| accuracy recipe (supernet) | teacher test top-1 | GTN training s | inherited vs distilled | "
             "predictor vs distilled | predictor LOO RMSE (points) |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in store["rows"].values():
        lines.append(f"| `{row['accuracy_recipe']}` | {row['teacher_test_top1']:.2f} | {row['teacher_train_seconds']:.0f} | "
                     f"{row['spearman_inherited_vs_distilled']:.2f} | {row['spearman_predictor_vs_distilled']:.2f} | "
                     f"{row['predictor_loo_rmse']:.2f} |")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
