"""Does one generic teacher distill every pool student as well as a specialised one?

For each student of bench/kd_students.json: no KD, KD from a vanilla (CE-only) teacher, KD from
the GTN teacher, and for some students KD from an SFTN teacher specialised to that student;
every cell over several seeds. Only the teacher differs between methods: same recipe, student
initialisation (the seed), KD hyperparameters, epochs and data order.

    .venv/bin/python bench/kd_effect.py            # full table, recipe kd (112 min on 2 cores, measured)
    .venv/bin/python bench/kd_effect.py --quick    # recipe kd-quick, 3 students, seed 0 (< 15 min, cold cache)
    .venv/bin/python bench/kd_effect.py --pick-students   # rewrite bench/kd_students.json
    .venv/bin/python bench/kd_effect.py --rerender bench/results/kd_effect.json  # re-summarise, no training

Results: bench/results/kd_effect[-quick].json (every run) and .md (the table). Everything is
cached (--cache-dir), so an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from gtnpipe import pipeline
from gtnpipe.config.recipes import load_recipe
from gtnpipe.space.counting import count
from gtnpipe.space.spaces import get_space
from gtnpipe.stages.workspace import Workspace, resolve

HERE = Path(__file__).parent
STUDENTS_FILE = HERE / "kd_students.json"
RESULTS = HERE / "results"
METHODS = ("none", "vanilla", "gtn", "sftn")


def pick_students(space_name: str = "mbv3-28", *, n_quantiles: int = 8, pool_sample: int = 2000, seed: int = 0) -> dict:
    """Archs nearest to the MACs quantiles 1/(n+1)..n/(n+1) of a seeded pool sample, plus the extremes."""
    space = get_space(space_name)
    task = pipeline.FASHION_MNIST_TASK
    sample = sorted((count(a, space, task).macs, a.id) for a in space.sample_many(pool_sample, seed=seed))
    picks = [sample[round(q * (len(sample) - 1) / (n_quantiles + 1))] for q in range(1, n_quantiles + 1)]
    rows = ([(count(space.smallest(), space, task).macs, space.smallest().id)] + picks
            + [(count(space.largest(), space, task).macs, space.largest().id)])
    return {
        "how": f"{pool_sample} archs sampled with seed {seed}; the one nearest each MACs quantile "
               f"k/{n_quantiles + 1}, k = 1..{n_quantiles}; plus the smallest and largest",
        "students": [{"arch": a, "macs": m} for m, a in rows],
    }


def spread(values: list[float]) -> tuple[float, float]:
    """Mean and half the range (over seeds)."""
    return statistics.fmean(values), (max(values) - min(values)) / 2


def _teacher_job(method: str, student: str | None, recipe: str, cache_dir: Path | None, threads: int) -> dict:
    torch.set_num_threads(threads)
    return asdict(pipeline.train_teacher(Workspace.open(recipe, cache_dir=cache_dir, progress=False), method, student=student))


def _student_job(arch: str, method: str, seed: int, recipe: str, cache_dir: Path | None, threads: int) -> dict:
    torch.set_num_threads(threads)
    ws = Workspace.open(recipe, cache_dir=cache_dir, progress=False)
    return asdict(pipeline.distill_student(ws, arch, teacher=method, seed=seed))


def run_all(jobs: dict[str, tuple], deps: dict[str, list[str]], workers: int) -> dict[str, dict]:
    """Run every job (name -> (fn, *args)) once its dependencies are done, `workers` at a time, in the
    order given (teachers first: they are the critical path). Each job is cached, so a rerun resumes."""
    done: dict[str, dict] = {}
    pending = list(jobs)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        running: dict[Future, str] = {}
        while pending or running:
            for name in [n for n in pending if all(d in done for d in deps.get(n, []))]:
                if len(running) >= workers:
                    break
                fn, *args = jobs[name]
                running[pool.submit(fn, *args)] = name
                pending.remove(name)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                done[name] = future.result()
                print(f"[{time.strftime('%H:%M:%S')}] {name}: {done[name]['test_top1']:.2f}%", flush=True)
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="recipe kd-quick, 3 students, SFTN on 1")
    parser.add_argument("--recipe", help="override the recipe (default: kd, or kd-quick with --quick)")
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="default 0 1 (--quick: 0, to stay under 15 minutes on 2 cores; with 0 1 it takes ~21)")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="trainings run at once, each with cores/jobs threads (default: one per core; small "
                             "CNNs use one thread each far better than two threads one)")
    parser.add_argument("--threads", type=int, help="torch threads per training (default: cores / jobs)")
    parser.add_argument("--name", help="results file stem (default kd_effect or kd_effect-quick)")
    parser.add_argument("--pick-students", action="store_true", help="rewrite bench/kd_students.json and exit")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="student methods to run (default all; e.g. leave out 'none' when only the KD "
                             "settings changed: the no-KD runs do not depend on them)")
    parser.add_argument("--rerender", type=Path, metavar="JSON",
                        help="rewrite JSON's table and its .md with this version's summary, and exit (no training)")
    args = parser.parse_args()

    if args.rerender:
        print(rerender(args.rerender))
        return

    if args.pick_students:
        STUDENTS_FILE.write_text(json.dumps(pick_students(), indent=2) + "\n")
        print(f"wrote {STUDENTS_FILE}")
        return
    args.seeds = args.seeds or ([0] if args.quick else [0, 1])
    recipe = args.recipe or ("kd-quick" if args.quick else "kd")
    students = [s["arch"] for s in json.loads(STUDENTS_FILE.read_text())["students"]]
    if args.quick:
        students = [students[0], students[len(students) // 2], students[-1]]
        sftn_students = [students[0]]
    else:
        sftn_students = [students[0], students[len(students) // 2], students[-1]]
    task = pipeline.FASHION_MNIST_TASK
    rec, space = resolve(load_recipe(recipe), task.image_hw)
    started = time.perf_counter()
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)

    # every teacher first, then the students; a GTN/SFTN teacher fine-tuned from the vanilla one waits for it
    warm = rec.gtn.teacher_init == "vanilla"
    jobs: dict[str, tuple] = {"teacher vanilla": (_teacher_job, "vanilla", None, recipe, args.cache_dir, threads)}
    deps: dict[str, list[str]] = {}
    teacher_of = {"vanilla": "teacher vanilla", "gtn": "teacher gtn"}
    for method, student in [("gtn", None)] + [("sftn", a) for a in sftn_students if "sftn" in args.methods]:
        name = f"teacher {method}" + (f":{student}" if student else "")
        jobs[name] = (_teacher_job, method, student, recipe, args.cache_dir, threads)
        deps[name] = ["teacher vanilla"] if warm else []
    for arch in students:
        for method in args.methods:
            if method == "sftn" and arch not in sftn_students:
                continue
            for seed in args.seeds:
                name = f"{method} {arch} seed {seed}"
                jobs[name] = (_student_job, arch, method, seed, recipe, args.cache_dir, threads)
                teacher = f"teacher sftn:{arch}" if method == "sftn" else teacher_of.get(method)
                deps[name] = [teacher] if teacher else []
    done = run_all(jobs, deps, args.jobs)
    teachers = {name.removeprefix("teacher "): out for name, out in done.items() if name.startswith("teacher ")}
    runs = [out for name, out in done.items() if not name.startswith("teacher ")]

    report = summarise(runs, teachers, students, args.seeds, recipe, rec, space, task)
    report["wall_seconds_this_invocation"] = time.perf_counter() - started
    report["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                         "jobs": args.jobs, "torch_threads_per_job": threads}
    report["command"] = "python bench/kd_effect.py" + (" --quick" if args.quick else "") + (
        f" --recipe {args.recipe}" if args.recipe else "") + f" --seeds {' '.join(map(str, args.seeds))}" + (
        f" --jobs {args.jobs}") + (f" --name {args.name}" if args.name else "") + (
        f" --methods {' '.join(args.methods)}" if tuple(args.methods) != METHODS else "")
    name = args.name or ("kd_effect-quick" if args.quick else "kd_effect")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(render(report) + "\n")
    print(render(report))


def training_flops(macs_per_image: float, images: int, epochs: int) -> float:
    # forward 2 FLOPs per MAC; backward about twice the forward (Kaplan et al. 2020's 6N rule)
    return 6.0 * macs_per_image * images * epochs


def summarise(runs: list[dict], teachers: dict[str, Any], students: list[str], seeds: list[int], recipe: str,
              rec: Any, space: Any, task: Any) -> dict[str, Any]:
    from gtnpipe.models.counting import count_module
    from gtnpipe.models.teacher import build_teacher, teacher_for

    teacher_macs = count_module(build_teacher(teacher_for(space, rec.teacher), space, task), task).macs
    n_train = rec.data.train_subset or 55000
    teacher_rows = {}
    for name, t in teachers.items():
        per_image = teacher_macs + (t["log"]["branch_macs_per_image_per_step"] if t.get("log") else 0.0)
        init_epochs = t.get("init_epochs", 0)  # fine-tuned from the vanilla teacher: its training is part of the cost
        teacher_rows[name] = {
            "test_top1": t["test_top1"], "train_seconds": t["train_seconds"], "epochs": t["epochs"],
            "init_epochs": init_epochs, "init_train_seconds": t.get("init_train_seconds", 0.0),
            "training_flops": training_flops(per_image, n_train, t["epochs"])
            + training_flops(teacher_macs, n_train, init_epochs), "key": t["key"],
        }
    vanilla = teacher_rows["vanilla"]
    gtn = teacher_rows["gtn"]
    sftn = [v for k, v in teacher_rows.items() if k.startswith("sftn:")]
    sftn_seconds = statistics.fmean(v["train_seconds"] for v in sftn) if sftn else float("nan")
    sftn_flops = statistics.fmean(v["training_flops"] for v in sftn) if sftn else float("nan")
    cost = {
        "gtn_over_vanilla_wall": gtn["train_seconds"] / vanilla["train_seconds"],
        "gtn_over_vanilla_flops": gtn["training_flops"] / vanilla["training_flops"],
        # GTN replaces one SFTN teacher per student: it pays off from this many students on
        "break_even_students_wall": gtn["train_seconds"] / sftn_seconds,
        "break_even_students_flops": gtn["training_flops"] / sftn_flops,
    }

    table = []
    for arch in students:
        row: dict[str, Any] = {"arch": arch, "macs": count(space.parse(arch), space, task).macs}
        for method in METHODS:
            values = [r["test_top1"] for r in runs if r["arch"] == arch and r["teacher"] == method]
            if values:
                row[method] = {"mean": spread(values)[0], "half_range": spread(values)[1], "n": len(values)}
        row["gtn_minus_vanilla_per_seed"] = gtn_minus_vanilla(runs, arch, seeds)
        table.append(row)

    def per_seed_mean(method: str, seed: int, subset: list[str] | None = None) -> float:
        vals = [r["test_top1"] for r in runs if r["teacher"] == method and r["seed"] == seed
                and (subset is None or r["arch"] in subset)]
        return statistics.fmean(vals)

    sftn_archs = [k.split(":", 1)[1] for k in teachers if k.startswith("sftn:")]
    ran = {r["teacher"] for r in runs}  # a run may leave methods out (--methods)

    def gap(other: str, subset: list[str] | None = None) -> dict[int, float]:
        if other not in ran or "gtn" not in ran:
            return {}
        return {s: per_seed_mean("gtn", s, subset) - per_seed_mean(other, s, subset) for s in seeds}

    gaps = {
        "gtn_minus_vanilla_per_seed": gap("vanilla"),
        "gtn_minus_none_per_seed": gap("none"),
        "gtn_minus_sftn_per_seed_on_sftn_students": gap("sftn", sftn_archs),
    }
    targets = {
        name: bool(gaps[key]) and all(g >= bound for g in gaps[key].values())
        for name, key, bound in (("gtn_beats_vanilla_by_0.3_every_seed", "gtn_minus_vanilla_per_seed", 0.3),
                                 ("gtn_beats_none_by_1_every_seed", "gtn_minus_none_per_seed", 1.0),
                                 ("gtn_within_0.3_of_sftn_every_seed", "gtn_minus_sftn_per_seed_on_sftn_students", -0.3))
    } | {"gtn_cost_at_most_1.5x_vanilla": cost["gtn_over_vanilla_wall"] <= 1.5}
    return {"recipe": recipe, "seeds": seeds, "teachers": teacher_rows, "cost": cost, "table": table, "gaps": gaps,
            "targets_met": targets, "runs": runs}


def gtn_minus_vanilla(runs: list[dict], arch: str, seeds: list[int]) -> dict[int, float]:
    top1 = {(r["teacher"], r["seed"]): r["test_top1"] for r in runs if r["arch"] == arch}
    return {s: top1[("gtn", s)] - top1[("vanilla", s)] for s in seeds
            if ("gtn", s) in top1 and ("vanilla", s) in top1}


def rerender(path: Path) -> str:
    """Re-render a results JSON with this version's table (the runs and timings stay as measured)."""
    report = json.loads(path.read_text())
    for row in report["table"]:
        row["gtn_minus_vanilla_per_seed"] = gtn_minus_vanilla(report["runs"], row["arch"], report["seeds"])
    text = render(report)
    path.write_text(json.dumps(report, indent=2) + "\n")
    path.with_suffix(".md").write_text(text + "\n")
    return text


