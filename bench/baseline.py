"""Is hardware-aware search worth it? Search's pick against hand-designed students at the same measured latency.

For one device whose runtime runs here (`host`, with its measured latency table):
1. search's pick for the device, as `gtnpipe build` makes it (the same cached stage);
2. hand-designed students of the same pool, MobileNetV3-style: one (kernel, expand) for every block and the same
   depth in every stage; for each (kernel, expand) the deepest such student whose MEASURED p90 is within the
   device's latency budget (what a person picking by hand with a stopwatch would ship), and of those the
   `--max-hand` (default 4) with the most MACs;
3. every candidate and the pick exported and timed here in the device's runtime, in the same interleaved rounds
   (the calibration's method: one session alive at a time, median of the rounds), at the profile's threads and batch;
4. each distilled with the recipe's default teacher (what `gtnpipe build` uses) and recipe, on every seed;
5. the best hand-designed student is the one with the highest mean VALIDATION top-1 over the seeds (never chosen
   on test); the paired difference of TEST top-1, search minus that student, per seed, gives the mean and its
   standard error.

    .venv/bin/python bench/baseline.py [--recipe quick] [--device host] [--seeds 0 1] [--cache-dir DIR]

Results: bench/results/baseline.json and baseline.md (`search_minus_best_hand_designed` in the summary).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

from gtnpipe import pipeline
from gtnpipe.config.profiles import load_profile
from gtnpipe.deploy.backends import runtime_version
from gtnpipe.deploy.export import export_onnx
from gtnpipe.deploy.timing import Machine
from gtnpipe.measure.host_table import time_models
from gtnpipe.models.static import build_static
from gtnpipe.space.spaces import ArchConfig, Block, SearchSpace
from gtnpipe.stages.search import cost_model
from gtnpipe.stages.workspace import Workspace

RESULTS = Path(__file__).parent / "results"
RUNS, ROUNDS = 100, 10  # per candidate: what the latency table's calibration uses


def uniform(space: SearchSpace, block: Block, depth: int) -> ArchConfig:
    return ArchConfig(tuple((block,) * depth for _ in space.stages))


def mean_se(values: list[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="quick")
    parser.add_argument("--device", default="host")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--max-hand", type=int, default=4, help="distill at most this many hand-designed students: "
                        "the ones with the most MACs among those kept (a person picks the largest that fits)")
    parser.add_argument("--tag", default="", help="results file suffix: baseline<-TAG>.json")
    args = parser.parse_args()

    started = time.time()
    ws = Workspace.open(args.recipe, cache_dir=args.cache_dir)
    profile, space, task = load_profile(args.device), ws.space, ws.task
    budget = profile.budgets.latency_ms_p90
    searched = pipeline.search_device(ws, profile, pipeline.BuildOptions(), say=print)
    pick = searched.result.pick.arch
    model = cost_model(profile, space, task)
    hand = {f"uniform k{b.kernel}e{b.expand} x{d}": uniform(space, b, d)
            for b, d in itertools.product(space.choices, space.depths)}
    candidates = {"search": pick, **hand}
    shape = (profile.batch_size, task.in_channels, *task.image_hw)
    print(f"timing {len(candidates)} students here ({ROUNDS} interleaved rounds of {RUNS} runs)")
    with tempfile.TemporaryDirectory() as tmp:
        paths = [export_onnx(build_static(a, space, task), task, Path(tmp) / f"{i}.onnx", batch_size=profile.batch_size,
                             max_opset=profile.runtime.max_onnx_opset) for i, a in enumerate(candidates.values())]
        timed = dict(zip(candidates, time_models(paths, [shape] * len(paths), profile, runs=RUNS, rounds=ROUNDS)))
    # per (kernel, expand), the deepest uniform student whose measured p90 fits the budget
    kept = {}
    for b in space.choices:
        fits = [d for d in space.depths if timed[f"uniform k{b.kernel}e{b.expand} x{d}"][1] <= budget]
        if fits:
            name = f"uniform k{b.kernel}e{b.expand} x{max(fits)}"
            kept[name] = hand[name]
    by_macs = sorted(kept, key=lambda n: model.estimate(kept[n]).macs, reverse=True)
    kept = {n: kept[n] for n in by_macs[: args.max_hand]}
    print(f"search's pick {pick.id}: measured p90 {timed['search'][1]:.3f} ms; {len(kept)} hand-designed students "
          f"within the {budget} ms budget: {', '.join(kept)}")
    rows = []
    for name, arch in {"search": pick, **kept}.items():
        runs = [pipeline.distill_student(ws, arch.id, seed=s) for s in args.seeds]
        est = model.estimate(arch)
        rows.append({"student": name, "arch": arch.id, "macs": est.macs, "params": runs[0].params,
                     "measured_p50_ms": timed[name][0], "measured_p90_ms": timed[name][1],
                     "predicted_p90_ms": est.latency_ms_p90, "teacher": runs[0].teacher,
                     "val_top1": [r.val_top1 for r in runs], "test_top1": [r.test_top1 for r in runs],
                     "val_mean": statistics.fmean(r.val_top1 for r in runs),
                     "test_mean": statistics.fmean(r.test_top1 for r in runs)})
        print(f"{name}: test top-1 {rows[-1]['test_top1']}, val {rows[-1]['val_top1']}")
    search_row, hand_rows = rows[0], rows[1:]
    summary: dict = {"hand_designed_within_budget": len(hand_rows)}
    if hand_rows:
        best = max(hand_rows, key=lambda r: r["val_mean"])  # chosen on validation
        diffs = [s - h for s, h in zip(search_row["test_top1"], best["test_top1"])]
        mean, se = mean_se(diffs)
        oracle = max(hand_rows, key=lambda r: r["test_mean"])  # for reference only: chosen on test
        summary |= {"best_hand_designed": best["student"], "best_hand_designed_arch": best["arch"],
                    "search_minus_best_hand_designed": mean, "search_minus_best_hand_designed_se": se,
                    "per_seed_differences": diffs, "search_test_mean": search_row["test_mean"],
                    "best_hand_designed_test_mean": best["test_mean"],
                    "best_hand_designed_on_test_for_reference": oracle["student"],
                    "search_minus_best_on_test_for_reference": search_row["test_mean"] - oracle["test_mean"],
                    "target_points": 1.0, "target_met": mean - se >= 1.0}
    result = {"recipe": args.recipe, "device": profile.name, "budget_latency_ms_p90": budget, "seeds": args.seeds,
              "runtime": f"{profile.runtime.name} {runtime_version(profile.runtime.name)}", "threads": profile.threads,
              "machine": Machine.here().describe(), "latency_source": searched.table_note, "search_key": searched.key,
              "uniform_timings": {n: {"p50_ms": timed[n][0], "p90_ms": timed[n][1]} for n in hand},
              "seconds": round(time.time() - started, 1), "rows": rows, "summary": summary}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / ("baseline" + (f"-{args.tag}" if args.tag else ""))
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    command = (f".venv/bin/python bench/baseline.py --recipe {args.recipe} --device {args.device} --seeds "
               + " ".join(map(str, args.seeds)))
    lines = [f"# Search vs hand-designed students: `{profile.name}`, recipe `{args.recipe}`", "",
             f"Command: `{command}` ({result['seconds']:.0f} s). Latency measured here: {result['machine']}, "
             f"{result['runtime']}, {profile.threads} threads, batch {profile.batch_size}, p90 of {ROUNDS} x {RUNS} runs; "
             f"budget p90 <= {budget} ms. Teacher: {search_row['teacher']}. Seeds: {args.seeds}. Search's latency "
             f"model: {searched.table_note}.", "",
             "| student | arch | MACs (M) | measured p50 / p90 (ms) | predicted p90 (ms) | val top-1 (%) per seed | "
             "test top-1 (%) per seed | test mean |",
             "|---|---|---:|---:|---:|---|---|---:|"]
    for r in rows:
        lines.append(f"| {r['student']} | `{r['arch']}` | {r['macs'] / 1e6:.2f} | {r['measured_p50_ms']:.3f} / "
                     f"{r['measured_p90_ms']:.3f} | {r['predicted_p90_ms']:.3f} | "
                     f"{', '.join(f'{v:.2f}' for v in r['val_top1'])} | {', '.join(f'{v:.2f}' for v in r['test_top1'])} "
                     f"| {r['test_mean']:.2f} |")
    if hand_rows:
        s = summary
        lines += ["", f"Best hand-designed student by validation top-1: **{s['best_hand_designed']}**. Search minus it, "
                  f"test top-1, paired by seed: **{s['search_minus_best_hand_designed']:+.2f} ± "
                  f"{s['search_minus_best_hand_designed_se']:.2f} points** (mean ± standard error over "
                  f"{len(args.seeds)} seeds; per seed {', '.join(f'{d:+.2f}' for d in s['per_seed_differences'])}). "
                  f"Target +1 point: {'met' if s['target_met'] else 'not met'}. (For reference only, the best by test "
                  f"top-1 is {s['best_hand_designed_on_test_for_reference']}: search minus it "
                  f"{s['search_minus_best_on_test_for_reference']:+.2f}.)"]
    lines += ["", "Uniform students' measured p90 (ms), depth 1..4 per stage:", "",
              "| (kernel, expand) | " + " | ".join(f"x{d}" for d in space.depths) + " |",
              "|---|" + "---:|" * len(space.depths)]
    for b in space.choices:
        lines.append(f"| k{b.kernel}e{b.expand} | " + " | ".join(
            f"{timed[f'uniform k{b.kernel}e{b.expand} x{d}'][1]:.3f}" for d in space.depths) + " |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
