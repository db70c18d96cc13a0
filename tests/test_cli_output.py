"""What the CLI prints stays whole for a person and for a script: no identifier cut, whatever the width.

Tried as a new user would: `gtnpipe devices list | grep jetson-nano` found nothing, because the table printed to a
pipe was cut to 80 columns and names became `jetson…`. The commands run here in a subprocess with stdout a pipe
(and, with TTY_COMPATIBLE=1, as if it were a terminal) at 40 columns.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import HANG_TIMEOUT_S
from rich.table import Table

from gtnpipe.config.profiles import known_profiles, load_profile
from gtnpipe.space.spaces import get_space

ROOT = Path(__file__).parents[1]
PROFILE_NAMES = sorted(tomllib.loads(p.read_text())["name"] for p in (ROOT / "device_profiles").glob("*.toml"))
TERMINAL = {"TTY_COMPATIBLE": "1", "NO_COLOR": "1"}  # rich then treats the pipe as a terminal of COLUMNS columns


def _gtnpipe(*args: str, columns: int, terminal: bool = False) -> str:
    env = {**os.environ, "COLUMNS": str(columns), **(TERMINAL if terminal else {})}
    env.pop("FORCE_COLOR", None)
    for name in ("TTY_COMPATIBLE", "NO_COLOR"):
        if not terminal:
            env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "gtnpipe.cli", *args], capture_output=True, text=True, timeout=HANG_TIMEOUT_S,
                          env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return _plain(done.stdout)


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)  # NO_COLOR leaves bold in: the text is what is checked


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]


def test_the_profiles_are_the_shipped_ones() -> None:
    assert len(PROFILE_NAMES) >= 7 and "jetson-nano" in PROFILE_NAMES
    assert known_profiles() == PROFILE_NAMES


def test_devices_list_to_a_narrow_pipe_has_one_whole_line_per_device() -> None:
    out = _gtnpipe("devices", "list", columns=40)
    assert "…" not in out
    for name in PROFILE_NAMES:
        rows = [line for line in out.splitlines() if name in _cells(line)]
        assert len(rows) == 1, (name, out)  # `grep NAME` finds the device and its whole row
        p = load_profile(name)
        assert _cells(rows[0])[:3] == [name, f"{p.runtime.name} {p.runtime.version}", ", ".join(p.precisions)]


@pytest.mark.parametrize("columns", [40, 100, 130])
def test_devices_list_in_a_narrow_terminal_cuts_no_word(columns: int) -> None:
    out = _gtnpipe("devices", "list", columns=columns, terminal=True)
    assert "…" not in out
    cells = [cell for line in out.splitlines() for cell in _cells(line)]
    assert set(PROFILE_NAMES) <= set(cells)  # each name whole in its cell
    words = {w for cell in cells for w in cell.split()}
    for name in PROFILE_NAMES:
        p = load_profile(name)
        assert {p.runtime.name, p.runtime.version} <= words  # wrapped between words, never inside one
    width = max(len(line) for line in out.splitlines())
    assert width <= columns or width == max(len(line) for line in _gtnpipe("devices", "list", columns=40).splitlines())


@pytest.mark.parametrize("terminal", [False, True])
def test_pool_tables_and_lines_keep_arch_ids_whole(terminal: bool) -> None:
    import json

    rows = json.loads(_gtnpipe("pool", "sample", "-n", "6", "--seed", "1", "--json", columns=40))
    out = _gtnpipe("pool", "sample", "-n", "6", "--seed", "1", columns=40, terminal=terminal)
    assert "…" not in out
    cells = [cell for line in out.splitlines() for cell in _cells(line)]
    assert {r["arch"] for r in rows} <= set(cells)
    info = _gtnpipe("pool", "info", columns=40, terminal=terminal)
    space = get_space("mbv3-28")
    assert f"smallest: {space.smallest().id}\n" in info
    assert f"largest:  {space.largest().id}\n" in info


@pytest.mark.parametrize("terminal", [False, True])
def test_devices_show_prints_each_field_on_one_line(terminal: bool) -> None:
    out = _gtnpipe("devices", "show", "raspberry-pi-4", columns=40, terminal=terminal)
    lines = out.splitlines()
    p = load_profile("raspberry-pi-4")
    assert lines[0] == f"raspberry-pi-4: {p.description}"
    assert f"  version = {p.runtime.version!r}" in lines
    assert f"  latency_ms_p90 = {p.budgets.latency_ms_p90!r}" in lines


def _long_arch_ids(n: int) -> list[str]:
    space = get_space("mbv3-28")
    return [space.largest().id] + [space.sample(random.Random(i)).id for i in range(n - 1)]


@pytest.fixture(scope="module")
def search_result():  # noqa: ANN201
    """A real evolution search (on the host's cost model, accuracy a fixed function of the arch), run once."""
    from gtnpipe.nas.evolution import SearchConfig, evolution_search
    from gtnpipe.space.spaces import TaskShape
    from gtnpipe.stages.search import cost_model

    space = get_space("mbv3-28")
    model = cost_model(load_profile("host"), space, TaskShape(in_channels=1, image_hw=(28, 28), num_classes=10))
    return evolution_search(model, lambda a: 80.0 + sum(a.depths) / 4, SearchConfig(population=16, iterations=4))


@pytest.mark.parametrize(("columns", "terminal"), [(40, False), (40, True), (60, True), (80, True)])
def test_search_results_keep_arch_ids_whole(columns: int, terminal: bool, search_result,  # noqa: ANN001
                                            capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The search result printed as `gtnpipe search` prints it."""
    from gtnpipe.cli.build import _print_search

    result = search_result
    _set_width(monkeypatch, columns, terminal)
    _print_search(result, loo_rmse=0.5, plot=Path("some/where/pareto.png"))
    out = _plain(capsys.readouterr().out)
    assert "…" not in out
    assert f"pick: {result.pick.arch.id}\n" in out
    cells = [cell for line in out.splitlines() for cell in _cells(line)]
    assert {c.arch.id for c in result.front} <= set(cells)
    assert "Pareto plot: some/where/pareto.png\n" in out


@pytest.mark.parametrize(("columns", "terminal"), [(40, False), (40, True), (70, True)])
def test_bench_result_keeps_names_and_path_whole(columns: int, terminal: bool, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from gtnpipe.cli.on_device import _print_bench

    written = tmp_path / "a-rather-long-folder-name" / "artifacts" / "raspberry-pi-4" / "bench.json"
    checks = {"latency_ms_p90": {"measured": 0.912, "budget": 1.2, "ok": True},
              "peak_memory_mb": {"measured": 61.5, "budget": 120, "ok": True},
              "model_size_mb": {"measured": 0.52, "budget": 0.8, "ok": True}, "parity": {"ok": True},
              "runtime_version": {"ok": True}}
    result = {"device_profile": "raspberry-pi-4", "precision": "int8", "threads": 4,
              "runtime": {"name": "tflite", "version": "2.3.0", "profile_range": ">=2.3,<3", "in_range": True},
              "latency": {"runs": 200, "p50_ms": 0.85, "p99_ms": 1.1, "throughput_per_s": 1150.0},
              "parity": {"agreement_pct": 99.4, "max_abs_diff": 0.031, "artifact_top1": 88.1, "torch_top1": 88.3,
                         "passed": True},
              "verdict": {"ok": True, "checks": checks}}
    _set_width(monkeypatch, columns, terminal)
    _print_bench(result, written)
    out = _plain(capsys.readouterr().out)
    assert "…" not in out
    assert out.splitlines()[0].startswith(f"raspberry-pi-4 artifact {written.parent}: tflite 2.3.0 int8")
    assert out.rstrip().endswith(f"wrote {written}")
    cells = [cell for line in out.splitlines() for cell in _cells(line)]
    assert {"latency_ms_p90", "peak_memory_mb", "model_size_mb", "runtime version", ">=2.3,<3"} <= set(cells)


@pytest.mark.parametrize("columns", [20, 40, 70, 100, 200])
def test_a_table_is_never_cut_at_any_width(columns: int, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Every table goes through print_table: identifier columns whole, other cells broken only between words."""
    from gtnpipe.cli._common import id_column, print_table, value_column

    archs = _long_arch_ids(5)
    table = Table(value_column("latency p90 (ms)"), value_column("latency model"), id_column("arch id"), title="front")
    for i, a in enumerate(archs):
        table.add_row(f"{0.1 * i:.3f}", "measured table" if i % 2 else "roofline estimate (extrapolated)", a)
    _set_width(monkeypatch, columns, terminal=True)
    print_table(table)
    out = _plain(capsys.readouterr().out)
    assert "…" not in out
    cells = [cell for line in out.splitlines() for cell in _cells(line)]
    assert set(archs) <= set(cells)
    assert {"roofline", "estimate", "(extrapolated)", "measured"} <= {w for c in cells for w in c.split()}


def _set_width(monkeypatch: pytest.MonkeyPatch, columns: int, terminal: bool) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    if terminal:
        for k, v in TERMINAL.items():
            monkeypatch.setenv(k, v)
    else:
        monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
