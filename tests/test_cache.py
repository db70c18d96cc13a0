"""The content-addressed cache: atomic entries, locking, corruption detection, staging left by killed writers."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import HANG_TIMEOUT_S

from gtnpipe.cache import Cache, default_cache_dir
from gtnpipe.errors import CacheCorrupt, CacheError


def _key(name: str) -> str:
    """A key as stages make them (gtnpipe.stages.keys): 64 hex digits of a sha256."""
    return hashlib.sha256(name.encode()).hexdigest()


def _put(cache: Cache, key: str, payload: bytes = b"weights", meta: dict | None = None) -> None:
    with cache.locked("models", key), cache.writing("models", key, spec={"x": 1}, meta=meta or {"top1": 90.5}) as d:
        (d / "weights.pt").write_bytes(payload)
        (d / "notes.txt").write_text("hello")


def test_default_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GTNPIPE_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("GTNPIPE_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "gtnpipe"


def test_constructor_touches_no_disk(tmp_path: Path) -> None:
    Cache(tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_round_trip_records_hashes(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    key = _key("n1")
    assert cache.lookup("models", key) is None
    _put(cache, key)
    entry = cache.lookup("models", key)
    assert entry is not None
    assert entry.meta == {"top1": 90.5}
    assert entry.file("weights.pt").read_bytes() == b"weights"
    record = json.loads((entry.path / "entry.json").read_text())
    assert record["files"]["weights.pt"] == hashlib.sha256(b"weights").hexdigest()
    assert record["spec"] == {"x": 1} and record["key"] == key
    assert not list((tmp_path / "tmp").iterdir())  # staging cleaned up


def test_failed_write_leaves_no_entry(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    key = _key("n2")
    with pytest.raises(RuntimeError, match="interrupted"), cache.writing("models", key, spec={}, meta={}) as d:
        (d / "weights.pt").write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert not cache.entry_dir("models", key).exists()
    assert cache.lookup("models", key) is None
    assert not list((tmp_path / "tmp").iterdir())


@pytest.mark.parametrize("damage", ["flip-byte", "truncate", "delete-file", "delete-record", "garble-record"])
def test_corrupt_entry_is_detected_reported_and_quarantined(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache = Cache(tmp_path)
    key = _key("n3")
    _put(cache, key, payload=b"0123456789")
    path = cache.entry_dir("models", key)
    if damage == "flip-byte":
        (path / "weights.pt").write_bytes(b"0123456788")
    elif damage == "truncate":
        (path / "weights.pt").write_bytes(b"01234")
    elif damage == "delete-file":
        (path / "notes.txt").unlink()
    elif damage == "delete-record":
        (path / "entry.json").unlink()
    else:
        (path / "entry.json").write_text("{not json")
    with pytest.raises(CacheCorrupt):
        cache.verify("models", key)
    with caplog.at_level(logging.WARNING, logger="gtnpipe.cache"):
        assert cache.lookup("models", key) is None
    assert "will rebuild" in caplog.text
    assert not path.exists()
    quarantined = list((tmp_path / "quarantine").iterdir())
    assert len(quarantined) == 1 and quarantined[0].name.startswith(f"models-{key}")
    _put(cache, key, payload=b"0123456789")  # rebuilt
    assert cache.lookup("models", key) is not None


def test_entry_moved_to_another_key_is_rejected(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    k1, k2 = _key("n4"), _key("n5")
    _put(cache, k1)
    cache.entry_dir("models", k1).rename(cache.entry_dir("models", k2))
    with pytest.raises(CacheCorrupt, match="records key"):
        cache.verify("models", k2)


# One process of the two-process test: build the entry under its lock, or find it built. Each event is a file in
# `events` (its existence is the signal); "first" builds only once "second" is blocked on the lock, then holds it
# HOLD_S more, so "second" must wait at least that long and then find a cache hit.
_BUILDER = """
import logging, sys, time
from pathlib import Path
from gtnpipe.cache import Cache

root, key, events, role = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]
hold_s, timeout_s = float(sys.argv[5]), float(sys.argv[6])

def event(name, text=""):
    (events / f"{role}-{name}").write_text(text)

