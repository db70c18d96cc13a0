"""One options dataclass per command, passed unchanged from the CLI (or the Python API) to the pipeline: a build
option added here reaches every entry point, and none of the three signatures can drift from the others.

- `WorkspaceOptions`: what every training command opens first (recipe, data, cache, where training runs);
- `BuildOptions`: `gtnpipe build` (and `search`, which runs the same search stage);
- `CompileOptions`: `gtnpipe compile`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from gtnpipe.config.recipes import Recipe
from gtnpipe.data.datasets import Dataset
from gtnpipe.deploy.onnx_model import InputShape
from gtnpipe.models.external import ExternalTeacher, teacher_from_module
from gtnpipe.nas.evolution import SearchConfig
from gtnpipe.stages.workspace import Workspace

__all__ = ["BuildOptions", "CompileOptions", "Teacher", "WorkspaceOptions", "as_teacher"]

# "gtn", "vanilla", "sftn", "none", a teacher file (.onnx, .pt2, TorchScript), an nn.Module taking [0, 1] images, or
# teacher_from_module(model, input_mean=, input_std=) for one that expects normalised images
Teacher = str | Path | nn.Module | ExternalTeacher


def as_teacher(teacher: Teacher | None) -> str | ExternalTeacher | None:
    """What the training stages take: a name or file path as a string, a module wrapped as an ExternalTeacher."""
    if teacher is None or isinstance(teacher, ExternalTeacher):
        return teacher
    if isinstance(teacher, nn.Module):
        return teacher_from_module(teacher)
    return str(teacher)


@dataclass(frozen=True)
class WorkspaceOptions:
    recipe: str | Path | Recipe = "quick"
    data: str | None = None  # --data: an image folder, a .npz or "fashion-mnist" (None: the recipe's)
    image_size: int | None = None  # --image-size: every image resized to this square
    skip_unreadable: bool | None = None  # None: the recipe's [data] skip_unreadable
    storage: str = "auto"  # auto, memory, disk (gtnpipe.data.datasets.STORAGES)
    train_device: str = "auto"  # auto (CUDA when available), cpu, cuda[:N]
    cache_dir: Path | None = None  # None: $GTNPIPE_CACHE or the user cache directory
    progress: bool = False

    def open(self) -> Workspace:
        """The recipe with its data loaded."""
        return Workspace.open(self.recipe, cache_dir=self.cache_dir, data_source=self.data, image_size=self.image_size,
                              skip_unreadable=self.skip_unreadable, storage=self.storage, train_device=self.train_device,
                              progress=self.progress)


@dataclass(frozen=True)
class BuildOptions:
    out: Path = Path("artifacts")  # one sub-folder per device
    teacher: Teacher | None = None  # None: the recipe's [teacher] source, else its [distill] teacher
    search: SearchConfig = field(default_factory=SearchConfig)  # --iterations and the evolution's other settings
    accuracy_samples: int | None = None  # students measured to fit the accuracy predictor (None: the recipe's)
    check_measured_budgets: bool = False  # also fail on latency/memory measured here (when this machine is the device)
    strict: bool = False  # a precision the profile allows that the toolchain failed to build fails the build
    # host: measure this machine's latency table first when the one found was measured elsewhere (None: on, unless
    # $GTNPIPE_CALIBRATE is 0)
    calibrate_host: bool | None = None
    # --budget NAME=VALUE: [budgets] fields replaced for this build (recorded in the manifest)
    budgets: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class CompileOptions:
    out: Path = Path("artifacts")
    # calibration (train split) and the accuracy check (test split): a path (image folder, .npz, fashion-mnist) or a
    # loaded Dataset; None: parity on random images, no INT8
    data: str | Dataset | None = None
    # --val-data: all of it is the validation split (accuracy-control INT8 decides on it); None: 10% of data's train
    val_data: str | Dataset | None = None
    resize: str = "crop"  # --resize: how images meet the model's H x W, crop (shorter side, centre) or stretch
    precisions: tuple[str, ...] | None = None  # a subset of the profile's (None: all it allows)
    # --input-shape: fixes a dynamic channel, height or width (gtnpipe.deploy.onnx_model.InputShape)
    input_shape: InputShape | None = None
    # the normalisation the model expects, in [0, 1] pixel units, folded into the graph (the artifact takes [0, 1])
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    cache_dir: Path | None = None
    check_measured_budgets: bool = False
    strict: bool = False
    budgets: tuple[tuple[str, float], ...] = ()  # --budget NAME=VALUE (recorded in the manifest)
