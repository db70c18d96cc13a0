"""Datasets as uint8 NCHW images: Fashion-MNIST from Debian, an ImageFolder tree, or a .npz (decoding, the
disk-backed `ImageFiles` and the folder index: gtnpipe.data.images).

numpy only (no torch), so the on-device side (`gtnpipe bench`) can read data too.
Channels, resolution and class count always come from the data itself.

Storage: a split's images are a numpy array in memory, or for an image folder larger than memory an `ImageFiles`,
a lazy array over the files that decodes what is indexed (DataLoader workers do it in training:
gtnpipe.training.loader). Both give the same pixels, mean and std bit for bit, so results do not depend on it.
An image folder's per-file sha256 (its fingerprint) and decode facts are kept in an index beside the cache, trusted
while a file's size and modification time are unchanged: a folder is hashed once, not on every run.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from gtnpipe.data.images import (
    Facts,
    FolderIndex,
    ImageFiles,
    Resize,
    channel_moments,
    decode_image,
    pil_errors,
    resize_images,
    threaded,
)
from gtnpipe.errors import DataError, DatasetMissing
from gtnpipe.fsutil import canonical_json, sha256_file

__all__ = [
    "AUTO_MEMORY_BYTES",
    "FASHION_MNIST",
    "FASHION_MNIST_INSTALL",
    "STORAGES",
    "Dataset",
    "ImageFiles",
    "Split",
    "fashion_mnist_dir",
    "load_dataset",
    "load_source",
    "resize_images",
]

FASHION_MNIST = "fashion-mnist"
FASHION_MNIST_INSTALL = "apt-get update && apt-get install -y dataset-fashion-mnist"
# Where Debian's dataset-fashion-mnist package puts the files; GTNPIPE_FASHION_MNIST overrides it.
_FASHION_MNIST_DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
# sha256 of the files as Debian ships them (dataset-fashion-mnist 0.0~git20200523.55506a9-1);
# identical to the upstream zalandoresearch release.
_FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
_FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# ImageFolder trees without train/ and test/ sub-folders: this share of each class becomes test.
_IMAGEFOLDER_TEST_FRACTION = 0.2
# storage (--storage): "memory" (decoded once into arrays), "disk" (decoded on the fly, image folders only), or "auto":
# memory when the folder's images, decoded as RGB at the size they train at, take at most AUTO_MEMORY_BYTES.
STORAGES = ("auto", "memory", "disk")
AUTO_MEMORY_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class Split:
    x: np.ndarray | ImageFiles  # uint8, (N, C, H, W); x[idx] is a numpy array either way
    y: np.ndarray  # int64, (N,)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, idx: np.ndarray) -> Split:
        """The images at `idx`, stored as this split's are (a lazy split stays on disk)."""
        return Split(self.x[idx] if isinstance(self.x, np.ndarray) else self.x.take(idx), self.y[idx])

    def chunks(self, batch_size: int) -> Iterator[np.ndarray]:
        """The images in order, `batch_size` at a time, as uint8 arrays (decoded one chunk at a time on disk)."""
        for start in range(0, len(self), batch_size):
            yield self.x[start:start + batch_size]

    def resized(self, side: int) -> Split:
        """The images as side x side, in memory (`resize_images`; decoded a chunk at a time from disk): what a student
        with its own input resolution is deployed on."""
        if tuple(self.x.shape[2:]) == (side, side):
            return self
        return Split(np.concatenate([resize_images(x, side) for x in self.chunks(512)]) if len(self)
                     else np.zeros((0, self.x.shape[1], side, side), dtype=np.uint8), self.y)

    def moments(self) -> tuple[int, ...]:
        """Exact per-channel pixel sums, then sums of squares."""
        if isinstance(self.x, ImageFiles):
            return tuple(int(v) for v in self.x.moments.sum(axis=0))
        return channel_moments(self.x)


