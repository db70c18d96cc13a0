"""Content-addressed cache of trained models (and, later, teachers, students, compiled artifacts).

Layout under the root (default ~/.cache/gtnpipe, or GTNPIPE_CACHE, or --cache-dir):

    <kind>/<key>/entry.json   what made it (the key's spec), results, sha256 of every file
    <kind>/<key>/<files>      the payload
    work/<kind>/<key>/        resumable scratch space (training checkpoints) until the entry exists
    locks/<kind>-<key>.lock   held while an entry is built or a corrupt one moved aside, so two processes never
                              build one twice, nor move an entry that a writer is putting in place
    tmp/<name>/, tmp/<name>.lock
                              an entry being written, and the lock its writer holds meanwhile; a folder whose lock
                              can be taken lost its writer (killed mid-write) and is removed by the next write
    quarantine/               corrupt entries, moved aside (never silently used, never deleted)
    data-index/               image folders' per-file sha256 and decode facts (gtnpipe.data.datasets), so a
                              folder is hashed once; trusted while a file's size and mtime are unchanged

An entry is built in a temp folder and renamed into place, so readers see it whole or not at
all; `entry.json` is written last inside it. A key is the sha256 of the canonical JSON of
everything that determines the result (gtnpipe.stages.keys makes them).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from filelock import FileLock, Timeout

from gtnpipe.errors import CacheCorrupt, CacheError
from gtnpipe.fsutil import atomic_write_json, sha256_file

__all__ = ["Cache", "Entry", "EntryRecord", "default_cache_dir"]

log = logging.getLogger("gtnpipe.cache")
_ENTRY_FILE = "entry.json"
# A staging folder without a lock file beside it was left by a gtnpipe from before those locks, whose writer cannot
# be asked whether it is alive: it is removed once no write could still be going on in it.
_UNLOCKED_STAGING_MAX_AGE_S = 24 * 3600


def default_cache_dir() -> Path:
    return Path(os.environ.get("GTNPIPE_CACHE") or Path.home() / ".cache" / "gtnpipe")


class EntryRecord(TypedDict):
    """entry.json: what made the entry (its key's spec), its results, and the sha256 of every payload file."""

    kind: str
    key: str
    created_unix_s: float
    spec: dict[str, Any]
    meta: dict[str, Any]
    files: dict[str, str]  # file name -> sha256


@dataclass(frozen=True)
class Entry:
    kind: str
    key: str
    path: Path
    record: EntryRecord

    @property
    def meta(self) -> dict[str, Any]:
        return self.record["meta"]

    def file(self, name: str) -> Path:
        return self.path / name


class Cache:
    """A cache rooted at `root` (nothing is touched on disk until it is used)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def entry_dir(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def work_dir(self, kind: str, key: str) -> Path:
        """Scratch space for a build in progress (kept across interrupts, removed on success)."""
        return self.root / "work" / kind / key

    @contextmanager
    def locked(self, kind: str, key: str, *, timeout_s: float = -1) -> Iterator[None]:
        """Hold the build lock of one entry (blocks while another process builds it).

        Reentrant within a thread (one lock object per lock file in a process): `lookup` takes it to quarantine a
        corrupt entry, also when its caller already holds it.
        """
        lock_path = self._mkdir(self.root / "locks") / f"{kind}-{key}.lock"
        lock = FileLock(lock_path, is_singleton=True)
        try:
            lock.acquire(blocking=False)
        except Timeout:
            log.info("waiting for another process building %s/%s", kind, key[:12])
            lock.acquire(timeout=timeout_s)
        try:
            yield
        finally:
            lock.release()

    def lookup(self, kind: str, key: str) -> Entry | None:
        """The verified entry, or None; a corrupt entry is quarantined, reported and treated as missing."""
        path = self.entry_dir(kind, key)
        if not path.exists():
            return None
        try:
            return self.verify(kind, key)
        except CacheCorrupt:
            pass
        # A writer replaces a corrupt entry while it holds the entry's lock: moving the entry aside without that lock
        # could move the writer's fresh entry instead, or find it half replaced. Under the lock, look again: the
        # writer may have put a good entry in place meanwhile, or another reader moved the corrupt one.
        with self.locked(kind, key):
            if not path.exists():
                return None
            try:
                return self.verify(kind, key)
            except CacheCorrupt as err:
                moved = self._quarantine(path)
                log.warning("%s; moved it to %s and will rebuild it", err, moved)
                return None

    def verify(self, kind: str, key: str) -> Entry:
        path = self.entry_dir(kind, key)
        try:
            record = json.loads((path / _ENTRY_FILE).read_text())
            files: dict[str, str] = record["files"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CacheCorrupt(f"cache entry {path} has a missing or unreadable {_ENTRY_FILE}") from err
        if record.get("key") != key or record.get("kind") != kind:
            raise CacheCorrupt(f"cache entry {path} records key {record.get('key')!r}, not its folder's")
        for name, digest in files.items():
            file = path / name
            if not file.is_file() or sha256_file(file) != digest:
                raise CacheCorrupt(f"cache entry {path}: {name} is missing or does not match its recorded sha256")
        return Entry(kind, key, path, record)

    @contextmanager
    def writing(self, kind: str, key: str, *, spec: dict[str, Any], meta: dict[str, Any]) -> Iterator[Path]:
        """Yield an empty staging folder; on success hash its files and move it into place atomically.

        Call it while holding `locked(kind, key)`. `meta` may be updated inside the block. Staging folders that
        killed writers left behind are removed first.
        """
        tmp = self._mkdir(self.root / "tmp")
        self._remove_abandoned_staging(tmp)
        staging = tmp / f"{kind}-{key[:12]}-{uuid.uuid4().hex}"
        # held from before the folder exists until after it is gone, and released by the OS when this process dies:
        # a staging folder whose lock can be taken has no writer left
        owner = FileLock(_staging_lock(staging))
        owner.acquire()
        try:
            staging.mkdir()
            try:
                yield staging
                files = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
                record: EntryRecord = {"kind": kind, "key": key, "created_unix_s": time.time(), "spec": spec,
                                       "meta": meta, "files": files}
                atomic_write_json(staging / _ENTRY_FILE, record)
                final = self.entry_dir(kind, key)
                self._mkdir(final.parent)
                if final.exists():  # a stale or corrupt entry that lookup already reported
                    self._quarantine(final)
                os.replace(staging, final)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        finally:
            owner.release()
            Path(owner.lock_file).unlink(missing_ok=True)

    def _remove_abandoned_staging(self, tmp: Path) -> None:
        """Remove the staging folders in `tmp` whose writer is gone (a process killed in the middle of a write)."""
        names = {p.name.removesuffix(_LOCK_SUFFIX) for p in tmp.iterdir()}
        for name in names:
            staging = tmp / name
            lock_path = _staging_lock(staging)
            if not lock_path.exists() and _age_s(staging) < _UNLOCKED_STAGING_MAX_AGE_S:
                continue  # no lock to ask (or its writer just finished): see _UNLOCKED_STAGING_MAX_AGE_S
            lock = FileLock(lock_path)
            try:
                lock.acquire(blocking=False)
            except Timeout:
                continue  # its writer is alive and writing
            try:
                if staging.exists():
                    shutil.rmtree(staging, ignore_errors=True)
                    if staging.exists():
                        log.warning("cannot remove %s, left by a writer that was killed; remove it by hand", staging)
                    else:
                        log.info("removed %s, left by a writer that was killed", staging)
            finally:
                lock.release()
                lock_path.unlink(missing_ok=True)

    def clear_work(self, kind: str, key: str) -> None:
        shutil.rmtree(self.work_dir(kind, key), ignore_errors=True)

    def _quarantine(self, path: Path) -> Path:
        target = self._mkdir(self.root / "quarantine") / f"{path.parent.name}-{path.name}-{uuid.uuid4().hex[:8]}"
        os.replace(path, target)
        return target

    def _mkdir(self, path: Path) -> Path:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CacheError(
                f"cannot create cache folder {path} ({err}); choose another with --cache-dir or GTNPIPE_CACHE"
            ) from err
        return path


_LOCK_SUFFIX = ".lock"


def _staging_lock(staging: Path) -> Path:
    return staging.with_name(staging.name + _LOCK_SUFFIX)


def _age_s(path: Path) -> float:
    """Seconds since `path` last changed; 0 if it is gone (nothing to remove)."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
