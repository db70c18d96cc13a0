"""Datasets as uint8 NCHW numpy arrays: Fashion-MNIST from Debian, an ImageFolder tree, or a .npz.

numpy only (no torch), so the on-device side (`gtnpipe bench`) can read data too.
Channels, resolution and class count always come from the data itself.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gtnpipe.errors import DataError, DatasetMissing
from gtnpipe.fsutil import canonical_json, sha256_file

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "FASHION_MNIST",
    "FASHION_MNIST_INSTALL",
    "Dataset",
    "Split",
    "fashion_mnist_dir",
    "load_dataset",
    "load_source",
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


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # uint8, (N, C, H, W)
    y: np.ndarray  # int64, (N,)

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class Source:
    """A dataset as found on disk, before the recipe's validation split and subsets."""

    name: str
    classes: tuple[str, ...]
    train: Split
    test: Split
    fingerprint: str  # sha256 over the source files' own sha256s
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
    image_size: int = 0,
    skip_unreadable: bool = False,
) -> Dataset:
    """Load `source` and carve a deterministic validation split from its training data.

    Args:
        source: "fashion-mnist", a folder (ImageFolder tree or the four MNIST-style IDX
            files) or a .npz with x_train, y_train, x_test, y_test.
        val_size: images moved from train to validation (chosen by a seeded permutation): a count (int) or a
            share of the training images (float below 1); at most half of them.
        train_subset, test_subset: keep only this many (0 = all); train's are taken from the
            same permutation, so a smaller subset is a prefix of a larger one.
        image_size: > 0 resizes every image to image_size x image_size (shorter side, then the centre square).
        skip_unreadable: leave out (and list in `Dataset.skipped`) image-folder files that are not images Pillow
            can decode, instead of failing on the first.
    """
    src = load_source(source, image_size=image_size, skip_unreadable=skip_unreadable)
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
        test = Split(test.x[test_idx], test.y[test_idx])
    train = Split(src.train.x[train_idx], src.train.y[train_idx])
    val = Split(src.train.x[val_idx], src.train.y[val_idx])
    # Per-channel moments without a float64 copy of the whole split (that copy is 345 MB for 55k images).
    per_channel = train.x.transpose(1, 0, 2, 3).reshape(train.x.shape[1], -1)
    mean_255 = per_channel.mean(axis=1, dtype=np.float64)
    sq_255 = np.array([np.dot(c.astype(np.float64), c) / c.size for c in per_channel])
    mean = tuple(float(m) / 255.0 for m in mean_255)
    std = tuple(max(float(np.sqrt(max(q - m * m, 0.0))) / 255.0, 1e-3) for m, q in zip(mean_255, sq_255))
    return Dataset(src.name, src.classes, train, val, test, src.fingerprint, mean, std, src.skipped)


def load_source(source: str, *, image_size: int = 0, skip_unreadable: bool = False) -> Source:
    if source == FASHION_MNIST:
        src = _load_idx_folder(fashion_mnist_dir(), name=FASHION_MNIST, expected_sha256=_FASHION_MNIST_SHA256)
        return _resized_source(src, image_size)
    path = Path(source)
    if not path.exists():
        raise DatasetMissing(
            f"dataset {source!r} not found: give '{FASHION_MNIST}', a folder of class sub-folders of images, "
            "or a .npz file with x_train, y_train, x_test, y_test"
        )
    if path.is_file():
        if path.suffix != ".npz":
            raise DataError(f"{path}: a dataset file must be a .npz with x_train, y_train, x_test, y_test")
        return _resized_source(_load_npz(path), image_size)
    if all((path / name).exists() for name in _FASHION_MNIST_SHA256):
        return _resized_source(_load_idx_folder(path, name=path.name, expected_sha256=None), image_size)
    return _load_image_folder(path, image_size=image_size, skip_unreadable=skip_unreadable)


def _resized_source(src: Source, image_size: int) -> Source:
    """Arrays (IDX, .npz) resized like image-folder images when `image_size` asks for another size."""
    if not image_size or src.train.x.shape[2:] == (image_size, image_size):
        return src
    return replace(src, train=Split(_resize_array(src.train.x, image_size), src.train.y),
                   test=Split(_resize_array(src.test.x, image_size), src.test.y))


