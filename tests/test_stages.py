"""Stage inputs are their cache keys: every field of every input (nested ones included) re-keys the stage, and so
do the versions of its packages and its code; comments and docstrings do not."""

from __future__ import annotations

import dataclasses
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_RECIPE

from gtnpipe.cache import Cache
from gtnpipe.config.profiles import load_profile
from gtnpipe.config.recipes import PredictorConfig, load_recipe
from gtnpipe.deploy.timing import Machine
from gtnpipe.nas.evolution import SearchConfig
from gtnpipe.space.spaces import TaskShape
from gtnpipe.stages import deploy, keys, search, training
from gtnpipe.stages.keys import Stage, stage_key
from gtnpipe.stages.workspace import DataRef, resolve, run_stage

REC, SPACE = resolve(load_recipe(TINY_RECIPE), (28, 28))
REC = dataclasses.replace(REC, gtn=dataclasses.replace(REC.gtn, teacher_init="vanilla"))  # so a pre-training phase is valid
TASK = TaskShape(1, (28, 28), 10)
# teachers on twice the students' images, so that every field of the data config has a valid neighbour
DATA = DataRef(dataclasses.replace(REC.data, teacher_train_subset=2 * REC.data.train_subset), "0" * 64)
HOST = load_profile("host")


def _examples() -> dict[type, Stage]:
    """One input of every stage, with every optional field set, so that every field can be changed."""
    vanilla = training.TrainInput(None, REC.teacher, REC.train.teacher, 0, SPACE, TASK, DATA)
    student = training.TrainInput(SPACE.smallest().id, None, REC.train.student, 0, SPACE, TASK, DATA)
    gtn = training.TeacherInput("gtn", None, REC.teacher, REC.train.teacher, REC.gtn, 0, vanilla, SPACE, TASK, DATA)
    sftn = dataclasses.replace(gtn, method="sftn", student=SPACE.smallest().id)
    distilled = training.DistillInput(SPACE.largest().id, "sftn", sftn, REC.distill, "inherited", gtn, REC.train.student,
                                      0, SPACE, TASK, DATA)
    accuracy = search.AccuracyInput(gtn, PredictorConfig(), 4242, (20, 24, 28), SPACE, TASK, DATA)
    searched = search.SearchInput(HOST, accuracy, SearchConfig(resolutions_px=(20, 24, 28)), "f" * 64,
                                  search.int8_size(HOST), SPACE, TASK)
    compiled = deploy.CompileInput(distilled, HOST.runtime, "1.32.0", "int8", 1, 1.0, 300, 1234, 500)
    measured = deploy.MeasureInput(compiled, Machine("AMD EPYC", 2, "x86_64", "Linux"), 2, 20, 200, 3)
    logits = training.LogitsInput(vanilla, DATA)
    external = training.ExternalTeacher("onnx", "e" * 64, ("layer1",), path="/data/teacher.onnx")
    checked = training.TeacherCheckInput(external, DATA)
    assert student.arch is not None
    return {type(x): x for x in (vanilla, gtn, distilled, accuracy, searched, compiled, measured, logits, checked)}


EXAMPLES = _examples()


