"""`gtnpipe search` and `gtnpipe build`: the best student for a device, and its deployable artifact."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from gtnpipe.cli._common import (
    CacheOpt,
    DataOpt,
    ImageSizeOpt,
    JsonOpt,
    ProgressOpt,
    RecipeOpt,
    SkipUnreadableOpt,
    StorageOpt,
    TrainDeviceOpt,
    emit_json,
    fail,
    id_column,
    open_workspace,
    print_table,
    running,
    stdout,
    value_column,
)

if TYPE_CHECKING:
    from gtnpipe.nas.evolution import SearchResult

__all__ = ["build", "compile_", "search"]

BudgetOpt = Annotated[list[str] | None, typer.Option(
    "--budget", help="Replace a budget of the profile for this run: NAME=VALUE (repeatable), e.g. latency_ms_p90=5.0; "
    "the manifest records it.")]
CalibrateOpt = Annotated[bool | None, typer.Option(
    "--calibrate/--no-calibrate", help="For --device host: measure this machine's latency table first when the one "
    "found was measured on another machine (about a minute, once per machine) [default: on, unless "
    "GTNPIPE_CALIBRATE=0].")]


def search(
    device: Annotated[str, typer.Option("--device", "-d", help="Device profile name or path to your own .toml.")],
    recipe: RecipeOpt = "quick",
    data: DataOpt = None,
    image_size: ImageSizeOpt = None,
    skip_unreadable: SkipUnreadableOpt = False,
    storage: StorageOpt = "auto",
    train_device: TrainDeviceOpt = "auto",
    cache_dir: CacheOpt = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write the Pareto front as a PNG here.")] = None,
    iterations: Annotated[int, typer.Option("--iterations", min=1, help="Evolution generations.")] = 500,
    calibrate: CalibrateOpt = None,
    budget: BudgetOpt = None,
    progress: ProgressOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """The most accurate student that fits every budget of a device, and the Pareto front.

    Accuracy is estimated from the GTN-trained supernet (trained and cached first if needed);
    latency, memory and size come from the device's measured latency table or the roofline estimate.
    """
    with running(progress=progress, as_json=as_json) as p:
        from gtnpipe import pipeline
        from gtnpipe.nas.evolution import SearchConfig
        from gtnpipe.options import BuildOptions

        ws = open_workspace(recipe, cache_dir=cache_dir, data=data, image_size=image_size,
                            skip_unreadable=skip_unreadable, storage=storage, train_device=train_device, progress=p.enabled)
        options = BuildOptions(search=SearchConfig(iterations=iterations), calibrate_host=calibrate,
                               budgets=_budgets(budget))
        found = pipeline.search_device(ws, device, options, say=p.say)  # the stage build runs
        result, acc = found.result, found.predictor
        if plot is not None:
            from gtnpipe.nas.plots import plot_pareto
            from gtnpipe.stages.search import budgeted_profile

            profile = budgeted_profile(device, ws.space.name, options.budgets)  # the budgets search planned for
            plot_pareto(result, plot, device=profile.name, latency_budget_ms=profile.budgets.latency_ms_p90,
                        latency_planned_ms=profile.budgets.planned_latency_ms_p90)
    if as_json:
        return emit_json({**result.to_dict(), "accuracy_predictor": {"key": acc.key, "loo_rmse": acc.predictor.loo_rmse,
                                                                     "samples": acc.predictor.n_samples}})
    _print_search(result, loo_rmse=acc.predictor.loo_rmse, plot=plot)


def _print_search(result: SearchResult, *, loo_rmse: float, plot: Path | None) -> None:
    out = stdout()
    pick, c = result.pick, result.pick.cost
    out.print(f"[bold]pick[/]: {pick.arch.id}\n  {c.macs / 1e6:.2f}M MACs, {c.params / 1e6:.3f}M params, estimated top-1 "
              f"{pick.accuracy:.2f}% (inherited-weight predictor, LOO error {loo_rmse:.2f} points)\n"
              f"  {c.precision}: latency p90 {c.latency_ms_p90:.3f} ms ({c.latency_source}), peak memory "
              f"{c.peak_memory_mb:.1f} MB ({c.memory_source}), size {c.model_size_mb:.3f} MB ({c.size_source})")
    table = Table(*(value_column(h, justify="right") for h in ("latency p90 (ms)", "est. top-1 (%)", "memory (MB)",
                                                                "size (MB)", "MACs (M)")),
                  id_column("arch id"),
                  title=f"Pareto front ({len(result.front)} of {result.feasible_seen} feasible students, "
                        f"{result.evaluations} evaluations, {result.seconds:.1f} s)")
    for cand in result.front:
        k = cand.cost
        table.add_row(f"{k.latency_ms_p90:.3f}", f"{cand.accuracy:.2f}", f"{k.peak_memory_mb:.1f}",
                      f"{k.model_size_mb:.3f}", f"{k.macs / 1e6:.2f}", cand.arch.id)
    print_table(table)
    for note in result.notes:
        out.print(f"latency model: {escape(note)}")
    if plot is not None:
        out.print(f"Pareto plot: {escape(str(plot))}")


def build(
    device: Annotated[list[str] | None, typer.Option("--device", "-d", help="Device profile name or path (repeatable).")] = None,
    all_devices: Annotated[bool, typer.Option("--all", help="Every shipped device profile.")] = False,
    recipe: RecipeOpt = "quick",
    data: DataOpt = None,
    image_size: ImageSizeOpt = None,
    skip_unreadable: SkipUnreadableOpt = False,
    storage: StorageOpt = "auto",
    train_device: TrainDeviceOpt = "auto",
    out_dir: Annotated[Path, typer.Option("--out", help="Artifacts folder: one sub-folder per device.")] = Path("artifacts"),
    teacher: Annotated[str | None, typer.Option("--teacher", help="gtn (the generic teacher), vanilla, none, or a teacher file "
                                         "you bring: .onnx, torch.export .pt2 or TorchScript .pt/.ts (float32 NCHW [0, 1] "
                                         "images in, logits out) [default: the recipe's [teacher] source, else "
                                         "its [distill] teacher: vanilla].")] = None,
    iterations: Annotated[int, typer.Option("--iterations", min=1, help="Search generations.")] = 500,
    accuracy_samples: Annotated[int | None, typer.Option("--accuracy-samples", min=10, help="Students measured with "
                                                         "inherited weights to fit the accuracy predictor "
                                                         "[default: the recipe's predictor.samples].")] = None,
    check_measured: Annotated[bool, typer.Option("--check-measured-budgets", help="Also fail when latency or memory "
                                                 "measured HERE exceeds the budgets (when this machine is the device).")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Fail when a precision the profile allows could not be built "
                                         "(CI uses it); without it such a precision is recorded as not built.")] = False,
    budget: BudgetOpt = None,
    calibrate: CalibrateOpt = None,
    cache_dir: CacheOpt = None,
    progress: ProgressOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Profile -> search -> distill from the cached teacher (vanilla by default) -> compile -> check -> artifacts/<device>/.

    Exit 2 on bad input or a failed parity check, 3 when the artifact breaks a budget, 4 when some of several devices
    failed (the others are built; each failure is printed and listed in the fleet index).
    """
    from gtnpipe.config.profiles import known_profiles

    devices = known_profiles() if all_devices else list(device or [])
    if not devices:
        fail("give --device NAME|PATH (repeatable) or --all; 'gtnpipe devices list' shows the shipped profiles")
    with running(progress=progress, as_json=as_json) as p:
        from gtnpipe import pipeline
        from gtnpipe.nas.evolution import SearchConfig
        from gtnpipe.options import BuildOptions

        ws = open_workspace(recipe, cache_dir=cache_dir, data=data, image_size=image_size,
                            skip_unreadable=skip_unreadable, storage=storage, train_device=train_device, progress=p.enabled)
        options = BuildOptions(out=out_dir, teacher=teacher, search=SearchConfig(iterations=iterations),
                               accuracy_samples=accuracy_samples, check_measured_budgets=check_measured, strict=strict,
                               calibrate_host=calibrate, budgets=_budgets(budget))
        fleet = pipeline.build_fleet(ws, devices, options, say=p.say)
    results = fleet.built
    if as_json:
        emit_json([asdict(r) for r in results] + [{"device": d, "failed": why} for d, why in fleet.failed.items()])
    else:
        out = stdout()
        for r in results:
            shipped = f"{r.shipped_top1:.2f}%" if r.shipped_top1 is not None else "not checked here"
            measured = _measured_here(r.measured)
            out.print(f"[bold]{escape(r.device)}[/]: {r.arch} as {r.runtime} {r.precision} -> {escape(r.folder)}\n"
                      f"  test top-1 torch {r.torch_top1:.2f}%, shipped {shipped}; predicted p90 "
                      f"{r.predicted['latency_ms_p90']:.3f} ms ({r.predicted['latency_source']}){measured}")
            _print_checks(r.budget_violations, r.warnings)
        _print_failed(fleet.failed)
        _print_fleet(out_dir)
    _exit_code(results, fleet.failed)


