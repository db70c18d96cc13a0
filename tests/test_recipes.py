"""gtnpipe.config.recipes and the strict TOML loading behind it: shipped recipes load, bad ones say exactly what is wrong."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any, get_args, get_type_hints

import pytest

from gtnpipe.config.recipes import (
    DataConfig,
    Recipe,
    TeacherConfig,
    TrainConfig,
    known_recipes,
    load_recipe,
    recipes_dir,
)
from gtnpipe.errors import ConfigError
from gtnpipe.models.teacher import SPACE_TEACHERS, teacher_for
from gtnpipe.space.spaces import AUTO, SPACES, space_for

TINY = Path(__file__).parent / "data" / "tiny.toml"

TRAIN_KEYS = (
    "augment, batch_size, color_jitter, crop_padding_px, epochs, eval_batch_size, label_smoothing, lr, momentum, "
    "nesterov, optimizer, precise_bn_images, resized_crop_ratio, resized_crop_scale, warmup_epochs, weight_decay"
)
TOP_KEYS = "data, description, distill, gtn, name, predictor, resolutions_px, seed, space, teacher, train"

VALID_TRAIN = """
[train.teacher]
epochs = 4

[train.student]
epochs = 4
"""


def write_recipe(tmp_path: Path, body: str, *, name: str = "bad", stem: str | None = None) -> Path:
    """A recipe file `<stem>.toml` whose `name` is `name`, followed by `body`."""
    path = tmp_path / f"{stem or name}.toml"
    path.write_text(f'name = "{name}"\n{body}')
    return path


# --- shipped recipes --------------------------------------------------------------------------------


def test_known_recipes_lists_the_shipped_files() -> None:
    names = known_recipes()
    assert "quick" in names and "default" in names
    assert names == sorted(names)
    assert names == sorted(p.stem for p in recipes_dir().glob("*.toml"))
    assert recipes_dir() == Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize("name", known_recipes())
def test_shipped_recipe_loads(name: str) -> None:
    recipe = load_recipe(name)
    assert isinstance(recipe, Recipe)
    assert recipe.name == name
    # what loading alone does not check: the recipe names a registered space, and its teacher has a stage for each
    # of the space's stages (build_teacher refuses it otherwise, after the data is loaded)
    assert recipe.space in SPACES or recipe.space == AUTO
    space = space_for((28, 28)) if recipe.space == AUTO else SPACES[recipe.space]  # every shipped recipe: Fashion-MNIST
    assert len(teacher_for(space, recipe.teacher).widths) == space.num_stages
    # By name, by str path and by Path: the same recipe.
    path = recipes_dir() / f"{name}.toml"
    with open(path, "rb") as handle:
        assert recipe == _expected_from_raw(Recipe, tomllib.load(handle))
    assert load_recipe(path) == recipe
    assert load_recipe(str(path)) == recipe


def test_quick_recipe_values() -> None:
    r = load_recipe("quick")
    # A slice of Fashion-MNIST: a train subset, smaller than the full 55k.
    assert r.data.source == "fashion-mnist"
    assert 0 < r.data.train_subset < 55000
    assert r.data.val_size > 0
    assert r.train.teacher.epochs <= load_recipe("default").train.teacher.epochs
    assert isinstance(r.train.teacher.warmup_epochs, float)
    # the demo's budget: fewer students measured for the accuracy predictor than the default recipe's
    assert r.predictor.samples < load_recipe("default").predictor.samples


def test_default_recipe_uses_full_dataset() -> None:
    r = load_recipe("default")
    assert r.data == DataConfig(source="fashion-mnist", val_size=5000, train_subset=0, test_subset=0, split_seed=0)
    assert (r.train.teacher.epochs, r.train.student.epochs) == (12, 12)
    # An int in TOML for a float field becomes a float.
    assert r.train.teacher.warmup_epochs == 1.0 and isinstance(r.train.teacher.warmup_epochs, float)
    assert r.train.teacher.weight_decay == pytest.approx(5e-4)
    assert r.train.teacher.augment == "crop-flip"


def _expected_from_raw(cls: type, raw: dict[str, Any]) -> Any:
    """The dataclass a raw TOML table should give: its values (lists as tuples, tables recursed), else defaults."""
    hints = get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        value = raw[f.name]
        hint = next((a for a in get_args(hints[f.name]) if dataclasses.is_dataclass(a)), hints[f.name])  # X | None
        if dataclasses.is_dataclass(hint):
            value = _expected_from_raw(hint, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def test_tiny_recipe_by_path() -> None:
    with open(TINY, "rb") as handle:
        raw = tomllib.load(handle)
    r = load_recipe(TINY)
    assert r.name == "tiny"
    assert r == _expected_from_raw(Recipe, raw)
    # Keys the file leaves out come from the dataclass defaults.
    assert r.space == raw.get("space", AUTO)
    assert r.data.source == raw["data"].get("source", "fashion-mnist")
    assert r.train.teacher.optimizer == raw["train"]["teacher"].get("optimizer", "sgd")
    assert r.train.teacher.epochs == raw["train"]["teacher"]["epochs"] > 0
    # A few hundred images and a narrow teacher: what the tests rely on.
    assert 0 < r.data.train_subset <= 1024
    assert r.teacher is not None and max(r.teacher.widths) <= 64
    assert load_recipe(str(TINY)) == r


def test_minimal_recipe(tmp_path: Path) -> None:
    r = load_recipe(write_recipe(tmp_path, VALID_TRAIN, name="minimal"))
    assert r.name == "minimal"
    assert r.data == DataConfig()
    assert r.teacher is None and r.space == AUTO  # the data's space, and that space's own teacher
    assert r.train.teacher == r.train.student == TrainConfig(epochs=4)


def test_optional_values_round_trip(tmp_path: Path) -> None:
    body = """
