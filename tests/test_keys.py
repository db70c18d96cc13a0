"""A stage's key covers the code it runs (issue 29): the gtnpipe modules reachable by import from its roots, read
from their import statements, and the distributions they import; not the code of other stages or other backends."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import HANG_TIMEOUT_S, TINY_RECIPE
from test_stages import EXAMPLES

from gtnpipe.stages import keys, search, training
from gtnpipe.stages.keys import Stage, module_closure, stage_code, stage_key, stage_packages

ROOT = Path(__file__).resolve().parents[1]
TRAINING_STAGES = (training.TrainInput, training.TeacherInput, training.DistillInput)
EXTERNAL_STAGES = (training.DistillInput, training.LogitsInput, training.TeacherCheckInput)


def _edited(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    """Pretend `module`'s code changed: its digest (the per-module fingerprint) differs."""
    real = keys._module_digest
    monkeypatch.setattr(keys, "_module_digest", lambda m: "edited" if m == module else real(m))


# --- what re-keys a stage -----------------------------------------------------------------------------------------

DATA_CODE = ("gtnpipe.training.augment", "gtnpipe.training.loader", "gtnpipe.data.images", "gtnpipe.data.datasets",
             "gtnpipe.stages.workspace")


@pytest.mark.parametrize("module", DATA_CODE)
@pytest.mark.parametrize("cls", [*TRAINING_STAGES, search.AccuracyInput], ids=lambda c: c.__name__)
def test_an_edit_to_augmentation_loading_or_decoding_re_keys_training(cls: type, module: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    inp = EXAMPLES[cls]
    key = stage_key(inp)
    _edited(monkeypatch, module)
    assert stage_key(inp) != key, f"an edit to {module} leaves {cls.__name__}'s key as it was"
    assert module in stage_code(inp)


@pytest.mark.parametrize("cls", EXTERNAL_STAGES, ids=lambda c: c.__name__)
def test_a_teacher_from_outside_is_keyed_by_the_code_that_runs_it(cls: type, monkeypatch: pytest.MonkeyPatch) -> None:
    inp = EXAMPLES[cls]
    key = stage_key(inp)
    _edited(monkeypatch, "gtnpipe.models.external")
    assert stage_key(inp) != key


def test_a_user_module_teacher_is_keyed_by_external_py() -> None:
    """A GTN fine-tuned user module (TeacherInput with an ExternalTeacher) runs through gtnpipe.models.external."""
    gtn = EXAMPLES[training.TeacherInput]
    assert isinstance(gtn, training.TeacherInput)
    external = training.ExternalTeacher("module", "d" * 64, ("layer1",))
    assert "gtnpipe.models.external" in stage_code(dataclasses.replace(gtn, teacher=external, init_from=None))


@pytest.mark.parametrize("cls", [c for c in EXAMPLES if c.__module__ == training.__name__], ids=lambda c: c.__name__)
def test_an_edit_to_the_stage_function_re_keys_its_stage(cls: type, monkeypatch: pytest.MonkeyPatch) -> None:
    """train_model, distill_student, ...: the module that defines a stage's input holds its function."""
    inp = EXAMPLES[cls]
    key = stage_key(inp)
    _edited(monkeypatch, "gtnpipe.stages.training")
    assert stage_key(inp) != key


@pytest.mark.parametrize("module", ["gtnpipe.training.distill", "gtnpipe.training.gtn", "gtnpipe.models.external",
                                    "gtnpipe.models.supernet", "gtnpipe.nas.accuracy",
                                    "gtnpipe.deploy.backends.tensorrt", "gtnpipe.stages.deploy",
                                    "gtnpipe.progress", "gtnpipe.stages.keys", "gtnpipe.cache"])
def test_code_a_plain_training_run_does_not_run_leaves_its_key(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over-keying: a teacher or student trained with plain CE does not re-train for an edit to distillation, GTN,
    the supernet, a teacher from outside, the search, a backend, progress display, the cache or the keys."""
    inp = EXAMPLES[training.TrainInput]
    key = stage_key(inp)
    assert module not in stage_code(inp)
    _edited(monkeypatch, module)
    assert stage_key(inp) == key


@pytest.mark.parametrize("cls", [*EXAMPLES], ids=lambda c: c.__name__)
def test_no_stage_is_keyed_on_the_cli_progress_cache_or_keys(cls: type) -> None:
    code = stage_code(EXAMPLES[cls])
    assert not [m for m in code if keys._excluded(m)]
    assert "gtnpipe" in code  # the package's __init__ runs before any of its modules


# --- packages -----------------------------------------------------------------------------------------------------

EXPECTED_PACKAGES = {
    training.TrainInput: {"torch", "numpy", "pillow"},  # pillow: data/images.py decodes and resizes image folders
    training.TeacherInput: {"torch", "numpy", "pillow"},
    training.DistillInput: {"torch", "numpy", "pillow", "onnxruntime"},  # an ONNX teacher runs every batch
    training.LogitsInput: {"torch", "numpy", "pillow", "onnxruntime"},
    training.TeacherCheckInput: {"torch", "numpy", "pillow", "onnxruntime"},
    search.AccuracyInput: {"torch", "numpy", "pillow"},
    search.SearchInput: {"numpy", "matplotlib"},  # matplotlib draws the Pareto plot its entry holds
}


@pytest.mark.parametrize("cls", list(EXPECTED_PACKAGES), ids=lambda c: c.__name__)
def test_the_packages_a_stage_runs_are_in_its_key(cls: type, bump_version: Callable[[str, str], None]) -> None:
    inp = EXAMPLES[cls]
    assert EXPECTED_PACKAGES[cls] <= set(stage_packages(inp))
    for name in sorted(EXPECTED_PACKAGES[cls]):
        key = stage_key(inp)
        bump_version(name, "999.0")
        assert stage_key(inp) != key, f"{cls.__name__}: {name}'s version is not in its key"


def test_packages_are_the_closures_third_party_imports() -> None:
    """Read from the import statements: models/external.py's function-level `import onnxruntime`, data/images.py's
    `from PIL import Image` (distribution "pillow"); the standard library, gtnpipe and display-only packages not."""
    assert keys.closure_packages(("gtnpipe.models.external",)) == ("numpy", "onnxruntime", "torch")
    assert keys.closure_packages(("gtnpipe.data.images",)) == ("numpy", "pillow")
    assert "rich" not in keys.closure_packages(module_closure(("gtnpipe.training.train",)))


# --- the closure ----------------------------------------------------------------------------------------------------

def test_the_closure_reads_every_kind_of_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Function-level and relative imports, `from package import submodule`, packages' __init__; not imports under
    `if TYPE_CHECKING:` (annotations only), and not the excluded modules."""
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "gtnpipe_test_roots.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from gtnpipe.training import augment\n"
        "import gtnpipe.space.spaces\n"
        "if TYPE_CHECKING:\n    from gtnpipe.nas.evolution import SearchResult\n"
        "def f():\n    from gtnpipe.data.images import load_image\n    from gtnpipe import progress\n")
    closure = module_closure(("gtnpipe_test_roots",))
    assert set(closure) == {"gtnpipe_test_roots", "gtnpipe", "gtnpipe.training", "gtnpipe.training.augment",
                            "gtnpipe.space", "gtnpipe.space.spaces", "gtnpipe.errors", "gtnpipe.data",
                            "gtnpipe.data.images", "gtnpipe.fsutil"}
    assert keys._imports("gtnpipe.devices.cost") >= {"gtnpipe.devices.latency_table", "gtnpipe.space.counting"}


def test_relative_imports_resolve_from_the_module_s_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "gtnpipe_test_pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "other.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from .sibling import x\n")
    (package / "sub" / "sibling.py").write_text("x = 1\n")
    (package / "sub" / "leaf.py").write_text("from .. import other\nfrom ..sub.sibling import x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert keys._imports("gtnpipe_test_pkg.sub") == {"gtnpipe_test_pkg.sub.sibling"}  # a package: from itself
    assert keys._imports("gtnpipe_test_pkg.sub.leaf") == {"gtnpipe_test_pkg", "gtnpipe_test_pkg.sub.sibling"}
    # `from package import name`: module package.name where gtnpipe has one
    assert "gtnpipe.training.distributed" in keys._imports("gtnpipe.training.train")


@dataclasses.dataclass(frozen=True)
class _Compile(Stage):
    """A compile-style stage: keyed on its own backend's module, not every backend's."""

    STAGE = "toy-compiled"
    CODE = ("gtnpipe.deploy.export",)

    runtime: str

    def code_modules(self) -> tuple[str, ...]:
        return (*self.CODE, f"gtnpipe.deploy.backends.{self.runtime}")

    def package_names(self) -> tuple[str, ...]:
        return (f"toy-{self.runtime}-sdk",)  # an SDK its backend loads by name


BACKENDS = ("onnxruntime", "openvino", "tensorrt", "tflite")


@pytest.mark.parametrize("runtime", BACKENDS)
def test_a_compile_is_keyed_on_its_own_backend_only(runtime: str, monkeypatch: pytest.MonkeyPatch) -> None:
    inp = _Compile(runtime)
    code = stage_code(inp)
    assert f"gtnpipe.deploy.backends.{runtime}" in code
    others = [m for m in code for b in BACKENDS if b != runtime and m.startswith(f"gtnpipe.deploy.backends.{b}")]
    assert not others, f"a {runtime} compile is keyed on {others}"
    key = stage_key(inp)
    _edited(monkeypatch, next(f"gtnpipe.deploy.backends.{b}" for b in BACKENDS if b != runtime))
    assert stage_key(inp) == key
    _edited(monkeypatch, f"gtnpipe.deploy.backends.{runtime}")
    assert stage_key(inp) != key


def test_a_stage_names_the_packages_it_loads_by_name(bump_version: Callable[[str, str], None]) -> None:
    inp = _Compile("tensorrt")
    assert "toy-tensorrt-sdk" in stage_packages(inp) and "toy-openvino-sdk" not in stage_packages(inp)
    key = stage_key(inp)
    bump_version("toy-openvino-sdk", "2.0")
    assert stage_key(inp) == key
    bump_version("toy-tensorrt-sdk", "2.0")
    assert stage_key(inp) != key


def test_a_missing_root_is_an_error() -> None:
    with pytest.raises(ModuleNotFoundError, match="gtnpipe.no_such_module"):
        module_closure(("gtnpipe.no_such_module",))


def test_roots_import_nothing_the_closure_misses() -> None:
    """What Python loads when a stage's roots are imported (in a fresh process) is in the static closure: the parser
    misses no import. Run for every stage's roots at once, each in its own process."""
    stages = {cls.__name__: inp.code_modules() for cls, inp in EXAMPLES.items()}
    script = ("import importlib, json, sys\n"
              "for m in json.loads(sys.argv[1]): importlib.import_module(m)\n"
              "print(json.dumps(sorted(m for m in sys.modules if m == 'gtnpipe' or m.startswith('gtnpipe.'))))\n")
    for name, roots in stages.items():
        run = subprocess.run([sys.executable, "-c", script, json.dumps(roots)], cwd=ROOT, capture_output=True,
                             text=True, timeout=HANG_TIMEOUT_S, check=True)
        loaded = set(json.loads(run.stdout))
        missed = sorted(m for m in loaded - set(module_closure(roots)) if not keys._excluded(m))
        assert not missed, f"{name}: importing its roots loads {missed}, which its key does not cover"


# --- what runs is what is keyed -----------------------------------------------------------------------------------

# Opens the tiny recipe's workspace and runs two stages, recording every gtnpipe module whose code runs (sys.setprofile,
# every thread): a student trained with plain CE (TrainInput), and one distilled from an ONNX teacher (DistillInput;
# its TeacherCheckInput and LogitsInput run inside it).
_RUN_STAGES = r"""
import json, sys, threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gtnpipe.stages import keys, training
from gtnpipe.stages.workspace import Workspace

recipe, cache, onnx_path = sys.argv[1:4]
package = Path(keys.__file__).resolve().parents[1]
ran: set[str] = set()

def profile(frame, event, arg):
    if event == "call":
        ran.add(frame.f_code.co_filename)

def modules() -> list[str]:
    names = set()
    for f in ran:
        p = Path(f)
        if p.is_relative_to(package):
            parts = ("gtnpipe", *p.relative_to(package).with_suffix("").parts)
            names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    ran.clear()
    return sorted(names)

# a linear classifier of 1x28x28 images, any batch
w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(784, 10)).astype(np.float32), "w")
graph = helper.make_graph(
    [helper.make_node("Flatten", ["x"], ["f"], axis=1), helper.make_node("MatMul", ["f", "w"], ["logits"])], "t",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 28, 28])],
    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])], [w])
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), onnx_path)

out = {}
sys.setprofile(profile); threading.setprofile(profile)
ws = Workspace.open(Path(recipe), cache_dir=Path(cache), progress=False)
inp = training.train_input(ws, "smallest")
training.train_model(ws, inp)
out["TrainInput"] = {"ran": modules(), "keyed": list(keys.stage_code(inp))}
ws = Workspace.open(Path(recipe), cache_dir=Path(cache), progress=False)
inp = replace(training.distill_input(ws, "smallest", teacher=onnx_path), init="scratch", init_from=None)
training.distill_student(ws, inp)
out["DistillInput"] = {"ran": modules(), "keyed": list(keys.stage_code(inp))}
sys.setprofile(None); threading.setprofile(None)
print(json.dumps(out))
"""


@pytest.mark.slow  # trains the tiny recipe's smallest student twice
def test_every_module_whose_code_runs_in_a_training_stage_is_in_its_key(tmp_path: Path) -> None:
    """The static closure against the code that runs, in a fresh process: every gtnpipe module whose code runs when
    the workspace opens and the stage's function trains must be in the stage's key (the excluded ones aside)."""
    run = subprocess.run([sys.executable, "-c", _RUN_STAGES, str(TINY_RECIPE), str(tmp_path / "cache"),
                          str(tmp_path / "teacher.onnx")], cwd=ROOT, capture_output=True, text=True,
                         timeout=HANG_TIMEOUT_S)
    assert run.returncode == 0, run.stderr[-4000:]
    out = json.loads(run.stdout.splitlines()[-1])
    assert "gtnpipe.models.external" in out["DistillInput"]["ran"]  # the ONNX teacher ran
    for stage, seen in out.items():
        missed = sorted(m for m in set(seen["ran"]) - set(seen["keyed"]) if not keys._excluded(m))
        assert not missed, f"{stage}: the code of {missed} runs in the stage but is not in its key"
        assert {"gtnpipe.training.train", "gtnpipe.training.loader"} <= set(seen["ran"])