def _budgets(given: list[str] | None) -> tuple[tuple[str, float], ...]:
    from gtnpipe.config.profiles import parse_budget

    return tuple(parse_budget(text) for text in given or ())


def _print_failed(failed: dict[str, str]) -> None:
    for device, why in failed.items():
        stdout().print(f"[bold red]{escape(device)}: not built[/] {escape(why)}")


def _exit_code(results: list[Any], failed: dict[str, str]) -> None:
    """4: some devices of a multi-device command failed (the others were built); 3: an artifact breaks a budget."""
    if failed:
        raise typer.Exit(4)
    if any(r.budget_violations for r in results):
        raise typer.Exit(3)


def _print_fleet(out_dir: Path) -> None:
    from gtnpipe.deploy.fleet import INDEX

    if (out_dir / INDEX).is_file():
        stdout().print(f"fleet index: {escape(str(out_dir / INDEX))}")


def _print_checks(violations: list[str], warnings: list[str]) -> None:
    """An artifact's broken budgets and warnings, one line each under its summary (build and compile)."""
    out = stdout()
    for v in violations:
        out.print(f"  [bold red]over budget[/] {escape(v)}")
    for w in warnings:
        out.print(f"  [yellow]warning[/] {escape(w)}")


def _measured_here(measured: dict[str, Any] | None) -> str:
    return (f", measured here p90 {measured['latency_ms_p90']:.3f} ms, {measured['peak_memory_mb']:.1f} MB"
            if measured else "")


