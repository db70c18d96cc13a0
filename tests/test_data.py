"""gtnpipe.data.datasets on real data: Fashion-MNIST as installed, and .npz / ImageFolder / IDX folders built from it."""

from __future__ import annotations

import gzip
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gtnpipe.data.datasets import (
    FASHION_MNIST,
    FASHION_MNIST_INSTALL,
    Dataset,
    fashion_mnist_dir,
    load_dataset,
    load_source,
)
from gtnpipe.errors import DataError, DatasetMissing

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
FMNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
HEX64 = re.compile(r"[0-9a-f]{64}")
PIXELS_MSG = "pixels must be uint8 (0-255) or floats in [0, 1]"


@pytest.fixture(scope="module")
def fmnist_full() -> Dataset:
    """The whole of Fashion-MNIST, loaded once for this module."""
    return load_dataset(val_size=5000)


def _read_idx_independently(path: Path, header: int) -> np.ndarray:
    """A second, minimal IDX reader so the loader is checked against something other than itself."""
    with gzip.open(path, "rb") as handle:
        return np.frombuffer(handle.read(), dtype=np.uint8, offset=header)


def _stamp(x: np.ndarray, start: int = 0) -> np.ndarray:
    """Real images with their index written into the first two pixels, so every row is unique and identifiable."""
    x = x.copy()
    idx = np.arange(start, start + len(x))
    x[:, 0, 0] = idx % 256
    x[:, 0, 1] = idx // 256
    return x


def _stamps(x: np.ndarray) -> np.ndarray:
    """Indices back from stamped NCHW images."""
    return x[:, 0, 0, 0].astype(np.int64) + 256 * x[:, 0, 0, 1].astype(np.int64)