space = "other"
seed = 7
[data]
source = "/some/folder"
split_seed = 3
[teacher]
widths = [8, 16]
blocks = [1, 3]
[train.teacher]
epochs = 10
optimizer = "adamw"
lr = 1
warmup_epochs = 9.5
augment = "none"
nesterov = false
[train.student]
epochs = 1
label_smoothing = 0
"""
    r = load_recipe(write_recipe(tmp_path, body, name="custom"))
    assert (r.space, r.seed) == ("other", 7)
    assert (r.data.source, r.data.split_seed) == ("/some/folder", 3)
    assert (r.teacher.widths, r.teacher.blocks) == ((8, 16), (1, 3))
    t = r.train.teacher
    assert (t.optimizer, t.augment, t.nesterov, t.warmup_epochs) == ("adamw", "none", False, 9.5)
    assert t.lr == 1.0 and isinstance(t.lr, float)
    assert r.train.student.label_smoothing == 0.0


# --- invalid recipes ---------------------------------------------------------------------------------

INVALID = {
    "unknown top-level key": (
        'colour = "red"\n' + VALID_TRAIN,
        ["unknown key 'colour'", f"allowed keys: {TOP_KEYS}"],
    ),
    "typo in nested key": (
        "[train.teacher]\nepoch = 4\n[train.student]\nepochs = 4\n",
        ["unknown key 'train.teacher.epoch'", f"allowed keys in [train.teacher]: {TRAIN_KEYS}"],
    ),
    "unknown key in data": (
        "[data]\nval = 3\n" + VALID_TRAIN,
        ["unknown key 'data.val'", "allowed keys in [data]: image_size, skip_unreadable, source, split_seed, "
                                   "teacher_train_subset, test_subset, train_subset, val_size"],
    ),
    "string for int": (
        '[train.teacher]\nepochs = "ten"\n[train.student]\nepochs = 4\n',
        ["'train.teacher.epochs' must be int, got str 'ten'"],
    ),
    "bool for int": (
        "[train.teacher]\nepochs = 4\n[train.student]\nepochs = true\n",
        ["'train.student.epochs' must be int, got bool True"],
    ),
    "float for int": (
        "seed = 1.5\n" + VALID_TRAIN,
        ["'seed' must be int, got float 1.5"],
    ),
    "string for float": (
        '[train.teacher]\nepochs = 4\nlr = "fast"\n[train.student]\nepochs = 4\n',
        ["'train.teacher.lr' must be a number, got 'fast'"],
    ),
    "bool for float": (
        "[train.teacher]\nepochs = 4\nweight_decay = false\n[train.student]\nepochs = 4\n",
        ["'train.teacher.weight_decay' must be a number, got False"],
    ),
    "int for bool": (
        "[train.teacher]\nepochs = 4\nnesterov = 1\n[train.student]\nepochs = 4\n",
        ["'train.teacher.nesterov' must be bool, got int 1"],
    ),
    "unknown optimizer": (
        '[train.teacher]\nepochs = 4\n[train.student]\nepochs = 4\noptimizer = "rmsprop"\n',
        ["'train.student.optimizer' = 'rmsprop' is not allowed", "allowed values: 'sgd', 'adamw'"],
    ),
    "unknown augment": (
        '[train.teacher]\nepochs = 4\naugment = "mixup"\n[train.student]\nepochs = 4\n',
        ["'train.teacher.augment' = 'mixup' is not allowed", "allowed values: 'none', 'crop-flip'"],
    ),
    "missing train": (
        "[data]\nval_size = 10\n",
        ["missing required key 'train'"],
    ),
    "missing student": (
        "[train.teacher]\nepochs = 4\n",
        ["missing required key 'train.student'"],
    ),
    "missing epochs": (
        "[train.teacher]\nepochs = 4\n[train.student]\nlr = 0.1\n",
        ["missing required key 'train.student.epochs'"],
    ),
    "train not a table": (
        "train = 3\n",
        ["[train] must be a table, got 3"],
    ),
    "negative lr": (
        "[train.teacher]\nepochs = 4\nlr = -0.1\n[train.student]\nepochs = 4\n",
        ["[train.teacher] 'lr' must be > 0, got -0.1"],
    ),
    "nan lr": (
        "[train.teacher]\nepochs = 4\n[train.student]\nepochs = 4\nlr = nan\n",
        ["[train.student] 'lr' must be > 0, got nan"],
    ),
    "zero epochs": (
        "[train.teacher]\nepochs = 0\n[train.student]\nepochs = 4\n",
        ["[train.teacher] 'epochs' must be > 0, got 0"],
    ),
    "label smoothing 1": (
        "[train.teacher]\nepochs = 4\n[train.student]\nepochs = 4\nlabel_smoothing = 1.0\n",
        ["[train.student] 'label_smoothing' must be in [0, 1), got 1.0"],
    ),
    "warmup equals epochs": (
        "[train.teacher]\nepochs = 4\nwarmup_epochs = 4\n[train.student]\nepochs = 4\n",
        ["[train.teacher] 'warmup_epochs' must be in [0, epochs=4), got 4.0"],
    ),
    "warmup above epochs": (
        "[train.teacher]\nepochs = 4\n[train.student]\nepochs = 2\nwarmup_epochs = 3.5\n",
        ["[train.student] 'warmup_epochs' must be in [0, epochs=2), got 3.5"],
    ),
    "negative weight decay": (
        "[train.teacher]\nepochs = 4\nweight_decay = -1e-4\n[train.student]\nepochs = 4\n",
        ["[train.teacher] 'weight_decay' must be a finite number >= 0, got -0.0001"],
    ),
    "negative val_size": (
        "[data]\nval_size = -1\n" + VALID_TRAIN,
        ["[data] 'val_size' must be >= 0, got -1"],
    ),
    "teacher sees fewer images than the students": (
        "[data]\ntrain_subset = 4000\nteacher_train_subset = 3000\n" + VALID_TRAIN,
        ["[data] 'teacher_train_subset' = 3000 is below train_subset = 4000"],
    ),
    "gtn pre-training without a trained teacher": (
        "[gtn]\nbranch_pretrain_epochs = 2\n" + VALID_TRAIN,
        ["[gtn] 'branch_pretrain_epochs' > 0 distils the branches from a trained teacher",
         "teacher_init = \"vanilla\""],
    ),
    "unknown gtn sampler": (
        '[gtn]\nsampler = "greedy"\n' + VALID_TRAIN,
        ["gtn.sampler"],
    ),
    "widths and blocks differ in length": (
        "[teacher]\nwidths = [64, 128]\nblocks = [2, 2, 2]\n" + VALID_TRAIN,
        ["[teacher] 'widths' and 'blocks' must have one entry per stage, got (64, 128) and (2, 2, 2)"],
    ),
    "zero width": (
        "[teacher]\nwidths = [64, 0]\nblocks = [2, 2]\n" + VALID_TRAIN,
        ["[teacher] 'stem_width', 'widths' and 'blocks' must all be >= 1"],
    ),
    "widths not a list": (
        "[teacher]\nwidths = 64\n" + VALID_TRAIN,
        ["'teacher.widths' must be a list, got 64"],
    ),
    "bad list item": (
        '[teacher]\nwidths = [64, "x", 192, 256]\n' + VALID_TRAIN,
        ["'teacher.widths[1]' must be int, got str 'x'"],
    ),
    "too few predictor samples": (
        "[predictor]\nsamples = 5\n" + VALID_TRAIN,
        ["[predictor] 'samples' must be >= 10 (the ridge fit has one weight per arch feature), got 5"],
    ),
    "zero bn images": (
        "[predictor]\nbn_images = 0\n" + VALID_TRAIN,
        ["[predictor] 'bn_images' must be >= 1, got 0"],
    ),
    "unknown predictor key": (
        "[predictor]\nstudents = 60\n" + VALID_TRAIN,
        ["unknown key 'predictor.students'", "allowed keys in [predictor]: bn_images, eval_batch_size, samples"],
    ),
    "invalid TOML": (
        "[train.teacher\nepochs = 4\n",
        ["not valid TOML", "line 2"],
    ),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_recipe(tmp_path: Path, case: str) -> None:
    body, expected = INVALID[case]
    path = write_recipe(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ")
    for text in expected:
        assert text in msg


def test_name_must_match_file_stem(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, VALID_TRAIN, name="fast", stem="slow")
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert str(info.value) == f"{path}: 'name' = 'fast' must equal the file name 'slow'"


def test_missing_name(tmp_path: Path) -> None:
    path = tmp_path / "nameless.toml"
    path.write_text(VALID_TRAIN)
    with pytest.raises(ConfigError, match="missing required key 'name'"):
        load_recipe(path)


def test_unknown_recipe_name_lists_known() -> None:
    with pytest.raises(ConfigError) as info:
        load_recipe("no-such-recipe")
    msg = str(info.value)
    assert "unknown recipe 'no-such-recipe'" in msg
    assert f"known recipes: {', '.join(known_recipes())}" in msg
    assert "default" in msg and "quick" in msg
    assert "path to a .toml file" in msg


def test_missing_toml_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert str(info.value) == f"{path}: file not found"


@pytest.mark.parametrize("field", ["weight_decay", "momentum"])
def test_non_finite_decay_and_momentum_rejected(tmp_path: Path, field: str) -> None:
    path = write_recipe(tmp_path, f"[train.teacher]\nepochs = 4\n{field} = nan\n[train.student]\nepochs = 4\n")
    with pytest.raises(ConfigError, match=field):
        load_recipe(path)


# --- [data] for bring-your-own images, the space and teacher that follow the data ------------------------------------


def test_val_size_is_a_count_or_a_share(tmp_path: Path) -> None:
    count = load_recipe(write_recipe(tmp_path, "[data]\nval_size = 500\n" + VALID_TRAIN, name="count"))
    share = load_recipe(write_recipe(tmp_path, "[data]\nval_size = 0.2\nimage_size = 64\n" + VALID_TRAIN, name="share"))
    assert count.data.val_size == 500 and isinstance(count.data.val_size, int)
    assert share.data.val_size == 0.2 and share.data.image_size == 64
    assert DataConfig().val_size == 0.1  # bring-your-own data: 10%
    for bad, message in (("0.7", r"\[data\] 'val_size' = 0.7: a share .* must be in \[0, 0.5\]"),
                         ('"ten"', r"'data.val_size' must be a number"), ("-3", r"'val_size' must be >= 0")):
        with pytest.raises(ConfigError, match=message):
            load_recipe(write_recipe(tmp_path, f"[data]\nval_size = {bad}\n" + VALID_TRAIN, name="bad"))
    with pytest.raises(ConfigError, match=r"'image_size' = 4 is too small"):
        load_recipe(write_recipe(tmp_path, "[data]\nimage_size = 4\n" + VALID_TRAIN, name="bad"))


@pytest.mark.parametrize("name", sorted(SPACES))
def test_every_space_has_a_teacher_with_one_stage_per_student_stage(name: str) -> None:
    assert len(SPACE_TEACHERS[name].widths) == len(SPACE_TEACHERS[name].blocks) == SPACES[name].num_stages
    assert teacher_for(SPACES[name]) == SPACE_TEACHERS[name]
    own = TeacherConfig(stem_width=8, widths=(8,) * SPACES[name].num_stages, blocks=(1,) * SPACES[name].num_stages)
    assert teacher_for(SPACES[name], own) == own  # a recipe's [teacher] wins
