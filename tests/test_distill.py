"""Distillation: KD loss values, cached teacher logits, and the teacher/distill pipeline with its cache."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY_RECIPE
from typer.testing import CliRunner

from gtnpipe import pipeline
from gtnpipe.cli import app
from gtnpipe.config.recipes import DistillConfig, TrainConfig, load_recipe
from gtnpipe.data.datasets import Dataset
from gtnpipe.errors import ConfigError
from gtnpipe.models.static import build_static
from gtnpipe.models.teacher import build_teacher
from gtnpipe.space.spaces import TaskShape, get_space
from gtnpipe.stages.workspace import Workspace
from gtnpipe.training.distill import distill, kd_loss, teacher_logits
from gtnpipe.training.train import Normalizer, evaluate, seed_everything

SPACE = get_space("mbv3-28")
TASK = TaskShape(1, (28, 28), 10)


def test_kd_loss_mixes_ce_and_kl_by_alpha() -> None:
    s = torch.tensor([[1.0, 0.0, -1.0]])
    t = torch.tensor([[0.0, 2.0, 0.0]])
    y = torch.tensor([1])
    tau, alpha = 3.0, 0.7
    ce = -math.log(math.exp(0.0) / (math.exp(1.0) + math.exp(0.0) + math.exp(-1.0)))
    p = [math.exp(v / tau) for v in (0.0, 2.0, 0.0)]
    p = [v / sum(p) for v in p]
    q = [math.exp(v / tau) for v in (1.0, 0.0, -1.0)]
    q = [v / sum(q) for v in q]
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    expected = (1 - alpha) * ce + alpha * tau**2 * kl
    assert float(kd_loss(s, t, y, alpha=alpha, temperature=tau)) == pytest.approx(expected, rel=1e-6)
    assert float(kd_loss(s, t, y, alpha=0.0, temperature=tau)) == pytest.approx(ce, rel=1e-6)


def test_teacher_logits_are_in_split_order(fmnist_small: Dataset) -> None:
    torch.manual_seed(0)
    teacher = build_teacher(load_recipe(TINY_RECIPE).teacher, SPACE, TASK).eval()
    norm = Normalizer(fmnist_small.mean, fmnist_small.std)
    logits = teacher_logits(teacher, fmnist_small.train, norm, batch_size=100)
    assert logits.shape == (len(fmnist_small.train), 10)
    with torch.no_grad():
        one = teacher(norm(torch.from_numpy(fmnist_small.train.x[37:38])))
    assert torch.allclose(logits[37:38], one, atol=1e-5)


@pytest.mark.slow
def test_cached_logits_give_the_same_student_as_online_teacher(fmnist_small: Dataset) -> None:
    torch.manual_seed(0)
    teacher = build_teacher(load_recipe(TINY_RECIPE).teacher, SPACE, TASK).eval()
    cfg = TrainConfig(epochs=1, batch_size=64, augment="none")
    students = []
    for cached in (True, False):
        seed_everything(3)
        student = build_static(SPACE.smallest(), SPACE, TASK)
        logits = teacher_logits(teacher, fmnist_small.train, Normalizer(fmnist_small.mean, fmnist_small.std))
        if not cached:  # force the online path by training with an (identity) augmentation-free online teacher
            logits = None
        distill(student, teacher, fmnist_small, cfg, DistillConfig(), seed=0, run_id="c", cached_logits=logits,
                progress=False)
        students.append(student.state_dict())
    for name in students[0]:
        assert torch.allclose(students[0][name].float(), students[1][name].float(), atol=1e-4), name


def _recipe_no_augment(tmp_path: Path) -> Path:
    text = TINY_RECIPE.read_text().replace('name = "tiny"', 'name = "tinyplain"')
    text = text.replace("[distill]\n", "[distill]\nalpha = 0.9\ntemperature = 4.0\n")
    text = text.replace("[train.student]\n", '[train.student]\naugment = "none"\n')
    path = tmp_path / "tinyplain.toml"
    path.write_text(text)
    assert load_recipe(path).train.student.augment == "none"
    return path


@pytest.mark.slow
def test_teacher_and_distill_pipeline(tmp_path: Path) -> None:
    recipe = _recipe_no_augment(tmp_path)
    cache = tmp_path / "cache"
    ws = Workspace.open(recipe, cache_dir=cache, progress=False)
    gtn = pipeline.train_teacher(ws, "gtn")
    assert not gtn.cached and gtn.method == "gtn" and gtn.log is not None
    assert gtn.log["steps"] == 2 * 8  # tiny: 512 images, batch 64, 2 epochs
    again = pipeline.train_teacher(ws, "gtn")
    assert again.cached and again.key == gtn.key
    vanilla = pipeline.train_teacher(ws, "vanilla")
    assert vanilla.key != gtn.key

    outcomes = {t: pipeline.distill_student(ws, "smallest", teacher=t)
                for t in ("none", "vanilla", "gtn")}
    assert len({o.key for o in outcomes.values()}) == 3
    assert outcomes["none"].teacher_key is None and outcomes["gtn"].teacher_key == gtn.key
    assert outcomes["vanilla"].teacher_key == vanilla.key
    # the recorded top-1 is the cached student's own on the 256 test images (the tiny recipe's 2 epochs leave these
    # students near chance, 7-14%: that they learn is test_train's fit test and the deploy fixture's > 60%)
    assert len(ws.data.test) == 256
    norm = Normalizer(ws.data.mean, ws.data.std)
    for teacher, o in outcomes.items():
        assert o.macs == 4_100_040 and not o.cached
        net = pipeline.load_distilled(ws, "smallest", teacher=teacher).net
        assert evaluate(net, ws.data.test, norm) == pytest.approx(o.test_top1, abs=1e-9), teacher
    assert len(list((cache / "teacher-logits").iterdir())) == 2  # computed once per teacher
    hit = pipeline.distill_student(ws, "smallest", teacher="gtn")
    assert hit.cached and hit.test_top1 == outcomes["gtn"].test_top1
    other_seed = pipeline.distill_student(ws, "smallest", teacher="gtn", seed=1)
    assert other_seed.key != hit.key and other_seed.seed == 1
    # other KD hyperparameters re-key the KD runs only: the no-KD baseline never sees them
    sharper = tmp_path / "tinysharp.toml"
    sharper.write_text(recipe.read_text().replace("alpha = 0.9", "alpha = 0.5").replace("tinyplain", "tinysharp"))
    sharp_ws = Workspace.open(sharper, cache_dir=cache, progress=False)
    assert pipeline.distill_student(sharp_ws, "smallest", teacher="none").cached
    assert pipeline.distill_student(sharp_ws, "smallest", teacher="gtn").key != hit.key


def test_sftn_needs_its_student(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--student ARCH_ID is required with --method sftn"):
        pipeline.train_teacher(Workspace.open(TINY_RECIPE, cache_dir=tmp_path), "sftn")
    with pytest.raises(ConfigError, match="unknown teacher method 'ofa'"):
        pipeline.train_teacher(Workspace.open(TINY_RECIPE, cache_dir=tmp_path), "ofa")


@pytest.mark.slow
def test_cli_sftn_teacher_and_distill(tmp_path: Path) -> None:
    runner = CliRunner()
    arch = "k3e3_k3e3_k5e4_k3e3"
    base = ["--recipe", str(TINY_RECIPE), "--cache-dir", str(tmp_path), "--json"]
    result = runner.invoke(app, ["teacher", "--method", "sftn", "--student", arch, *base])
    assert result.exit_code == 0, result.output
    teacher = json.loads(result.stdout)
    assert teacher["student"] == arch and teacher["method"] == "sftn" and teacher["cached"] is False
    result = runner.invoke(app, ["distill", "--arch", arch, "--teacher", "sftn", *base])
    assert result.exit_code == 0, result.output
    student = json.loads(result.stdout)
    assert student["teacher_key"] == teacher["key"] and student["arch"] == arch
    bad = runner.invoke(app, ["distill", "--arch", arch, "--teacher", "oracle", *base])
    assert bad.exit_code == 2 and "unknown teacher 'oracle'" in bad.stderr


@pytest.mark.slow
def test_inherited_init_starts_from_the_gtn_supernet(tmp_path: Path) -> None:
    text = TINY_RECIPE.read_text().replace('name = "tiny"', 'name = "tinyinherit"')
    path = tmp_path / "tinyinherit.toml"
    path.write_text(text.replace("[distill]\n", '[distill]\ninit = "inherited"\n'))
    cache = tmp_path / "cache"
    gtn = pipeline.train_teacher(Workspace.open(path, cache_dir=cache, progress=False), "gtn")
    out = pipeline.distill_student(Workspace.open(path, cache_dir=cache, progress=False), "smallest", teacher="none")
    assert out.init == "inherited"
    record = json.loads((Path(out.entry_path) / "entry.json").read_text())
    assert record["spec"]["input"]["init_from"]["key"] == gtn.key
    scratch = pipeline.distill_student(Workspace.open(TINY_RECIPE, cache_dir=cache, progress=False), "smallest", teacher="none")
    assert scratch.init == "scratch" and scratch.key != out.key


@pytest.mark.slow
def test_gtn_fine_tuned_from_the_vanilla_teacher(tmp_path: Path) -> None:
    # teacher_init = "vanilla": the GTN run starts from the cached vanilla teacher, trains finetune_epochs with the
    # teacher at teacher_lr_scale x the learning rate, and its cost counts the vanilla teacher's training
    text = TINY_RECIPE.read_text().replace('name = "tiny"', 'name = "tinywarm"')
    path = tmp_path / "tinywarm.toml"
    path.write_text(text + '\n[gtn]\nteacher_init = "vanilla"\nfinetune_epochs = 1\nteacher_lr_scale = 1e-9\n')
    cache = tmp_path / "cache"
    gtn = pipeline.train_teacher(Workspace.open(path, cache_dir=cache, progress=False), "gtn")
    vanilla = pipeline.train_teacher(Workspace.open(path, cache_dir=cache, progress=False), "vanilla")
    assert vanilla.cached  # trained by the GTN call, as its starting point
    assert gtn.init_from == vanilla.key and gtn.init_epochs == vanilla.epochs == 2 and gtn.epochs == 1
    assert gtn.train_seconds == pytest.approx(gtn.init_train_seconds + json.loads(
        (Path(gtn.entry_path) / "entry.json").read_text())["meta"]["train_seconds"])
    assert gtn.init_train_seconds == pytest.approx(vanilla.train_seconds)
    record = json.loads((Path(gtn.entry_path) / "entry.json").read_text())
    assert record["spec"]["input"]["init_from"]["key"] == vanilla.key
    # at a near-zero teacher learning rate the fine-tuned teacher keeps the vanilla weights (BN statistics aside)
    warm_net, _ = pipeline.load_teacher(Workspace.open(path, cache_dir=cache), "gtn")
    vanilla_net, _ = pipeline.load_teacher(Workspace.open(path, cache_dir=cache), "vanilla")
    for (name, w), v in zip(warm_net.named_parameters(), vanilla_net.parameters()):
        assert torch.allclose(w, v, atol=1e-6), name
    scratch = pipeline.train_teacher(Workspace.open(TINY_RECIPE, cache_dir=cache, progress=False), "gtn")
    assert scratch.init_from is None and scratch.init_train_seconds == 0.0 and scratch.key != gtn.key


def test_logit_scale_by_hand() -> None:
    from gtnpipe.training.distill import logit_scale

    logits = torch.tensor([[1.0, -1.0], [2.0, -2.0]])  # per-image (unbiased) std sqrt(2) and 2 sqrt(2)
    assert logit_scale(logits, 1.0) == pytest.approx(1 / (1.5 * math.sqrt(2)))


@pytest.mark.slow
def test_teacher_logit_std_rescales_the_targets(fmnist_small: Dataset) -> None:
    torch.manual_seed(0)
    teacher = build_teacher(load_recipe(TINY_RECIPE).teacher, SPACE, TASK).eval()
    logits = teacher_logits(teacher, fmnist_small.train, Normalizer(fmnist_small.mean, fmnist_small.std))
    own_std = float(logits.std(dim=1).mean())
    cfg = TrainConfig(epochs=1, batch_size=64, augment="none")
    students = {}
    for name, target in (("plain", 0.0), ("own", own_std), ("double", 2 * own_std)):
        seed_everything(3)
        student = build_static(SPACE.smallest(), SPACE, TASK)
        distill(student, teacher, fmnist_small, cfg, DistillConfig(alpha=1.0, teacher_logit_std=target), seed=0,
                run_id=name, cached_logits=logits, progress=False)
        students[name] = torch.cat([p.detach().flatten() for p in student.parameters()])
    assert torch.allclose(students["plain"], students["own"], atol=1e-5)  # already at that scale: unchanged
    assert not torch.allclose(students["plain"], students["double"], atol=1e-3)
    with pytest.raises(ValueError, match="'teacher_logit_std' must be a finite number >= 0"):
        DistillConfig(teacher_logit_std=-1.0)
