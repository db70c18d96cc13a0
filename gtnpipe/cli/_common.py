"""What every command shares: its options, the consoles it prints on, tables, errors, JSON, the progress policy.

Output a person and a script can both read:
- Results go to stdout; status lines, warnings about the run and errors to stderr.
- A line of text goes out whole: rich never re-wraps it (a terminal wraps it at its edge).
- A table takes the terminal's width; to a pipe or a file it takes what it needs, so a row is one line
  (`gtnpipe devices list | grep jetson-nano` finds it whole, whatever COLUMNS says).
- A table never cuts an identifier (device name, arch id, path): those columns do not wrap, and when even
  the narrowest rendering is wider than the terminal the table is printed at its natural width (the
  terminal then wraps the lines) rather than shortened with "…". --json prints the same data for scripts.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Column, Table

from gtnpipe.errors import GtnpipeError
from gtnpipe.progress import Progress

if TYPE_CHECKING:
    from gtnpipe.stages.workspace import Workspace

__all__ = [
    "CacheOpt", "DataOpt", "ImageSizeOpt", "JsonOpt", "ProgressOpt", "RecipeOpt", "SkipUnreadableOpt", "SpaceOpt",
    "StorageOpt", "TrainDeviceOpt",
    "emit_json", "fail", "id_column", "open_workspace", "print_table", "running", "stderr", "stdout", "value_column",
]

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout (implies --no-progress).")]
RecipeOpt = Annotated[str, typer.Option("--recipe", "-r", help="Recipe name (recipes/NAME.toml) or path to a .toml.")]
CacheOpt = Annotated[
    Path | None,
    typer.Option("--cache-dir", envvar="GTNPIPE_CACHE", help="Cache folder [default: ~/.cache/gtnpipe]."),
]
SpaceOpt = Annotated[str, typer.Option("--space", help="Search space name.")]
DataOpt = Annotated[str | None, typer.Option(
    "--data", help="Your own images instead of the recipe's data: a folder of class sub-folders (optionally under "
    "train/ and test/), a .npz, or fashion-mnist. The search space and teacher then follow the images' resolution and "
    "10% of the training images become the validation split; the recipe's training settings stay.")]
ImageSizeOpt = Annotated[int | None, typer.Option(
    "--image-size", min=8, help="Resize every image to N x N (shorter side to N, then the centre square) "
    "[default: the recipe's data.image_size, or the images' own size].")]
TrainDeviceOpt = Annotated[str, typer.Option(
    "--train-device", help="Where teachers, students and the accuracy predictor train and evaluate: auto (CUDA when "
    "torch sees a GPU), cpu, cuda or cuda:N. Recorded in the cache and the manifest, not part of any cache key.")]
SkipUnreadableOpt = Annotated[bool, typer.Option(
    "--skip-unreadable", help="Leave out image files that cannot be decoded (counted in the output) instead of failing.")]
StorageOpt = Annotated[str, typer.Option(
    "--storage", help="Where an image folder's images are while training: memory (decoded once), disk (decoded on the "
    "fly by DataLoader workers, for data larger than memory) or auto (memory up to 2 GiB of decoded images). The "
    "same results either way: not part of any cache key.")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress: bars, and status lines on "
                                           "stderr, gtnpipe's and its libraries' (NNCF's). Warnings and errors show either way.")]

# Not a terminal: the width a table or a line may take without wrapping. Far above any row gtnpipe prints
# (the widest, `devices list`, is ~150 columns), and only what is printed takes room: tables are not expanded.
UNWRAPPED_WIDTH = 10_000


def stdout() -> Console:
    """The console for results. Lines go out as they are (soft_wrap: rich never re-wraps them; a terminal
    wraps at its edge); tables take the terminal's width, or any width they need to a pipe or a file."""
    return _console(stderr=False)


def stderr() -> Console:
    """The console for progress, warnings and errors, with the same rules as `stdout`."""
    return _console(stderr=True)


def _console(*, stderr: bool) -> Console:
    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    return console if console.is_terminal else Console(stderr=stderr, highlight=False, soft_wrap=True,
                                                       width=UNWRAPPED_WIDTH)


