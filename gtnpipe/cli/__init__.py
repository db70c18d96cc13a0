"""`gtnpipe` command line: parse, call one function of `gtnpipe.pipeline` (or the public API), print.

One module per command group, registered here:
- `inspect`: data info, pool info, pool sample
- `train`: train, teacher, distill
- `build`: search, build, compile
- `on_device`: bench, latency-table, latency-kit, fleet, devices list/show/validate/runtimes
- `_common`: the options, consoles, tables, error handling and progress policy they share

Heavy imports (torch, the pipeline) happen inside the commands, so `gtnpipe --help` is fast and works with
nothing but the CLI's own dependencies; `gtnpipe bench`, `latency-table --kit` and `devices` need no torch.
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from gtnpipe.cli import build, inspect, on_device, train
from gtnpipe.environment import apply_process_defaults

__all__ = ["app", "main"]

app = typer.Typer(help="gtnpipe: one generic teacher, many students, many devices.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)

app.add_typer(inspect.data_app, name="data")
app.add_typer(inspect.pool_app, name="pool")
app.command("train")(train.train)
app.command("teacher")(train.teacher)
app.command("distill")(train.distill)
app.command("search")(build.search)
app.command("build")(build.build)
app.command("compile")(build.compile_)
app.command("bench")(on_device.bench)
app.command("latency-table")(on_device.latency_table)
app.command("latency-kit")(on_device.latency_kit)
app.command("fleet")(on_device.fleet)
app.add_typer(on_device.devices_app, name="devices")
# the name 'gtnpipe latency-kit' had before; `gtnpipe bench --calibrate` is the other old spelling (see on_device.py)
app.command("calibration-kit", hidden=True, deprecated=True)(on_device.latency_kit)


def _print_version(value: bool) -> None:
    if value:  # `gtnpipe --version`: what `gtnpipe bench --remote` compares with the device's
        from gtnpipe import __version__

        sys.stdout.write(f"gtnpipe {__version__}\n")
        raise typer.Exit()


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug logs.")] = False,
          version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                                help="Print gtnpipe's version and exit.")] = False) -> None:
    # gtnpipe's own INFO lines show; the libraries' (converters, runtimes) only from WARNING up, unless -v.
    # RichHandler lays a line out at the console's full width: in a terminal only; a log file gets plain lines.
    console = Console(stderr=True)
    handler = (RichHandler(console=console, show_path=False) if console.is_terminal
               else logging.StreamHandler(sys.stderr))
    handler.setFormatter(logging.Formatter("%(message)s" if console.is_terminal else "%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, handlers=[handler])
    logging.getLogger("gtnpipe").setLevel(logging.DEBUG if verbose else logging.INFO)


def main() -> None:
    # The process-wide settings gtnpipe relies on, before any torch work (gtnpipe.environment says which and why)
    apply_process_defaults()
    # Libraries start helper processes from multiprocessing's default context: NNCF's usage telemetry
    # (openvino_telemetry) sends each event from a child process. The default 'fork' copies a process that
    # already runs threads (torch, JAX, the runtimes), which can deadlock; JAX warns at each fork
    # ("RuntimeWarning: os.fork() was called ..."). forkserver forks from a clean single-threaded server
    # instead (Python 3.14's default on Linux). Set here, at the program's entry, as the multiprocessing docs
    # ask, and only if the embedding program chose nothing.
    if multiprocessing.get_start_method(allow_none=True) is None and "forkserver" in multiprocessing.get_all_start_methods():
        multiprocessing.set_start_method("forkserver")
    app()
