"""Atomic writes: the file's mode, the process umask other threads see, and platforms without os.fchmod."""

from __future__ import annotations

import os
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from gtnpipe.fsutil import atomic_write, atomic_write_bytes, atomic_write_json

posix_modes = pytest.mark.skipif(os.name != "posix", reason="file modes and the umask are POSIX")


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@posix_modes
@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_a_written_file_gets_the_mode_open_would_give_it(tmp_path: Path, mask: int) -> None:
    with _umask(mask):  # set after gtnpipe.fsutil was imported: the umask is not remembered from import time
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        atomic_write_json(tmp_path / "b.json", {"k": 1})
        with atomic_write(tmp_path / "c.txt", "w") as handle:
            handle.write("line\n")
        (tmp_path / "plain").write_bytes(b"x")
    assert {_mode(tmp_path / n) for n in ("a.bin", "b.json", "c.txt", "plain")} == {0o666 & ~mask}
    assert (tmp_path / "c.txt").read_text() == "line\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.json", "c.txt", "plain"]  # no temp file left


@posix_modes
def test_atomic_writes_never_change_the_process_umask(tmp_path: Path) -> None:
    """The umask is per process: setting it to 0 even for a moment gives a file another thread creates then mode 0666
    (the data decode threads write while a checkpoint is saved). Every os.umask call during a write is recorded."""
    calls: list[tuple[Any, ...]] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "c_call" and arg is os.umask:
            calls.append((frame.f_code.co_filename, frame.f_lineno))

    sys.setprofile(profile)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        with atomic_write(tmp_path / "b.txt", "w") as handle:
            handle.write("y")
    finally:
        sys.setprofile(None)
    assert calls == []


@posix_modes
def test_files_other_threads_create_during_atomic_writes_keep_the_umask(tmp_path: Path) -> None:
    """A real race: one thread creates files with open() while this one writes atomically; none may come out 0666.

    A race test can only catch the bug by chance: before atomic writes stopped setting the umask, this caught it in 3
    of 5 runs (test_atomic_writes_never_change_the_process_umask above always does). On tmpfs (/dev/shm) the writes'
    fsync is cheap, so they come often enough for that; elsewhere tmp_path."""
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() and os.access(shm, os.W_OK) else tmp_path
    stop, wrong = threading.Event(), []

    def create() -> None:
        i = 0
        while not stop.is_set():
            path = folder / f"other-{i % 64}"
            with open(path, "w"):
                pass
            if (mode := _mode(path)) != 0o644:
                wrong.append(oct(mode))
            path.unlink()
            i += 1

    switch = sys.getswitchinterval()
    creator = threading.Thread(target=create)
    try:
        with _umask(0o022):
            sys.setswitchinterval(1e-6)  # hand the GIL over as often as possible: more interleavings per second
            creator.start()
            writes, deadline = 0, time.monotonic() + 2.0
            while time.monotonic() < deadline and not wrong:
                atomic_write_bytes(folder / "mine.bin", b"x")
                writes += 1
            stop.set()
            creator.join()
    finally:
        stop.set()
        sys.setswitchinterval(switch)
        if folder != tmp_path:
            for p in folder.iterdir():
                p.unlink()
            folder.rmdir()
    assert writes > 100 and wrong == [], f"files created with mode {wrong[:3]} during {writes} atomic writes"


def test_atomic_writes_work_without_os_fchmod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows has no os.fchmod before Python 3.13."""
    monkeypatch.delattr(os, "fchmod", raising=False)
    atomic_write_json(tmp_path / "manifest.json", {"k": 1})
    assert (tmp_path / "manifest.json").read_text() == '{\n  "k": 1\n}\n'
    (tmp_path / "plain").write_bytes(b"")
    assert _mode(tmp_path / "manifest.json") == _mode(tmp_path / "plain")


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "f", b"old")
    with pytest.raises(RuntimeError, match="interrupted"), atomic_write(tmp_path / "f") as handle:
        handle.write(b"new, half")
        raise RuntimeError("interrupted")
    assert (tmp_path / "f").read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f"]