def _copy_fmnist(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in IDX_FILES:
        shutil.copyfile(FMNIST_DIR / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def stamped_npz(
    fmnist_full: Dataset, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, np.ndarray, np.ndarray]:
    """600 train / 200 test real Fashion-MNIST images (NHW uint8), each stamped with its index."""
    src = fmnist_full
    x_train = _stamp(src.train.x[:600, 0])
    x_test = _stamp(src.test.x[:200, 0])
    y_train, y_test = src.train.y[:600], src.test.y[:200]
    path = tmp_path_factory.mktemp("npz") / "stamped.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path, y_train, y_test


# --- Fashion-MNIST as installed ---------------------------------------------------------------


def test_fashion_mnist_standard_split(fmnist_full: Dataset) -> None:
    d = fmnist_full
    assert d.name == "fashion-mnist"
    assert (len(d.train), len(d.val), len(d.test)) == (55000, 5000, 10000)
    assert d.train.x.shape == (55000, 1, 28, 28)
    assert d.val.x.shape == (5000, 1, 28, 28)
    assert d.test.x.shape == (10000, 1, 28, 28)
    for split in (d.train, d.val, d.test):
        assert split.x.dtype == np.uint8
        assert split.y.dtype == np.int64
        assert int(split.y.min()) == 0 and int(split.y.max()) == 9
    assert d.classes == FMNIST_CLASSES
    assert d.classes[0] == "T-shirt/top"
    assert (d.channels, d.image_hw, d.num_classes) == (1, (28, 28), 10)


def test_fashion_mnist_class_balance(fmnist_full: Dataset) -> None:
    assert np.bincount(fmnist_full.test.y, minlength=10).tolist() == [1000] * 10
    # train and val together are the whole 60k training set: 6000 per class.
    both = np.concatenate([fmnist_full.train.y, fmnist_full.val.y])
    assert np.bincount(both, minlength=10).tolist() == [6000] * 10


def test_fashion_mnist_test_split_matches_raw_files(fmnist_full: Dataset) -> None:
    """With test_subset=0 the test split is the t10k files, in file order."""
    x = _read_idx_independently(FMNIST_DIR / "t10k-images-idx3-ubyte.gz", 16).reshape(10000, 1, 28, 28)
    y = _read_idx_independently(FMNIST_DIR / "t10k-labels-idx1-ubyte.gz", 8)
    np.testing.assert_array_equal(fmnist_full.test.x, x)
    np.testing.assert_array_equal(fmnist_full.test.y, y.astype(np.int64))
    assert fmnist_full.test.y[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]


def test_fashion_mnist_fingerprint_is_stable(fmnist_full: Dataset, fmnist_small: Dataset) -> None:
    assert HEX64.fullmatch(fmnist_full.fingerprint)
    # Two independent loads (different slicing: the fingerprint is of the source files) agree.
    assert fmnist_small.fingerprint == fmnist_full.fingerprint


def test_fashion_mnist_mean_std_of_train_split(fmnist_full: Dataset) -> None:
    # Fashion-MNIST's well-known training-set statistics (0.2860, 0.3530 over all 60k).
    assert fmnist_full.mean == pytest.approx((0.2860,), abs=0.002)
    assert fmnist_full.std == pytest.approx((0.3530,), abs=0.002)


def test_small_slice_sizes_and_stats(fmnist_small: Dataset, fmnist_full: Dataset) -> None:
    d = fmnist_small
    assert (len(d.train), len(d.val), len(d.test)) == (512, 256, 256)
    assert d.train.x.shape == (512, 1, 28, 28) and d.test.x.shape == (256, 1, 28, 28)
    pixels = d.train.x.astype(np.float64) / 255.0
    assert d.mean == pytest.approx((float(pixels.mean()),), rel=1e-12)
    assert d.std == pytest.approx((float(pixels.std()),), rel=1e-12)
    # Not the val or test statistics.
    assert d.mean[0] != pytest.approx(float(d.val.x.mean() / 255.0), rel=1e-9)
    # test_subset draws distinct rows of the real test split, with their own labels.
    full_test = {row.tobytes(): int(label) for row, label in zip(fmnist_full.test.x, fmnist_full.test.y, strict=True)}
    rows = [row.tobytes() for row in d.test.x]
    assert len(set(rows)) == 256
    assert [full_test[r] for r in rows] == d.test.y.tolist()


def test_fashion_mnist_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GTNPIPE_FASHION_MNIST", raising=False)
    assert fashion_mnist_dir() == FMNIST_DIR
    monkeypatch.setenv("GTNPIPE_FASHION_MNIST", str(tmp_path))
    assert fashion_mnist_dir() == tmp_path


def test_relocated_and_idx_folder_load_the_same_arrays(
    fmnist_full: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = _copy_fmnist(tmp_path / "fmnist-copy")
    # As a plain path: an IDX folder, named after the folder, numeric class names.
    d = load_dataset(str(copy), val_size=5000)
    assert d.name == "fmnist-copy"
    assert d.classes == tuple(str(i) for i in range(10))
    for ours, ref in ((d.train, fmnist_full.train), (d.val, fmnist_full.val), (d.test, fmnist_full.test)):
        np.testing.assert_array_equal(ours.x, ref.x)
        np.testing.assert_array_equal(ours.y, ref.y)
    assert d.fingerprint == fmnist_full.fingerprint  # same files, same fingerprint
    assert d.mean == fmnist_full.mean and d.std == fmnist_full.std
    # Through GTNPIPE_FASHION_MNIST: the sha256-checked Fashion-MNIST, with its class names.
    monkeypatch.setenv("GTNPIPE_FASHION_MNIST", str(copy))
    src = load_source(FASHION_MNIST)
    assert src.name == "fashion-mnist" and src.classes == FMNIST_CLASSES
    np.testing.assert_array_equal(src.test.x, fmnist_full.test.x)
    assert src.fingerprint == fmnist_full.fingerprint


# --- splits, subsets (on a stamped .npz: every image is unique and carries its index) -----------------


def test_val_split_deterministic_and_disjoint(stamped_npz: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, y_train, _ = stamped_npz
    a = load_dataset(str(path), val_size=100, split_seed=3)
    b = load_dataset(str(path), val_size=100, split_seed=3)
    np.testing.assert_array_equal(a.val.x, b.val.x)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    val_idx, train_idx = _stamps(a.val.x), _stamps(a.train.x)
    assert (len(val_idx), len(train_idx)) == (100, 500)
    assert len(set(val_idx.tolist())) == 100
    assert set(val_idx.tolist()).isdisjoint(train_idx.tolist())
    assert sorted(val_idx.tolist() + train_idx.tolist()) == list(range(600))
    # Each image keeps its own label.
    np.testing.assert_array_equal(a.val.y, y_train[val_idx])
    np.testing.assert_array_equal(a.train.y, y_train[train_idx])
    # The validation images are a shuffled draw, not simply the first 100.
    assert sorted(val_idx.tolist()) != list(range(100))


def test_val_split_changes_with_seed(stamped_npz: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, _, _ = stamped_npz
    a = set(_stamps(load_dataset(str(path), val_size=100, split_seed=0).val.x).tolist())
    b_ds = load_dataset(str(path), val_size=100, split_seed=1)
    b = set(_stamps(b_ds.val.x).tolist())
    assert len(a) == len(b) == 100
    assert a != b
    assert b.isdisjoint(_stamps(b_ds.train.x).tolist())


def test_train_subset_is_prefix_of_larger(stamped_npz: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, _, _ = stamped_npz
    small = load_dataset(str(path), val_size=100, train_subset=50, split_seed=7)
    large = load_dataset(str(path), val_size=100, train_subset=200, split_seed=7)
    full = load_dataset(str(path), val_size=100, split_seed=7)
    assert (len(small.train), len(large.train), len(full.train)) == (50, 200, 500)
    np.testing.assert_array_equal(small.train.x, large.train.x[:50])
    np.testing.assert_array_equal(small.train.y, large.train.y[:50])
    np.testing.assert_array_equal(large.train.x, full.train.x[:200])
    # The validation split does not depend on train_subset.
    np.testing.assert_array_equal(small.val.x, full.val.x)
    # mean/std follow the subset actually kept.
    assert small.mean == pytest.approx((float(small.train.x.mean() / 255.0),), rel=1e-12)
    assert small.mean != large.mean


def test_test_subset(stamped_npz: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, _, y_test = stamped_npz
    whole = load_dataset(str(path), val_size=10)
    np.testing.assert_array_equal(_stamps(whole.test.x), np.arange(200))
    d = load_dataset(str(path), val_size=10, test_subset=50)
    again = load_dataset(str(path), val_size=10, test_subset=50)
    idx = _stamps(d.test.x)
    assert len(d.test) == 50 and len(set(idx.tolist())) == 50
    assert idx.min() >= 0 and idx.max() < 200
    np.testing.assert_array_equal(d.test.y, y_test[idx])
    np.testing.assert_array_equal(again.test.x, d.test.x)
    assert len(d.train) == 590  # test_subset leaves train alone


def test_val_size_zero_keeps_all_training_images(stamped_npz: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, _, _ = stamped_npz
    d = load_dataset(str(path), val_size=0)
    assert (len(d.train), len(d.val), len(d.test)) == (600, 0, 200)
    assert sorted(_stamps(d.train.x).tolist()) == list(range(600))


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"val_size": 600}, ["val_size=600", "600 training images"]),
        ({"val_size": -1}, ["val_size=-1"]),
        ({"val_size": 100, "train_subset": 501}, ["train_subset=501", "500 training images", "val_size=100"]),
        ({"val_size": 100, "test_subset": 201}, ["test_subset=201", "200 test images"]),
    ],
)
def test_subset_sizes_out_of_range(
    stamped_npz: tuple[Path, np.ndarray, np.ndarray], kwargs: dict[str, int], expected: list[str]
) -> None:
    path, _, _ = stamped_npz
    with pytest.raises(DataError) as info:
        load_dataset(str(path), **kwargs)
    assert not isinstance(info.value, DatasetMissing)
    for text in expected:
        assert text in str(info.value)


def test_train_subset_at_the_limit_is_fine(stamped_npz: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, _, _ = stamped_npz
    assert len(load_dataset(str(path), val_size=100, train_subset=500).train) == 500
    assert len(load_dataset(str(path), val_size=300).train) == 300  # half: the most validation may take


# --- Fashion-MNIST missing or corrupt ---------------------------------------------------------


def test_missing_fashion_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GTNPIPE_FASHION_MNIST", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetMissing) as info:
        load_dataset(val_size=5000)
    msg = str(info.value)
    assert FASHION_MNIST_INSTALL == "apt-get update && apt-get install -y dataset-fashion-mnist"
    assert "apt-get update && apt-get install -y dataset-fashion-mnist" in msg
    assert str(tmp_path / "nowhere") in msg
    for name in IDX_FILES:
        assert name in msg
    assert "GTNPIPE_FASHION_MNIST" in msg


def test_one_fashion_mnist_file_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in IDX_FILES[1:]:
        (tmp_path / name).symlink_to(FMNIST_DIR / name)
    monkeypatch.setenv("GTNPIPE_FASHION_MNIST", str(tmp_path))
    with pytest.raises(DatasetMissing) as info:
        load_source(FASHION_MNIST)
    msg = str(info.value)
    assert "missing from" in msg and "train-images-idx3-ubyte.gz" in msg
    assert "t10k-labels-idx1-ubyte.gz" not in msg
    assert "apt-get update && apt-get install -y dataset-fashion-mnist" in msg


@pytest.mark.parametrize("damage", ["append", "truncate"])
def test_fashion_mnist_file_with_wrong_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    for name in IDX_FILES:
        shutil.copyfile(FMNIST_DIR / name, tmp_path / name)
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    data = bad.read_bytes()
    bad.write_bytes(data + b"\0" if damage == "append" else data[: len(data) // 2])
    monkeypatch.setenv("GTNPIPE_FASHION_MNIST", str(tmp_path))
    with pytest.raises(DataError) as info:
        load_dataset(val_size=5000)
    assert not isinstance(info.value, DatasetMissing)
    msg = str(info.value)
    assert "sha256" in msg and "t10k-labels-idx1-ubyte.gz" in msg
    assert "train-images-idx3-ubyte.gz" not in msg  # only the damaged file is named
    assert "apt-get install --reinstall -y dataset-fashion-mnist" in msg


def test_nonexistent_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dataset"
    with pytest.raises(DatasetMissing) as info:
        load_dataset(str(missing), val_size=10)
    msg = str(info.value)
    assert repr(str(missing)) in msg
    assert "fashion-mnist" in msg and ".npz" in msg


def test_file_that_is_not_npz(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("1,2,3\n")
    with pytest.raises(DataError, match=r"data\.csv: a dataset file must be a \.npz"):
        load_source(str(path))


# --- bring your own: .npz -----------------------------------------------------------------------


def test_npz_nhw_uint8(fmnist_small: Dataset, tmp_path: Path) -> None:
    x_train, y_train = fmnist_small.train.x[:300, 0], fmnist_small.train.y[:300]
    x_test, y_test = fmnist_small.test.x[:100, 0], fmnist_small.test.y[:100]
    path = tmp_path / "slice.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    d = load_dataset(str(path), val_size=60)
    assert d.name == "slice"
    assert (len(d.train), len(d.val), len(d.test)) == (240, 60, 100)
    assert (d.channels, d.image_hw) == (1, (28, 28))
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    assert d.classes == tuple(str(i) for i in range(n_classes))
    np.testing.assert_array_equal(d.test.x, x_test[:, None])
    np.testing.assert_array_equal(d.test.y, y_test)
    assert d.test.y.dtype == np.int64
    assert HEX64.fullmatch(d.fingerprint) and d.fingerprint != fmnist_small.fingerprint
    # train + val are exactly the 300 source images.
    got = sorted(r.tobytes() for r in np.concatenate([d.train.x, d.val.x]))
    assert got == sorted(r.tobytes() for r in x_train[:, None])


def test_npz_nhwc_three_channels(fmnist_small: Dataset, tmp_path: Path) -> None:
    def rgb(x: np.ndarray) -> np.ndarray:
        crop = x[:, 0, 4:24, 2:26]  # (N, 20, 24)
        return np.stack([crop, 255 - crop, crop // 2], axis=-1)  # NHWC, 3 distinct channels

    x_train, x_test = rgb(fmnist_small.train.x[:200]), rgb(fmnist_small.test.x[:50])
    assert x_train.shape == (200, 20, 24, 3)
    path = tmp_path / "rgb.npz"
    np.savez(path, x_train=x_train, y_train=fmnist_small.train.y[:200], x_test=x_test, y_test=fmnist_small.test.y[:50])
    d = load_dataset(str(path), val_size=40)
    assert d.channels == 3 and d.image_hw == (20, 24)
    assert d.train.x.shape == (160, 3, 20, 24)
    np.testing.assert_array_equal(d.test.x, x_test.transpose(0, 3, 1, 2))
    pixels = d.train.x.astype(np.float64) / 255.0
    assert d.mean == pytest.approx(tuple(pixels.mean(axis=(0, 2, 3))), rel=1e-12)
    assert d.std == pytest.approx(tuple(pixels.std(axis=(0, 2, 3))), rel=1e-12)
    # Channel 1 is the negative of channel 0.
    assert d.mean[0] + d.mean[1] == pytest.approx(1.0, abs=1e-12)


def test_npz_nchw_kept_as_is(fmnist_small: Dataset, tmp_path: Path) -> None:
    x = fmnist_small.train.x[:100]  # already (N, 1, 28, 28)
    path = tmp_path / "nchw.npz"
    np.savez(path, x_train=x, y_train=fmnist_small.train.y[:100], x_test=x[:20], y_test=fmnist_small.train.y[:20])
    src = load_source(str(path))
    np.testing.assert_array_equal(src.train.x, x)
    np.testing.assert_array_equal(src.test.x, x[:20])


def test_npz_float_pixels(fmnist_small: Dataset, tmp_path: Path) -> None:
    x_train = fmnist_small.train.x[:100, 0]
    x_test = fmnist_small.test.x[:30, 0]
    path = tmp_path / "floats.npz"
    np.savez(
        path,
        x_train=(x_train / 255.0).astype(np.float32),
        y_train=fmnist_small.train.y[:100].astype(np.int32),
        x_test=(x_test / 255.0).astype(np.float32),
        y_test=fmnist_small.test.y[:30].astype(np.uint8),
    )
    src = load_source(str(path))
    assert src.train.x.dtype == np.uint8 and src.train.y.dtype == np.int64
    np.testing.assert_array_equal(src.train.x, x_train[:, None])
    np.testing.assert_array_equal(src.test.x, x_test[:, None])
    np.testing.assert_array_equal(src.test.y, fmnist_small.test.y[:30])


def test_npz_class_names(fmnist_small: Dataset, tmp_path: Path) -> None:
    path = tmp_path / "named.npz"
    np.savez(
        path,
        x_train=fmnist_small.train.x[:100, 0], y_train=fmnist_small.train.y[:100],
        x_test=fmnist_small.test.x[:20, 0], y_test=fmnist_small.test.y[:20],
        classes=np.array(FMNIST_CLASSES),
    )
    d = load_dataset(str(path), val_size=10)
    assert d.classes == FMNIST_CLASSES and d.num_classes == 10

    short = tmp_path / "short.npz"
    np.savez(
        short,
        x_train=fmnist_small.train.x[:100, 0], y_train=fmnist_small.train.y[:100],
        x_test=fmnist_small.test.x[:20, 0], y_test=fmnist_small.test.y[:20],
        classes=np.array(["a", "b"]),
    )
    top = int(max(fmnist_small.train.y[:100].max(), fmnist_small.test.y[:20].max()))
    with pytest.raises(DataError, match=rf"'classes' names 2 classes but labels go up to {top}"):
        load_source(str(short))


def _npz_arrays(fmnist_small: Dataset) -> dict[str, np.ndarray]:
    return {
        "x_train": fmnist_small.train.x[:50, 0], "y_train": fmnist_small.train.y[:50],
        "x_test": fmnist_small.test.x[:20, 0], "y_test": fmnist_small.test.y[:20],
    }


@pytest.mark.parametrize("drop", ["x_train", "y_train", "x_test", "y_test"])
def test_npz_missing_array(fmnist_small: Dataset, tmp_path: Path, drop: str) -> None:
    arrays = _npz_arrays(fmnist_small)
    del arrays[drop]
    path = tmp_path / "partial.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError) as info:
        load_source(str(path))
    msg = str(info.value)
    assert f"missing array(s) {drop};" in msg and str(path) in msg


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("x_train", lambda a: a.astype(np.int32), f"x_train: {PIXELS_MSG}, got int32"),
        ("x_test", lambda a: a.astype(np.float32), f"x_test: {PIXELS_MSG}, got float32"),
        ("x_train", lambda a: a.reshape(len(a), -1), "x_train: expected images shaped"),
        ("y_train", lambda a: a.astype(np.float32), "y_train: labels must be a 1-D integer array, got float32"),
        ("y_test", lambda a: a[:, None], "y_test: labels must be a 1-D integer array"),
        ("y_test", lambda a: np.concatenate([[-3], a[1:]]), "y_test: labels must be >= 0, found -3"),
        ("y_train", lambda a: a[:-1], "train: 50 images but 49 labels"),
    ],
)
def test_npz_bad_arrays(
    fmnist_small: Dataset, tmp_path: Path, name: str, make: Callable[[np.ndarray], np.ndarray], expected: str
) -> None:
    arrays = _npz_arrays(fmnist_small)
    arrays[name] = make(arrays[name])  # note: a float32 copy of uint8 pixels is 0..255, outside [0, 1]
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError) as info:
        load_source(str(path))
    assert expected in str(info.value)


def test_truncated_npz_is_a_data_error(fmnist_small: Dataset, tmp_path: Path) -> None:
    good = tmp_path / "good.npz"
    np.savez(good, **_npz_arrays(fmnist_small))
    data = good.read_bytes()
    bad = tmp_path / "bad.npz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"bad\.npz: cannot read as \.npz"):
        load_source(str(bad))


# --- bring your own: ImageFolder ------------------------------------------------------------------

# Folder name -> Fashion-MNIST label; sorted folder order (bag, coat, trouser) differs from this order.
FOLDER_CLASSES = {"trouser": 1, "bag": 8, "coat": 4}


def _class_images(fmnist_small: Dataset, label: int, n: int) -> np.ndarray:
    x = np.concatenate([fmnist_small.train.x, fmnist_small.val.x])[:, 0]
    y = np.concatenate([fmnist_small.train.y, fmnist_small.val.y])
    picked = x[y == label][:n]
    assert len(picked) == n
    return picked


def _write_pngs(folder: Path, images: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:03d}.png")


def test_image_folder_with_train_and_test(fmnist_small: Dataset, tmp_path: Path) -> None:
    root = tmp_path / "clothes"
    expected_train, expected_test = [], []
    for name in sorted(FOLDER_CLASSES):
        imgs = _class_images(fmnist_small, FOLDER_CLASSES[name], 9)
        _write_pngs(root / "train" / name, imgs[:6])
        _write_pngs(root / "test" / name, imgs[6:])
        expected_train.append(imgs[:6])
        expected_test.append(imgs[6:])
    src = load_source(str(root))
    assert src.name == "clothes"
    assert src.classes == ("bag", "coat", "trouser")
    assert src.train.y.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert src.test.y.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    np.testing.assert_array_equal(src.train.x, np.concatenate(expected_train)[:, None])
    np.testing.assert_array_equal(src.test.x, np.concatenate(expected_test)[:, None])
    assert src.train.x.dtype == np.uint8
    d = load_dataset(str(root), val_size=3)
    assert (len(d.train), len(d.val), len(d.test)) == (15, 3, 9)
    assert (d.channels, d.image_hw, d.num_classes) == (1, (28, 28), 3)


def test_image_folder_without_split(fmnist_small: Dataset, tmp_path: Path) -> None:
    root = tmp_path / "flat"
    per_class = {}
    for name, label in FOLDER_CLASSES.items():
        per_class[name] = _class_images(fmnist_small, label, 10)
        _write_pngs(root / name, per_class[name])
    src = load_source(str(root))
    assert src.classes == ("bag", "coat", "trouser")
    # Every 5th file per class (sorted: 004.png, 009.png) is test.
    assert (len(src.train), len(src.test)) == (24, 6)
    assert src.test.y.tolist() == [0, 0, 1, 1, 2, 2]
    assert np.bincount(src.train.y).tolist() == [8, 8, 8]
    test_idx, train_idx = [4, 9], [0, 1, 2, 3, 5, 6, 7, 8]
    for label, name in enumerate(src.classes):
        np.testing.assert_array_equal(src.test.x[src.test.y == label, 0], per_class[name][test_idx])
        np.testing.assert_array_equal(src.train.x[src.train.y == label, 0], per_class[name][train_idx])


def test_image_folder_rgb(fmnist_small: Dataset, tmp_path: Path) -> None:
    root = tmp_path / "rgb"
    expected = {}
    for name, label in FOLDER_CLASSES.items():
        gray = _class_images(fmnist_small, label, 5)
        rgb = np.stack([gray, 255 - gray, gray // 3], axis=-1)
        expected[name] = rgb
        (root / name).mkdir(parents=True)
        for i, img in enumerate(rgb):
            Image.fromarray(img, mode="RGB").save(root / name / f"{i:03d}.png")
    src = load_source(str(root))
    assert src.train.x.shape == (12, 3, 28, 28) and src.test.x.shape == (3, 3, 28, 28)
    for label, name in enumerate(src.classes):
        np.testing.assert_array_equal(src.test.x[label], expected[name][4].transpose(2, 0, 1))
        np.testing.assert_array_equal(src.train.x[src.train.y == label], expected[name][:4].transpose(0, 3, 1, 2))
    d = load_dataset(str(root), val_size=2)
    assert d.channels == 3 and len(d.mean) == 3 and len(d.std) == 3


def test_image_folder_mixed_gray_and_rgb_becomes_rgb(fmnist_small: Dataset, tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    imgs = _class_images(fmnist_small, 1, 10)
    _write_pngs(root / "a", imgs[:5])
    (root / "b").mkdir()
    for i, img in enumerate(imgs[5:]):
        Image.fromarray(np.stack([img] * 3, axis=-1), mode="RGB").save(root / "b" / f"{i:03d}.png")
    src = load_source(str(root))
    assert src.train.x.shape == (8, 3, 28, 28)
    # A grayscale image becomes three equal channels.
    np.testing.assert_array_equal(src.train.x[0], np.stack([imgs[0]] * 3))


def test_image_folder_jpeg(fmnist_small: Dataset, tmp_path: Path) -> None:
    root = tmp_path / "jpegs"
    originals = {}
    for name, label in (("bag", 8), ("coat", 4)):
        originals[name] = _class_images(fmnist_small, label, 5)
        (root / name).mkdir(parents=True)
        for i, img in enumerate(originals[name]):
            Image.fromarray(img).save(root / name / f"{i:03d}.JPG", quality=95)
    (root / "bag" / ".DS_Store").write_bytes(b"\0\1")  # hidden files are not data: ignored
    src = load_source(str(root))
    assert (len(src.train), len(src.test)) == (8, 2)
    # JPEG is lossy: close to the source, not equal.
    diff = np.abs(src.test.x[0, 0].astype(int) - originals["bag"][4].astype(int))
    assert diff.mean() < 3.0


def test_image_folder_mixed_sizes(fmnist_small: Dataset, tmp_path: Path) -> None:
    root = tmp_path / "sizes"
    imgs = _class_images(fmnist_small, 1, 10)
    _write_pngs(root / "bag", imgs[:5])
    _write_pngs(root / "coat", imgs[5:])
    Image.fromarray(imgs[1][4:24, 2:26]).save(root / "bag" / "001.png")  # 24 wide, 20 high
    with pytest.raises(DataError) as info:
        load_source(str(root))
    msg = str(info.value)
    assert f"{root / 'bag' / '000.png'} is 28x28" in msg
    assert f"{root / 'bag' / '001.png'} is 24x20" in msg
    assert "give --image-size N" in msg


def test_image_folder_train_test_different_sizes(fmnist_small: Dataset, tmp_path: Path) -> None:
    root = tmp_path / "tt"
    imgs = _class_images(fmnist_small, 1, 4)
    for name in ("a", "b"):
        _write_pngs(root / "train" / name, imgs[:2])
        _write_pngs(root / "test" / name, imgs[2:, :20, :20])
    with pytest.raises(DataError, match=r"images differ in size: .* is 28x28 but .* is 20x20 .*--image-size N"):
        load_source(str(root))
    assert load_source(str(root), image_size=24).test.x.shape[1:] == (1, 24, 24)


def test_image_folder_needs_two_classes(fmnist_small: Dataset, tmp_path: Path) -> None:
    root = tmp_path / "one"
    _write_pngs(root / "only", _class_images(fmnist_small, 1, 5))
    with pytest.raises(DataError, match="needs at least 2 class sub-folders"):
        load_source(str(root))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="needs at least 2 class sub-folders"):
        load_source(str(empty))


def test_image_folder_too_few_classes_message_gives_count(fmnist_small: Dataset, tmp_path: Path) -> None:
    root = tmp_path / "one"
    _write_pngs(root / "only", _class_images(fmnist_small, 1, 5))
    with pytest.raises(DataError, match=r"found 1$"):
        load_source(str(root))


def test_image_folder_bad_layouts(fmnist_small: Dataset, tmp_path: Path) -> None:
    imgs = _class_images(fmnist_small, 1, 8)
    # An empty class folder.
    root = tmp_path / "hollow"
    _write_pngs(root / "a", imgs[:5])
    (root / "b").mkdir()
    with pytest.raises(DataError, match="class folder\\(s\\) with no image files: b"):
        load_source(str(root))
    # Fewer than 5 images per class: nothing for test.
    few = tmp_path / "few"
    _write_pngs(few / "a", imgs[:3])
    _write_pngs(few / "b", imgs[3:6])
    with pytest.raises(DataError, match="at least 5 images per class"):
        load_source(str(few))
    # train/ and test/ with different classes.
    split = tmp_path / "split"
    for name in ("a", "b"):
        _write_pngs(split / "train" / name, imgs[:2])
    for name in ("a", "c"):
        _write_pngs(split / "test" / name, imgs[2:4])
    with pytest.raises(DataError, match="train/ and test/ must hold the same class sub-folders"):
        load_source(str(split))


def test_image_folder_unreadable_image(fmnist_small: Dataset, tmp_path: Path) -> None:
    imgs = _class_images(fmnist_small, 1, 5)
    broken = tmp_path / "broken"
    _write_pngs(broken / "a", imgs[:5])
    _write_pngs(broken / "b", imgs[:5])
    (broken / "b" / "002.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"002\.png: not an image Pillow can read .*--skip-unreadable"):
        load_source(str(broken))


def test_image_folder_fingerprint_tracks_files(fmnist_small: Dataset, tmp_path: Path) -> None:
    root = tmp_path / "fp"
    imgs = _class_images(fmnist_small, 8, 11)
    _write_pngs(root / "a", imgs[:5])
    _write_pngs(root / "b", imgs[5:10])
    first = load_source(str(root)).fingerprint
    assert HEX64.fullmatch(first)
    assert load_source(str(root)).fingerprint == first  # stable
    Image.fromarray(imgs[10]).save(root / "b" / "002.png")  # one image changes
    changed = load_source(str(root))
    assert changed.fingerprint != first
    np.testing.assert_array_equal(changed.train.x[changed.train.y == 1][2, 0], imgs[10])
    Image.fromarray(imgs[7]).save(root / "b" / "002.png")  # and back
    assert load_source(str(root)).fingerprint == first


# --- IDX folders ------------------------------------------------------------------------------


def test_truncated_file_in_idx_folder_is_a_data_error(tmp_path: Path) -> None:
    root = tmp_path / "idx"
    root.mkdir()
    for name in IDX_FILES[:3]:
        (root / name).symlink_to(FMNIST_DIR / name)
    data = (FMNIST_DIR / IDX_FILES[3]).read_bytes()
    (root / IDX_FILES[3]).write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        load_source(str(root))


def test_idx_folder_with_wrong_magic(tmp_path: Path) -> None:
    root = tmp_path / "idx"
    root.mkdir()
    for name in IDX_FILES:
        if name != "t10k-labels-idx1-ubyte.gz":
            (root / name).symlink_to(FMNIST_DIR / name)
    # Put image data where labels belong: 3 dimensions where 1 is expected.
    shutil.copyfile(FMNIST_DIR / "t10k-images-idx3-ubyte.gz", root / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataError, match=r"not an IDX file of 1 dimension\(s\) of unsigned bytes \(magic 0x803\)"):
        load_source(str(root))


def test_idx_folder_header_longer_than_body(tmp_path: Path) -> None:
    root = tmp_path / "idx"
    root.mkdir()
    for name in IDX_FILES[:3]:
        (root / name).symlink_to(FMNIST_DIR / name)
    labels = _read_idx_independently(FMNIST_DIR / "t10k-labels-idx1-ubyte.gz", 0).tobytes()
    with gzip.open(root / "t10k-labels-idx1-ubyte.gz", "wb") as handle:
        handle.write(labels[:-10])  # a valid gzip of a short body
    with pytest.raises(DataError, match=r"header says \(10000,\) but holds 9990 bytes"):
        load_source(str(root))


# --- images of mixed sizes and modes, unreadable files, val_size as a share (bring-your-own data) -------------------


def _colour_image(width: int, height: int, *, centre: tuple[int, int, int], sides: tuple[int, int, int]) -> Image.Image:
    """`width` x `height` RGB: the middle half of the longer side in `centre`, the rest in `sides`."""
    arr = np.empty((height, width, 3), dtype=np.uint8)
    arr[:] = sides
    if width >= height:
        arr[:, width // 4 : width - width // 4] = centre
    else:
        arr[height // 4 : height - height // 4] = centre
    return Image.fromarray(arr)


def test_mixed_size_colour_folder_resized_to_the_centre_square(tmp_path: Path) -> None:
    """Shorter side to image_size, then the centre square: for a 2:1 image that is exactly its middle half."""
    root = tmp_path / "mixed"
    blue, red = (0, 0, 255), (255, 0, 0)
    sizes = [(40, 20), (20, 40), (64, 32), (33, 17), (100, 50), (24, 12)]
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            _colour_image(w, h, centre=blue, sides=red).save(root / cls / f"{i}.jpg" if i % 2 else root / cls / f"{i}.png",
                                                             quality=98)
    grey = np.full((30, 30), 77, dtype=np.uint8)  # a grey image among colour ones becomes RGB (its value in each channel)
    Image.fromarray(grey).save(root / "a" / "grey.png")
    src = load_source(str(root), image_size=16)
    x = np.concatenate([src.train.x, src.test.x])
    assert x.shape[1:] == (3, 16, 16) and len(x) == 2 * len(sizes) + 1
    colour = x[x[:, 0, 0, 0] != 77]
    inner = colour[:, :, 2:-2, 2:-2].astype(float)  # away from the bilinear seam at the crop's edge
    assert inner[:, 2].mean() > 240 and inner[:, 0].mean() < 15  # blue centre kept, red sides cropped away
    assert (x[x[:, 0, 0, 0] == 77] == 77).all()
    # without image_size the same folder is refused, naming both sizes and the option
    with pytest.raises(DataError, match=r"images differ in size: .* is 40x20 but .* is 20x40 .*--image-size N"):
        load_source(str(root))


def test_image_size_resizes_arrays_too(fmnist_small: Dataset, tmp_path: Path) -> None:
    arrays = _npz_arrays(fmnist_small)
    np.savez(tmp_path / "d.npz", **arrays)
    src = load_source(str(tmp_path / "d.npz"), image_size=14)
    assert src.train.x.shape[1:] == (1, 14, 14)
    # bilinear 2:1 shrink with antialiasing: each pixel close to the mean of its 2x2 block
    blocks = arrays["x_train"][:50].reshape(50, 14, 2, 14, 2).mean(axis=(2, 4))
    assert np.abs(src.train.x[:50, 0].astype(float) - blocks).mean() < 12


def test_non_image_and_corrupt_files_fail_or_are_skipped(fmnist_small: Dataset, tmp_path: Path) -> None:
    root = tmp_path / "dirty"
    imgs = _class_images(fmnist_small, 3, 10)
    _write_pngs(root / "a", imgs[:5])
    _write_pngs(root / "b", imgs[5:])
    (root / "a" / "notes.txt").write_text("not an image")
    good = (root / "b" / "000.png").read_bytes()
    (root / "b" / "cut.png").write_bytes(good[: len(good) // 2])  # truncated: the header reads, the pixels do not
    with pytest.raises(DataError, match=r"notes\.txt: not an image Pillow can read"):
        load_source(str(root))
    (root / "a" / "notes.txt").unlink()
    with pytest.raises(DataError, match=r"cut\.png: not an image Pillow can read"):
        load_source(str(root))
    (root / "a" / "notes.txt").write_text("not an image")
    src = load_source(str(root), skip_unreadable=True)
    assert sorted(src.skipped) == ["a/notes.txt", "b/cut.png"]
    assert len(src.train) + len(src.test) == 10
    data = load_dataset(str(root), val_size=0, skip_unreadable=True)
    assert data.skipped == src.skipped


def test_val_size_as_a_share(stamped_npz: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, _, _ = stamped_npz
    n = len(load_source(str(path)).train)
    for share in (0.1, 0.25, 0.5):
        data = load_dataset(str(path), val_size=share)
        assert len(data.val) == round(share * n) and len(data.train) == n - round(share * n)
    with pytest.raises(DataError, match=r"at most half .* lower val_size"):
        load_dataset(str(path), val_size=n // 2 + 1)
