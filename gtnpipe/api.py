"""The Python API: what the `gtnpipe` command does, taking objects as well as names, returning typed results.

    import gtnpipe
    result = gtnpipe.build("raspberry-pi-4", data="fashion-mnist", recipe="quick")
    compiled = gtnpipe.compile("model.onnx", "host", data=(x_train, y_train, x_test, y_test))
    student = gtnpipe.distill("smallest", teacher=my_module, data="my_images/")
    found = gtnpipe.search("jetson-nano")

- `device`: a profile name, a path to a profile .toml, or a `DeviceProfile`.
- `data`: a path (image folder, .npz, "fashion-mnist"), arrays `(x_train, y_train, x_test, y_test)` (uint8 images
  N x H x W or N x C x H x W, integer labels; kept as a content-addressed .npz in the cache), or None for the
  recipe's data.
- `teacher`: "gtn", "vanilla", "sftn", "none", a teacher file (.onnx, .pt2, TorchScript), an `nn.Module` taking
  [0, 1] images, or `teacher_from_module(model, input_mean=, input_std=)` for one that expects normalised images.
- `model` (compile): an .onnx path, or an `nn.Module` with `input_shape=(C, H, W)` (exported to ONNX first).

Every function runs the same cached stages as the command line: a second call with the same inputs is cache hits.
"""

from __future__ import annotations

import hashlib
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gtnpipe import pipeline
from gtnpipe.cache import Cache
from gtnpipe.config.profiles import DeviceProfile
from gtnpipe.config.recipes import Recipe
from gtnpipe.errors import ConfigError
from gtnpipe.fsutil import atomic_write_bytes
from gtnpipe.models.external import ExternalTeacher, teacher_file, teacher_from_module
from gtnpipe.nas.evolution import SearchConfig
from gtnpipe.pipeline import BuildOutcome, CompileOutcome, Workspace
from gtnpipe.stages.search import SearchOutcome
from gtnpipe.stages.training import DistillOutcome

__all__ = ["Data", "Device", "Teacher", "build", "compile", "distill", "search", "teacher_file", "teacher_from_module",
           "workspace"]

Device = str | Path | DeviceProfile
Data = str | Path | Sequence[np.ndarray] | None
Teacher = str | Path | nn.Module | ExternalTeacher


def workspace(data: Data = None, *, recipe: str | Path | Recipe = "quick", cache_dir: Path | None = None,
              image_size: int | None = None, storage: str = "auto", train_device: str = "auto",
              progress: bool = False) -> Workspace:
    """The recipe with its data loaded (what every command opens first); pass it to the functions below as `ws`
    to load the data once for several calls."""
    source = _data_source(data, Cache(cache_dir))
    return Workspace.open(recipe, cache_dir=cache_dir, data_source=source, image_size=image_size, storage=storage,
                          train_device=train_device, progress=progress)


def build(device: Device, *, data: Data = None, recipe: str | Path | Recipe = "quick", teacher: Teacher | None = None,
          out: str | Path = "artifacts", cache_dir: Path | None = None, iterations: int = 500,
          check_measured_budgets: bool = False, strict: bool = False, ws: Workspace | None = None,
          say: Callable[[str], None] = lambda _: None) -> BuildOutcome:
    """`gtnpipe build`: search the pool for `device`, distill the pick from `teacher`, compile, check, write
    out/<device>/."""
    ws = ws or workspace(data, recipe=recipe, cache_dir=cache_dir)
    return pipeline.build_device(ws, device, out=Path(out), teacher=_teacher(teacher),
                                 config=SearchConfig(iterations=iterations), check_measured_budgets=check_measured_budgets,
                                 strict=strict, say=say)


