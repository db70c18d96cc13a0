"""Atomic file writes and file hashing, shared by checkpoints, the cache and artifacts."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json", "canonical_json", "sha256_file"]


# A new file only (O_EXCL also refuses a symlink planted at the name), binary on Windows (no newline translation);
# os.open makes the descriptor non-inheritable by itself (PEP 446).
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


@contextmanager
def atomic_write(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temp file beside `path`; on success fsync and rename it over `path`.

    A crash at any point leaves either the old file or the new one, never a torn one
    (rename is atomic within one filesystem, which is why the temp file sits beside it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_beside(path)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _create_beside(path: Path) -> tuple[int, Path]:
    """A new, empty temp file in `path`'s folder, opened for writing, with the mode any new file gets there.

    Created with mode 0o666 so that the kernel applies the umask (and a folder's default ACL) as for any file: a
    written file gets the usual permissions (artifacts are shared), where tempfile.mkstemp's would be 0600. Nothing
    here reads or sets the umask: os.umask can only read it by setting it, and the umask belongs to the process, so
    even a moment of umask 0 gives the files other threads create then (data decode threads) mode 0666. Nor does it
    need os.fchmod, which Windows lacks before Python 3.13.
    """
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
        try:
            return os.open(tmp, _CREATE_FLAGS, 0o666), tmp
        except FileExistsError:
            continue  # 64 random bits: only a leftover of a crashed write of the same name could collide
    raise FileExistsError(f"no free temp file name beside {path} after 100 tries; remove the .{path.name}.*.tmp files")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal objects give equal strings (and hashes)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def sha256_file(path: Path, *, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