@dataclass(frozen=True)
class Source:
    """A dataset as found on disk, before the recipe's validation split and subsets."""

    name: str
    classes: tuple[str, ...]
    train: Split
    test: Split
    fingerprint: str  # sha256 over the source files' own sha256s
    storage: str = "memory"  # "memory" or "disk" (see STORAGES)
    skipped: tuple[str, ...] = ()  # unreadable files left out (skip_unreadable), relative to the source folder


@dataclass(frozen=True)
class Dataset:
    name: str
    classes: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    fingerprint: str
    mean: tuple[float, ...]  # per channel, in [0, 1], over the train split
    std: tuple[float, ...]
    skipped: tuple[str, ...] = ()  # unreadable files left out (skip_unreadable)
    storage: str = "memory"  # where the images are: "memory" (arrays) or "disk" (ImageFiles)

    @property
    def channels(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def image_hw(self) -> tuple[int, int]:
        return int(self.train.x.shape[2]), int(self.train.x.shape[3])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def fashion_mnist_dir() -> Path:
    return Path(os.environ.get("GTNPIPE_FASHION_MNIST", _FASHION_MNIST_DEFAULT_DIR))


def load_dataset(
    source: str = FASHION_MNIST,
    *,
    val_size: int | float,
    train_subset: int = 0,
    test_subset: int = 0,
    split_seed: int = 0,
    image_size: int | Resize = 0,
    skip_unreadable: bool = False,
    storage: str = "auto",
    index_dir: Path | None = None,
) -> Dataset:
    """Load `source` and carve a deterministic validation split from its training data.

    Args:
        source: "fashion-mnist", a folder (ImageFolder tree or the four MNIST-style IDX
            files) or a .npz with x_train, y_train, x_test, y_test.
        val_size: images moved from train to validation (chosen by a seeded permutation): a count (int) or a
            share of the training images (float below 1); at most half of them.
        train_subset, test_subset: keep only this many (0 = all); train's are taken from the
            same permutation, so a smaller subset is a prefix of a larger one.
        image_size: > 0 resizes every image to image_size x image_size (shorter side, then the centre square); a
            Resize any height x width, cropped or stretched.
        skip_unreadable: leave out (and list in `Dataset.skipped`) image-folder files that are not images Pillow
            can decode, instead of failing on the first.
        storage: "memory", "disk" (an image folder's images stay files, decoded when used) or "auto" (see STORAGES).
        index_dir: where an image folder's index (file hashes, decode facts) is kept between runs; None: not kept.
    """
    src = load_source(source, image_size=image_size, skip_unreadable=skip_unreadable, storage=storage,
                      index_dir=index_dir)
    n_train = len(src.train)
    n_val = round(val_size * n_train) if isinstance(val_size, float) else val_size
    if not 0 <= n_val <= n_train // 2:
        raise DataError(
            f"val_size={val_size} would take {n_val} of the {n_train} training images of {src.name}; at most half "
            f"({n_train // 2}) can be validation images: lower val_size ([data] val_size, e.g. 0.1 for 10%)"
        )
    val_size = n_val
    perm = np.random.default_rng(split_seed).permutation(n_train)
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    if train_subset:
        if train_subset > len(train_idx):
            raise DataError(
                f"train_subset={train_subset} exceeds the {len(train_idx)} training images left after val_size={val_size}; "
                "lower it or set it to 0 for all"
            )
        train_idx = train_idx[:train_subset]
    test = src.test
    if test_subset:
        if test_subset > len(test):
            raise DataError(f"test_subset={test_subset} exceeds the {len(test)} test images; lower it or set it to 0 for all")
        test_idx = np.random.default_rng(split_seed + 1).permutation(len(test))[:test_subset]
        test = test.take(test_idx)
    train, val = src.train.take(train_idx), src.train.take(val_idx)
    mean, std = _mean_std(train)
    return Dataset(src.name, src.classes, train, val, test, src.fingerprint, mean, std, src.skipped, src.storage)


def _mean_std(split: Split) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units, from exact integer moments (the same on either storage)."""
    moments = split.moments()
    c = len(moments) // 2
    count = len(split) * split.x.shape[2] * split.x.shape[3]
    mean_255 = [s / count for s in moments[:c]]
    var_255 = [max(q / count - m * m, 0.0) for m, q in zip(mean_255, moments[c:])]
    return (tuple(m / 255.0 for m in mean_255),
            tuple(max(float(np.sqrt(v)) / 255.0, 1e-3) for v in var_255))


def load_source(source: str, *, image_size: int | Resize = 0, skip_unreadable: bool = False, storage: str = "auto",
                index_dir: Path | None = None) -> Source:
    if storage not in STORAGES:
        raise DataError(f"storage {storage!r} is not one of {', '.join(STORAGES)} (--storage; Workspace.open's storage)")
    path = Path(source)
    if source != FASHION_MNIST and not path.exists():
        raise DatasetMissing(
            f"dataset {source!r} not found: give '{FASHION_MNIST}', a folder of class sub-folders of images, "
            "or a .npz file with x_train, y_train, x_test, y_test"
        )
    if source == FASHION_MNIST or path.is_file() or all((path / name).exists() for name in _FASHION_MNIST_SHA256):
        if storage == "disk":
            raise DataError(f"{source}: storage 'disk' keeps an image folder's files on disk; Fashion-MNIST, IDX "
                            "files and .npz are arrays, loaded into memory: use storage 'auto' or 'memory'")
        if source == FASHION_MNIST:
            src = _load_idx_folder(fashion_mnist_dir(), name=FASHION_MNIST, expected_sha256=_FASHION_MNIST_SHA256)
        elif path.is_file():
            if path.suffix != ".npz":
                raise DataError(f"{path}: a dataset file must be a .npz with x_train, y_train, x_test, y_test")
            src = _load_npz(path)
        else:
            src = _load_idx_folder(path, name=path.name, expected_sha256=None)
        return _resized_source(src, Resize.of(image_size))
    return _load_image_folder(path, image_size=Resize.of(image_size), skip_unreadable=skip_unreadable, storage=storage,
                              index_dir=index_dir)


def _resized_source(src: Source, image_size: Resize | None) -> Source:
    """Arrays (IDX, .npz) resized like image-folder images when `image_size` asks for another size."""
    if image_size is None or src.train.x.shape[2:] == image_size.hw:
        return src
    assert isinstance(src.train.x, np.ndarray) and isinstance(src.test.x, np.ndarray)
    return replace(src, train=Split(resize_images(src.train.x, image_size), src.train.y),
                   test=Split(resize_images(src.test.x, image_size), src.test.y))


def _fingerprint(kind: str, file_hashes: dict[str, str]) -> str:
    return hashlib.sha256(canonical_json({"kind": kind, "files": file_hashes}).encode()).hexdigest()


# --- IDX (the MNIST file format) ---------------------------------------------------------

def _load_idx_folder(root: Path, *, name: str, expected_sha256: dict[str, str] | None) -> Source:
    missing = [f for f in _FASHION_MNIST_SHA256 if not (root / f).is_file()]
    if missing:
        raise DatasetMissing(
            f"Fashion-MNIST files missing from {root}: {', '.join(missing)}. Install them with: {FASHION_MNIST_INSTALL}"
            " (or set GTNPIPE_FASHION_MNIST to a folder holding the four IDX .gz files)"
        )
    hashes = {f: sha256_file(root / f) for f in _FASHION_MNIST_SHA256}
    if expected_sha256 is not None:
        bad = [f for f, h in hashes.items() if h != expected_sha256[f]]
        if bad:
            raise DataError(
                f"Fashion-MNIST files in {root} do not match their known sha256 ({', '.join(bad)}): they are corrupt or "
                "not the release gtnpipe expects. Reinstall with: apt-get install --reinstall -y dataset-fashion-mnist"
            )
    x_train = _read_idx(root / "train-images-idx3-ubyte.gz", ndim=3)
    y_train = _read_idx(root / "train-labels-idx1-ubyte.gz", ndim=1)
    x_test = _read_idx(root / "t10k-images-idx3-ubyte.gz", ndim=3)
    y_test = _read_idx(root / "t10k-labels-idx1-ubyte.gz", ndim=1)
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    classes = _FASHION_MNIST_CLASSES if name == FASHION_MNIST else tuple(str(i) for i in range(n_classes))
    return Source(
        name,
        classes,
        _checked_split(x_train[:, None], y_train, n_classes, f"{root} train"),
        _checked_split(x_test[:, None], y_test, n_classes, f"{root} test"),
        _fingerprint("idx", hashes),
    )


def _read_idx(path: Path, *, ndim: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as handle:
            data = handle.read()
        magic, = struct.unpack(">I", data[:4])
    except (OSError, EOFError, struct.error) as err:
        raise DataError(f"{path}: cannot read as a gzipped IDX file ({err}); the file is truncated or corrupt") from err
    if magic != 0x0800 + ndim:  # 0x08 = unsigned byte, low byte = number of dimensions
        raise DataError(f"{path}: not an IDX file of {ndim} dimension(s) of unsigned bytes (magic {magic:#x})")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} but holds {body.size} bytes; the file is truncated")
    return body.reshape(dims).copy()


# --- .npz ---------------------------------------------------------------------------------

def _load_npz(path: Path) -> Source:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: cannot read as .npz ({err})") from err
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing array(s) {', '.join(missing)}; a dataset .npz needs x_train, y_train, x_test, y_test")
    x_train, x_test = _to_nchw_uint8(arrays["x_train"], f"{path}:x_train"), _to_nchw_uint8(arrays["x_test"], f"{path}:x_test")
    y_train, y_test = _to_labels(arrays["y_train"], f"{path}:y_train"), _to_labels(arrays["y_test"], f"{path}:y_test")
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    classes = tuple(str(c) for c in arrays["classes"]) if "classes" in arrays else tuple(str(i) for i in range(n_classes))
    if len(classes) < n_classes:
        raise DataError(f"{path}: 'classes' names {len(classes)} classes but labels go up to {n_classes - 1}")
    return Source(
        path.stem,
        classes,
        _checked_split(x_train, y_train, len(classes), f"{path} train"),
        _checked_split(x_test, y_test, len(classes), f"{path} test"),
        _fingerprint("npz", {path.name: sha256_file(path)}),
    )


def _to_nchw_uint8(x: np.ndarray, what: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    elif x.ndim != 4:
        raise DataError(f"{what}: expected images shaped (N, H, W), (N, H, W, C) or (N, C, H, W), got {x.shape}")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if np.issubdtype(x.dtype, np.floating) and x.size and float(x.min()) >= 0.0 and float(x.max()) <= 1.0:
        return np.ascontiguousarray(np.round(x * 255.0).astype(np.uint8))
    raise DataError(f"{what}: pixels must be uint8 (0-255) or floats in [0, 1], got {x.dtype}")


def _to_labels(y: np.ndarray, what: str) -> np.ndarray:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{what}: labels must be a 1-D integer array, got {y.dtype} {y.shape}")
    if y.size and y.min() < 0:
        raise DataError(f"{what}: labels must be >= 0, found {int(y.min())}")
    return y.astype(np.int64)


def _checked_split(x: np.ndarray | ImageFiles, y: np.ndarray, n_classes: int, what: str) -> Split:
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{what}: {x.shape[0]} images but {y.shape[0]} labels")
    if x.shape[0] == 0:
        raise DataError(f"{what}: no images")
    if y.max() >= n_classes:
        raise DataError(f"{what}: label {int(y.max())} but only {n_classes} classes")
    return Split(x, y.astype(np.int64))


# --- ImageFolder --------------------------------------------------------------------------

def _load_image_folder(root: Path, *, image_size: Resize | None, skip_unreadable: bool, storage: str,
                       index_dir: Path | None) -> Source:
    has_split = (root / "train").is_dir() and (root / "test").is_dir()
    if has_split:
        classes = _class_dirs(root / "train")
        if _class_dirs(root / "test") != classes:
            raise DataError(f"{root}: train/ and test/ must hold the same class sub-folders")
        train_files, test_files = _list_images(root / "train", classes), _list_images(root / "test", classes)
    else:
        classes = _class_dirs(root)
        train_files, test_files = _list_images(root, classes), []
    index = FolderIndex(root, index_dir)
    paths = [p for p, _ in train_files + test_files]
    if storage == "auto":
        storage = _auto_storage(paths, image_size)
    skipped: list[Path] = []
    if storage == "memory":
        images = _decode_all(paths, image_size, skipped, skip_unreadable=skip_unreadable)
        readable = set(images)
    else:
        facts = index.decoded(paths, image_size)
        readable = _check_facts(facts, skipped, skip_unreadable=skip_unreadable)
    train_files = [f for f in train_files if f[0] in readable]
    test_files = [f for f in test_files if f[0] in readable]
    if not has_split:
        train_files, test_files = _split_files(train_files, len(classes))
    for name, files in (("train", train_files), ("test", test_files)):
        empty = [c for label, c in enumerate(classes) if not any(lab == label for _, lab in files)]
        if empty:
            raise DataError(f"{root}: no readable image of class(es) {', '.join(empty)} in the {name} split")
    x_train: np.ndarray | ImageFiles
    x_test: np.ndarray | ImageFiles
    if storage == "memory":
        (x_train, y_train), (x_test, y_test) = _stack(train_files, images), _stack(test_files, images)
    else:
        (x_train, y_train), (x_test, y_test) = _lazy(train_files, facts, image_size), _lazy(test_files, facts, image_size)
    hashes = index.hashes(sorted(p for p, _ in train_files + test_files))
    index.save()
    return Source(
        root.name,
        classes,
        _checked_split(x_train, y_train, len(classes), f"{root} train"),
        _checked_split(x_test, y_test, len(classes), f"{root} test"),
        _fingerprint("imagefolder", {**hashes, **({"image_size": image_size.key} if image_size else {})}),
        storage=storage,
        skipped=tuple(str(p.relative_to(root)) for p in skipped),
    )


def _auto_storage(paths: list[Path], image_size: Resize | None) -> str:
    """"memory" when every image decoded (as RGB) takes at most AUTO_MEMORY_BYTES, else "disk"."""
    from PIL import Image

    if image_size:
        h, w = image_size.hw
    else:  # the first image whose header Pillow reads; a folder of unreadable files fails later, naming them
        for p in paths:
            try:
                with Image.open(p) as im:
                    w, h = im.size
                break
            except pil_errors():
                continue
        else:
            return "memory"
    return "memory" if len(paths) * 3 * w * h <= AUTO_MEMORY_BYTES else "disk"


def _check_facts(facts: dict[Path, Facts], skipped: list[Path], *, skip_unreadable: bool) -> set[Path]:
    """The readable files of `facts`; unreadable ones fail or are skipped, and sizes must agree, as `_decode_all`."""
    readable: set[Path] = set()
    first: tuple[tuple[int, int], Path] | None = None
    for p, f in facts.items():
        if f.error is not None:
            if not skip_unreadable:
                raise DataError(_unreadable_message(p, f.error))
            skipped.append(p)
            continue
        first = _same_size(first, f.wh, p)
        readable.add(p)
    return readable


def _lazy(files: list[tuple[Path, int]], facts: dict[Path, Facts], image_size: Resize | None
          ) -> tuple[ImageFiles, np.ndarray]:
    channels = 3 if any(f.mode == "RGB" for f in facts.values() if f.error is None) else 1
    moments = np.zeros((len(files), 2 * channels), dtype=np.int64)
    for row, (p, _) in enumerate(files):
        m = facts[p].moments  # the image's own channels: a grey image in a colour set counts as three equal ones
        if channels == 3 and len(m) == 2:
            m = (m[0],) * 3 + (m[1],) * 3
        moments[row] = m
    w, h = facts[files[0][0]].wh
    return (ImageFiles(tuple(p for p, _ in files), channels, (h, w), image_size, moments),
            np.array([label for _, label in files], dtype=np.int64))


def _class_dirs(root: Path) -> tuple[str, ...]:
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if len(classes) < 2:
        raise DataError(
            f"{root}: an image dataset folder needs at least 2 class sub-folders (root/<class>/<image>.png, "
            f"optionally under train/ and test/), found {len(classes)}"
        )
    return classes


def _list_images(root: Path, classes: tuple[str, ...]) -> list[tuple[Path, int]]:
    """Every file under each class folder (hidden files and folders aside: .DS_Store and the like are not data)."""
    files = [
        (p, label)
        for label, name in enumerate(classes)
        for p in sorted((root / name).rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root / name).parts)
    ]
    empty = [name for label, name in enumerate(classes) if not any(lab == label for _, lab in files)]
    if empty:
        raise DataError(f"{root}: class folder(s) with no image files: {', '.join(empty)}")
    return files


def _split_files(files: list[tuple[Path, int]], n_classes: int) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """Per class, every 1/fraction-th file (in sorted order) goes to test: stable as files are added."""
    train: list[tuple[Path, int]] = []
    test: list[tuple[Path, int]] = []
    step = round(1 / _IMAGEFOLDER_TEST_FRACTION)
    for label in range(n_classes):
        members = [f for f in files if f[1] == label]
        for i, item in enumerate(members):
            (test if i % step == step - 1 else train).append(item)
    if not test:
        raise DataError(
            "an image folder needs at least 5 images per class to carve a test split; add images or use train/ and test/"
        )
    return train, test


def _unreadable_message(path: Path, error: str) -> str:
    return (f"{path}: not an image Pillow can read ({error}); remove the file, or skip every unreadable file with "
            "--skip-unreadable ([data] skip_unreadable = true)")


def _same_size(first: tuple[tuple[int, int], Path] | None, wh: tuple[int, int],
               path: Path) -> tuple[tuple[int, int], Path]:
    """The first image's size and path; an image of another size is an error that names both and the fix."""
    if first is None:
        return wh, path
    if wh != first[0]:
        (w0, h0), p0 = first
        raise DataError(
            f"images differ in size: {p0} is {w0}x{h0} but {path} is {wh[0]}x{wh[1]} (width x height); give "
            "--image-size N (or [data] image_size = N in the recipe) to resize them all to N x N"
        )
    return first


def _decode_all(paths: list[Path], image_size: Resize | None, skipped: list[Path], *, skip_unreadable: bool
                ) -> dict[Path, np.ndarray]:
    """Each image decoded once (in threads) to uint8 CHW (grey or RGB; resized when `image_size`): a file Pillow
    cannot decode, truncated ones included, fails here naming it, or with `skip_unreadable` is left out and listed in
    `skipped`. Grey images become RGB when any image is colour. Without `image_size`, all must share one size."""
    def one(p: Path) -> np.ndarray | str:
        try:
            return decode_image(p, image_size, 1)
        except pil_errors() as err:
            return f"{type(err).__name__}: {err}"

    out: dict[Path, np.ndarray] = {}
    first: tuple[tuple[int, int], Path] | None = None
    for p, arr in zip(paths, threaded(one, paths)):
        if isinstance(arr, str):
            if not skip_unreadable:
                raise DataError(_unreadable_message(p, arr))
            skipped.append(p)
            continue
        first = _same_size(first, (arr.shape[2], arr.shape[1]), p)
        out[p] = arr
    if any(a.shape[0] == 3 for a in out.values()):
        out = {p: np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a for p, a in out.items()}
    return out


def _stack(files: list[tuple[Path, int]], images: dict[Path, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The images of `files` as one array, each taken out of `images` as it is copied (so the decoded images are
    held once, not twice: 2.9 GB of them peaked at 7.3 GB with np.stack, bench/results/disk_data.md)."""
    first = images[files[0][0]]
    out = np.empty((len(files), *first.shape), dtype=np.uint8)
    for row, (p, _) in enumerate(files):
        out[row] = images.pop(p)
    return out, np.array([label for _, label in files], dtype=np.int64)