def _floats(text: str | None, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        fail(f"{option} {text!r}: give one number per input channel, comma-separated, in [0, 1] pixel units "
             "(e.g. 0.485,0.456,0.406)")


def compile_(
    model: Annotated[Path, typer.Argument(help="Your model: an ONNX image classifier (float32 NCHW input, logits out).")],
    device: Annotated[list[str], typer.Option("--device", "-d", help="Device profile name or path (repeatable).")],
    data: Annotated[str | None, typer.Option(
        "--data", help="Images for INT8 calibration (train split) and the accuracy check (test split): a folder of class "
        "sub-folders (optionally under train/ and test/), a .npz, or fashion-mnist. Without it parity runs on random "
        "images and INT8 is not built.")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Artifacts folder: one sub-folder per device.")] = Path("artifacts"),
    precision: Annotated[list[str] | None, typer.Option("--precision", help="Only these of the profile's precisions "
                                                        "(repeatable) [default: all it allows].")] = None,
    mean: Annotated[str | None, typer.Option("--mean", help="The normalisation your model expects, per channel in [0, 1] "
                                             "pixel units (e.g. 0.485,0.456,0.406): folded into the artifact, which then "
                                             "takes [0, 1] images.")] = None,
    std: Annotated[str | None, typer.Option("--std", help="With --mean: per-channel std, e.g. 0.229,0.224,0.225.")] = None,
    val_data: Annotated[str | None, typer.Option(
        "--val-data", help="Labelled images for the validation split (accuracy-control INT8 decides on them), the same "
        "classes as --data [default: 10% of --data's training images].")] = None,
    resize: Annotated[str, typer.Option(
        "--resize", help="How --data images meet the model's height x width: crop (the shorter side scaled, then the "
        "centre cut out, keeping the aspect ratio) or stretch (both sides scaled).")] = "crop",
    input_shape: Annotated[str | None, typer.Option(
        "--input-shape", help="The image size a model with a dynamic channel, height or width was made for: NxCxHxW or "
        "CxHxW, optionally after the input's name (e.g. 1x3x48x192, x=1x3x48x192).")] = None,
    check_measured: Annotated[bool, typer.Option("--check-measured-budgets", help="Also fail when latency or memory "
                                                 "measured HERE exceeds the budgets.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Fail when a precision could not be built.")] = False,
    budget: BudgetOpt = None,
    cache_dir: CacheOpt = None,
    progress: ProgressOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Compile a model you already have: every precision -> parity against ONNX Runtime FP32 -> time -> artifacts/<device>/.

    The same artifact folder and manifest as `gtnpipe build`: `gtnpipe bench` takes it. Exit 2 on bad input or a
    failed parity check, 3 when the artifact breaks a budget, 4 when some of several devices failed (the others are
    built; each failure is printed and listed in the fleet index).
    """
    with running(progress=progress, as_json=as_json) as p:
        from gtnpipe import pipeline
        from gtnpipe.deploy.onnx_model import parse_input_shape
        from gtnpipe.options import CompileOptions

        if val_data is not None and data is None:
            fail("--val-data needs --data (the training and test images it goes with)")
        options = CompileOptions(out=out_dir, data=data, val_data=val_data, resize=resize,
                                 precisions=tuple(precision) if precision else None,
                                 input_shape=parse_input_shape(input_shape) if input_shape else None,
                                 mean=_floats(mean, "--mean"), std=_floats(std, "--std"), cache_dir=cache_dir,
                                 check_measured_budgets=check_measured, strict=strict, budgets=_budgets(budget))
        fleet = pipeline.compile_fleet(model, device, options, say=p.say)
    results = fleet.built
    if as_json:
        emit_json([asdict(r) for r in results] + [{"device": d, "failed": why} for d, why in fleet.failed.items()])
    else:
        out = stdout()
        for r in results:
            top1 = (f"test top-1 ONNX Runtime FP32 {r.reference_top1:.2f}%, shipped {r.shipped_top1:.2f}%"
                    if r.reference_top1 is not None and r.shipped_top1 is not None else "parity on random images")
            measured = _measured_here(r.measured)
            out.print(f"[bold]{escape(r.device)}[/]: {escape(r.model)} as {r.runtime} {r.precision} -> {escape(r.folder)} "
                      f"({r.seconds:.1f} s)\n  {top1}{measured}")
            _print_checks(r.budget_violations, r.warnings)
        _print_failed(fleet.failed)
    _exit_code(results, fleet.failed)
