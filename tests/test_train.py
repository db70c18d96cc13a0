"""The training loop: augmentation, determinism, checkpoint/resume (kill -9), cache hits."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import HANG_TIMEOUT_S, TINY_RECIPE
from torch import nn

from gtnpipe import pipeline
from gtnpipe.config.recipes import TrainConfig, load_recipe
from gtnpipe.data.datasets import Dataset, Split
from gtnpipe.errors import TrainError
from gtnpipe.models.static import build_static
from gtnpipe.space.spaces import TaskShape, get_space
from gtnpipe.stages.workspace import Workspace
from gtnpipe.training.augment import crop_flip
from gtnpipe.training.train import Normalizer, _schedule, evaluate, fit, recalibrate_bn, seed_everything

SPACE = get_space("mbv3-28")
TASK = TaskShape(1, (28, 28), 10)
# Enough steps on 512 images for BN statistics to settle (fewer leave eval-mode accuracy at chance).
CFG = TrainConfig(epochs=3, batch_size=32, lr=0.2, warmup_epochs=0.2, augment="none", label_smoothing=0.0)


def _student(seed: int = 0) -> nn.Module:
    seed_everything(seed)
    return build_static(SPACE.smallest(), SPACE, TASK)


def test_augment_is_a_shifted_possibly_flipped_crop() -> None:
    x = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    out = crop_flip(x, padding_px=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = F.pad(x, (2,) * 4)
    for i in range(16):
        candidates = [padded[i, :, dy : dy + 28, dx : dx + 28] for dy in range(5) for dx in range(5)]
        candidates += [c.flip(2) for c in candidates]
        assert any(torch.equal(out[i], c) for c in candidates)
    again = crop_flip(x, padding_px=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert not torch.equal(out, crop_flip(x, padding_px=2, generator=torch.Generator().manual_seed(1)))


def test_normalizer_uses_train_statistics() -> None:
    norm = Normalizer((0.5,), (0.25,))
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    assert norm(x).flatten().tolist() == pytest.approx([-2.0, 2.0])


def test_evaluate_counts_top1() -> None:
    class Always3(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.one_hot(torch.full((x.shape[0],), 3), 10).float()

    y = np.array([3, 3, 1, 2, 3, 0, 3, 3], dtype=np.int64)
    split = Split(np.zeros((8, 1, 4, 4), dtype=np.uint8), y)
    assert evaluate(Always3(), split, Normalizer((0.0,), (1.0,)), batch_size=3) == pytest.approx(62.5)


def test_schedule_warms_up_then_decays_to_zero() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.2)
    sched = _schedule(opt, TrainConfig(epochs=4, lr=0.2, warmup_epochs=1), steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.02)
    assert max(lrs) == pytest.approx(0.2)
    assert lrs.index(max(lrs)) == 9
    assert lrs[-1] < 0.002
    assert all(a >= b for a, b in itertools_pairwise(lrs[10:]))


def itertools_pairwise(seq: list[float]) -> list[tuple[float, float]]:
    return list(zip(seq, seq[1:]))


@pytest.mark.slow
def test_fit_learns_and_is_deterministic(fmnist_small: Dataset) -> None:
    a, b = _student(), _student()
    ra = fit(a, fmnist_small, CFG, seed=7, run_id="a", progress=False)
    rb = fit(b, fmnist_small, CFG, seed=7, run_id="b", progress=False)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert ra.test_top1 == rb.test_top1
    assert [h.train_loss for h in ra.history] == [h.train_loss for h in rb.history]
    assert ra.history[-1].train_loss < ra.history[0].train_loss
    assert ra.history[-1].train_top1 > 50.0
    # 36.7% measured (256 test images): the floor is two binomial standard errors (3.0 points each) below it
    assert ra.test_top1 > 30.0
    c = _student()
    rc = fit(c, fmnist_small, CFG, seed=8, run_id="c", progress=False)
    assert rc.history[0].train_loss != ra.history[0].train_loss  # the seed sets the data order


@pytest.mark.slow
def test_precise_bn_recomputes_the_statistics_after_the_last_epoch(fmnist_small: Dataset) -> None:
    """precise_bn_images: the running statistics are those of the final weights over that many training images
    (the same as recalibrating after a plain fit), and they go into the val and test figures."""
    cfg = TrainConfig(epochs=1, batch_size=128)
    plain, precise = _student(), _student()
    r_plain = fit(plain, fmnist_small, cfg, seed=3, run_id="p", progress=False)
    r_precise = fit(precise, fmnist_small, dataclasses.replace(cfg, precise_bn_images=256), seed=3, run_id="q",
                    progress=False)
    norm = Normalizer(fmnist_small.mean, fmnist_small.std)
    recalibrate_bn(plain, fmnist_small.train, norm, images=256, seed=3)
    buffers = [n for n, _ in plain.named_buffers() if "running" in n]
    assert buffers
    for name in buffers:
        torch.testing.assert_close(precise.get_buffer(name), plain.get_buffer(name), rtol=1e-5, atol=1e-6)
    assert r_precise.test_top1 == evaluate(plain, fmnist_small.test, norm)
    assert r_precise.history[-1].val_top1 == evaluate(plain, fmnist_small.val, norm)
    assert r_plain.test_top1 != r_precise.test_top1  # the stale statistics scored differently


@pytest.mark.slow
def test_checkpoint_of_another_run_is_refused(fmnist_small: Dataset, tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=1, batch_size=128)
    fit(_student(), fmnist_small, cfg, seed=0, run_id="run-a", checkpoint_dir=tmp_path, progress=False)
    assert (tmp_path / "last.pt").exists()
    with pytest.raises(TrainError, match="belongs to another run.*delete it"):
        fit(_student(), fmnist_small, cfg, seed=0, run_id="run-b", checkpoint_dir=tmp_path, progress=False)
    (tmp_path / "last.pt").write_bytes(b"torn")
    with pytest.raises(TrainError, match="cannot read checkpoint"):
        fit(_student(), fmnist_small, cfg, seed=0, run_id="run-a", checkpoint_dir=tmp_path, progress=False)


def test_non_finite_loss_names_the_fix(fmnist_small: Dataset) -> None:
    def nan_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor):
        logits = model(x)
        return logits.sum() * math.nan, logits

    with pytest.raises(TrainError, match="lower the learning rate"):
        fit(_student(), fmnist_small, CFG, seed=0, run_id="nan", loss_fn=nan_loss, progress=False)


@pytest.mark.slow
def test_loss_fn_receives_train_indices(fmnist_small: Dataset) -> None:
    seen: list[torch.Tensor] = []

    def recording(model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor):
        seen.append(idx)
        assert torch.equal(y, torch.from_numpy(fmnist_small.train.y)[idx])
        logits = model(x)
        return F.cross_entropy(logits, y), logits

    fit(_student(), fmnist_small, TrainConfig(epochs=1, batch_size=100), seed=0, run_id="i", loss_fn=recording,
        progress=False)
    assert sorted(torch.cat(seen).tolist()) == list(range(len(fmnist_small.train)))


@pytest.mark.slow
def test_train_model_caches(tmp_path: Path) -> None:
    first = pipeline.train_model(Workspace.open(TINY_RECIPE, cache_dir=tmp_path, progress=False), "smallest")
    assert not first.cached and first.epochs == 2
    assert (first.macs, first.params) == (4_100_040, 395_066)  # the smallest student, as `count` gives
    second = pipeline.train_model(Workspace.open(TINY_RECIPE, cache_dir=tmp_path, progress=False), "smallest")
    assert second.cached and second.key == first.key and second.test_top1 == first.test_top1
    assert not (tmp_path / "work" / "models" / first.key).exists()  # checkpoints cleaned up
    ws = Workspace.open(TINY_RECIPE, cache_dir=tmp_path)
    net = pipeline.load_trained(ws, "smallest")
    data = ws.data
    assert evaluate(net, data.test, Normalizer(data.mean, data.std)) == pytest.approx(first.test_top1)


@pytest.mark.slow
def test_corrupt_cached_model_is_retrained(tmp_path: Path) -> None:
    first = pipeline.train_model(Workspace.open(TINY_RECIPE, cache_dir=tmp_path, progress=False), "smallest")
    weights = Path(first.entry_path) / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:-10])
    again = pipeline.train_model(Workspace.open(TINY_RECIPE, cache_dir=tmp_path, progress=False), "smallest")
    assert not again.cached and again.test_top1 == first.test_top1
    assert len(list((tmp_path / "quarantine").iterdir())) == 1


def _write_recipe(tmp_path: Path, name: str, epochs: int) -> Path:
    text = TINY_RECIPE.read_text().replace('name = "tiny"', f'name = "{name}"')
    text = text.replace("[train.student]\nepochs = 2", f"[train.student]\nepochs = {epochs}")
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    assert load_recipe(path).train.student.epochs == epochs
    return path


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gtnpipe.cli", *args]


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(tmp_path: Path) -> None:
    recipe = _write_recipe(tmp_path, "resume", epochs=6)
    args = ("train", "--model", "smallest", "--recipe", str(recipe), "--no-progress", "--json")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(_cli(*args, "--cache-dir", str(killed_dir)), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + HANG_TIMEOUT_S
    while not list(killed_dir.glob("work/models/*/last.pt")) and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not list(killed_dir.glob("models/*/entry.json"))

    resumed = subprocess.run(_cli(*args, "--cache-dir", str(killed_dir)), env=env, capture_output=True, text=True,
                             check=True, timeout=HANG_TIMEOUT_S)
    resumed_out = json.loads(resumed.stdout)
    assert 1 <= resumed_out["resumed_from_epoch"] < 6
    assert "resuming after epoch" in resumed.stderr

    clean = json.loads(subprocess.run(_cli(*args, "--cache-dir", str(tmp_path / "clean")), env=env,
                                      capture_output=True, text=True, check=True, timeout=HANG_TIMEOUT_S).stdout)
    assert clean["resumed_from_epoch"] == 0 and clean["key"] == resumed_out["key"]
    a = torch.load(Path(resumed_out["entry_path"]) / "weights.pt", weights_only=True)
    b = torch.load(Path(clean["entry_path"]) / "weights.pt", weights_only=True)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert resumed_out["test_top1"] == clean["test_top1"]


# --- where training runs -----------------------------------------------------------------------------------------


def test_train_device_resolves_or_says_why_not() -> None:
    from gtnpipe.training.accelerator import describe, train_device

    assert train_device("cpu") == torch.device("cpu") and describe(torch.device("cpu")) == "cpu"
    if torch.cuda.is_available():
        assert train_device("auto").type == "cuda"
        return
    assert train_device("auto") == torch.device("cpu")  # no GPU here: auto is the CPU
    for name in ("cuda", "cuda:1", "CUDA:0"):
        with pytest.raises(TrainError, match=rf"--train-device {name}: torch .* sees no GPU here; train with --train-device cpu"):
            train_device(name)
    for bad in ("gpu", "cuda:x", "tpu"):
        with pytest.raises(TrainError, match="allowed values are auto, cpu, cuda and cuda:N"):
            train_device(bad)


@pytest.mark.slow  # a CLI process that imports torch: 5 s
def test_unknown_train_device_is_a_cli_error() -> None:
    done = subprocess.run([sys.executable, "-m", "gtnpipe.cli", "train", "--model", "smallest", "--recipe", str(TINY_RECIPE),
                           "--train-device", "gpu", "--no-progress"], capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    assert done.returncode == 2 and "--train-device 'gpu': allowed values are auto, cpu, cuda and cuda:N" in done.stderr