class OnWaiting(logging.Handler):  # Cache.locked logs this only when another process holds the lock
    since = None

    def emit(self, record):
        if record.getMessage().startswith("waiting for another process"):
            self.since = time.monotonic()
            event("waiting", str((events / "first-built").exists()))

on_waiting = OnWaiting()
logging.getLogger("gtnpipe.cache").addHandler(on_waiting)
logging.getLogger("gtnpipe.cache").setLevel(logging.INFO)
cache = Cache(root)
with cache.locked("models", key):
    waited = time.monotonic() - on_waiting.since if on_waiting.since is not None else 0.0
    event("locked", f"{(events / 'first-built').exists()} {waited}")
    if cache.lookup("models", key) is None:
        event("building")
        if role == "first":
            deadline = time.monotonic() + timeout_s
            while not (events / "second-waiting").exists():
                if (events / "second-locked").exists() or time.monotonic() > deadline:
                    sys.exit("the second process did not wait for the lock this one holds")
                time.sleep(0.01)
            time.sleep(hold_s)
        with cache.writing("models", key, spec={}, meta={"by": role}) as d:
            (d / "w").write_bytes(b"x" * 1000)
        event("built")
    else:
        event("hit", cache.lookup("models", key).meta["by"])
"""
HOLD_S = 1.0


def test_a_second_process_waits_for_the_first_and_gets_its_entry(tmp_path: Path) -> None:
    key = _key("n6")
    events = tmp_path / "events"
    events.mkdir()

    def start(role: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-c", _BUILDER, str(tmp_path / "c"), key, str(events), role,
                                 str(HOLD_S), str(HANG_TIMEOUT_S)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    first = start("first")
    deadline = time.monotonic() + HANG_TIMEOUT_S
    while not (events / "first-locked").exists():  # the first holds the lock before the second starts
        assert first.poll() is None, first.communicate()[1]
        assert time.monotonic() < deadline, "the first process never took the lock"
        time.sleep(0.01)
    second = start("second")
    for proc in (first, second):
        _, stderr = proc.communicate(timeout=HANG_TIMEOUT_S)
        assert proc.returncode == 0, stderr
    happened = {p.name: p.read_text() for p in events.iterdir()}
    # the second found the lock taken before the first had built (the first builds only after that) ...
    assert happened["second-waiting"] == "False"
    # ... blocked until the first released it, with the entry built (HOLD_S at least, less timer resolution) ...
    built_when_locked, waited_s = happened["second-locked"].split()
    assert built_when_locked == "True" and float(waited_s) >= HOLD_S - 0.05
    # ... and used the first's entry instead of building its own
    assert happened["second-hit"] == "first"
    assert set(happened) == {"first-locked", "first-building", "first-built", "second-waiting", "second-locked",
                             "second-hit"}
    assert Cache(tmp_path / "c").verify("models", key).file("w").read_bytes() == b"x" * 1000


def test_unusable_root_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(CacheError, match="--cache-dir or GTNPIPE_CACHE"), Cache(blocker).locked("models", "k"):
        pass


# A writer of the entry `key`, in its own process: it takes the entry's lock, says so (an event file), then writes
# the entry HOLD_S later (replacing a corrupt one: Cache.writing quarantines it) or, with "hang", writes one file into
# its staging folder, says where that folder is and waits, in the middle of the write, for "finish" (or to be killed).
_WRITER = """
import sys, time
from pathlib import Path
from gtnpipe.cache import Cache

root, key, events, name, hold_s, timeout_s = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4], \\
    float(sys.argv[5]), float(sys.argv[6])
hang = sys.argv[7:] == ["hang"]
cache = Cache(root)
with cache.locked("models", key):
    (events / f"{name}-locked").write_text("")
    time.sleep(hold_s)
    with cache.writing("models", key, spec={}, meta={"by": name}) as staging:
        (staging / "w").write_bytes(name.encode())
        if hang:
            (events / f"{name}-writing").write_text(str(staging))
            deadline = time.monotonic() + timeout_s
            while not (events / f"{name}-finish").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