def _changed(value: Any) -> list[Any]:
    """Values of the same kind that differ from `value` (a leaf), most plausible first."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1, value + 16]  # +16: a size field whose small values are invalid
    if isinstance(value, float):
        return [value + 0.5, value / 2]
    if isinstance(value, str):
        alternatives = {"fp32": "fp16", "int8": "fp32", "gtn": "sftn", "sftn": "gtn", "inherited": "scratch",
                        "onnxruntime": "openvino", "none": "flip", "flip": "none", "cosine": "step", "sgd": "adamw",
                        "learned": "uniform", "uniform": "learned"}
        return [alternatives.get(value, value + "x"), value + "x", value + ",!=0.0.1"]  # the last: a version range
    if isinstance(value, tuple):
        if value and isinstance(value[0], int | float) and not isinstance(value[0], bool):
            return [(value[0] + 1, *value[1:]), value[:-1], (value[0] / 2, *value[1:])]  # the last: a (low, high) range
        return [value[::-1], value[:-1], (*value, *value[:1])]
    return []


def _variants(obj: Any, path: str = "") -> list[tuple[str, Any]]:
    """(dotted field, obj with that one leaf changed) for every leaf of a dataclass tree that can be changed validly."""
    out = []
    for f in dataclasses.fields(obj):
        if not f.metadata.get("keyed", True):  # where to find it, not what it is: tested apart
            continue
        value = getattr(obj, f.name)
        where = f"{path}{f.name}"
        if dataclasses.is_dataclass(value):
            out += [(w, None if v is None else dataclasses.replace(obj, **{f.name: v}))
                    for w, v in _variants(value, where + ".")]
            continue
        for candidate in _changed(value):
            if candidate == value:
                continue
            try:
                out.append((where, dataclasses.replace(obj, **{f.name: candidate})))
                break
            except (ValueError, TypeError):
                continue
        else:
            if value is not None:
                out.append((where, None))  # no valid change found: reported by the test below
    return out


def test_every_stage_has_an_example() -> None:
    stages = {cls for module in (training, search, deploy) for cls in vars(module).values()
              if isinstance(cls, type) and issubclass(cls, Stage) and cls is not Stage}
    assert stages == set(EXAMPLES), "add an example input for each new stage to _examples()"


@pytest.mark.parametrize("cls", list(EXAMPLES), ids=lambda c: c.__name__)
def test_every_field_changes_the_key(cls: type) -> None:
    base = EXAMPLES[cls]
    key = stage_key(base)
    variants = _variants(base)
    unchangeable = [w for w, v in variants if v is None]
    assert not unchangeable, f"test cannot change {unchangeable}: extend _changed()"
    assert len(variants) >= len(dataclasses.fields(base))
    same = [w for w, v in variants if stage_key(v) == key]
    assert not same, f"{cls.__name__}: changing {same} does not change the cache key"


def test_fields_marked_not_keyed_leave_the_key_alone() -> None:
    """A teacher file's path is where to find it; its sha256 is what it is (a renamed file keeps its cache)."""
    checked = EXAMPLES[training.TeacherCheckInput]
    moved = dataclasses.replace(checked, teacher=dataclasses.replace(checked.teacher, path="/elsewhere/t.onnx"))
    assert stage_key(moved) == stage_key(checked)
    changed = dataclasses.replace(checked, teacher=dataclasses.replace(checked.teacher, sha256="f" * 64))
    assert stage_key(changed) != stage_key(checked)


def test_nested_input_kind_is_part_of_the_key() -> None:
    """A vanilla teacher and a student differ in their stage's fields; two inputs of different stages with equal
    fields must still differ, because the nested input's stage and code are in the key."""
    d = EXAMPLES[training.DistillInput]
    assert isinstance(d, training.DistillInput)
    vanilla = EXAMPLES[training.TrainInput]
    assert stage_key(training.LogitsInput(vanilla, DATA)) != stage_key(training.LogitsInput(d.init_from, DATA))


@pytest.mark.parametrize("cls", list(EXAMPLES), ids=lambda c: c.__name__)
def test_a_package_version_changes_the_key(cls: type, bump_version: Callable[[str, str], None]) -> None:
    inp = EXAMPLES[cls]
    packages = keys.stage_packages(inp)  # those its code imports, and those it names (PACKAGES)
    assert packages, f"{cls.__name__} names no package its result depends on"
    key = stage_key(inp)
    bump_version(packages[0], "999.0")
    assert stage_key(inp) != key


@pytest.fixture
def stage_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "gtnpipe_test_stage_code.py"
    path.write_text('"""Doc."""\n\ndef f(x):\n    return x + 1  # one\n')
    yield path
    sys.modules.pop("gtnpipe_test_stage_code", None)
    keys._module_digest.cache_clear()


@dataclasses.dataclass(frozen=True)
class _Toy(Stage):
    STAGE = "toy"
    CODE = ("gtnpipe_test_stage_code",)
    PACKAGES = ("numpy",)

    n: int


def _key_after(path: Path, text: str) -> str:
    path.write_text(text)
    keys._module_digest.cache_clear()
    importlib.invalidate_caches()
    return stage_key(_Toy(1))


def test_code_changes_the_key_comments_do_not(stage_module: Path) -> None:
    key = stage_key(_Toy(1))
    assert _key_after(stage_module, '"""Other doc."""\n\n\ndef f(x):\n    """Adds."""\n    return x + 1  # two\n') == key
    assert _key_after(stage_module, '"""Doc."""\n\ndef f(x):\n    return x + 2\n') != key


def test_changed_code_or_package_misses_the_cache(stage_module: Path, tmp_path: Path,
                                                   bump_version: Callable[[str, str], None]) -> None:
    cache = Cache(tmp_path / "cache")
    builds: list[int] = []

    def build(staging: Path, meta: dict[str, Any]) -> None:
        builds.append(1)
        (staging / "out.txt").write_text("x")

    assert not run_stage(cache, _Toy(1), build)[1]
    assert run_stage(cache, _Toy(1), build)[1]  # unchanged: a hit
    _key_after(stage_module, '"""Doc."""\n\ndef f(x):\n    return x * 2\n')
    assert not run_stage(cache, _Toy(1), build)[1]  # the stage's code changed: a miss
    bump_version("numpy", "0.0.1")
    assert not run_stage(cache, _Toy(1), build)[1]  # a package version changed: a miss
    assert len(builds) == 3


