"""Teachers gtnpipe did not train: the native tiny teacher exported to ONNX, torch.export .pt2 and TorchScript, and
as a plain nn.Module, gives the native teacher's logits and, distilled with the same seed, the native student."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import HANG_TIMEOUT_S, TINY_RECIPE
from torch import nn

from gtnpipe.deploy.export import Deployable, export_onnx
from gtnpipe.errors import ConfigError
from gtnpipe.models.external import as_training_teacher, load_external, teacher_file, teacher_from_module
from gtnpipe.pipeline import Workspace, distill_student, load_teacher
from gtnpipe.stages import training

pytestmark = pytest.mark.slow  # trains the tiny recipe's vanilla teacher and distills students

# Logits of an exported teacher against the native one: the bar. The student distilled from a file teacher
# sees targets that differ by float rounding only; with the same seed its test top-1 stays within this many points
# (its weights are not bit-identical: a 1e-7 difference in a target moves SGD's path).
MAX_LOGIT_DIFF = 1e-4
MAX_TOP1_DIFF_POINTS = 1.0


class Files:
    def __init__(self, root: Path) -> None:
        self.ws = Workspace.open(TINY_RECIPE, cache_dir=root / "cache", progress=False)
        self.native, _ = load_teacher(self.ws, "vanilla")
        self.deployable = Deployable(self.native, self.ws.data.mean, self.ws.data.std).train(False)  # [0, 1] images in
        self.onnx = root / "teacher.onnx"
        torch.onnx.export(self.deployable, (torch.zeros(1, 1, 28, 28),), str(self.onnx), dynamo=False,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
        self.fixed_batch_onnx = export_onnx(self.deployable, self.ws.task, root / "fixed.onnx")  # batch 1
        batch = torch.export.Dim("batch", min=1, max=4096)
        self.pt2 = root / "teacher.pt2"
        torch.export.save(torch.export.export(self.deployable, (torch.zeros(4, 1, 28, 28),),
                                              dynamic_shapes={"x": {0: batch}}), str(self.pt2))
        self.ts = root / "teacher.ts"
        torch.jit.trace(self.deployable, torch.zeros(4, 1, 28, 28)).save(str(self.ts))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    return Files(tmp_path_factory.mktemp("teachers"))


def _native_logits(files: Files) -> torch.Tensor:
    inp = training.LogitsInput(training.teacher_input(files.ws, "vanilla"), files.ws.data_ref)
    return training._teacher_logits(files.ws, files.native, inp)


@pytest.mark.parametrize("kind", ["onnx", "fixed_batch_onnx", "pt2", "ts", "module"])
def test_exported_teacher_gives_the_native_logits(files: Files, kind: str) -> None:
    teacher = teacher_from_module(files.deployable) if kind == "module" else teacher_file(getattr(files, kind))
    net, outcome = training.load_teacher(files.ws, teacher)
    logits = training._teacher_logits(files.ws, net, training.LogitsInput(teacher, files.ws.data_ref))
    assert float((logits - _native_logits(files)).abs().max()) <= MAX_LOGIT_DIFF
    native_top1 = load_teacher(files.ws, "vanilla")[1].test_top1
    assert outcome.test_top1 == pytest.approx(native_top1, abs=0.5)  # one image of 256 may flip on a rounding tie
    assert outcome.val_top1 is not None and outcome.key != load_teacher(files.ws, "vanilla")[1].key


def test_teacher_file_logits_are_cached_under_its_content(files: Files, tmp_path: Path) -> None:
    a = training.LogitsInput(teacher_file(files.onnx), files.ws.data_ref)
    copy = tmp_path / "renamed.onnx"
    copy.write_bytes(files.onnx.read_bytes())
    assert training.LogitsInput(teacher_file(copy), files.ws.data_ref).key == a.key  # the path is not the key
    assert training.LogitsInput(teacher_file(files.pt2), files.ws.data_ref).key != a.key


def test_student_from_the_onnx_teacher_matches_the_native_student(files: Files) -> None:
    arch = files.ws.space.smallest().id
    native = distill_student(files.ws, arch, teacher="vanilla")
    from_file = training.distill_student(files.ws, training.distill_input(files.ws, arch, teacher=str(files.onnx)))
    assert from_file.teacher == "onnx" and from_file.teacher_key == teacher_file(files.onnx).sha256
    assert from_file.key != native.key
    assert abs(from_file.test_top1 - native.test_top1) <= MAX_TOP1_DIFF_POINTS
    assert from_file.teacher_test_top1 == pytest.approx(native.teacher_test_top1 or 0, abs=0.5)


def test_a_teacher_that_does_not_fit_the_data_is_refused(files: Files, tmp_path: Path) -> None:
    colour = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    with pytest.raises(ConfigError, match=r"fails on a batch of 2 images of the data's shape \[1, 28, 28\]"):
        as_training_teacher(teacher_from_module(colour), (0.5,), (0.5,), (1, 28, 28), 10)
    five = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 5))
    with pytest.raises(ConfigError, match=r"returns \(2, 5\) for 2 images; the data has 10 classes"):
        as_training_teacher(teacher_from_module(five), (0.5,), (0.5,), (1, 28, 28), 10)
    with pytest.raises(ConfigError, match="ending in .onnx, .pt2"):
        training.distill_input(files.ws, files.ws.space.smallest().id, teacher="teacher.pkl")
    with pytest.raises(ConfigError, match="does not exist"):
        teacher_file(tmp_path / "missing.onnx")
    changed = tmp_path / "changing.onnx"
    changed.write_bytes(files.onnx.read_bytes())
    teacher = teacher_file(changed)
    changed.write_bytes(files.fixed_batch_onnx.read_bytes())
    with pytest.raises(ConfigError, match="changed since this run started"):
        load_external(teacher)


class Payload:
    """Stands for code a crafted file would run when unpickled: not a tensor, not an allow-listed type."""


def test_a_pt2_loads_only_where_every_torch_load_is_restricted_to_weights(tmp_path: Path) -> None:
    """torch.export.load unpickles a .pt2's constants with weights_only=False (torch 2.13). The process gtnpipe starts
    forces weights-only loads (gtnpipe.environment; the test session too), so even such a call refuses anything but
    tensors and plain containers; a process started without it is refused a .pt2, with what to set."""
    import os
    import pickle

    from gtnpipe.environment import WEIGHTS_ONLY

    assert os.environ[WEIGHTS_ONLY[0]] == WEIGHTS_ONLY[1]
    path = tmp_path / "payload.pt"
    torch.save({"w": torch.ones(2), "payload": Payload()}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(path, weights_only=False)
    pt2 = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(nn.Linear(4, 2).eval(), (torch.zeros(1, 4),)), str(pt2))
    code = ("from gtnpipe.models.external import load_external, teacher_file\n"
            "from gtnpipe.errors import ConfigError\n"
            f"try:\n    load_external(teacher_file({str(pt2)!r}))\nexcept ConfigError as err:\n    print(err)\n")
    env = {k: v for k, v in os.environ.items() if k != WEIGHTS_ONLY[0]}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=HANG_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert "needs TORCH_FORCE_WEIGHTS_ONLY_LOAD=1 in the environment when Python starts" in done.stdout


class StagedCNN(nn.Module):
    """A user's teacher whose stages do not line up with mbv3-28's (28, 14, 7 px here against 14, 7, 4 there)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(1, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(12, 20, 3, stride=2, padding=1), nn.BatchNorm2d(20), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(20, 28, 3, stride=2, padding=1), nn.BatchNorm2d(28), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(28, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.c(self.b(self.a(x))))


def _trained(user: nn.Module, files: Files) -> float:
    """`user` trained a few epochs on the recipe's training slice ([0, 1] images, as a user's teacher takes them), and
    its test top-1: a teacher worth fine-tuning, so the student's and the fine-tuned teacher's accuracy mean something."""
    x, y = torch.from_numpy(files.ws.data.train.x).float() / 255, torch.from_numpy(files.ws.data.train.y)
    opt = torch.optim.Adam(user.parameters(), 3e-3)
    user.train(True)
    for _ in range(4):
        for i in range(0, len(x), 32):
            opt.zero_grad()
            out = user(x[i:i + 32])
            nn.functional.cross_entropy(out["logits"] if isinstance(out, dict) else out, y[i:i + 32]).backward()
            opt.step()
    user.train(False)
    with torch.no_grad():
        out = user(torch.from_numpy(files.ws.data.test.x).float() / 255)
    logits = out["logits"] if isinstance(out, dict) else out
    return float((logits.argmax(1).numpy() == files.ws.data.test.y).mean() * 100)


def test_module_teacher_with_named_stages_is_fine_tuned_as_a_generic_teacher(files: Files) -> None:
    import copy

    torch.manual_seed(0)
    user = StagedCNN()
    user_top1 = _trained(user, files)
    before = copy.deepcopy(user.state_dict())
    teacher = teacher_from_module(user, stages=["a", "b", "c"])
    arch = files.ws.space.smallest().id
    inp = training.distill_input(files.ws, arch, teacher=teacher, finetune="gtn")
    assert inp.method == "gtn:module" and isinstance(inp.teacher, training.TeacherInput)
    fine_tuned = training.train_teacher(files.ws, inp.teacher)
    assert fine_tuned.epochs == files.ws.recipe.gtn.finetune_epochs
    kl = fine_tuned.log["kl_by_branch_point"]
    assert set(kl) == {"0", "1", "2", "3"} and all(v["count"] > 0 for v in kl.values())  # branches from every stage
    assert all(torch.equal(before[k], v) for k, v in user.state_dict().items())  # the caller's module is untouched
    net, _ = training.load_teacher(files.ws, inp.teacher)
    tuned = {k.removeprefix("inner.teacher."): v for k, v in net.state_dict().items() if k.startswith("inner.teacher.")}
    assert any(not torch.equal(before[k], tuned[k]) for k in before if before[k].is_floating_point())
    student = training.distill_student(files.ws, inp)
    assert student.teacher == "gtn:module" and student.teacher_key == inp.teacher.key
    # GTN fine-tuning keeps what the user's teacher knows: 46.9% -> 49.6% measured (256 test images; a margin of two
    # binomial standard errors, 6 points). The tiny recipe's students stay at chance whatever teaches them (7-12%
    # measured for none, vanilla and gtn), so the student's own accuracy cannot be judged here.
    assert student.teacher_test_top1 is not None and student.teacher_test_top1 >= user_top1 - 6.0


def test_gtn_fine_tuning_needs_one_stage_per_boundary(files: Files) -> None:
    arch = files.ws.space.smallest().id
    with pytest.raises(ConfigError, match="needs its stage features: a module with named stages"):
        training.distill_input(files.ws, arch, teacher=teacher_file(files.onnx), finetune="gtn")
    two = teacher_from_module(StagedCNN(), stages=["a", "b"])
    with pytest.raises(ConfigError, match=r"needs 3 teacher stages for space 'mbv3-28' .* got 2"):
        training.train_teacher(files.ws, training.distill_input(files.ws, arch, teacher=two, finetune="gtn").teacher)
    with pytest.raises(ConfigError, match=r"stages \['nope'\] are not submodules of StagedCNN"):
        teacher_from_module(StagedCNN(), stages=["nope"])


def test_recipe_teacher_source_is_the_default_teacher_and_keys_no_trained_teacher(files: Files, tmp_path: Path) -> None:
    from gtnpipe.models.teacher import SPACE_TEACHERS
    from gtnpipe.pipeline import distill_student

    recipe = tmp_path / "mine.toml"
    recipe.write_text(TINY_RECIPE.read_text().replace('name = "tiny"', 'name = "mine"').replace(
        "[teacher]\n", f'[teacher]\nsource = "{files.onnx}"\n'))
    ws = Workspace.open(recipe, cache_dir=files.ws.cache.root, progress=False)
    assert ws.teacher_source == str(files.onnx) and ws.teacher == files.ws.teacher  # the shape: without the source
    assert training.train_input(ws, "teacher").key == training.train_input(files.ws, "teacher").key
    student = distill_student(ws, ws.space.smallest().id)  # no teacher named: the recipe's file
    assert student.teacher == "onnx" and student.teacher_key == teacher_file(files.onnx).sha256
    only = tmp_path / "only.toml"
    only.write_text(f'name = "only"\n[teacher]\nsource = "{files.onnx}"\n[train.teacher]\nepochs = 1\n'
                    '[train.student]\nepochs = 1\n')
    assert Workspace.open(only, progress=False, data_source=None).teacher == SPACE_TEACHERS["mbv3-28"]


class NamedOutputs(StagedCNN):
    """What a .pt2 for GTN fine-tuning returns: its logits and its stage features, by name."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        a = self.a(x)
        b = self.b(a)
        c = self.c(b)
        return {"logits": self.head(c), "a": a, "b": b, "c": c}


def test_pt2_with_named_outputs_teaches_and_is_fine_tuned_as_a_generic_teacher(files: Files, tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "named.pt2"
    batch = torch.export.Dim("batch", min=1, max=4096)
    # untrained: this checks the mechanics (stage outputs found, branches at every point, a student distilled); a
    # trained .pt2, exported in eval mode, fine-tunes with frozen BatchNorm and diverged at the tiny recipe's lr 0.1
    torch.export.save(torch.export.export(NamedOutputs().eval(), (torch.zeros(4, 1, 28, 28),),
                                          dynamic_shapes={"x": {0: batch}}), str(path))
    arch = files.ws.space.smallest().id
    plain, outcome = training.load_teacher(files.ws, teacher_file(path))  # logits only: the dict's "logits"
    assert plain(torch.zeros(3, 1, 28, 28)).shape == (3, 10) and 0 <= outcome.test_top1 <= 100
    staged = teacher_file(path, stages=["a", "b", "c"])
    assert staged.sha256 == teacher_file(path).sha256 and staged.stages == ("a", "b", "c")
    inp = training.distill_input(files.ws, arch, teacher=staged, finetune="gtn")
    tuned = training.train_teacher(files.ws, inp.teacher)
    assert set(tuned.log["kl_by_branch_point"]) == {"0", "1", "2", "3"}
    student = training.distill_student(files.ws, inp)
    assert student.teacher == "gtn:pt2" and student.teacher_key == inp.teacher.key
    with pytest.raises(ConfigError, match="a onnx file gives logits only"):
        teacher_file(files.onnx, stages=["a"])
