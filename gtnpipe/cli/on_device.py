"""What runs on (or for) a device: `gtnpipe bench`, `gtnpipe latency-table`, `gtnpipe latency-kit`, `gtnpipe fleet`,
`gtnpipe devices ...`.

Names: "bench" is the on-device benchmark of an artifact; the per-block latency table that search reads is
measured by `latency-table` (from a `latency-kit` on a device without torch); "calibration" is left to INT8
calibration. The old spellings stay as hidden, deprecated aliases: `gtnpipe bench --calibrate` and
`gtnpipe calibration-kit`.

Torch-free where the device needs it: `bench ARTIFACT`, `latency-table --kit` and `devices` import neither
torch nor the pipeline; nor do `bench --remote`, `latency-table --kit --remote` and `fleet` on the host.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from gtnpipe.cli._common import (
    JsonOpt,
    ProgressOpt,
    emit_json,
    fail,
    id_column,
    print_table,
    running,
    stderr,
    stdout,
    value_column,
)
from gtnpipe.deploy.remote import Remote  # the OpenSSH client's driver: stdlib only
from gtnpipe.space.spaces import TaskShape  # pure Python: the CLI stays torch-free

__all__ = ["bench", "devices_app", "fleet", "latency_kit", "latency_table"]

devices_app = typer.Typer(help="Device profiles: list, show, validate.", no_args_is_help=True)

DeviceOpt = Annotated[str, typer.Option("--device", "-d", help="Device profile name or path to your own .toml.")]
KitOpt = Annotated[Path | None, typer.Option("--kit", help="Time this latency kit (made on the host by 'gtnpipe latency-kit') "
                                             "instead of compiling here; needs no torch.")]
RoundsOpt = Annotated[int, typer.Option("--rounds", min=1, help="Interleaved timing passes (the median is kept).")]
TableSpaceOpt = Annotated[str, typer.Option("--space", help="The search space whose blocks the table times.")]
InputOpt = Annotated[str, typer.Option("--input", help="The input the table is for, CxHxW (e.g. 3x224x224).")]
ClassesOpt = Annotated[int, typer.Option("--classes", min=2, help="Classes of the task (the head's last layer).")]
NetworksOpt = Annotated[int, typer.Option("--networks", min=2, help="Random whole networks for the fit, besides the "
                                          "smallest and the largest.")]
TablesDirOpt = Annotated[Path | None, typer.Option("--tables-dir", help="Write the table here [default: tables/ in "
                                                   "the user data directory, where search looks first].")]
RemoteOpt = Annotated[str | None, typer.Option(
    "--remote", metavar="USER@HOST", help="Run it on this device over ssh (the system OpenSSH client, with your "
    "~/.ssh/config, keys and jump hosts): copy, run gtnpipe there, bring the result back here.")]
SshOptionOpt = Annotated[list[str] | None, typer.Option(
    "--ssh-option", metavar="NAME=VALUE", help="An ssh -o option for --remote, e.g. Port=2222 or "
    "IdentityFile=~/.ssh/device_key (repeatable).")]
RemoteGtnpipeOpt = Annotated[str, typer.Option(
    "--remote-gtnpipe", metavar="COMMAND", help="The gtnpipe command on the --remote device, e.g. "
    "~/venv/bin/gtnpipe (a non-interactive ssh session has a short PATH).")]
TABLE_RUNS = 200  # timed runs per unit: what `gtnpipe bench --calibrate` has always used (bench's --runs default)


def bench(
    artifact: Annotated[Path | None, typer.Argument(help="An artifact folder made by 'gtnpipe build'.")] = None,
    runs: Annotated[int, typer.Option("--runs", min=10, help="Timed runs.")] = TABLE_RUNS,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed runs first.")] = 20,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="Runtime threads [default: the profile's].")] = None,
    remote: RemoteOpt = None,
    ssh_option: SshOptionOpt = None,
    remote_gtnpipe: RemoteGtnpipeOpt = "gtnpipe",
    progress: ProgressOpt = True,
    as_json: JsonOpt = False,
    # the deprecated alias `gtnpipe bench --calibrate --device NAME [--kit DIR]` of `gtnpipe latency-table`
    calibrate: Annotated[bool, typer.Option("--calibrate", hidden=True, help="Deprecated: 'gtnpipe latency-table'.")] = False,
    device: Annotated[str | None, typer.Option("--device", "-d", hidden=True)] = None,
    kit: Annotated[Path | None, typer.Option("--kit", hidden=True)] = None,
    rounds: Annotated[int, typer.Option("--rounds", min=1, hidden=True)] = 10,
    tables_dir: Annotated[Path | None, typer.Option("--tables-dir", hidden=True)] = None,
) -> None:
    """On the device itself: benchmark an artifact folder made by 'gtnpipe build'.

    Every file's sha256 is checked against the manifest first, parity is re-checked on the reference images
    it carries, then p50/p90/p99 latency, throughput and peak memory are measured and bench.json is written
    beside the manifest. Needs only the artifact and the runtime (no torch). Exit 3 when a budget or the
    parity check fails. With --remote USER@HOST it runs on that device over ssh and bench.json comes back here.
    (The device's latency table is 'gtnpipe latency-table'.)
    """
    if calibrate or device is not None or kit is not None:
        if not calibrate:
            fail("--device and --kit belong to 'gtnpipe latency-table --device NAME [--kit DIR]'")
        if device is None:
            fail("--calibrate needs --device NAME (e.g. --device host); it is now 'gtnpipe latency-table --device NAME'")
        stderr().print("[yellow]note[/]: 'gtnpipe bench --calibrate' is now 'gtnpipe latency-table'")
        return _latency_table(device, kit=kit, runs=runs, rounds=rounds, tables_dir=tables_dir, space="mbv3-28",
                              input_shape="1x28x28", classes=10, progress=progress, as_json=as_json)
    if artifact is None:
        fail("give an artifact folder (gtnpipe bench artifacts/host); the device's latency table is "
             "'gtnpipe latency-table --device NAME'")
    with running(progress=progress, as_json=as_json) as p:
        from gtnpipe.deploy.device_bench import BENCH_FAILED_EXIT, BENCH_FILE, bench_artifact
        from gtnpipe.deploy.fleet import update_index

        if remote is None:
            result = bench_artifact(artifact, runs=runs, warmup=warmup, threads=threads, say=p.say)
        else:
            from gtnpipe.deploy.remote import bench_remote

            result = bench_remote(artifact, _remote(remote, ssh_option, remote_gtnpipe), runs=runs, warmup=warmup,
                                  threads=threads, say=p.say)
        index = update_index(artifact.parent)  # the fleet view beside it, where a multi-device build made one
    if as_json:
        emit_json(result)
    else:
        _print_bench(result, artifact / BENCH_FILE, remote)
        if index is not None:
            stdout().print(f"updated the fleet index {escape(str(index))}")
    if not result["verdict"]["ok"]:
        raise typer.Exit(BENCH_FAILED_EXIT)


def _remote(target: str, ssh_options: list[str] | None, command: str) -> Remote:
    with running():  # a malformed --remote or --ssh-option: one line and exit 2
        return Remote(target, tuple(ssh_options or ()), command)


def _print_bench(result: dict[str, Any], written: Path, remote: str | None = None) -> None:
    lat, parity, runtime, verdict = result["latency"], result["parity"], result["runtime"], result["verdict"]
    out = stdout()
    where = f" on {escape(remote)} ({escape(result['machine'].get('description', result['machine']['platform']))})" \
        if remote else ""
    out.print(f"[bold]{escape(result['device_profile'])}[/] artifact {escape(str(written.parent))}{where}: {runtime['name']} "
              f"{runtime['version']} {result['precision']}, {result['threads']} threads, {lat['runs']} runs")
    table = Table(id_column("figure"), value_column("measured"), id_column("budget"), value_column("ok"))
    for name, check in verdict["checks"].items():
        if "measured" in check:
            table.add_row(name, f"{check['measured']:.3f}", f"{check['budget']:g}", "yes" if check["ok"] else "NO")
    top1 = (f", top-1 {parity['artifact_top1']:.2f}% vs reference {parity['torch_top1']:.2f}%"
            if parity["artifact_top1"] is not None else ", unlabelled reference images")
    table.add_row("parity", f"agreement {parity['agreement_pct']:.2f}%, max abs {parity['max_abs_diff']:.2g}{top1}", "",
                  "yes" if parity["passed"] else "NO")
    table.add_row("runtime version", runtime["version"], runtime["profile_range"], "yes" if runtime["in_range"] else "NO")
    print_table(table)
    out.print(f"latency p50 {lat['p50_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms, throughput {lat['throughput_per_s']:.0f}/s; "
              f"verdict: [bold]{'within budgets' if verdict['ok'] else 'FAILS'}[/]; wrote {escape(str(written))}")


def latency_table(
    device: DeviceOpt,
    kit: KitOpt = None,
    space: TableSpaceOpt = "mbv3-28",
    input_shape: InputOpt = "1x28x28",
    classes: ClassesOpt = 10,
    runs: Annotated[int, typer.Option("--runs", min=10, help="Timed runs per unit and network.")] = TABLE_RUNS,
    rounds: RoundsOpt = 10,
    n_networks: NetworksOpt = 30,
    tables_dir: TablesDirOpt = None,
    remote: RemoteOpt = None,
    ssh_option: SshOptionOpt = None,
    remote_gtnpipe: RemoteGtnpipeOpt = "gtnpipe",
    progress: ProgressOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """On the device itself: measure its per-block latency table for one search space and input, which search and
    build then read for that space and input only.

    Without --kit every unit of the pool and the fit networks are compiled and timed here (needs torch);
    with --kit DIR the models come precompiled from 'gtnpipe latency-kit' on the host (no torch needed; the kit
    fixes the space and input). With --remote USER@HOST, from the host: the kit (built here unless --kit gives
    one) is timed on that device over ssh and the table it measures is installed here for that profile.
    """
    _latency_table(device, kit=kit, runs=runs, rounds=rounds, n_networks=n_networks, tables_dir=tables_dir, space=space,
                   input_shape=input_shape, classes=classes, progress=progress, as_json=as_json,
                   remote=_remote(remote, ssh_option, remote_gtnpipe) if remote else None)


def _task(input_shape: str, classes: int) -> TaskShape:
    """--input CxHxW and --classes N as a TaskShape; anything else is an error that shows the form."""
    parts = input_shape.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts) or parts[0] not in ("1", "3"):
        fail(f"--input {input_shape!r}: give channels x height x width with 1 or 3 channels, e.g. 3x224x224")
    c, h, w = (int(p) for p in parts)
    return TaskShape(c, (h, w), classes)


def _latency_table(device: str, *, kit: Path | None, runs: int, rounds: int, tables_dir: Path | None, space: str,
                   input_shape: str, classes: int, progress: bool, as_json: bool, n_networks: int = 30,
                   remote: Remote | None = None) -> None:
    task = _task(input_shape, classes)
    with running(progress=progress, as_json=as_json) as p:
        if remote is not None:
            info = _latency_table_remote(device, remote, kit=kit, space=space, task=task, n_networks=n_networks, runs=runs,
                                         rounds=rounds, tables_dir=tables_dir, say=p.say)
        elif kit is not None:  # on the device: torch-free, so not through pipeline (which imports torch)
            from gtnpipe.measure.kit import calibrate_device_from_kit

            info = calibrate_device_from_kit(kit, device, runs=runs, rounds=rounds, tables_dir=tables_dir, progress=p.say)
        else:
            from gtnpipe import pipeline

            info = pipeline.calibrate_device(device, space=space, task=task, n_networks=n_networks, runs=runs,
                                             rounds=rounds, tables_dir=tables_dir, progress=p.say)
    if as_json:
        return emit_json(info)
    where = f" on {escape(remote.target)} ({escape(info['machine'])})" if remote is not None else ""
    stdout().print(f"[bold]{escape(info['device'])}[/]{where}: {info['units']} units timed in {info['seconds']:.0f} s; "
                   f"whole network p50 = {info['slope']:.3f} x sum(units) {info['per_unit_ms']:+.4f} ms x units "
                   f"{info['intercept_ms']:+.4f} ms; runtime overhead {info['memory_overhead_mb']:.1f} MB; "
                   f"table written to {escape(str(info['table']))}")


def _latency_table_remote(device: str, remote: Remote, *, kit: Path | None, space: str, task: TaskShape, n_networks: int,
                          runs: int, rounds: int, tables_dir: Path | None, say: Callable[[str], None]) -> dict[str, Any]:
    """Time a kit on the device over ssh: the one given, or one built here for the device first (needs torch)."""
    import tempfile

    from gtnpipe.measure.kit import calibrate_remote_from_kit

    with tempfile.TemporaryDirectory(prefix="gtnpipe-remote-kit-") as scratch:
        if kit is None:
            from gtnpipe import pipeline

            kit = Path(pipeline.make_calibration_kit(device, Path(scratch) / "kit", space=space, task=task,
                                                     n_networks=n_networks, progress=say)["kit"])
        return calibrate_remote_from_kit(kit, device, remote, runs=runs, rounds=rounds, tables_dir=tables_dir, progress=say)


def fleet(
    out_dir: Annotated[Path, typer.Argument(help="An artifacts folder: one sub-folder per device.")] = Path("artifacts"),
    as_json: JsonOpt = False,
) -> None:
    """Write the fleet view DIR/index.md (one row per device: pick, runtime, precision, accuracy, predicted and
    measured latency and memory with their sources, verdict) and DIR/fleet.png (accuracy vs latency).

    A multi-device 'gtnpipe build' and every 'gtnpipe bench' beside an index already do this; this command is for
    folders put together otherwise (CI's per-device jobs, bench.json files copied back by hand).
    """
    with running(as_json=as_json):
        from gtnpipe.deploy.fleet import fleet_rows, write_index

        if not out_dir.is_dir():
            fail(f"{out_dir} is not a folder; give the artifacts folder that 'gtnpipe build --out' wrote")
        rows = fleet_rows(out_dir)
        if not rows:
            fail(f"{out_dir} has no artifact folder (a sub-folder with manifest.json); build one with "
                 f"'gtnpipe build --device NAME --out {out_dir}'")
        index = write_index(out_dir)
    if as_json:
        return emit_json({"index": str(index), "devices": rows})
    stdout().print(f"fleet index of {len(rows)} device(s): {escape(str(index))}")


def latency_kit(
    device: DeviceOpt,
    out_dir: Annotated[Path, typer.Option("--out", help="Kit folder to write (an old kit there is replaced).")],
    n_networks: NetworksOpt = 30,
    space: TableSpaceOpt = "mbv3-28",
    input_shape: InputOpt = "1x28x28",
    classes: ClassesOpt = 10,
    progress: ProgressOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """On the host: compile every unit and the fit networks for a device, for 'gtnpipe latency-table --kit' there.

    Copy the folder to the device and run 'gtnpipe latency-table --device NAME --kit DIR' there
    (no torch needed); copy the table it writes back to the host (tables/ in the user data directory,
    or device_profiles/tables/ to ship it).
    """
    with running(progress=progress, as_json=as_json) as p:
        from gtnpipe import pipeline

        info = pipeline.make_calibration_kit(device, out_dir, space=space, task=_task(input_shape, classes),
                                             n_networks=n_networks, progress=p.say)
    if as_json:
        return emit_json(info)
    stdout().print(f"[bold]{escape(info['device'])}[/]: latency kit for {info['runtime']} in {escape(str(info['kit']))}: "
                   f"{info['units']} units and {info['networks']} networks, {info['files']} files, {info['size_mb']:.1f} MB, "
                   f"built in {info['seconds']:.0f} s. On the device: {escape(info['device_command'])}")


@devices_app.command("list")
def devices_list(as_json: JsonOpt = False) -> None:
    """The shipped device profiles: runtime, precisions, budgets, and whether a measured latency table exists."""
    with running(as_json=as_json):
        from gtnpipe.config.profiles import known_profiles, load_profile
        from gtnpipe.devices.latency_table import device_tables

        profiles = [load_profile(name) for name in known_profiles()]
        measured = {p.name: bool(device_tables(p.name)) for p in profiles}  # the user's own tables, or shipped ones
    if as_json:
        return emit_json([{**p.to_dict(), "measured_table": measured[p.name]} for p in profiles])
    table = Table(id_column("device"), value_column("runtime"), value_column("precisions"), value_column("threads x batch"),
                  value_column("latency p90 (ms)"), value_column("memory (MB)"), value_column("size (MB)"),
                  value_column("latency model"))
    for p in profiles:
        b = p.budgets
        table.add_row(p.name, f"{p.runtime.name} {p.runtime.version}", ", ".join(p.precisions),
                      f"{p.threads} x {p.batch_size}",
                      f"{b.latency_ms_p90:g}" + (f" (plan -{b.latency_margin_pct:g}%)" if b.latency_margin_pct else ""),
                      f"{b.peak_memory_mb:g}",
                      f"{b.model_size_mb:g}",
                      "measured table" if measured[p.name] else "roofline estimate")
    print_table(table)


@devices_app.command("show")
def devices_show(
    device: Annotated[str, typer.Argument(help="A shipped profile's name or the path to your own .toml.")],
    as_json: JsonOpt = False,
) -> None:
    """Every field of one device profile."""
    with running(as_json=as_json):
        from gtnpipe.config.profiles import load_profile

        profile = load_profile(device)
    data = {**profile.to_dict(), "sha256": profile.sha256()}
    if as_json:
        return emit_json(data)
    out = stdout()
    out.print(f"[bold]{escape(profile.name)}[/]: {escape(profile.description)}")
    for section in ("runtime", "budgets", "hardware"):
        out.print(f"[{section}]", markup=False)
        for key, value in data[section].items():
            out.print(f"  {key} = {value!r}", markup=False)
    out.print(f"precisions = {list(profile.precisions)}, threads = {profile.threads}, batch_size = {profile.batch_size}",
              markup=False)


@devices_app.command("runtimes")
def devices_runtimes(as_json: JsonOpt = False) -> None:
    """The runtimes installed here, with their versions, and what installs a missing one ('gtnpipe bench --remote'
    asks a device this before copying anything)."""
    with running(as_json=as_json):
        from gtnpipe import __version__
        from gtnpipe.deploy.backends import installed_runtimes
        from gtnpipe.deploy.timing import Machine

        data = {"gtnpipe": __version__, "machine": Machine.here().describe(), "runtimes": installed_runtimes()}
    if as_json:
        return emit_json(data)
    stdout().print(f"gtnpipe {data['gtnpipe']} on {escape(data['machine'])}")
    table = Table(id_column("runtime"), value_column("installed"), value_column("version, or how to install it"))
    for name, found in data["runtimes"].items():
        table.add_row(name, "yes" if found["installed"] else "no", found.get("version") or found["error"])
    print_table(table)


@devices_app.command("validate")
def devices_validate(paths: Annotated[list[Path], typer.Argument(help="Profile .toml files to check.")]) -> None:
    """Check profile files strictly; print one line per file; exit 2 if any is invalid."""
    from gtnpipe.config.profiles import load_profile
    from gtnpipe.errors import ConfigError

    failed = 0
    for path in paths:
        try:
            load_profile(path)
            stdout().print(f"[green]ok[/]      {escape(str(path))}")
        except ConfigError as err:
            failed += 1
            stderr().print(f"[bold red]invalid[/] {escape(str(err))}")
    if failed:
        raise typer.Exit(2)
