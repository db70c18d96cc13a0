"""The content-addressed cache: keys, atomic entries, locking, corruption detection."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import time
from pathlib import Path

import pytest

from gtnpipe.cache import Cache, cache_key, default_cache_dir
from gtnpipe.errors import CacheCorrupt, CacheError


def _put(cache: Cache, key: str, payload: bytes = b"weights", meta: dict | None = None) -> None:
    with cache.locked("models", key), cache.writing("models", key, spec={"x": 1}, meta=meta or {"top1": 90.5}) as d:
        (d / "weights.pt").write_bytes(payload)
        (d / "notes.txt").write_text("hello")


def test_key_is_canonical_and_sensitive() -> None:
    a = cache_key({"model": "teacher", "train": {"lr": 0.1, "epochs": 3}})
    b = cache_key({"train": {"epochs": 3, "lr": 0.1}, "model": "teacher"})
    assert a == b and len(a) == 64
    assert a != cache_key({"model": "teacher", "train": {"lr": 0.1, "epochs": 4}})
    assert a != cache_key({"model": "teacher", "train": {"lr": 0.10000001, "epochs": 3}})


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
    key = cache_key({"n": 1})
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
    key = cache_key({"n": 2})
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
    key = cache_key({"n": 3})
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
    k1, k2 = cache_key({"n": 4}), cache_key({"n": 5})
    _put(cache, k1)
    cache.entry_dir("models", k1).rename(cache.entry_dir("models", k2))
    with pytest.raises(CacheCorrupt, match="records key"):
        cache.verify("models", k2)


def _build_once(root: str, key: str, log_file: str) -> None:
    cache = Cache(Path(root))
    with cache.locked("models", key):
        if cache.lookup("models", key) is None:
            with open(log_file, "a") as f:
                f.write("built\n")
            time.sleep(0.5)  # long enough that the other process is waiting on the lock
            with cache.writing("models", key, spec={}, meta={"by": "someone"}) as d:
                (d / "w").write_bytes(b"x" * 1000)


def test_two_processes_build_an_entry_once(tmp_path: Path) -> None:
    key = cache_key({"n": 6})
    log_file = tmp_path / "builds.log"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_build_once, args=(str(tmp_path / "c"), key, str(log_file))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert log_file.read_text() == "built\n"
    assert Cache(tmp_path / "c").verify("models", key).file("w").read_bytes() == b"x" * 1000


def test_unusable_root_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(CacheError, match="--cache-dir or GTNPIPE_CACHE"), Cache(blocker).locked("models", "k"):
        pass
