"""Does evolution find better students than random search, within every device's budgets?

For every shipped device profile: OFA's evolution (population 100, 500 generations) against
random search given the same number of evaluations, both maximising the accuracy predictor
fitted on the GTN-trained supernet's inherited-weight accuracies, both subject to every
budget at the profile's precision. Several search seeds per device.

Also: how well does the accuracy estimate rank real students? Spearman correlation of (a)
the inherited-weight accuracy and (b) the predictor against the test top-1 of the students
distilled from the GTN teacher in bench/kd_effect.py (mean over seeds), when those exist.

    .venv/bin/python bench/search.py [--recipe kd] [--accuracy-recipe quick] [--cache-dir DIR] [--seeds 0 1 2]
    .venv/bin/python bench/search.py --ranks-only    # once bench/kd_effect.py has written its table

Results: bench/results/search.json and search.md.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

from gtnpipe import pipeline
from gtnpipe.config.profiles import known_profiles, load_profile
from gtnpipe.config.recipes import load_recipe
from gtnpipe.nas.accuracy import spearman
from gtnpipe.nas.evolution import SearchConfig, evolution_search, random_search
from gtnpipe.space.spaces import ArchConfig
from gtnpipe.stages.search import AccuracyOutcome, cost_model
from gtnpipe.stages.workspace import Workspace, resolve

HERE = Path(__file__).parent
RESULTS = HERE / "results"


def rank_correlation(recipe: str, accuracy_recipe: str, cache_dir: Path | None,
                     acc: AccuracyOutcome) -> dict | None:
    """Estimates (from `accuracy_recipe`'s supernet) vs the distilled top-1 of bench/kd_effect.py's students on
    `recipe` (mean over seeds): GTN-KD first, vanilla KD and no KD beside it."""
    path = RESULTS / ("kd_effect.json" if recipe == "kd" else f"kd_effect-{recipe}.json")
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    rows = [r for r in report["table"] if "gtn" in r]
    if len(rows) < 4:
        return None
    space = resolve(load_recipe(accuracy_recipe), pipeline.FASHION_MNIST_TASK.image_hw)[1]
    archs = [ArchConfig.from_id(r["arch"]) for r in rows]
    inherited = pipeline.inherited_accuracies(Workspace.open(accuracy_recipe, cache_dir=cache_dir), [a.id for a in archs])
    predicted = [acc.predictor.predict(space, a) for a in archs]
    by_method = {m: [r[m]["mean"] for r in rows] for m in ("gtn", "vanilla", "none") if all(m in r for r in rows)}
    macs = [r["macs"] for r in rows]
    seeds = report["seeds"][:2]

    def seed_vs_seed(method: str) -> float | None:
        # the benchmark's own repeatability r, which bounds what any estimate can reach (see render)
        top1 = {(r["arch"], r["seed"]): r["test_top1"] for r in report["runs"] if r["teacher"] == method}
        if len(seeds) < 2 or not all((a.id, s) in top1 for a in archs for s in seeds):
            return None
        return spearman([top1[(a.id, seeds[0])] for a in archs], [top1[(a.id, seeds[1])] for a in archs])
    return {"students": len(rows), "source": str(path.relative_to(HERE.parent)),
            "spearman_inherited_vs_distilled": spearman(inherited, by_method["gtn"]),
            "spearman_predictor_vs_distilled": spearman(predicted, by_method["gtn"]),
            "spearman_by_method": {m: {"inherited": spearman(inherited, v), "predictor": spearman(predicted, v),
                                       "macs": spearman(macs, v), "seed_vs_seed": seed_vs_seed(m)}
                                   for m, v in by_method.items()},
            "rows": [{"arch": a.id, "distilled_top1": d, "inherited_top1": i, "predicted_top1": p}
                     for a, d, i, p in zip(archs, by_method["gtn"], inherited, predicted)]}


def render(result: dict) -> str:
    acc, rows, ranks = result["accuracy_predictor"], result["rows"], result["rank_correlation"]
    lines = [f"Command: `{result['command']}`. Accuracy estimate: ridge predictor on {acc['samples']} "
             f"inherited-weight val accuracies of the `{result['accuracy_recipe']}` GTN supernet (leave-one-out error "
             f"{acc['loo_rmse']:.2f} points).", "",
             "| device | precision | latency model | evaluations | evolution est. top-1 | random est. top-1 | "
             "evolution pick (MACs M, p90 ms) |", "|---|---|---|---:|---:|---:|---|"]
    for device in dict.fromkeys(r["device"] for r in rows):
        mine = [r for r in rows if r["device"] == device]
        evo = [r["evolution"]["estimated_top1"] for r in mine]
        rnd = [r["random"]["estimated_top1"] for r in mine]
        best = max(mine, key=lambda r: r["evolution"]["estimated_top1"])["evolution"]
        lines.append(f"| {device} | {mine[0]['precision']} | {mine[0]['latency_source']} | {mine[0]['evaluations']} | "
                     f"{statistics.fmean(evo):.2f} (min {min(evo):.2f}) | {statistics.fmean(rnd):.2f} (max {max(rnd):.2f}) | "
                     f"{best['macs'] / 1e6:.2f}, {best['latency_ms_p90']:.3f} |")
    lines += ["", f"Evolution's pick at least random's on every device and seed: "
              f"{result['evolution_at_least_random_every_run']}."]
    if ranks:
        lines += ["", f"Rank correlation (Spearman) of the accuracy estimate with the distilled test top-1 of "
                  f"{ranks['students']} benchmark students ({ranks['source']}, mean over seeds):", "",
                  "| distilled with | inherited-weight accuracy | predictor | MACs alone | seed vs seed |",
                  "|---|---:|---:|---:|---:|"]

        def fmt(value: float | None) -> str:
            return "–" if value is None else f"{value:.2f}"

        for method, rho in ranks.get("spearman_by_method", {}).items():
            lines.append(f"| {method} | {fmt(rho['inherited'])} | {fmt(rho['predictor'])} | {fmt(rho.get('macs'))} | "
                         f"{fmt(rho.get('seed_vs_seed'))} |")
        lines += ["", "Seed vs seed: the Spearman correlation of two seeds' distilled top-1 with each other, the "
                      "benchmark's own repeatability r. Against the mean of two seeds, no estimate can be expected to "
                      "exceed about sqrt(2r / (1 + r)) (Spearman-Brown): "
                      + ", ".join(f"{m} {math.sqrt(2 * r / (1 + r)):.2f}" for m, rho in ranks["spearman_by_method"].items()
                                  if (r := rho.get("seed_vs_seed")) is not None and r > 0) + "."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="kd", help="the recipe of the distilled students (bench/kd_effect.py)")
    parser.add_argument("--accuracy-recipe", help="the recipe whose GTN supernet and predictor estimate accuracy "
                        "(default: --recipe; 'quick' is what gtnpipe build uses)")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--ranks-only", action="store_true",
                        help="recompute only the rank correlation into the existing results/search.json (after "
                             "bench/kd_effect.py has written its table)")
    args = parser.parse_args()
    accuracy_recipe = args.accuracy_recipe or args.recipe
    if args.ranks_only:
        result = json.loads((RESULTS / "search.json").read_text())
        acc = pipeline.accuracy_predictor(Workspace.open(result["accuracy_recipe"], cache_dir=args.cache_dir))
        result["rank_correlation"] = rank_correlation(result["recipe"], result["accuracy_recipe"], args.cache_dir, acc)
        return write(result)

    acc = pipeline.accuracy_predictor(Workspace.open(accuracy_recipe, cache_dir=args.cache_dir))
    task = pipeline.FASHION_MNIST_TASK
    space = resolve(load_recipe(accuracy_recipe), task.image_hw)[1]

    def score(arch: ArchConfig) -> float:
        return acc.predictor.predict(space, arch)

    rows = []
    for device in known_profiles():
        model = cost_model(load_profile(device), space, task)
        for seed in args.seeds:
            cfg = SearchConfig(iterations=args.iterations, seed=seed)
            evolved = evolution_search(model, score, cfg)
            rand = random_search(model, score, evaluations=evolved.evaluations, seed=seed)
            rows.append({"device": device, "precision": model.precision, "seed": seed,
                         "evaluations": evolved.evaluations, "latency_source": evolved.pick.cost.latency_source,
                         "evolution": evolved.pick.to_dict(), "evolution_seconds": evolved.seconds,
                         "evolution_front": len(evolved.front), "random": rand.pick.to_dict(),
                         "random_seconds": rand.seconds, "random_feasible": rand.feasible_seen})
            print(f"{device} seed {seed}: evolution {evolved.pick.accuracy:.2f} vs random {rand.pick.accuracy:.2f} "
                  f"({evolved.evaluations} evaluations)", flush=True)
    ranks = rank_correlation(args.recipe, accuracy_recipe, args.cache_dir, acc)
    result = {"recipe": args.recipe, "accuracy_recipe": accuracy_recipe,
              "accuracy_predictor": {"key": acc.key, "samples": acc.predictor.n_samples, "loo_rmse": acc.predictor.loo_rmse,
                                     "l2": acc.predictor.l2, "measure_seconds": acc.seconds},
              "rows": rows, "rank_correlation": ranks,
              "evolution_at_least_random_every_run": all(r["evolution"]["estimated_top1"] >= r["random"]["estimated_top1"]
                                                         for r in rows),
              "command": f"python bench/search.py --recipe {args.recipe} --accuracy-recipe {accuracy_recipe} "
                         f"--seeds {' '.join(map(str, args.seeds))} --iterations {args.iterations}",
              "at": time.strftime("%Y-%m-%d")}
    write(result)


def write(result: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "search.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "search.md").write_text(render(result) + "\n")
    print(render(result))


if __name__ == "__main__":
    main()