def id_column(header: str, **kwargs: Any) -> Column:
    """A column of identifiers (device names, arch ids, paths): never wrapped, never shortened.

    rich shrinks columns that may wrap first and touches a no_wrap column only when the others cannot give
    more room, which `print_table` never lets happen; fold (not "…") is what would show if it did."""
    return Column(header, no_wrap=True, overflow="fold", **kwargs)


def value_column(header: str, **kwargs: Any) -> Column:
    """A column of numbers or words: may wrap between words in a narrow terminal, folded rather than cut."""
    return Column(header, overflow="fold", **kwargs)


def print_table(table: Table) -> None:
    """Print `table` on stdout: whole words in every cell and whole identifiers at any width.

    Narrower than its natural width, rich would shrink the widest columns first and fold words in two
    ("onnxrunti|me"); instead every column gets its longest word (an identifier column: its longest value)
    and the room left is shared in proportion to what each column would still take. When even that is wider
    than the terminal, the table is printed at its natural width (one line per row, which the terminal wraps).
    """
    console = stdout()
    options = console.options.update_width(UNWRAPPED_WIDTH)
    natural = Measurement.get(console, options, table).maximum
    if natural <= console.width:
        console.print(table, soft_wrap=False)
        return
    spans = []
    for column in table.columns:
        sizes = [Measurement.get(console, options, cell) for cell in (column.header, *column.cells)]
        widest = max(m.maximum for m in sizes)
        spans.append((widest if column.no_wrap else max(m.minimum for m in sizes), widest))
    room = console.width - (natural - sum(widest for _, widest in spans))  # less borders and padding
    slack, wanted = room - sum(least for least, _ in spans), sum(widest - least for least, widest in spans)
    if slack < 0:
        Console(highlight=False, width=natural).print(table)
        return
    for column, (least, widest) in zip(table.columns, spans):
        column.width = least + (widest - least) * slack // max(wanted, 1)
    console.print(table, soft_wrap=False)


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def fail(message: str) -> NoReturn:
    """A usage error: one line on stderr and exit code 2."""
    stderr().print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(2)


@contextmanager
def running(*, progress: bool = True, as_json: bool = False) -> Iterator[Progress]:
    """Around a command's call into gtnpipe: yields the progress policy to pass on, and

    - applies it (`gtnpipe.progress`: off with --no-progress and with --json, for gtnpipe and for NNCF);
    - turns a GtnpipeError into one line on stderr and exit code 2, Ctrl-C into how to resume;
    - with --json, sends whatever writes to file descriptor 1 (converters' C++ logs) to stderr, so that
      stdout stays one parseable JSON document (print it after the block).
    """
    policy = Progress(enabled=progress and not as_json)
    with _handled(), _stdout_to_stderr(as_json), policy.applied():
        yield policy


@contextmanager
def _handled() -> Iterator[None]:
    try:
        yield
    except GtnpipeError as err:
        stderr().print(f"[bold red]error:[/] {escape(str(err))}")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        stderr().print("interrupted: run the same command again to resume (finished stages and epochs are cached)")
        raise typer.Exit(130) from None


@contextmanager
def _stdout_to_stderr(active: bool) -> Iterator[None]:
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with redirect_stdout(sys.stderr):  # and Python-level prints, wherever sys.stdout points
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def open_workspace(recipe: str, *, cache_dir: Path | None = None, data: str | None = None, image_size: int | None = None,
                   skip_unreadable: bool = False, storage: str = "auto", train_device: str = "auto",
                   progress: bool = True) -> Workspace:
    """The command's Workspace (recipe, data, cache); files the data loader skipped are reported on stderr."""
    from gtnpipe.options import WorkspaceOptions

    ws = WorkspaceOptions(recipe, data, image_size, skip_unreadable or None, storage, train_device, cache_dir,
                          progress).open()
    if ws.data.skipped:
        first = ", ".join(ws.data.skipped[:3]) + (", ..." if len(ws.data.skipped) > 3 else "")
        stderr().print(f"[yellow]warning[/] skipped {len(ws.data.skipped)} unreadable file(s) of {escape(ws.data.name)}: "
                       f"{escape(first)}")
    return ws