"""


def _start_writer(root: Path, key: str, events: Path, name: str, *, hold_s: float = 0.0,
                  hang: bool = False) -> subprocess.Popen[str]:
    events.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", _WRITER, str(root), key, str(events), name, str(hold_s),
                             str(HANG_TIMEOUT_S), *(["hang"] if hang else [])], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(event: Path, proc: subprocess.Popen[str]) -> str:
    deadline = time.monotonic() + HANG_TIMEOUT_S
    while not event.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, f"{event.name} never happened"
        time.sleep(0.01)
    return event.read_text()


def test_a_corrupt_entry_is_quarantined_only_under_the_lock_its_writer_holds(tmp_path: Path) -> None:
    """lookup finds a corrupt entry while another process holds the entry's lock to rebuild it: it waits for that
    writer instead of moving things under it, then finds the writer's entry (and quarantines nothing itself)."""
    cache, key, events = Cache(tmp_path / "c"), _key("race"), tmp_path / "events"
    _put(cache, key, payload=b"0123456789")
    (cache.entry_dir("models", key) / "weights.pt").write_bytes(b"0123456788")
    writer = _start_writer(cache.root, key, events, "writer", hold_s=HOLD_S)
    _wait_for(events / "writer-locked", writer)
    start = time.monotonic()
    entry = cache.lookup("models", key)
    waited_s = time.monotonic() - start
    _, stderr = writer.communicate(timeout=HANG_TIMEOUT_S)
    assert writer.returncode == 0, stderr
    assert entry is not None and entry.meta == {"by": "writer"} and entry.file("w").read_bytes() == b"writer"
    assert waited_s >= HOLD_S - 0.05
    (quarantined,) = (cache.root / "quarantine").iterdir()  # the corrupt entry, moved aside by the writer, once
    assert (quarantined / "weights.pt").read_bytes() == b"0123456788"


def test_lookup_of_a_corrupt_entry_under_the_callers_own_lock(tmp_path: Path) -> None:
    """Stages look up again once they hold the lock: quarantining there takes the same lock again, without blocking."""
    cache, key = Cache(tmp_path), _key("reentrant")
    _put(cache, key)
    (cache.entry_dir("models", key) / "entry.json").write_text("{not json")
    with cache.locked("models", key):
        assert cache.lookup("models", key) is None
        with cache.writing("models", key, spec={"x": 1}, meta={"top1": 1.0}) as d:
            (d / "weights.pt").write_bytes(b"rebuilt")
    assert cache.verify("models", key).meta == {"top1": 1.0}
    assert len(list((tmp_path / "quarantine").iterdir())) == 1


def test_staging_of_a_killed_writer_is_removed_and_a_live_writers_is_kept(tmp_path: Path) -> None:
    """A process killed (SIGKILL: no cleanup runs) in the middle of a write leaves its staging folder in tmp/; the next
    write removes it, and leaves alone the staging folder of a writer that is still writing."""
    cache, events = Cache(tmp_path / "c"), tmp_path / "events"
    dead = _start_writer(cache.root, _key("dead"), events, "dead", hang=True)
    live = _start_writer(cache.root, _key("live"), events, "live", hang=True)
    dead_staging = Path(_wait_for(events / "dead-writing", dead))
    live_staging = Path(_wait_for(events / "live-writing", live))
    dead.kill()
    dead.communicate(timeout=HANG_TIMEOUT_S)
    assert dead_staging.is_dir() and live_staging.is_dir()
    _put(cache, _key("next"))
    assert not dead_staging.exists(), "the killed writer's staging folder is still there"
    assert (live_staging / "w").read_bytes() == b"live"
    (events / "live-finish").write_text("")
    _, stderr = live.communicate(timeout=HANG_TIMEOUT_S)
    assert live.returncode == 0, stderr
    assert cache.verify("models", _key("live")).file("w").read_bytes() == b"live"
    assert cache.lookup("models", _key("dead")) is None
    assert list((cache.root / "tmp").iterdir()) == []  # nothing left, lock files included
    _put(cache, _key("dead"))  # the dead writer's build lock went with it
    assert cache.lookup("models", _key("dead")) is not None
