"""Does one generic teacher distill pool students better than a vanilla one?

For each student of bench/kd_students.json (by default the smaller half of the pool: the students a real capacity
gap separates from the teacher): no KD, KD from a vanilla (CE-only) teacher, KD from the GTN teacher, and for one
student KD from an SFTN teacher specialised to it; every cell over several seeds. Only the teacher differs between
methods: same recipe, student initialisation (the seed), epochs and data order. Each teacher's KD hyperparameters
(alpha, tau) are chosen on the validation split from one small grid, the same grid for every teacher; the test split
is only reported. The summary gives the paired difference GTN-KD minus vanilla-KD over all (student, seed) pairs
with its standard error, and per seed.

    .venv/bin/python bench/kd_effect.py --seeds 0 1 2           # the final table, recipe kd
    .venv/bin/python bench/kd_effect.py --recipe bench/recipes/kd-g1.toml --seeds 0 --no-tune --name kd_effect-g1
                                                                 # one GTN configuration screened on seed 0
    .venv/bin/python bench/kd_effect.py --pick-students          # rewrite bench/kd_students.json

Every finished run (teacher or student) is appended to bench/results/kd_effect-runs.json, keyed by what it trained
(its stage input without the code fingerprint): a later invocation, on this machine or another, takes the runs it
finds there instead of redoing them, so a table can be finished across sessions. Commit that file.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import multiprocessing
import os
import statistics
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import MISSING, asdict, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import torch

from gtnpipe import pipeline
from gtnpipe.fsutil import atomic_write_json, canonical_json
from gtnpipe.space.counting import count
from gtnpipe.space.spaces import get_space
from gtnpipe.stages import training
from gtnpipe.stages.keys import Stage
from gtnpipe.stages.workspace import Workspace

HERE = Path(__file__).parent
STUDENTS_FILE = HERE / "kd_students.json"
RESULTS = HERE / "results"
STORE = RESULTS / "kd_effect-runs.json"
METHODS = ("none", "vanilla", "gtn", "sftn")
GRID = ((0.5, 2.0), (0.9, 2.0), (0.5, 4.0), (0.9, 4.0))  # (alpha, tau): every teacher is tuned on this grid
TUNE_STUDENTS = 2  # the grid is scored on the first and the middle student of the set, seed 0, validation split
COST_LIMIT = 3.0  # the GTN teacher may cost this many vanilla teachers (wall-clock)


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


def student_set(which: str) -> list[str]:
    archs = [s["arch"] for s in json.loads(STUDENTS_FILE.read_text())["students"]]
    if which == "small":  # the smaller half of the pool (by MACs)
        return archs[: len(archs) // 2]
    if which == "quick":
        return [archs[0], archs[len(archs) // 2], archs[-1]]
    if which == "screen":  # three of the smaller half, the cheapest to train: one GTN configuration's first look
        return [archs[0], archs[1], archs[3]]
    return archs


# --- what a run is, as a key that survives code changes ------------------------------------------------------------

def _plain(value: Any) -> Any:
    """Plain JSON of a stage input; a field at its default is left out, so a setting added later (at a default that
    keeps the old behaviour) leaves the keys of the runs already stored as they were."""
    if is_dataclass(value) and not isinstance(value, type):
        out = {f.name: _plain(getattr(value, f.name)) for f in fields(value)
               if f.metadata.get("keyed", True) and not _is_default(f, getattr(value, f.name))}
        return out | ({"stage": type(value).STAGE} if isinstance(value, Stage) else {})
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value if not isinstance(value, Path) else str(value)


def _is_default(f: Any, value: Any) -> bool:
    if f.default is not MISSING:
        return bool(value == f.default)
    return f.default_factory is not MISSING and bool(value == f.default_factory())


def run_key(inp: Stage) -> str:
    """What a run trained: its stage input (recipe settings, data fingerprint, seed, teacher) without the code
    fingerprints and package versions the cache keys also hold, so results stay comparable across commits."""
    return hashlib.sha256(canonical_json(_plain(inp)).encode()).hexdigest()[:20]


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "gtnpipe"], cwd=HERE.parent, capture_output=True,
                               text=True, check=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


# --- the jobs (each in its own process) ----------------------------------------------------------------------------

def _with_kd(ws: Workspace, alpha: float, tau: float) -> Workspace:
    """The workspace with its recipe's [distill] alpha and temperature replaced (one point of the KD grid)."""
    return replace(ws, recipe=replace(ws.recipe, distill=replace(ws.recipe.distill, alpha=alpha, temperature=tau)))


