"""Images as uint8 CHW arrays: decoding and resizing (Pillow), the disk-backed `ImageFiles` array, and an image
folder's index (per file sha256 and decode facts, kept under the cache). numpy and Pillow only (no torch)."""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from gtnpipe.errors import ConfigError, DataError
from gtnpipe.fsutil import atomic_write_json, sha256_file

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["RESIZE_MODES", "Facts", "FolderIndex", "ImageFiles", "Resize", "decode_image", "index_file", "channel_moments",
           "pil_errors", "read_image", "resize_images", "threaded", "to_chw"]

T = TypeVar("T")


@dataclass(frozen=True)
class Resize:
    """Every image to `hw` (height, width). "crop": the shorter side scaled to fit, then the centre cut out (Pillow's
    ImageOps.fit, as evaluation pipelines resize ImageNet-style images; the aspect ratio is kept); "stretch": both
    sides scaled (the whole image kept, its aspect ratio not). An int n is Resize((n, n)), the recipes' image_size."""

    hw: tuple[int, int]
    mode: str = "crop"

    def __post_init__(self) -> None:
        if self.mode not in RESIZE_MODES:
            raise ConfigError(f"resize mode {self.mode!r}: give one of {', '.join(RESIZE_MODES)}")

    @classmethod
    def of(cls, size: int | Resize | None) -> Resize | None:
        """An int image_size (0: keep the images' own size) or a Resize, as a Resize or None."""
        if isinstance(size, Resize):
            return size
        return cls((size, size)) if size else None

    @property
    def key(self) -> str:
        """Its name in folder indexes and fingerprints: the side alone for a square crop (as before Resize existed)."""
        h, w = self.hw
        return str(h) if h == w and self.mode == "crop" else f"{h}x{w}-{self.mode}"

    def apply(self, image: Image.Image) -> Image.Image:
        from PIL import Image, ImageOps

        h, w = self.hw
        if image.size == (w, h):
            return image
        if self.mode == "stretch":
            return image.resize((w, h), Image.Resampling.BILINEAR)
        return ImageOps.fit(image, (w, h), method=Image.Resampling.BILINEAR, centering=(0.5, 0.5))


RESIZE_MODES = ("crop", "stretch")


def resize_images(x: np.ndarray, size: int | Resize) -> np.ndarray:
    """uint8 images (N, C, H, W) resized as `Resize.apply` does (Pillow)."""
    from PIL import Image

    resize = Resize.of(size)
    assert resize is not None
    mode = "L" if x.shape[1] == 1 else "RGB"
    return np.stack([to_chw(resize.apply(Image.fromarray(img[0] if mode == "L" else img.transpose(1, 2, 0), mode)))
                     for img in x])


def to_chw(image: Image.Image) -> np.ndarray:
    arr = np.asarray(image, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


class ImageFiles:
    """A lazy uint8 (N, C, H, W) array over image files (the disk-backed storage): indexing it decodes those files,
    each as the in-memory storage does (converted, resized to `image_size`, grey to RGB in a colour set), so both give
    the same pixels bit for bit. `moments` holds each image's exact per-channel sums and sums of squares (N, 2C),
    counted once when the folder was indexed, so the split's mean and std need no pass over the pixels.
    Picklable (paths and numbers only): DataLoader workers decode batches of it (gtnpipe.training.loader)."""

    dtype = np.dtype(np.uint8)

    def __init__(self, paths: tuple[Path, ...], channels: int, hw: tuple[int, int], image_size: Resize | None,
                 moments: np.ndarray) -> None:
        if len(paths) != len(moments):
            raise ValueError(f"{len(paths)} paths but {len(moments)} rows of moments")
        self.paths, self.channels, self.hw, self.image_size, self.moments = paths, channels, hw, image_size, moments

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.channels, *self.hw)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, idx: np.ndarray) -> ImageFiles:
        """The images at `idx`, still on disk."""
        idx = np.asarray(idx, dtype=np.int64)
        return ImageFiles(tuple(self.paths[int(i)] for i in idx), self.channels, self.hw, self.image_size,
                          self.moments[idx])

    def __getitem__(self, key: int | slice | np.ndarray | list[int]) -> np.ndarray:
        """Decoded images: one (C, H, W) for an integer, else (n, C, H, W)."""
        if isinstance(key, int | np.integer):
            return self._decode(self.paths[int(key)])
        chosen = np.arange(len(self.paths))[key]
        out = np.empty((len(chosen), self.channels, *self.hw), dtype=np.uint8)
        for row, i in enumerate(chosen):
            out[row] = self._decode(self.paths[int(i)])
        return out

    def _decode(self, path: Path) -> np.ndarray:
        try:
            arr = decode_image(path, self.image_size, self.channels)
        except pil_errors() as err:
            raise DataError(f"{path}: could not be decoded ({type(err).__name__}: {err}), though it could when the "
                            "folder was indexed: it changed since; run the command again to re-index it") from err
        if arr.shape[1:] != self.hw:
            raise DataError(f"{path}: is {arr.shape[2]}x{arr.shape[1]} now, {self.hw[1]}x{self.hw[0]} when the folder "
                            "was indexed: it changed since; run the command again to re-index it")
        return arr


@dataclass(frozen=True)
class Facts:
    """What indexing learnt of one image file at one image_size: why it cannot be decoded, or its mode ("L" or
    "RGB"), its size after resizing (width, height) and its exact per-channel pixel sums then sums of squares."""

    error: str | None
    mode: str = ""
    wh: tuple[int, int] = (0, 0)
    moments: tuple[int, ...] = ()