def _resize_array(x: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    mode = "L" if x.shape[1] == 1 else "RGB"
    return np.stack([_to_chw(square(Image.fromarray(img[0] if mode == "L" else img.transpose(1, 2, 0), mode), size))
                     for img in x])


def square(image: Image.Image, size: int) -> Image.Image:
    """`image` as size x size: the shorter side scaled to `size` (bilinear, antialiased when shrinking), then the
    centre square (Pillow's ImageOps.fit), as evaluation pipelines resize ImageNet-style images."""
    from PIL import Image, ImageOps

    if image.size == (size, size):
        return image
    return ImageOps.fit(image, (size, size), method=Image.Resampling.BILINEAR, centering=(0.5, 0.5))


def _to_chw(image: Image.Image) -> np.ndarray:
    arr = np.asarray(image, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


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


def _checked_split(x: np.ndarray, y: np.ndarray, n_classes: int, what: str) -> Split:
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{what}: {x.shape[0]} images but {y.shape[0]} labels")
    if x.shape[0] == 0:
        raise DataError(f"{what}: no images")
    if y.max() >= n_classes:
        raise DataError(f"{what}: label {int(y.max())} but only {n_classes} classes")
    return Split(x, y.astype(np.int64))


# --- ImageFolder --------------------------------------------------------------------------

def _load_image_folder(root: Path, *, image_size: int, skip_unreadable: bool) -> Source:
    has_split = (root / "train").is_dir() and (root / "test").is_dir()
    if has_split:
        classes = _class_dirs(root / "train")
        if _class_dirs(root / "test") != classes:
            raise DataError(f"{root}: train/ and test/ must hold the same class sub-folders")
        train_files, test_files = _list_images(root / "train", classes), _list_images(root / "test", classes)
    else:
        classes = _class_dirs(root)
        train_files, test_files = _list_images(root, classes), []
    skipped: list[Path] = []
    images = _decode_all([p for p, _ in train_files + test_files], image_size, skipped, skip_unreadable=skip_unreadable)
    train_files = [f for f in train_files if f[0] in images]
    test_files = [f for f in test_files if f[0] in images]
    if not has_split:
        train_files, test_files = _split_files(train_files, len(classes))
    for name, files in (("train", train_files), ("test", test_files)):
        empty = [c for label, c in enumerate(classes) if not any(lab == label for _, lab in files)]
        if empty:
            raise DataError(f"{root}: no readable image of class(es) {', '.join(empty)} in the {name} split")
    x_train, y_train = _stack(train_files, images)
    x_test, y_test = _stack(test_files, images)
    hashes = {str(p.relative_to(root)): sha256_file(p) for p, _ in sorted(train_files + test_files)}
    return Source(
        root.name,
        classes,
        _checked_split(x_train, y_train, len(classes), f"{root} train"),
        _checked_split(x_test, y_test, len(classes), f"{root} test"),
        _fingerprint("imagefolder", {**hashes, **({"image_size": str(image_size)} if image_size else {})}),
        tuple(str(p.relative_to(root)) for p in skipped),
    )


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
    train, test = [], []
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


def _decode_all(paths: list[Path], image_size: int, skipped: list[Path], *, skip_unreadable: bool) -> dict[Path, np.ndarray]:
    """Each image decoded once to uint8 CHW (grey or RGB; resized when `image_size`): a file Pillow cannot decode,
    truncated ones included, fails here naming it, or with `skip_unreadable` is left out and listed in `skipped`.
    Grey images become RGB when any image is colour. Without `image_size`, all must share one size."""
    from PIL import Image, UnidentifiedImageError

    out: dict[Path, np.ndarray] = {}
    first: tuple[tuple[int, int], Path] | None = None
    for p in paths:
        try:
            with Image.open(p) as im:
                im.load()
                image = im.convert("L" if im.mode in ("L", "1", "I;16", "I", "LA") else "RGB")
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            if not skip_unreadable:
                raise DataError(
                    f"{p}: not an image Pillow can read ({type(err).__name__}: {err}); remove the file, or skip "
                    "every unreadable file with --skip-unreadable ([data] skip_unreadable = true)"
                ) from err
            skipped.append(p)
            continue
        if image_size:
            image = square(image, image_size)
        if first is None:
            first = (image.size, p)
        elif image.size != first[0]:
            (w0, h0), p0 = first
            raise DataError(
                f"images differ in size: {p0} is {w0}x{h0} but {p} is {image.size[0]}x{image.size[1]} (width x "
                "height); give --image-size N (or [data] image_size = N in the recipe) to resize them all to N x N"
            )
        out[p] = _to_chw(image)
    if any(a.shape[0] == 3 for a in out.values()):
        out = {p: np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a for p, a in out.items()}
    return out


def _stack(files: list[tuple[Path, int]], images: dict[Path, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return np.stack([images[p] for p, _ in files]), np.array([label for _, label in files], dtype=np.int64)
