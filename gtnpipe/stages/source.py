"""A model the user brought (`gtnpipe compile`): which precisions to build, the data checked against the model, and
the reference every compiled precision is compared with (ONNX Runtime FP32 of the prepared file)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from gtnpipe.cache import Cache
from gtnpipe.config.profiles import DeviceProfile
from gtnpipe.data.datasets import Dataset, Split, load_dataset
from gtnpipe.data.images import Resize
from gtnpipe.deploy.onnx_model import OnnxFacts
from gtnpipe.deploy.parity import run_batched
from gtnpipe.errors import ConfigError
from gtnpipe.stages.deploy import ParityImages
from gtnpipe.stages.workspace import DATA_INDEX

__all__ = ["COMPILE_VAL_SIZE", "compile_data", "compile_precisions", "onnx_reference"]

# gtnpipe compile --data: the share of the training images that become the validation split (accuracy-control INT8
# ranks layers on it); the rest calibrate INT8, the test split judges every precision
COMPILE_VAL_SIZE = 0.1


def compile_precisions(profile: DeviceProfile, asked: tuple[str, ...] | None, *, has_data: bool) -> tuple[str, ...]:
    """The precisions gtnpipe compile builds: the profile's, or the subset asked for (in the profile's order)."""
    if asked is None:
        return tuple(profile.precisions)
    extra = sorted(set(asked) - set(profile.precisions))
    if extra:
        raise ConfigError(f"--precision {', '.join(extra)}: device {profile.name!r} allows {', '.join(profile.precisions)} "
                          "(the profile's 'precisions')")
    if "int8" in asked and not has_data:
        raise ConfigError("--precision int8 needs calibration data: pass --data with images like the ones the model will "
                          "see (an image folder, a .npz or fashion-mnist)")
    return tuple(p for p in profile.precisions if p in asked)


def compile_data(data: str | Dataset, facts: OnnxFacts, cache_dir: Path | None, *,
                 val_data: str | Dataset | None = None, resize: str = "crop") -> Dataset:
    """The user's data at the model's input size (`resize`, --resize: "crop" scales the shorter side then cuts the
    centre, "stretch" scales both sides), checked against the model's channels and classes. `val_data` (--val-data):
    every image of it is the validation split (accuracy-control INT8 decides on it) instead of COMPILE_VAL_SIZE of the
    training images."""
    c, h, w = facts.chw
    size = Resize((h, w), resize)
    if isinstance(data, str):
        data = _keyed_by_resize(load_dataset(data, val_size=0 if val_data is not None else COMPILE_VAL_SIZE,
                                             image_size=size, index_dir=Cache(cache_dir).root / DATA_INDEX), size)
    if val_data is not None:
        data = _with_validation(data, val_data, size, cache_dir)
    if data.image_hw != (h, w):
        raise ConfigError(f"the data's images are {data.image_hw[0]}x{data.image_hw[1]}, {facts.path.name} takes {h}x{w}: "
                          "resize them to the model's input size")
    if data.channels != c:
        raise ConfigError(f"{facts.path.name} takes {c}-channel images, the data {data.name} has {data.channels}: "
                          f"give data with {c} channel(s)")
    if data.num_classes != facts.num_classes:
        raise ConfigError(f"{facts.path.name} has {facts.num_classes} outputs, the data {data.name} has "
                          f"{data.num_classes} classes: give the test data of the classes the model predicts")
    return data


def _keyed_by_resize(data: Dataset, size: Resize) -> Dataset:
    """Arrays (a .npz) resized keep their file's fingerprint: the way they were resized joins it (a folder's has it)."""
    fingerprint = hashlib.sha256(f"{data.fingerprint}+resize:{size.key}".encode()).hexdigest()
    return replace(data, fingerprint=fingerprint)


def _with_validation(data: Dataset, val_data: str | Dataset, size: Resize, cache_dir: Path | None) -> Dataset:
    """`data` whose validation split is all of `val_data` (its every split, in memory), keyed by both."""
    val = val_data if isinstance(val_data, Dataset) else _keyed_by_resize(load_dataset(
        val_data, val_size=0, image_size=size, storage="memory", index_dir=Cache(cache_dir).root / DATA_INDEX), size)
    if val.classes != data.classes or val.image_hw != data.image_hw or val.channels != data.channels:
        raise ConfigError(f"--val-data {val.name} has classes {list(val.classes)} at {val.channels}x{val.image_hw[0]}x"
                          f"{val.image_hw[1]}; --data {data.name} has {list(data.classes)} at {data.channels}x"
                          f"{data.image_hw[0]}x{data.image_hw[1]}: give validation images of the same classes")
    splits = [s for s in (val.train, val.val, val.test) if len(s)]
    x = np.concatenate([np.asarray(s.x[np.arange(len(s))]) for s in splits])
    y = np.concatenate([s.y for s in splits])
    fingerprint = hashlib.sha256(f"{data.fingerprint}+validation:{val.fingerprint}".encode()).hexdigest()
    return replace(data, name=f"{data.name} (validation: {val.name})", val=Split(x, y), fingerprint=fingerprint)


def onnx_reference(path: Path, images: ParityImages, batch_size: int) -> np.ndarray:
    """ONNX Runtime FP32 logits of the prepared user's model: what every compiled precision is compared with."""
    from gtnpipe.deploy.backends.onnxruntime import OrtRunner

    runner = OrtRunner(path, threads=os.cpu_count() or 1)
    chunk = batch_size * max(1, 512 // batch_size)
    return np.concatenate([run_batched(runner, x, batch_size=batch_size) for x in images.chunks(chunk)])