class FolderIndex:
    """Per file of an image folder: sha256 and, per image_size, `Facts`; kept in `index_dir` (the cache's) and
    trusted while the file's size and modification time are unchanged (as make and rsync do), so a folder is hashed
    and checked once, not on every run. index_dir None: nothing kept."""

    VERSION = 1

    def __init__(self, root: Path, index_dir: Path | None) -> None:
        self.root, resolved = root, str(root.resolve())
        self.path = (index_dir / f"imagefolder-{hashlib.sha256(resolved.encode()).hexdigest()[:16]}.json"
                     if index_dir is not None else None)
        self.files: dict[str, dict[str, Any]] = {}
        self.changed = False
        if self.path is not None and self.path.is_file():
            try:
                stored = json.loads(self.path.read_text())
                if stored.get("version") == self.VERSION and stored.get("root") == resolved:
                    self.files = stored["files"]
            except (OSError, ValueError, KeyError):  # a torn or foreign index is rebuilt, never trusted
                self.files = {}

    def _entry(self, path: Path) -> tuple[str, dict[str, Any] | None]:
        rel = str(path.relative_to(self.root))
        st = path.stat()
        entry = self.files.get(rel)
        if entry is None or entry.get("bytes") != st.st_size or entry.get("mtime_ns") != st.st_mtime_ns:
            return rel, None
        return rel, entry

    def hashes(self, paths: list[Path]) -> dict[str, str]:
        """relative path -> sha256 of each of `paths` (hashed in threads when not known)."""
        todo = [p for p in paths if self._entry(p)[1] is None]
        for p, digest in zip(todo, threaded(sha256_file, todo)):
            self._store(p, {"sha256": digest})
        return {rel: entry["sha256"] for rel, entry in map(self._entry, paths) if entry is not None}

    def decoded(self, paths: list[Path], image_size: Resize | None) -> dict[Path, Facts]:
        """`Facts` of each of `paths` at `image_size`, decoding (in threads) the files not indexed at that size."""
        size = image_size.key if image_size else "0"
        todo = [p for p in paths if size not in ((self._entry(p)[1] or {}).get("decoded") or {})]
        for p, (digest, facts) in zip(todo, threaded(lambda q: index_file(q, image_size), todo)):
            _, entry = self._entry(p)
            decoded = dict(entry.get("decoded", {})) if entry is not None and entry.get("sha256") == digest else {}
            decoded[size] = {"error": facts.error} if facts.error else {
                "mode": facts.mode, "wh": list(facts.wh), "moments": list(facts.moments)}
            self._store(p, {"sha256": digest, "decoded": decoded})
        out = {}
        for p in paths:
            d = self._entry(p)[1]["decoded"][size]  # type: ignore[index]
            out[p] = Facts(d["error"]) if "error" in d else Facts(None, d["mode"], tuple(d["wh"]), tuple(d["moments"]))
        return out

    def _store(self, path: Path, fields: dict[str, Any]) -> None:
        st = path.stat()
        rel = str(path.relative_to(self.root))
        old = self.files.get(rel, {})
        keep = {"decoded": old["decoded"]} if "decoded" in old and old.get("sha256") == fields["sha256"] else {}
        self.files[rel] = {**keep, **fields, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
        self.changed = True

    def save(self) -> None:
        if self.path is not None and self.changed:
            atomic_write_json(self.path, {"version": self.VERSION, "root": str(self.root.resolve()), "files": self.files})
            self.changed = False


def pil_errors() -> tuple[type[BaseException], ...]:
    """What Pillow raises for a file it cannot decode, truncated ones included (imported when needed)."""
    from PIL import Image, UnidentifiedImageError

    return OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError


def read_image(path: Path | io.BytesIO) -> Image.Image:
    """The image fully decoded, as grey ("L") or "RGB"."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im.convert("L" if im.mode in ("L", "1", "I;16", "I", "LA") else "RGB")


def decode_image(path: Path, image_size: Resize | None, channels: int) -> np.ndarray:
    """One image as uint8 (channels, H, W): read, resized when `image_size`, grey repeated to RGB when channels == 3."""
    image = read_image(path)
    arr = to_chw(image_size.apply(image) if image_size else image)
    return np.repeat(arr, 3, axis=0) if channels == 3 and arr.shape[0] == 1 else arr


def index_file(path: Path, image_size: Resize | None) -> tuple[str, Facts]:
    """sha256 and `Facts` of one file, read once."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        image = read_image(io.BytesIO(data))
    except pil_errors() as err:
        return digest, Facts(f"{type(err).__name__}: {err}")
    arr = to_chw(image_size.apply(image) if image_size else image)
    return digest, Facts(None, image.mode, (arr.shape[2], arr.shape[1]), channel_moments(arr[None]))


def channel_moments(x: np.ndarray, chunk_images: int = 256) -> tuple[int, ...]:
    """Exact per-channel sums, then sums of squares, of uint8 images (N, C, H, W): integers, so any storage and any
    order of summing gives the same mean and std."""
    sums = np.zeros(x.shape[1], dtype=np.int64)
    squares = np.zeros(x.shape[1], dtype=np.int64)
    for start in range(0, x.shape[0], chunk_images):
        chunk = x[start:start + chunk_images].astype(np.int64)
        sums += chunk.sum(axis=(0, 2, 3))
        squares += (chunk * chunk).sum(axis=(0, 2, 3))
    return tuple(int(v) for v in (*sums, *squares))


def threaded(fn: Callable[[Path], T], items: list[Path]) -> list[T]:
    """fn over items in threads, in order (Pillow's decoding and resizing, and hashlib, release the GIL)."""
    if len(items) < 2:
        return [fn(p) for p in items]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(fn, items))