def _workspace(recipe: str, cache_dir: Path | None, alpha: float | None = None, tau: float | None = None) -> Workspace:
    ws = Workspace.open(recipe, cache_dir=cache_dir, progress=False)
    return _with_kd(ws, alpha, tau) if alpha is not None and tau is not None else ws


def _teacher_job(method: str, student: str | None, recipe: str, cache_dir: Path | None, threads: int,
                 probe: list[str]) -> dict:
    torch.set_num_threads(threads)
    ws = _workspace(recipe, cache_dir)
    out = asdict(pipeline.train_teacher(ws, method, student=student))
    if method == "gtn":  # do the branches become real students? the supernet's val top-1 on the benchmark's students
        out["inherited_val_top1"] = dict(zip(probe, pipeline.inherited_accuracies(ws, probe), strict=True))
    return out


def _student_job(arch: str, method: str, seed: int, recipe: str, alpha: float, tau: float, cache_dir: Path | None,
                 threads: int) -> dict:
    torch.set_num_threads(threads)
    ws = _workspace(recipe, cache_dir, alpha, tau)
    return asdict(pipeline.distill_student(ws, arch, teacher=method, seed=seed))


class Store:
    """bench/results/kd_effect-runs.json: run key -> {what, result, commit, cpu, finished}; rewritten atomically after
    every run, so an interrupted invocation loses at most the runs in flight. Invocations running side by side
    share it: each write re-reads the file under a lock and adds its run to what is there."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.runs: dict[str, dict] = self.read()

    def read(self) -> dict[str, dict]:
        return json.loads(self.path.read_text())["runs"] if self.path.exists() else {}

    def add(self, key: str, what: dict, result: dict) -> None:
        entry = {"what": what, "result": result, "commit": _commit(), "cpu": _cpu(),
                 "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with self._locked():
            self.runs = self.read() | {key: entry}
            self.save()

    def save(self) -> None:
        atomic_write_json(self.path, {"about": "every run of bench/kd_effect.py, keyed by what it trained (run_key)",
                                      "runs": self.runs})

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield


def run_all(jobs: dict[str, tuple], whats: dict[str, dict], deps: dict[str, list[str]], store: Store,
            workers: int) -> dict[str, dict]:
    """Run every job (key -> (fn, *args)) not already in the store once its dependencies are done, `workers` at a
    time, in the order given (teachers first: they are the critical path)."""
    store.runs = store.read() | store.runs  # what invocations beside this one finished meanwhile
    done = {k: store.runs[k]["result"] for k in jobs if k in store.runs}
    pending = [k for k in jobs if k not in done]
    print(f"{len(done)} of {len(jobs)} runs found in {store.path.name}; {len(pending)} to run", flush=True)
    with ProcessPoolExecutor(max(1, workers), mp_context=multiprocessing.get_context("spawn")) as pool:
        running: dict[Future, str] = {}
        while pending or running:
            ready = [k for k in pending if all(d in done for d in deps.get(k, []))]
            for key in sorted(ready, key=lambda k: whats[k]["kind"] != "teacher"):  # stable: teachers first
                if len(running) >= workers:
                    break
                fn, *args = jobs[key]
                running[pool.submit(fn, *args)] = key
                pending.remove(key)
            if not running:
                raise RuntimeError(f"jobs wait on dependencies that are not scheduled: {pending}")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                key = running.pop(future)
                done[key] = future.result()
                store.add(key, whats[key], done[key])
                print(f"[{time.strftime('%H:%M:%S')}] {whats[key]['label']}: test {done[key]['test_top1']:.2f}%"
                      + (f", val {done[key]['val_top1']:.2f}%" if done[key].get("val_top1") is not None else ""),
                      flush=True)
    return done


# --- the plan -------------------------------------------------------------------------------------------------------

class Plan:
    """The runs of one invocation: keys, labels, dependencies."""

    def __init__(self, ws: Workspace, recipe: str, cache_dir: Path | None, threads: int, students: list[str]) -> None:
        self.ws, self.recipe, self.cache_dir, self.threads, self.students = ws, recipe, cache_dir, threads, students
        self.jobs: dict[str, tuple] = {}
        self.whats: dict[str, dict] = {}
        self.deps: dict[str, list[str]] = {}

    def teacher(self, method: str, student: str | None = None) -> str:
        inp = training.teacher_input(self.ws, method, student=student)
        key = run_key(inp)
        if key not in self.jobs:
            self.jobs[key] = (_teacher_job, method, student, self.recipe, self.cache_dir, self.threads, self.students)
            self.whats[key] = {"kind": "teacher", "method": method, "student": student, "recipe": self.recipe,
                               "label": f"teacher {method}" + (f":{student}" if student else "")}
            init = getattr(inp, "init_from", None)
            self.deps[key] = [self.teacher("vanilla")] if init is not None else []
        return key

    def student(self, arch: str, method: str, seed: int, hp: tuple[float, float]) -> str:
        alpha, tau = hp
        key = run_key(training.distill_input(_with_kd(self.ws, alpha, tau), arch, teacher=method, seed=seed))
        if key not in self.jobs:
            self.jobs[key] = (_student_job, arch, method, seed, self.recipe, alpha, tau, self.cache_dir, self.threads)
            self.whats[key] = {"kind": "student", "method": method, "arch": arch, "seed": seed, "recipe": self.recipe,
                               "alpha": alpha if method != "none" else None, "tau": tau if method != "none" else None,
                               "label": f"{method} {arch} seed {seed}" + (f" a{alpha} t{tau}" if method != "none" else "")}
            if method != "none":
                self.deps[key] = [self.teacher(method, arch if method == "sftn" else None)]
        return key


def rekey(store: Store, cache_dir: Path | None) -> None:
    """Every stored run under the key the current run_key gives what it trained (its recipe, method, student, seed,
    alpha and tau, as stored), so runs stored before a change of the key function are found again."""
    with store._locked():
        store.runs = store.read()
        _rekey(store, cache_dir)


def _rekey(store: Store, cache_dir: Path | None) -> None:
    plans: dict[str, Plan] = {}
    moved: dict[str, dict] = {}
    for old, entry in store.runs.items():
        what = entry["what"]
        if what["recipe"] not in plans:
            plans[what["recipe"]] = Plan(_workspace(what["recipe"], cache_dir), what["recipe"], cache_dir, 1, [])
        plan = plans[what["recipe"]]
        new = (plan.teacher(what["method"], what.get("student")) if what["kind"] == "teacher" else
               plan.student(what["arch"], what["method"], what["seed"], (what["alpha"], what["tau"])
                            if what["method"] != "none" else (0.0, 1.0)))
        moved[new] = entry
        print(f"{old} -> {new}: {what['label']}")
    store.runs = moved
    store.save()


def choose_hp(results: dict[str, dict], keys: dict[tuple[float, float], list[str]]) -> dict[str, Any]:
    """The grid point of highest mean validation top-1 (first on ties), and every point's mean."""
    scores = {hp: statistics.fmean(results[k]["val_top1"] for k in ks) for hp, ks in keys.items()}
    best = max(scores, key=lambda hp: (scores[hp], -list(scores).index(hp)))
    return {"chosen": list(best), "val_top1_by_grid_point": {f"alpha {a} tau {t}": v for (a, t), v in scores.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="kd", help="recipe name or TOML (its [gtn] is the GTN configuration)")
    parser.add_argument("--students", choices=("small", "all", "quick", "screen"), default="small",
                        help="small: the smaller half of bench/kd_students.json (default); all; quick: smallest, median "
                             "and largest; screen: the 1st, 2nd and 4th (the cheapest three of the smaller half)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--sftn-students", type=int, default=1, help="how many students get an SFTN teacher (first n)")
    parser.add_argument("--no-tune", action="store_true",
                        help="every teacher at the recipe's [distill] alpha/tau instead of the grid's validation pick")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="trainings at once, each with cores/jobs threads (small CNNs use one thread each best)")
    parser.add_argument("--threads", type=int, help="torch threads per training (default: cores / jobs)")
    parser.add_argument("--name", default="kd_effect", help="results file stem under bench/results")
    parser.add_argument("--store", type=Path, default=STORE, help="the runs file (default bench/results/kd_effect-runs.json)")
    parser.add_argument("--pick-students", action="store_true", help="rewrite bench/kd_students.json and exit")
    parser.add_argument("--rekey", action="store_true",
                        help="recompute every stored run's key from what it trained (after run_key changed), and exit")
    args = parser.parse_args()
    if args.pick_students:
        STUDENTS_FILE.write_text(json.dumps(pick_students(), indent=2) + "\n")
        print(f"wrote {STUDENTS_FILE}")
        return
    if args.rekey:
        rekey(Store(args.store), args.cache_dir)
        return

    started = time.perf_counter()
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    ws = _workspace(args.recipe, args.cache_dir)
    students = student_set(args.students)
    plan = Plan(ws, args.recipe, args.cache_dir, threads, students)
    store = Store(args.store)
    recipe_hp = (ws.recipe.distill.alpha, ws.recipe.distill.temperature)
    kd_methods = [m for m in args.methods if m != "none"]
    sftn_students = students[: args.sftn_students] if "sftn" in kd_methods else []

    # 1. tuning: each teacher on the grid, seed 0, validation split (SFTN on its own student)
    tune_archs = [students[0], students[len(students) // 2]][:TUNE_STUDENTS]
    tune_keys: dict[str, dict[tuple[float, float], list[str]]] = {}
    for method in kd_methods:
        grid = [recipe_hp] if args.no_tune else list(GRID)
        archs = sftn_students if method == "sftn" else tune_archs
        tune_keys[method] = {hp: [plan.student(a, method, args.seeds[0], hp) for a in archs] for hp in grid}
    plan.teacher("vanilla")
    if "gtn" in kd_methods:
        plan.teacher("gtn")
    for arch in sftn_students:
        plan.teacher("sftn", arch)
    for arch in students:
        for seed in args.seeds if "none" in args.methods else []:
            plan.student(arch, "none", seed, recipe_hp)
    results = run_all(dict(plan.jobs), plan.whats, plan.deps, store, args.jobs)
    tuning = {m: choose_hp(results, keys) for m, keys in tune_keys.items()}
    for m, t in tuning.items():
        print(f"{m}: alpha {t['chosen'][0]}, tau {t['chosen'][1]} (validation: "
              + ", ".join(f"{k} {v:.2f}" for k, v in t["val_top1_by_grid_point"].items()) + ")", flush=True)

    # 2. the table at each teacher's chosen alpha/tau
    table_keys: dict[tuple[str, str, int], str] = {}
    for arch in students:
        for seed in args.seeds:
            for method in args.methods:
                if method == "sftn" and arch not in sftn_students:
                    continue
                hp = tuple(tuning[method]["chosen"]) if method in tuning else recipe_hp
                table_keys[(method, arch, seed)] = plan.student(arch, method, seed, hp)  # type: ignore[arg-type]
    results |= run_all(dict(plan.jobs), plan.whats, plan.deps, store, args.jobs)

    teachers = {("sftn:" + w["student"] if w["method"] == "sftn" else w["method"]): results[k]
                for k, w in plan.whats.items() if w["kind"] == "teacher"}
    runs = [{**results[k], "teacher": m, "arch": a, "seed": s, "run_key": k} for (m, a, s), k in table_keys.items()]
    report = summarise(runs, teachers, tuning, students, args.seeds, ws.recipe, ws.space, ws.task,
                       len(ws.teacher_data[0].train))
    report["wall_seconds_this_invocation"] = time.perf_counter() - started
    report["machine"] = {"cpu": _cpu(), "cores": os.cpu_count(), "jobs": args.jobs, "torch_threads_per_job": threads}
    report["command"] = (f"python bench/kd_effect.py --recipe {args.recipe} --students {args.students} --seeds "
                         f"{' '.join(map(str, args.seeds))} --jobs {args.jobs} --name {args.name}"
                         + (" --no-tune" if args.no_tune else "")
                         + (f" --methods {' '.join(args.methods)}" if tuple(args.methods) != METHODS else ""))
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(RESULTS / f"{args.name}.json", report)
    (RESULTS / f"{args.name}.md").write_text(render(report) + "\n")
    print(render(report))


# --- the summary ----------------------------------------------------------------------------------------------------

def training_flops(macs_per_image: float, images: int, epochs: float, *, backward: bool = True) -> float:
    # forward 2 FLOPs per MAC; backward about twice the forward (Kaplan et al. 2020's 6N rule)
    return (6.0 if backward else 2.0) * macs_per_image * images * epochs


def paired(runs: list[dict], a: str, b: str, split: str = "test_top1", archs: list[str] | None = None) -> dict[str, Any]:
    """a minus b over every (student, seed) pair both ran: mean, standard error, per seed, count above zero."""
    top1 = {(r["teacher"], r["arch"], r["seed"]): r[split] for r in runs if archs is None or r["arch"] in archs}
    diffs = {(arch, seed): v - top1[(b, arch, seed)] for (m, arch, seed), v in top1.items()
             if m == a and (b, arch, seed) in top1}
    if not diffs:
        return {}
    values = list(diffs.values())
    seeds = sorted({s for _, s in diffs})
    return {"mean": statistics.fmean(values),
            "standard_error": statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan"),
            "n_pairs": len(values), "above_zero": sum(v > 0 for v in values),
            "per_seed": {str(s): statistics.fmean(v for (_, s2), v in diffs.items() if s2 == s) for s in seeds}}


def summarise(runs: list[dict], teachers: dict[str, dict], tuning: dict[str, Any], students: list[str],
              seeds: list[int], rec: Any, space: Any, task: Any, n_train: int) -> dict[str, Any]:
    """The report: `rec`, `space`, `task` as the workspace resolved them; `n_train` the teachers' training images."""
    from gtnpipe.models.counting import count_module
    from gtnpipe.models.teacher import build_teacher, teacher_for

    teacher_macs = count_module(build_teacher(teacher_for(space, rec.teacher), space, task), task).macs
    pretrain = rec.gtn.branch_pretrain_epochs
    teacher_rows = {}
    for name, t in teachers.items():
        branch = t["log"]["branch_macs_per_image_per_step"] if t.get("log") else 0.0
        pre = pretrain if name != "vanilla" else 0
        joint = t["epochs"] - pre
        teacher_rows[name] = {
            "test_top1": t["test_top1"], "train_seconds": t["train_seconds"], "epochs": t["epochs"],
            "pretrain_epochs": pre, "init_epochs": t.get("init_epochs", 0),
            "training_flops": (training_flops(teacher_macs, n_train, joint + t.get("init_epochs", 0))
                               + training_flops(teacher_macs, n_train, pre, backward=False)
                               + training_flops(branch, n_train, t["epochs"])),
            "key": t["key"],
        } | ({"inherited_val_top1": t["inherited_val_top1"]} if "inherited_val_top1" in t else {}) | (
            {"sampler_entropy_first_last": [t["log"]["entropy_trace"][0]["entropy_nats"],
                                            t["log"]["entropy_trace"][-1]["entropy_nats"]],
             "student_branch_top1_by_epoch": t["log"].get("student_branch_top1_by_epoch", {})}
            if t.get("log") and t["log"].get("entropy_trace") else {})
    vanilla, gtn = teacher_rows["vanilla"], teacher_rows.get("gtn")
    sftn = [v for k, v in teacher_rows.items() if k.startswith("sftn:")]
    cost: dict[str, float] = {}
    if gtn:
        cost = {"gtn_over_vanilla_wall": gtn["train_seconds"] / vanilla["train_seconds"],
                "gtn_over_vanilla_flops": gtn["training_flops"] / vanilla["training_flops"]}
        if sftn:  # GTN replaces one SFTN teacher per student: it pays off from this many students on
            cost["break_even_students_wall"] = gtn["train_seconds"] / statistics.fmean(v["train_seconds"] for v in sftn)
            cost["break_even_students_flops"] = gtn["training_flops"] / statistics.fmean(v["training_flops"] for v in sftn)

    table = []
    for arch in students:
        row: dict[str, Any] = {"arch": arch, "macs": count(space.parse(arch), space, task).macs}
        for method in METHODS:
            rs = [r for r in runs if r["arch"] == arch and r["teacher"] == method]
            if rs:
                test, val = [r["test_top1"] for r in rs], [r["val_top1"] for r in rs]
                row[method] = {"mean": statistics.fmean(test), "half_range": (max(test) - min(test)) / 2,
                               "val_mean": statistics.fmean(val), "n": len(rs)}
        row["gtn_minus_vanilla_per_seed"] = paired(runs, "gtn", "vanilla", archs=[arch]).get("per_seed", {})
        table.append(row)

    sftn_archs = [k.split(":", 1)[1] for k in teachers if k.startswith("sftn:")]
    diffs = {"gtn_minus_vanilla": paired(runs, "gtn", "vanilla"), "gtn_minus_none": paired(runs, "gtn", "none"),
             "vanilla_minus_none": paired(runs, "vanilla", "none"),
             "gtn_minus_sftn": paired(runs, "gtn", "sftn", archs=sftn_archs),
             "gtn_minus_vanilla_on_val": paired(runs, "gtn", "vanilla", "val_top1")}
    gaps = {"gtn_minus_vanilla_per_seed": diffs["gtn_minus_vanilla"].get("per_seed", {}),
            "gtn_minus_none_per_seed": diffs["gtn_minus_none"].get("per_seed", {}),
            "gtn_minus_sftn_per_seed_on_sftn_students": diffs["gtn_minus_sftn"].get("per_seed", {})}
    # the capacity gap: how far below its teacher each method's students end, on average
    capacity = {m: teacher_rows[m]["test_top1"] - statistics.fmean(r["test_top1"] for r in runs if r["teacher"] == m)
                for m in ("vanilla", "gtn") if m in teacher_rows and any(r["teacher"] == m for r in runs)}

    def every(key: str, bound: float) -> bool:
        return bool(gaps[key]) and all(g >= bound for g in gaps[key].values())

    gv = diffs["gtn_minus_vanilla"]
    targets = {"gtn_beats_vanilla_by_0.3_every_seed_and_mean": every("gtn_minus_vanilla_per_seed", 0.3)
               and bool(gv) and gv["mean"] >= 0.3,
               "gtn_beats_none_by_1_every_seed": every("gtn_minus_none_per_seed", 1.0),
               "gtn_within_0.3_of_sftn_every_seed": every("gtn_minus_sftn_per_seed_on_sftn_students", -0.3),
               f"gtn_cost_at_most_{COST_LIMIT:g}x_vanilla": bool(cost) and cost["gtn_over_vanilla_wall"] <= COST_LIMIT}
    return {"recipe": rec.name, "gtn": asdict(rec.gtn), "students": students, "seeds": seeds, "n_train": n_train,
            "kd_grid": [list(hp) for hp in GRID], "tuning": tuning, "teachers": teacher_rows, "cost": cost,
            "table": table, "paired": diffs, "gaps": gaps, "teacher_minus_student_mean": capacity,
            "targets_met": targets, "runs": runs}


def render(report: dict[str, Any]) -> str:
    def cell(row: dict, method: str) -> str:
        c = row.get(method)
        return f"{c['mean']:.2f} ± {c['half_range']:.2f}" if c else "–"

    def diff(d: dict) -> str:
        if not d:
            return "–"
        return (f"{d['mean']:+.2f} ± {d['standard_error']:.2f} (SE; {d['n_pairs']} pairs, {d['above_zero']} above 0; "
                "per seed " + " / ".join(f"{v:+.2f}" for v in d["per_seed"].values()) + ")")

    lines = [f"Command: `{report['command']}`; recipe `{report['recipe']}`, seeds {report['seeds']}, "
             f"{report['n_train']} training images; top-1 (%) on the test split, mean ± half-range over seeds. "
             "KD hyperparameters chosen per teacher on the validation split: "
             + "; ".join(f"{m} alpha {t['chosen'][0]} tau {t['chosen'][1]}" for m, t in report["tuning"].items()) + ".",
             "", "| student | MACs (M) | no KD | vanilla KD | GTN KD | SFTN KD | GTN − vanilla per seed |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in report["table"]:
        per_seed = " / ".join(f"{g:+.2f}" for g in row.get("gtn_minus_vanilla_per_seed", {}).values()) or "–"
        lines.append(f"| `{row['arch']}` | {row['macs'] / 1e6:.2f} | " + " | ".join(cell(row, m) for m in METHODS)
                     + f" | {per_seed} |")
    p = report["paired"]
    lines += ["", "Paired differences over (student, seed) pairs, test top-1 points, mean ± standard error:", "",
              f"- GTN − vanilla: {diff(p['gtn_minus_vanilla'])}",
              f"- GTN − vanilla on the validation split: {diff(p['gtn_minus_vanilla_on_val'])}",
              f"- GTN − no KD: {diff(p['gtn_minus_none'])}",
              f"- vanilla − no KD: {diff(p['vanilla_minus_none'])}",
              f"- GTN − SFTN (SFTN students only): {diff(p['gtn_minus_sftn'])}",
              "", "Teacher minus mean student (the capacity gap): " + ", ".join(
                  f"{m} {v:.2f}" for m, v in report["teacher_minus_student_mean"].items()) + " points.",
              "", "KD grid on the validation split (mean val top-1 of the tuning students, seed "
              f"{report['seeds'][0]}):", "", "| teacher | " + " | ".join(
                  f"alpha {a} tau {t}" for a, t in report["kd_grid"]) + " |", "|---|" + "---:|" * len(report["kd_grid"])]
    for m, t in report["tuning"].items():
        scores = t["val_top1_by_grid_point"]
        lines.append(f"| {m} | " + " | ".join(f"{scores[f'alpha {a} tau {tt}']:.2f}" if f"alpha {a} tau {tt}" in scores
                                               else "–" for a, tt in report["kd_grid"]) + " |")
    lines += ["", "| teacher | own test top-1 | epochs | train wall-clock (s) | est. training FLOPs |",
              "|---|---:|---:|---:|---:|"]
    for name, t in report["teachers"].items():
        epochs = str(t["epochs"])
        if t.get("init_epochs"):
            epochs = f"{t['init_epochs']} vanilla + " + (f"{t['pretrain_epochs']} branches only + "
                                                        if t.get("pretrain_epochs") else "") + \
                     f"{t['epochs'] - t.get('pretrain_epochs', 0)} joint"
        lines.append(f"| {name} | {t['test_top1']:.2f} | {epochs} | {t['train_seconds']:.0f} | {t['training_flops']:.3g} |")
    gtn = report["teachers"].get("gtn", {})
    if gtn.get("inherited_val_top1"):
        lines += ["", "GTN supernet, inherited-weight val top-1 of the students (BN recalibrated): " + ", ".join(
            f"{v:.1f}" for v in gtn["inherited_val_top1"].values()) + "."]
    if gtn.get("sampler_entropy_first_last"):
        h0, h1 = gtn["sampler_entropy_first_last"]
        lines += ["", f"GTN sampler entropy {h0:.2f} -> {h1:.2f} nats (`{report['gtn']['sampler']}`); whole-student "
                      "branch train-batch top-1 per epoch: " + "; ".join(
                          f"{k} " + ", ".join(f"{v:.1f}" for v in vs)
                          for k, vs in gtn.get("student_branch_top1_by_epoch", {}).items()) + "."]
    c = report["cost"]
    if c:
        lines += ["", f"GTN teacher cost over vanilla: {c['gtn_over_vanilla_wall']:.2f}x wall-clock, "
                      f"{c['gtn_over_vanilla_flops']:.2f}x FLOPs"
                  + (f"; break-even against SFTN at {c['break_even_students_wall']:.2f} students (wall-clock), "
                     f"{c['break_even_students_flops']:.2f} (FLOPs)" if "break_even_students_wall" in c else "") + "."]
    lines += ["", "Targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in report["targets_met"].items())
              + "."]
    if "machine" in report:
        m = report["machine"]
        lines += ["", f"This invocation: {report['wall_seconds_this_invocation'] / 60:.0f} min on {m['cores']} cores "
                      f"of {m['cpu']} ({m['jobs']} jobs x {m['torch_threads_per_job']} torch threads; runs found in "
                      "bench/results/kd_effect-runs.json take no time)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