def render(report: dict[str, Any]) -> str:
    def cell(row: dict, method: str) -> str:
        c = row.get(method)
        return f"{c['mean']:.2f} ± {c['half_range']:.2f}" if c else "–"

    lines = [f"Command: `{report['command']}`; recipe `{report['recipe']}`, seeds {report['seeds']}; "
             "top-1 (%) on the test split, mean ± half-range over seeds.", "",
             "| student | MACs (M) | no KD | vanilla KD | GTN KD | SFTN KD | GTN − vanilla per seed |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in report["table"]:
        gaps = " / ".join(f"{g:+.2f}" for g in row.get("gtn_minus_vanilla_per_seed", {}).values()) or "–"
        lines.append(f"| `{row['arch']}` | {row['macs'] / 1e6:.2f} | " + " | ".join(
            cell(row, m) for m in METHODS) + f" | {gaps} |")
    wins = [g for row in report["table"] for g in row.get("gtn_minus_vanilla_per_seed", {}).values()]
    if wins:
        lines += ["", f"GTN-KD above vanilla KD in {sum(g > 0 for g in wins)} of {len(wins)} (student, seed) pairs, "
                      f"below in {sum(g < 0 for g in wins)}; mean {statistics.fmean(wins):+.2f}, "
                      f"standard deviation {statistics.pstdev(wins):.2f} points."]
    lines += ["", "| teacher | own test top-1 | epochs | train wall-clock (s) | est. training FLOPs |",
              "|---|---:|---:|---:|---:|"]
    for name, t in report["teachers"].items():
        epochs = (f"{t['init_epochs']} vanilla + {t['epochs']} fine-tuning" if t.get("init_epochs")
                  else str(t["epochs"]))
        lines.append(f"| {name} | {t['test_top1']:.2f} | {epochs} | {t['train_seconds']:.0f} | "
                     f"{t['training_flops']:.3g} |")
    c, g = report["cost"], report["gaps"]
    lines += [
        "",
        f"GTN teacher cost over vanilla: {c['gtn_over_vanilla_wall']:.2f}x wall-clock, "
        f"{c['gtn_over_vanilla_flops']:.2f}x FLOPs; break-even against SFTN at "
        f"{c['break_even_students_wall']:.2f} students (wall-clock), {c['break_even_students_flops']:.2f} (FLOPs).",
        "",
        "Mean over students, per seed: " + "; ".join(
            f"{label}: " + ", ".join(f"seed {s}: {v:+.2f}" for s, v in g[key].items())
            for label, key in (("GTN − vanilla", "gtn_minus_vanilla_per_seed"), ("GTN − no KD", "gtn_minus_none_per_seed"),
                               ("GTN − SFTN (SFTN students only)", "gtn_minus_sftn_per_seed_on_sftn_students"))
            if g[key]) + ".",
        "",
        "Targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in report["targets_met"].items()) + ".",
    ]
    if "machine" in report:
        m = report["machine"]
        lines += ["", f"This invocation: {report['wall_seconds_this_invocation'] / 60:.0f} min on {m['cores']} cores "
                      f"({m['jobs']} jobs x {m['torch_threads_per_job']} torch threads; cached runs take no time)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
