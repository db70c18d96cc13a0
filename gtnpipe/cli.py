"""`gtnpipe` command line: parse, call one function of `gtnpipe.pipeline`, print.

Heavy imports (torch, the pipeline) happen inside the commands, so `gtnpipe --help` is fast
and works with nothing but the CLI's own dependencies.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from gtnpipe.errors import GtnpipeError

__all__ = ["app", "main"]

app = typer.Typer(help="gtnpipe: one generic teacher, many students, many devices.", no_args_is_help=True,
                  add_completion=False,
                  pretty_exceptions_enable=False)
data_app = typer.Typer(help="Inspect datasets.", no_args_is_help=True)
pool_app = typer.Typer(help="Inspect the student pool (the supernet's search space).", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(pool_app, name="pool")
devices_app = typer.Typer(help="Device profiles: list, show, validate.", no_args_is_help=True)
app.add_typer(devices_app, name="devices")
out = Console()

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
RecipeOpt = Annotated[str, typer.Option("--recipe", "-r", help="Recipe name (recipes/NAME.toml) or path to a .toml.")]
CacheOpt = Annotated[
    Path | None,
    typer.Option("--cache-dir", envvar="GTNPIPE_CACHE", help="Cache folder [default: ~/.cache/gtnpipe]."),
]
SpaceOpt = Annotated[str, typer.Option("--space", help="Search space name.")]


@contextmanager
def _stdout_to_stderr(active: bool) -> Iterator[None]:
    """While active, whatever writes to file descriptor 1 (converters' progress bars, C++ logs) goes to stderr,
    so that --json output on stdout stays parseable."""
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@contextmanager
def _handled() -> Iterator[None]:
    """A GtnpipeError becomes one line on stderr and exit code 2; Ctrl-C says how to resume."""
    try:
        yield
    except GtnpipeError as err:
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted: run the same command again to resume after the last finished epoch")
        raise typer.Exit(130) from None


def _emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def _report(result: Any, text: str, *, as_json: bool) -> None:
    """Print a pipeline outcome (a dataclass) as JSON or as `text`; only rank 0 under torchrun."""
    from gtnpipe.training import distributed

    if not distributed.is_main():
        return
    if as_json:
        _emit_json(asdict(result))
    else:
        out.print(text)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug logs.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=Console(stderr=True), show_path=False)])


@data_app.command("info")
def data_info(
    data: Annotated[str | None, typer.Option("--data", help="fashion-mnist, an image folder or a .npz.")] = None,
    recipe: RecipeOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Dataset source, fingerprint, shape, classes and split sizes (splits as the recipe carves them)."""
    from gtnpipe import pipeline

    with _handled():
        info = pipeline.data_info(recipe=recipe, source=data)
    if as_json:
        return _emit_json(info)
    out.print(f"[bold]{info['name']}[/]  fingerprint {info['fingerprint'][:16]}…")
    out.print(f"images: {info['channels']} x {info['image_hw'][0]} x {info['image_hw'][1]} (C x H x W), "
              f"{len(info['classes'])} classes: {', '.join(info['classes'])}")
    out.print("splits: " + ", ".join(f"{k} {v}" for k, v in info["splits"].items()))


@pool_app.command("info")
def pool_info(space: SpaceOpt = "mbv3-28", as_json: JsonOpt = False) -> None:
    """Search space, pool size, and the MACs/params range (at Fashion-MNIST's 1x28x28, 10 classes)."""
    from gtnpipe import pipeline

    with _handled():
        info = pipeline.pool_info(space=space)
    if as_json:
        return _emit_json(info)
    c = info["choices"]
    out.print(f"[bold]{info['space']}[/]: {len(info['stages'])} elastic stages, depths {c['depths']}, "
              f"kernels {c['kernel_sizes']}, expand ratios {c['expand_ratios']}")
    out.print(f"pool size: {info['pool_size']:,} distinct students ({info['pool_size']:.2e})")
    small, large = info["smallest"], info["largest"]
    out.print(f"MACs: {small['macs'] / 1e6:.2f}M .. {large['macs'] / 1e6:.2f}M "
              f"({large['macs'] / small['macs']:.1f}x); params: {small['params'] / 1e6:.2f}M .. "
              f"{large['params'] / 1e6:.2f}M")
    out.print(f"smallest: {small['arch']}\nlargest:  {large['arch']}")


@pool_app.command("sample")
def pool_sample(
    n: Annotated[int, typer.Option("-n", min=1, help="How many distinct students.")] = 5,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    space: SpaceOpt = "mbv3-28",
    as_json: JsonOpt = False,
) -> None:
    """Random distinct students from the pool, with their MACs and params."""
    from gtnpipe import pipeline

    with _handled():
        rows = pipeline.pool_sample(n, seed=seed, space=space)
    if as_json:
        return _emit_json(rows)
    table = Table("depths", "MACs (M)", "params (M)", "arch id")
    for r in rows:
        table.add_row("".join(map(str, r["depths"])), f"{r['macs'] / 1e6:.2f}", f"{r['params'] / 1e6:.3f}", r["arch"])
    out.print(table)


@app.command("train")
def train(
    model: Annotated[str, typer.Option("--model", "-m", help="'teacher', an arch id, 'largest' or 'smallest'.")],
    recipe: RecipeOpt = "quick",
    cache_dir: CacheOpt = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Train the teacher or one student from scratch, cache it, and print its test top-1.

    Cached: an unchanged second call returns at once. Interrupted (Ctrl-C, kill): run it
    again and it resumes after the last finished epoch.
    """
    from gtnpipe import pipeline

    with _handled():
        result = pipeline.train_model(model, recipe=recipe, cache_dir=cache_dir, progress=progress and not as_json)
    state = "cache hit" if result.cached else "trained"
    _report(result, f"[bold]{result.model}[/] ({state}, key {result.key[:12]}): test top-1 [bold]{result.test_top1:.2f}%[/] "
                    f"(val {result.val_top1:.2f}%), {result.macs / 1e6:.2f}M MACs, {result.params / 1e6:.3f}M params, "
                    f"{result.epochs} epochs at {result.seconds_per_epoch:.1f} s/epoch", as_json=as_json)


@app.command("teacher")
def teacher(
    method: Annotated[str, typer.Option("--method", help="gtn (generic, for the whole pool), vanilla (CE only) "
                                        "or sftn (specialised to --student).")] = "gtn",
    student: Annotated[str | None, typer.Option("--student", help="Arch id: the SFTN teacher's student.")] = None,
    recipe: RecipeOpt = "quick",
    cache_dir: CacheOpt = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Train a teacher once and cache it; a second call returns the cached key at once.

    Runs data-parallel under torchrun: torchrun --nproc-per-node 2 -m gtnpipe.cli teacher ...
    """
    from gtnpipe import pipeline
    from gtnpipe.training import distributed

    distributed.init_from_env()
    with _handled():
        result = pipeline.train_teacher(method, student=student, recipe=recipe, cache_dir=cache_dir,
                                        progress=progress and not as_json)
    state = "cache hit" if result.cached else "trained"
    target = f" for {result.student}" if result.student else ""
    _report(result, f"[bold]{result.method} teacher[/]{target} ({state}, key {result.key}): test top-1 "
                    f"[bold]{result.test_top1:.2f}%[/], {result.epochs} epochs in {result.train_seconds:.0f} s",
            as_json=as_json)


@app.command("distill")
def distill(
    arch: Annotated[str, typer.Option("--arch", "-a", help="Student arch id, 'largest' or 'smallest'.")],
    teacher: Annotated[str, typer.Option("--teacher", "-t", help="gtn, vanilla, sftn or none.")] = "gtn",
    recipe: RecipeOpt = "quick",
    seed: Annotated[int | None, typer.Option("--seed", help="Student seed [default: the recipe's].")] = None,
    cache_dir: CacheOpt = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Distill one pool student from a cached teacher (trained first if needed); print top-1 and key."""
    from gtnpipe import pipeline
    from gtnpipe.training import distributed

    distributed.init_from_env()
    with _handled():
        result = pipeline.distill_student(arch, teacher=teacher, recipe=recipe, seed=seed, cache_dir=cache_dir,
                                          progress=progress and not as_json)
    state = "cache hit" if result.cached else "trained"
    _report(result, f"[bold]{result.arch}[/] from {result.teacher} teacher ({state}, key {result.key}): test top-1 "
                    f"[bold]{result.test_top1:.2f}%[/] (val {result.val_top1:.2f}%), {result.macs / 1e6:.2f}M MACs",
            as_json=as_json)


@app.command("search")
def search(
    device: Annotated[str, typer.Option("--device", "-d", help="Device profile name or path to your own .toml.")],
    recipe: RecipeOpt = "quick",
    cache_dir: CacheOpt = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write the Pareto front as a PNG here.")] = None,
    iterations: Annotated[int, typer.Option("--iterations", min=1, help="Evolution generations.")] = 500,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """The most accurate student that fits every budget of a device, and the Pareto front.

    Accuracy is estimated from the GTN-trained supernet (trained and cached first if needed);
    latency, memory and size come from the device's measured table or the roofline estimate.
    """
    from gtnpipe import pipeline
    from gtnpipe.search.evolution import SearchConfig

    with _handled():
        result, acc = pipeline.search_device(device, recipe=recipe, cache_dir=cache_dir,
                                             config=SearchConfig(iterations=iterations), progress=progress and not as_json)
        if plot is not None:
            from gtnpipe.config.profiles import load_profile
            from gtnpipe.search.plots import plot_pareto

            profile = load_profile(device)
            plot_pareto(result, plot, device=profile.name, latency_budget_ms=profile.budgets.latency_ms_p90,
                        latency_planned_ms=profile.budgets.planned_latency_ms_p90)
    if as_json:
        return _emit_json({**result.to_dict(), "accuracy_predictor": {"key": acc.key, "loo_rmse": acc.predictor.loo_rmse,
                                                                      "samples": acc.predictor.n_samples}})
    p, c = result.pick, result.pick.cost
    out.print(f"[bold]pick[/]: {p.arch.id}\n  {c.macs / 1e6:.2f}M MACs, {c.params / 1e6:.3f}M params, estimated top-1 "
              f"{p.accuracy:.2f}% (inherited-weight predictor, LOO error {acc.predictor.loo_rmse:.2f} points)\n"
              f"  {c.precision}: latency p90 {c.latency_ms_p90:.3f} ms ({c.latency_source}), peak memory "
              f"{c.peak_memory_mb:.1f} MB ({c.memory_source}), size {c.model_size_mb:.3f} MB ({c.size_source})")
    table = Table("latency p90 (ms)", "est. top-1 (%)", "memory (MB)", "size (MB)", "MACs (M)", "arch id",
                  title=f"Pareto front ({len(result.front)} of {result.feasible_seen} feasible students, "
                        f"{result.evaluations} evaluations, {result.seconds:.1f} s)")
    for cand in result.front:
        k = cand.cost
        table.add_row(f"{k.latency_ms_p90:.3f}", f"{cand.accuracy:.2f}", f"{k.peak_memory_mb:.1f}",
                      f"{k.model_size_mb:.3f}", f"{k.macs / 1e6:.2f}", cand.arch.id)
    out.print(table)
    for note in result.notes:
        out.print(f"latency model: {note}", highlight=False)
    if plot is not None:
        out.print(f"Pareto plot: {plot}")


@app.command("build")
def build(
    device: Annotated[list[str] | None, typer.Option("--device", "-d", help="Device profile name or path (repeatable).")] = None,
    all_devices: Annotated[bool, typer.Option("--all", help="Every shipped device profile.")] = False,
    recipe: RecipeOpt = "quick",
    out_dir: Annotated[Path, typer.Option("--out", help="Artifacts folder: one sub-folder per device.")] = Path("artifacts"),
    teacher: Annotated[str, typer.Option("--teacher", help="gtn (the generic teacher), vanilla or none.")] = "gtn",
    iterations: Annotated[int, typer.Option("--iterations", min=1, help="Search generations.")] = 500,
    accuracy_samples: Annotated[int, typer.Option("--accuracy-samples", min=10, help="Students measured with inherited "
                                                  "weights to fit the accuracy predictor.")] = 150,
    check_measured: Annotated[bool, typer.Option("--check-measured-budgets", help="Also fail when latency or memory "
                                                 "measured HERE exceeds the budgets (when this machine is the device).")] = False,
    cache_dir: CacheOpt = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Profile -> search -> distill from the cached generic teacher -> compile -> check -> artifacts/<device>/.

    Exit 2 on bad input or a failed parity check, 3 when the artifact breaks a budget.
    """
    from gtnpipe import pipeline
    from gtnpipe.config.profiles import known_profiles
    from gtnpipe.search.evolution import SearchConfig

    devices = known_profiles() if all_devices else list(device or [])
    if not devices:
        Console(stderr=True).print("[bold red]error:[/] give --device NAME|PATH (repeatable) or --all; "
                                   "'gtnpipe devices list' shows the shipped profiles")
        raise typer.Exit(2)
    say = (lambda m: None) if as_json else (lambda m: Console(stderr=True).print(m, highlight=False))
    results = []
    with _handled(), _stdout_to_stderr(as_json):
        for name in devices:
            results.append(pipeline.build_device(
                name, recipe=recipe, out=out_dir, teacher=teacher, cache_dir=cache_dir,
                config=SearchConfig(iterations=iterations), accuracy_samples=accuracy_samples,
                check_measured_budgets=check_measured, progress=progress and not as_json, say=say))
    if as_json:
        _emit_json([asdict(r) for r in results])
    else:
        for r in results:
            shipped = f"{r.shipped_top1:.2f}%" if r.shipped_top1 is not None else "not checked here"
            measured = (f", measured here p90 {r.measured['latency_ms_p90']:.3f} ms, {r.measured['peak_memory_mb']:.1f} MB"
                        if r.measured else "")
            out.print(f"[bold]{r.device}[/]: {r.arch} as {r.runtime} {r.precision} -> {r.folder}\n"
                      f"  test top-1 torch {r.torch_top1:.2f}%, shipped {shipped}; predicted p90 "
                      f"{r.predicted['latency_ms_p90']:.3f} ms ({r.predicted['latency_source']}){measured}", highlight=False)
            for v in r.budget_violations:
                out.print(f"  [bold red]over budget[/] {escape(v)}", highlight=False)
            for w in r.warnings:
                out.print(f"  [yellow]warning[/] {escape(w)}", highlight=False)
    if any(r.budget_violations for r in results):
        raise typer.Exit(3)


@app.command("bench")
def bench(
    artifact: Annotated[Path | None, typer.Argument(help="An artifact folder made by 'gtnpipe build'.")] = None,
    runs: Annotated[int, typer.Option("--runs", min=10, help="Timed runs.")] = 200,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed runs first.")] = 20,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="Runtime threads [default: the profile's].")] = None,
    calibrate: Annotated[bool, typer.Option("--calibrate", help="Measure the device's per-block latency table instead.")] = False,
    device: Annotated[str | None, typer.Option("--device", "-d", help="With --calibrate: the device profile.")] = None,
    kit: Annotated[Path | None, typer.Option("--kit", help="With --calibrate: time this calibration kit (made on the host by "
                                             "'gtnpipe calibration-kit'); needs no torch.")] = None,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="With --calibrate: interleaved timing passes (median "
                                        "kept).")] = 10,
    tables_dir: Annotated[Path | None, typer.Option("--tables-dir", help="With --calibrate: write the table here "
                                                    "[default: device_profiles/tables, where search reads it].")] = None,
    as_json: JsonOpt = False,
) -> None:
    """On the device itself: benchmark an artifact folder, or (--calibrate --device NAME) measure the latency table.

    An artifact: every file's sha256 is checked against the manifest first, parity is re-checked on the
    reference images it carries, then p50/p90/p99 latency, throughput and peak memory are measured and
    bench.json is written beside the manifest. Needs only the artifact and the runtime (no torch).
    Exit 3 when a budget or the parity check fails.
    """
    if kit is not None and not calibrate:
        Console(stderr=True).print("[bold red]error:[/] --kit goes with --calibrate --device NAME")
        raise typer.Exit(2)
    if calibrate:
        if device is None:
            Console(stderr=True).print("[bold red]error:[/] --calibrate needs --device NAME (e.g. --device host)")
            raise typer.Exit(2)
        return _calibrate(device, runs=runs, rounds=rounds, kit=kit, tables_dir=tables_dir, as_json=as_json)
    if artifact is None:
        Console(stderr=True).print("[bold red]error:[/] give an artifact folder (gtnpipe bench artifacts/host) or "
                                   "--calibrate --device NAME")
        raise typer.Exit(2)
    from gtnpipe.deploy.bench import BENCH_FILE, bench_artifact

    with _handled():
        result = bench_artifact(artifact, runs=runs, warmup=warmup, threads=threads)
    verdict = result["verdict"]
    if as_json:
        _emit_json(result)
    else:
        lat, parity = result["latency"], result["parity"]
        out.print(f"[bold]{result['device_profile']}[/] artifact {artifact}: {result['runtime']['name']} "
                  f"{result['runtime']['version']} {result['precision']}, {result['threads']} threads, {lat['runs']} runs")
        table = Table("figure", "measured", "budget", "ok")
        for name, check in verdict["checks"].items():
            if "measured" in check:
                table.add_row(name, f"{check['measured']:.3f}", f"{check['budget']:g}", "yes" if check["ok"] else "NO")
        table.add_row("parity", f"agreement {parity['agreement_pct']:.2f}%, max abs {parity['max_abs_diff']:.2g}, "
                      f"top-1 {parity['artifact_top1']:.2f}% vs torch {parity['torch_top1']:.2f}%", "",
                      "yes" if parity["passed"] else "NO")
        table.add_row("runtime version", f"{result['runtime']['version']}", result["runtime"]["profile_range"],
                      "yes" if result["runtime"]["in_range"] else "NO")
        out.print(table)
        out.print(f"latency p50 {lat['p50_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms, throughput {lat['throughput_per_s']:.0f}/s; "
                  f"verdict: [bold]{'within budgets' if verdict['ok'] else 'FAILS'}[/]; wrote {artifact / BENCH_FILE}")
    if not verdict["ok"]:
        raise typer.Exit(3)


def _calibrate(device: str, *, runs: int, rounds: int, kit: Path | None, tables_dir: Path | None, as_json: bool) -> None:
    def progress(message: str) -> None:
        Console(stderr=True).print(message)

    with _handled(), _stdout_to_stderr(as_json):
        if kit is not None:  # on the device: torch-free, so not through pipeline (which imports torch)
            from gtnpipe.measure.kit import calibrate_device_from_kit

            info = calibrate_device_from_kit(kit, device, runs=runs, rounds=rounds, tables_dir=tables_dir, progress=progress)
        else:
            from gtnpipe import pipeline

            info = pipeline.calibrate_device(device, runs=runs, rounds=rounds, tables_dir=tables_dir, progress=progress)
    if as_json:
        return _emit_json(info)
    out.print(f"[bold]{info['device']}[/]: {info['units']} units timed in {info['seconds']:.0f} s; whole network p50 = "
              f"{info['slope']:.3f} x sum(units) {info['per_unit_ms']:+.4f} ms x units {info['intercept_ms']:+.4f} ms; "
              "runtime overhead "
              f"{info['memory_overhead_mb']:.1f} MB; table written to {info['table']}")


@app.command("calibration-kit")
def calibration_kit(
    device: Annotated[str, typer.Option("--device", "-d", help="Device profile name or path.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Kit folder to write (an old kit there is replaced).")],
    n_networks: Annotated[int, typer.Option("--networks", min=2, help="Random whole networks for the fit, besides the "
                                            "smallest and the largest.")] = 30,
    as_json: JsonOpt = False,
) -> None:
    """On the host: export and compile every unit and the calibration networks for a device, to time there.

    Copy the folder to the device and run 'gtnpipe bench --calibrate --device NAME --kit DIR' there
    (no torch needed); copy the table it writes back to device_profiles/tables/.
    """
    from gtnpipe import pipeline

    with _handled(), _stdout_to_stderr(as_json):
        info = pipeline.make_calibration_kit(device, out_dir, n_networks=n_networks,
                                             progress=lambda m: Console(stderr=True).print(m))
    if as_json:
        return _emit_json(info)
    out.print(f"[bold]{info['device']}[/]: calibration kit for {info['runtime']} in {info['kit']}: {info['units']} units and "
              f"{info['networks']} networks, {info['files']} files, {info['size_mb']:.1f} MB, built in {info['seconds']:.0f} s. "
              f"On the device: {info['device_command']}")


@devices_app.command("list")
def devices_list(as_json: JsonOpt = False) -> None:
    """The shipped device profiles: runtime, precisions, budgets, and whether a measured latency table exists."""
    from gtnpipe.config.profiles import known_profiles, load_profile, profiles_dir

    with _handled():
        profiles = [load_profile(name) for name in known_profiles()]
    tables = profiles_dir() / "tables"
    if as_json:
        return _emit_json([{**p.to_dict(), "measured_table": (tables / f"{p.name}.json").exists()} for p in profiles])
    table = Table("device", "runtime", "precisions", "threads x batch", "latency p90 (ms)", "memory (MB)", "size (MB)",
                  "latency model")
    for p in profiles:
        b = p.budgets
        table.add_row(p.name, f"{p.runtime.name} {p.runtime.version}", ", ".join(p.precisions),
                      f"{p.threads} x {p.batch_size}",
                      f"{b.latency_ms_p90:g}" + (f" (plan -{b.latency_margin_pct:g}%)" if b.latency_margin_pct else ""),
                      f"{b.peak_memory_mb:g}",
                      f"{b.model_size_mb:g}",
                      "measured table" if (tables / f"{p.name}.json").exists() else "roofline estimate")
    out.print(table)


@devices_app.command("show")
def devices_show(
    device: Annotated[str, typer.Argument(help="A shipped profile's name or the path to your own .toml.")],
    as_json: JsonOpt = False,
) -> None:
    """Every field of one device profile."""
    from gtnpipe.config.profiles import load_profile

    with _handled():
        profile = load_profile(device)
    data = {**profile.to_dict(), "sha256": profile.sha256()}
    if as_json:
        return _emit_json(data)
    out.print(f"[bold]{profile.name}[/]: {profile.description}")
    for section in ("runtime", "budgets", "hardware"):
        out.print(f"[{section}]", markup=False)
        for key, value in data[section].items():
            out.print(f"  {key} = {value!r}", highlight=False)
    out.print(f"precisions = {list(profile.precisions)}, threads = {profile.threads}, batch_size = {profile.batch_size}")


@devices_app.command("validate")
def devices_validate(paths: Annotated[list[Path], typer.Argument(help="Profile .toml files to check.")]) -> None:
    """Check profile files strictly; print one line per file; exit 2 if any is invalid."""
    from gtnpipe.config.profiles import load_profile
    from gtnpipe.errors import ConfigError

    failed = 0
    for path in paths:
        try:
            load_profile(path)
            out.print(f"[green]ok[/]      {path}", highlight=False)
        except ConfigError as err:
            failed += 1
            Console(stderr=True).print(f"[bold red]invalid[/] {escape(str(err))}", highlight=False)
    if failed:
        raise typer.Exit(2)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
