"""Recipes: TOML files in recipes/ (shipped inside the wheel) that fix data slicing, model sizes and training settings.

A recipe is everything that determines a trained result besides the code: it feeds the
cache keys, so editing one value retrains exactly what depends on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gtnpipe.config.resources import shipped_dir
from gtnpipe.config.toml import load_named

__all__ = [
    "DataConfig",
    "DistillConfig",
    "GTNConfig",
    "PredictorConfig",
    "Recipe",
    "TeacherConfig",
    "TrainConfig",
    "TrainSection",
    "known_recipes",
    "load_recipe",
    "recipes_dir",
]


@dataclass(frozen=True)
class DataConfig:
    source: str = "fashion-mnist"  # or a path: ImageFolder tree, IDX folder, or .npz
    # images moved from train to validation by a seeded permutation: a count (an integer, e.g. 5000) or a share of
    # the training images (a number below 1, e.g. 0.1); never more than half of them
    val_size: int | float = 0.1
    train_subset: int = 0  # 0 = every remaining training image
    test_subset: int = 0  # 0 = the whole test split
    split_seed: int = 0
    # > 0: every image resized to image_size x image_size (shorter side to image_size, then the centre square);
    # 0: the images as they are (they must then share one size)
    image_size: int = 0
    skip_unreadable: bool = False  # image files Pillow cannot decode: skipped and counted (true) or an error (false)
    # > 0: the teachers gtnpipe trains (vanilla, GTN, SFTN) learn from this many training images while students train
    # on train_subset; both are prefixes of one permutation, so the students' images are among the teacher's (a
    # teacher trained on more data than its students: a capacity gap). 0: teachers and students see the same images
    teacher_train_subset: int = 0

    def __post_init__(self) -> None:
        for name in ("train_subset", "test_subset", "image_size", "teacher_train_subset"):
            if getattr(self, name) < 0:
                raise ValueError(f"'{name}' must be >= 0 (0 means all), got {getattr(self, name)}")
        if isinstance(self.val_size, float) and not (0 <= self.val_size <= 0.5):
            raise ValueError(f"'val_size' = {self.val_size}: a share of the training images must be in [0, 0.5] "
                             "(or give a count of images as an integer)")
        if isinstance(self.val_size, int) and self.val_size < 0:
            raise ValueError(f"'val_size' must be >= 0, got {self.val_size}")
        if self.teacher_train_subset and self.train_subset and self.teacher_train_subset < self.train_subset:
            raise ValueError(f"'teacher_train_subset' = {self.teacher_train_subset} is below train_subset = "
                             f"{self.train_subset}: the teacher's images must include the students' (raise it, or 0: "
                             "the same images)")
        if self.teacher_train_subset and not self.train_subset:
            raise ValueError("'teacher_train_subset' needs a train_subset for the students (with train_subset = 0 they "
                             "already see every training image)")
        if 0 < self.image_size < 8:
            raise ValueError(f"'image_size' = {self.image_size} is too small; give 8 px or more (0: keep the images' size)")


@dataclass(frozen=True)
class TeacherConfig:
    """ResNet-like teacher: one stage per supernet stage, at the same strides."""

    stem_width: int = 32
    widths: tuple[int, ...] = (64, 128, 192, 256)
    blocks: tuple[int, ...] = (2, 2, 2, 1)
    # a teacher file students distill from (vanilla KD) when the command names no --teacher: .onnx, torch.export
    # .pt2 or TorchScript .pt/.ts (float32 NCHW [0, 1] images in, logits out); a path relative to where gtnpipe runs.
    # The shape fields above stay the shape of the teachers gtnpipe trains (the generic teacher search needs); with
    # `source` alone they are the space's own. Not part of any trained teacher's key (its content's sha256 keys it).
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.widths) != len(self.blocks):
            raise ValueError(f"'widths' and 'blocks' must have one entry per stage, got {self.widths} and {self.blocks}")
        if min((self.stem_width, *self.widths, *self.blocks)) < 1:
            raise ValueError("'stem_width', 'widths' and 'blocks' must all be >= 1")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int = 128
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1  # peak learning rate, reached after warmup, then cosine to zero
    momentum: float = 0.9  # sgd only
    nesterov: bool = True  # sgd only
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    warmup_epochs: float = 0.0
    # crop-flip: pad by crop_padding_px, random crop, flip (small images); resized-crop: a random box of
    # resized_crop_scale of the area and resized_crop_ratio aspect, resized back, flipped (photos: torchvision's
    # RandomResizedCrop); gtnpipe.training.augment
    augment: Literal["none", "crop-flip", "resized-crop"] = "crop-flip"
    crop_padding_px: int = 2
    resized_crop_scale: tuple[float, float] = (0.35, 1.0)  # share of the image's area (ImageNet recipes: 0.08-1)
    resized_crop_ratio: tuple[float, float] = (0.75, 4 / 3)  # width / height of the box
    color_jitter: float = 0.0  # > 0: brightness, contrast and saturation factors drawn from [1 - s, 1 + s]
    eval_batch_size: int = 100  # val images per forward pass: on a 2-core CPU 1000 at once ran 1.8x slower than 64
    # > 0: after the last epoch, every BatchNorm's running statistics recomputed as the plain average over this many
    # training images (PreciseBN, Wu & Johnson 2021). A short schedule leaves statistics of early weights in the
    # running averages: a 64-px student trained 45 steps scored 39% test top-1 before, 72% after (3 classes).
    precise_bn_images: int = 0

    def __post_init__(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                    "eval_batch_size": self.eval_batch_size}
        for name, value in positive.items():
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"'{name}' must be > 0, got {value}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"'label_smoothing' must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"'warmup_epochs' must be in [0, epochs={self.epochs}), got {self.warmup_epochs}")
        lo, hi = self.resized_crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"'resized_crop_scale' must be two shares 0 < low <= high <= 1, got {list(self.resized_crop_scale)}")
        lo, hi = self.resized_crop_ratio
        if not 0 < lo <= hi:
            raise ValueError(f"'resized_crop_ratio' must be two aspect ratios 0 < low <= high, "
                             f"got {list(self.resized_crop_ratio)}")
        if not 0 <= self.color_jitter < 1:
            raise ValueError(f"'color_jitter' must be in [0, 1), got {self.color_jitter}")
        if self.precise_bn_images < 0:
            raise ValueError(f"'precise_bn_images' must be >= 0 (0: off), got {self.precise_bn_images}")
        for name in ("weight_decay", "momentum", "crop_padding_px", "warmup_epochs", "label_smoothing"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"'{name}' must be a finite number >= 0, got {value}")

    @property
    def augments(self) -> bool:
        """Whether the images change from epoch to epoch (a teacher's logits cannot then be computed once)."""
        return self.augment != "none" or self.color_jitter > 0


@dataclass(frozen=True)
class GTNConfig:
    """Generic-teacher training (DESIGN.md): loss weights, branches per step, the arch sampler."""

    lambda_kl: float = 1.0  # weight of mean tau^2 KL(teacher || branch)
    lambda_ce: float = 1.0  # weight of mean CE(branch)
    temperature: float = 4.0
    archs_per_step: int = 3  # student branches per step
    include_extremes: bool = True  # the largest and smallest students are two of them
    branch_points: tuple[int, ...] = (0, 1, 2, 3)  # i: teacher stages 1..i, adapter, student stages i+1..K
    sampler_lr: float = 0.05  # REINFORCE step on the sampling distribution's logits
    entropy_bonus: float = 0.02  # keeps the whole pool covered
    baseline_momentum: float = 0.9  # EMA of rewards, subtracted to reduce variance
    branch_batch_fraction: float = 1.0  # share of each batch the branches see (the teacher sees all): cost knob
    # true (SFTN): branch losses also train the teacher's stages 1..i through the adapters;
    # false: teacher features enter branches detached, the teacher is shaped only by the KL on its logits
    branch_grad_into_teacher: bool = True
    # where the teacher starts. "scratch": teacher and branches train together for train.teacher's epochs.
    # "vanilla": from the recipe's cached vanilla (CE-only) teacher, fine-tuned with the branches for
    # finetune_epochs (train.teacher's other settings); the teacher's learning rate is scaled by
    # teacher_lr_scale, the new adapters and supernet weights get the full one. The cost is the vanilla
    # teacher's plus the fine-tuning's (both are reported).
    teacher_init: Literal["scratch", "vanilla"] = "scratch"
    finetune_epochs: int = 3
    teacher_lr_scale: float = 1.0
    # > 0 (teacher_init = "vanilla"): a first phase of this many epochs in which the teacher is frozen (eval mode, no
    # gradient) and only the supernet and adapters train, on the branch loss alone (lambda_kl KD from the teacher +
    # lambda_ce CE), so the branches are real students before their KL term starts pulling the teacher
    branch_pretrain_epochs: int = 0
    # which pool students the non-extreme branches are: "uniform" (the sandwich rule of OFA/BigNAS with
    # include_extremes: largest, smallest and uniformly random archs), or "learned": a distribution moved by REINFORCE
    # towards the archs whose branch KL is highest (the students the teacher serves worst), plus an entropy bonus
    sampler: Literal["uniform", "learned"] = "learned"
    # > 0: after the teacher's training, a last phase of this many epochs trains the supernet alone, as whole
    # students, by OFA/BigNAS's sandwich rule: every step the largest, the smallest and archs_per_step - 2 uniformly
    # random students, each on the whole batch, distilled in place from the frozen trained teacher (lambda_kl KD +
    # lambda_ce CE). Search's inherited-weight accuracies come from this supernet; the teacher is unchanged by it.
    # Cost: archs_per_step student steps per batch (the largest student's alone is ~2x the teacher's).
    supernet_epochs: int = 0
    # false: that phase trains archs_per_step uniformly random students per step and no extremes (the sandwich rule's
    # extremes train every step, so their inherited accuracy overstates them against the students in between)
    supernet_sandwich: bool = True

    def __post_init__(self) -> None:
        for name in ("lambda_kl", "lambda_ce", "sampler_lr", "entropy_bonus"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"'{name}' must be a finite number >= 0, got {getattr(self, name)}")
        if not self.temperature > 0:
            raise ValueError(f"'temperature' must be > 0, got {self.temperature}")
        if self.archs_per_step < (3 if self.include_extremes else 1):
            raise ValueError(f"'archs_per_step' must be >= {3 if self.include_extremes else 1} "
                             f"(include_extremes = {str(self.include_extremes).lower()}), got {self.archs_per_step}")
        if not self.branch_points or len(set(self.branch_points)) != len(self.branch_points) or min(self.branch_points) < 0:
            raise ValueError(f"'branch_points' must be distinct stage indices >= 0, got {list(self.branch_points)}")
        if not 0 <= self.baseline_momentum < 1:
            raise ValueError(f"'baseline_momentum' must be in [0, 1), got {self.baseline_momentum}")
        if self.supernet_epochs < 0:
            raise ValueError(f"'supernet_epochs' must be >= 0, got {self.supernet_epochs}")
        if not 0 < self.branch_batch_fraction <= 1:
            raise ValueError(f"'branch_batch_fraction' must be in (0, 1], got {self.branch_batch_fraction}")
        if not self.finetune_epochs >= 1:
            raise ValueError(f"'finetune_epochs' must be >= 1, got {self.finetune_epochs}")
        if not (math.isfinite(self.teacher_lr_scale) and self.teacher_lr_scale > 0):
            raise ValueError(f"'teacher_lr_scale' must be a finite number > 0, got {self.teacher_lr_scale}")
        if self.branch_pretrain_epochs < 0:
            raise ValueError(f"'branch_pretrain_epochs' must be >= 0 (0: no pre-training phase), got "
                             f"{self.branch_pretrain_epochs}")
        if self.branch_pretrain_epochs and self.teacher_init == "scratch":
            raise ValueError("'branch_pretrain_epochs' > 0 distils the branches from a trained teacher: it needs "
                             "teacher_init = \"vanilla\" (with teacher_init = \"scratch\" there is no teacher to learn from)")
        if self.sampler not in ("uniform", "learned"):
            raise ValueError(f"'sampler' must be \"uniform\" or \"learned\", got {self.sampler!r}")


@dataclass(frozen=True)
class DistillConfig:
    """Hinton KD of a student: (1 - alpha) CE + alpha tau^2 KL(teacher || student)."""

    alpha: float = 0.9
    temperature: float = 4.0
    init: Literal["scratch", "inherited"] = "scratch"  # inherited: weights from the GTN run's supernet
    # > 0: scale every teacher's logits so their mean per-image standard deviation on the train split is this
    # value (a per-teacher temperature: teachers are compared by the shape of their targets, not their scale);
    # 0: the logits as the teacher gives them
    teacher_logit_std: float = 0.0
    # the teacher students distill from when a command names no --teacher and [teacher] has no source. "vanilla"
    # (CE only) by default: the KD benchmark's table (README, "Distillation benchmark") has GTN-KD below vanilla KD;
    # "gtn" or "none" (labels only). Not part of a student's key: the student's own teacher is
    teacher: Literal["vanilla", "gtn", "none"] = field(default="vanilla", metadata={"keyed": False})

    def __post_init__(self) -> None:
        if self.teacher not in ("vanilla", "gtn", "none"):
            raise ValueError(f"'teacher' must be \"vanilla\", \"gtn\" or \"none\" (a file: [teacher] source), got "
                             f"{self.teacher!r}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"'alpha' must be in [0, 1], got {self.alpha}")
        if not (math.isfinite(self.teacher_logit_std) and self.teacher_logit_std >= 0):
            raise ValueError(f"'teacher_logit_std' must be a finite number >= 0, got {self.teacher_logit_std}")
        if not self.temperature > 0:
            raise ValueError(f"'temperature' must be > 0, got {self.temperature}")


@dataclass(frozen=True)
class PredictorConfig:
    """Search's accuracy predictor: students measured with the GTN supernet's inherited weights, then a ridge fit."""

    samples: int = 150  # students measured (the smallest and the largest among them)
    bn_images: int = 512  # train images that recalibrate each student's BatchNorm statistics before it is evaluated
    eval_batch_size: int = 100  # val images per forward pass (smaller batches run faster on a CPU: 1000 took 1.8x 64)

    def __post_init__(self) -> None:
        if self.samples < 10:
            raise ValueError(f"'samples' must be >= 10 (the ridge fit has one weight per arch feature), got {self.samples}")
        for name in ("bn_images", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"'{name}' must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class TrainSection:
    teacher: TrainConfig
    student: TrainConfig


@dataclass(frozen=True)
class Recipe:
    name: str
    train: TrainSection
    description: str = ""
    seed: int = 0
    # a name in gtnpipe.space.spaces.SPACES, or "auto": the space built for the data's resolution (space_for)
    space: str = "auto"
    # elastic input resolution (Once-for-All's): the square input sides, in px, search may give a student, each at
    # most the data's shorter side (a student at 160 px sees the images resized to 160 x 160; the artifact's input
    # is 160 x 160); [] = every student runs at the data's resolution
    resolutions_px: tuple[int, ...] = ()
    data: DataConfig = DataConfig()
    teacher: TeacherConfig | None = None  # None: the space's own teacher (gtnpipe.models.teacher.SPACE_TEACHERS)
    gtn: GTNConfig = GTNConfig()
    distill: DistillConfig = DistillConfig()
    predictor: PredictorConfig = PredictorConfig()


def recipes_dir() -> Path:
    """The shipped recipes' folder: `recipes/` of the checkout, packaged in the wheel (gtnpipe.config.resources)."""
    return shipped_dir("recipes")


def known_recipes() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.toml"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A recipe by name (recipes/<name>.toml) or by path to a TOML file of the same form."""
    return load_named(Recipe, name_or_path, recipes_dir(), kind="recipe")