def compile(model: str | Path | nn.Module, device: Device, *, data: Data = None,  # noqa: A001 - the command's name
            out: str | Path = "artifacts", input_shape: tuple[int, int, int] | None = None,
            precisions: Sequence[str] | None = None, mean: Sequence[float] | None = None,
            std: Sequence[float] | None = None, cache_dir: Path | None = None, check_measured_budgets: bool = False,
            strict: bool = False, say: Callable[[str], None] = lambda _: None) -> CompileOutcome:
    """`gtnpipe compile`: a model you have -> every precision -> parity -> time -> out/<device>/. An nn.Module is
    exported to ONNX first (with a dynamic batch); give its `input_shape` (C, H, W)."""
    source = _data_source(data, Cache(cache_dir))
    with tempfile.TemporaryDirectory(prefix="gtnpipe-api-") as tmp:
        path = _onnx_of(model, input_shape, Path(tmp)) if isinstance(model, nn.Module) else Path(model)
        return pipeline.compile_model(path, device, data=source, out=Path(out), cache_dir=cache_dir,
                                      precisions=tuple(precisions) if precisions else None,
                                      mean=tuple(mean) if mean is not None else None,
                                      std=tuple(std) if std is not None else None,
                                      check_measured_budgets=check_measured_budgets, strict=strict, say=say)


def distill(arch: str, *, teacher: Teacher | None = None, finetune: str | None = None, data: Data = None,
            recipe: str | Path | Recipe = "quick", cache_dir: Path | None = None, seed: int | None = None,
            ws: Workspace | None = None) -> DistillOutcome:
    """`gtnpipe distill`: pool student `arch` (an id, "smallest" or "largest") distilled from `teacher`.
    `finetune="gtn"` with `teacher_from_module(model, stages=[...])`: your teacher fine-tuned as a generic teacher
    (the recipe's gtn settings, gtn.finetune_epochs epochs) before it teaches."""
    ws = ws or workspace(data, recipe=recipe, cache_dir=cache_dir)
    return pipeline.distill_student(ws, arch, teacher=_teacher(teacher), finetune=finetune, seed=seed)


def search(device: Device, *, data: Data = None, recipe: str | Path | Recipe = "quick", cache_dir: Path | None = None,
           iterations: int = 500, ws: Workspace | None = None) -> SearchOutcome:
    """`gtnpipe search`: the most accurate pool student within `device`'s budgets, and the Pareto front."""
    ws = ws or workspace(data, recipe=recipe, cache_dir=cache_dir)
    return pipeline.search_device(ws, device, config=SearchConfig(iterations=iterations))


def _teacher(teacher: Teacher | None) -> str | ExternalTeacher | None:
    if teacher is None or isinstance(teacher, ExternalTeacher):
        return teacher
    if isinstance(teacher, nn.Module):
        return teacher_from_module(teacher)
    return str(teacher)


def _data_source(data: Data, cache: Cache) -> str | None:
    """A path for the data loader: arrays become a .npz in the cache named by their content (so their fingerprint,
    and every key built on it, follows the arrays, not where they came from)."""
    if data is None or isinstance(data, str | Path):
        return None if data is None else str(data)
    if len(data) != 4:
        raise ConfigError(f"data as arrays: give (x_train, y_train, x_test, y_test), got {len(data)} array(s)")
    arrays = dict(zip(("x_train", "y_train", "x_test", "y_test"), (np.asarray(a) for a in data), strict=True))
    digest = hashlib.sha256()
    for name, array in arrays.items():
        digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    path = cache.root / "arrays" / f"arrays-{digest.hexdigest()[:16]}.npz"
    if not path.exists():
        with tempfile.TemporaryFile() as buffer:
            np.savez(buffer, **arrays)  # type: ignore[arg-type]
            buffer.seek(0)
            atomic_write_bytes(path, buffer.read())
    return str(path)


def _onnx_of(model: nn.Module, input_shape: tuple[int, int, int] | None, work: Path) -> Path:
    if input_shape is None or len(input_shape) != 3:
        raise ConfigError(f"compiling an nn.Module needs input_shape=(channels, height, width), got {input_shape!r}")
    path = work / f"{type(model).__name__}.onnx"
    was_training = model.training
    model.train(False)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)  # the TorchScript exporter (see export.py)
            torch.onnx.export(model, (torch.zeros(1, *input_shape),), str(path), dynamo=False, input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    finally:
        model.train(was_training)
    return path