def test_stage_inputs_must_be_frozen() -> None:
    @dataclasses.dataclass
    class Loose(Stage):
        STAGE = "loose"
        CODE = ()
        n: int = 0

    with pytest.raises(TypeError, match="frozen dataclass"):
        stage_key(Loose())


# --- bring-your-own data: the workspace follows the data --------------------------------------------------------


def test_own_data_gets_its_space_teacher_and_a_ten_percent_val_split(tmp_path: Path) -> None:
    from conftest import make_colour_folder

    from gtnpipe.models.teacher import SPACE_TEACHERS
    from gtnpipe.stages.workspace import Workspace

    root = make_colour_folder(tmp_path / "own", classes=3, per_class=20)
    ws = Workspace.open("quick", data_source=str(root), image_size=64, cache_dir=tmp_path / "cache", progress=False)
    # quick's Fashion-MNIST settings (slices, mbv3-28, its 4-stage teacher) give way to the data's
    assert ws.space.name == ws.recipe.space == "mbv3-32"
    assert ws.teacher == SPACE_TEACHERS["mbv3-32"] == ws.recipe.teacher
    assert ws.task == TaskShape(3, (64, 64), 3)
    n_train = 3 * 16  # every 5th image per class is test
    assert (len(ws.data.train) + len(ws.data.val), len(ws.data.val), len(ws.data.test)) == (n_train, round(0.1 * n_train), 12)
    assert ws.recipe.train == load_recipe("quick").train  # the training settings stay
    # the same images at 128 px: OFA's space
    assert Workspace.open("quick", data_source=str(root), image_size=128, progress=False).space.name == "mbv3-224"


def test_teachers_may_learn_from_more_images_than_their_students(tmp_path: Path) -> None:
    """[data] teacher_train_subset: the teachers gtnpipe trains see a longer prefix of the same permutation (the
    students' images among them), with the students' normalisation; the students' data and keys stay as they were."""
    import numpy as np

    from gtnpipe.stages.workspace import Workspace

    rec = load_recipe(TINY_RECIPE)
    plain = Workspace.open(rec, cache_dir=tmp_path, progress=False)
    n = len(plain.data.train)
    wide = Workspace.open(dataclasses.replace(rec, data=dataclasses.replace(rec.data, teacher_train_subset=3 * n)),
                          cache_dir=tmp_path, progress=False)
    t_data, t_ref = wide.teacher_data
    assert len(t_data.train) == 3 * n and np.array_equal(t_data.train.y[:n], plain.data.train.y)
    assert (t_data.mean, t_data.std) == (wide.data.mean, wide.data.std)
    assert np.array_equal(t_data.val.y, plain.data.val.y) and np.array_equal(t_data.test.y, plain.data.test.y)
    assert wide.data_ref == plain.data_ref and plain.teacher_data[1] == plain.data_ref
    assert training.train_input(wide, "teacher").data == t_ref != plain.data_ref
    assert training.teacher_input(wide, "vanilla") != training.teacher_input(plain, "vanilla")
    assert training.distill_input(wide, "smallest", teacher="none") == training.distill_input(plain, "smallest", teacher="none")


def test_students_distill_from_the_vanilla_teacher_unless_told_otherwise(tmp_path: Path) -> None:
    """The KD benchmark's table put GTN-KD below vanilla KD, so vanilla is the default of every shipped recipe; a
    recipe's [distill] teacher, then its [teacher] source, then --teacher override it."""
    from gtnpipe.config.recipes import known_recipes
    from gtnpipe.stages.workspace import Workspace

    assert all(load_recipe(name).distill.teacher == "vanilla" for name in known_recipes())
    ws = Workspace.open("quick", cache_dir=tmp_path, progress=False)
    assert ws.default_teacher == "vanilla"
    assert Workspace.open(TINY_RECIPE, cache_dir=tmp_path, progress=False).default_teacher == "gtn"
    with_file = dataclasses.replace(ws, recipe=dataclasses.replace(ws.recipe, teacher=dataclasses.replace(
        ws.recipe.teacher, source="teacher.onnx")))
    assert with_file.default_teacher == "teacher.onnx"
