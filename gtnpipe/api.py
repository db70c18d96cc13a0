"""The Python API: what the `gtnpipe` command does, taking objects as well as names, returning typed results.

    import gtnpipe
    result = gtnpipe.build("raspberry-pi-4", gtnpipe.BuildOptions(teacher="gtn"), data="fashion-mnist")
    compiled = gtnpipe.compile("model.onnx", "host", data=(x_train, y_train, x_test, y_test))
    student = gtnpipe.distill("smallest", teacher=my_module, data="my_images/")
    found = gtnpipe.search("jetson-nano", gtnpipe.BuildOptions(search=gtnpipe.SearchConfig(iterations=100)))

- options: one dataclass per command (gtnpipe.options), the same the command line fills in: `BuildOptions` (build,
  search), `CompileOptions`, `WorkspaceOptions` (recipe, cache, image size, storage, training device), passed as
  `ws=` or opened once with `gtnpipe.workspace(data, options)`.

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
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gtnpipe import pipeline
from gtnpipe.cache import Cache
from gtnpipe.config.profiles import DeviceProfile
from gtnpipe.errors import ConfigError
from gtnpipe.fsutil import atomic_write_bytes
from gtnpipe.models.external import teacher_file, teacher_from_module
from gtnpipe.nas.evolution import SearchConfig
from gtnpipe.options import BuildOptions, CompileOptions, Teacher, WorkspaceOptions, as_teacher
from gtnpipe.pipeline import BuildOutcome, CompileOutcome, Workspace
from gtnpipe.stages.search import SearchOutcome
from gtnpipe.stages.training import DistillOutcome

__all__ = ["BuildOptions", "CompileOptions", "Data", "Device", "SearchConfig", "Teacher", "WorkspaceOptions", "build",
           "compile", "distill", "search", "teacher_file", "teacher_from_module", "workspace"]

Device = str | Path | DeviceProfile
Data = str | Path | Sequence[np.ndarray] | None


def workspace(data: Data = None, options: WorkspaceOptions | None = None) -> Workspace:
    """The recipe with its data loaded (what every command opens first); pass it to the functions below as `ws`
    to load the data once for several calls. `data` (arrays allowed) replaces `options.data`."""
    options = options or WorkspaceOptions()
    source = _data_source(data, Cache(options.cache_dir))
    return replace(options, data=source if source is not None else options.data).open()


def _ws(ws: Workspace | WorkspaceOptions | None, data: Data) -> Workspace:
    if isinstance(ws, Workspace):
        if data is not None:
            raise ConfigError("give the data to gtnpipe.workspace(data, ...) when you pass a Workspace, not to the call")
        return ws
    return workspace(data, ws)


def build(device: Device, options: BuildOptions | None = None, *, data: Data = None,
          ws: Workspace | WorkspaceOptions | None = None, say: Callable[[str], None] = lambda _: None) -> BuildOutcome:
    """`gtnpipe build`: search the pool for `device`, distill the pick from `options.teacher`, compile, check, write
    options.out/<device>/. `ws`: a loaded Workspace, or the WorkspaceOptions to open one (recipe, cache, ...)."""
    return pipeline.build_device(_ws(ws, data), device, options or BuildOptions(), say=say)


def compile(model: str | Path | nn.Module, device: Device, options: CompileOptions | None = None, *,  # noqa: A001
            data: Data = None, input_shape: tuple[int, int, int] | None = None,
            say: Callable[[str], None] = lambda _: None) -> CompileOutcome:
    """`gtnpipe compile`: a model you have -> every precision -> parity -> time -> out/<device>/. An nn.Module is
    exported to ONNX first (with a dynamic batch); give its `input_shape` (C, H, W). `data` (arrays allowed)
    replaces `options.data`."""
    options = options or CompileOptions()
    source = _data_source(data, Cache(options.cache_dir))
    options = replace(options, data=source if source is not None else options.data)
    with tempfile.TemporaryDirectory(prefix="gtnpipe-api-") as tmp:
        path = _onnx_of(model, input_shape, Path(tmp)) if isinstance(model, nn.Module) else Path(model)
        return pipeline.compile_model(path, device, options, say=say)


def distill(arch: str, *, teacher: Teacher | None = None, finetune: str | None = None, data: Data = None,
            seed: int | None = None, ws: Workspace | WorkspaceOptions | None = None) -> DistillOutcome:
    """`gtnpipe distill`: pool student `arch` (an id, "smallest" or "largest") distilled from `teacher`.
    `finetune="gtn"` with `teacher_from_module(model, stages=[...])`: your teacher fine-tuned as a generic teacher
    (the recipe's gtn settings, gtn.finetune_epochs epochs) before it teaches."""
    return pipeline.distill_student(_ws(ws, data), arch, teacher=as_teacher(teacher), finetune=finetune, seed=seed)


def search(device: Device, options: BuildOptions | None = None, *, data: Data = None,
           ws: Workspace | WorkspaceOptions | None = None, say: Callable[[str], None] = lambda _: None) -> SearchOutcome:
    """`gtnpipe search`: the most accurate pool student within `device`'s budgets, and the Pareto front (the build's
    options: search settings, accuracy samples, host calibration)."""
    return pipeline.search_device(_ws(ws, data), device, options or BuildOptions(), say=say)


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

