"""Bring-your-own data end to end: a generated folder of colour JPEG/PNG images of mixed sizes, resized to 64 px,
built for `host` (ONNX Runtime) by `gtnpipe build`, then checked on the artifact by `gtnpipe bench`.

The recipe is written for that folder (as a user writes one for theirs): [data] source is the folder, image_size 64,
val_size a share; the space is "auto" (mbv3-32 for 64 px) and a narrow 5-stage [teacher] keeps it to about a minute
on 2 cores; its few steps (~9 per epoch) leave stale BatchNorm statistics, so both trainings end with
precise_bn_images. The device is the host profile with budgets a 64-px student can meet (the shipped host budgets
are sized for 28-px students) and no measured table at this input shape (search says it fell back).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HANG_TIMEOUT_S, make_colour_folder

from gtnpipe.config.profiles import profiles_dir
from gtnpipe.deploy.manifest import load_manifest

pytestmark = pytest.mark.slow

RECIPE = """
name = "own-64"
description = "tests: a generated colour ImageFolder at 64 px"
seed = 0
space = "auto"

[data]
source = "{source}"
image_size = 64
val_size = 0.1

[teacher]
stem_width = 8
widths = [16, 16, 24, 32, 32]
blocks = [1, 1, 1, 1, 1]

[train.teacher]
epochs = 4
batch_size = 16
lr = 0.05
precise_bn_images = 512

[train.student]
# 10, not 4: with 4 (~28 steps) the 64-px student ended at 60-63% test top-1 (30 images), at the test's bar; 10
# reached 93% (2026-12-06), where the teacher is
epochs = 10
batch_size = 16
lr = 0.05
label_smoothing = 0.0
precise_bn_images = 512

[predictor]
samples = 10
bn_images = 64

[distill]
teacher = "gtn"  # trained anyway for the supernet: one teacher per build, as before vanilla became the default
"""


def _gtnpipe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gtnpipe.cli", *args], capture_output=True, text=True,
                          timeout=HANG_TIMEOUT_S)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The images, and a cache both builds share (the elastic one reuses the teacher and the generic teacher)."""
    root = tmp_path_factory.mktemp("own")
    make_colour_folder(root / "images", classes=3, per_class=50)
    return root


def _host_profile(path: Path, name: str, latency_ms_p90: float) -> Path:
    """host's profile with [budgets] for these 64-px students, and without host's own [[space_budgets]]: a user's
    profile that states its budgets once."""
    text = (profiles_dir() / "host.toml").read_text().split("\n# Budgets for students of the other search spaces")[0]
    for old, new in (('name = "host"', f'name = "{name}"'), ("latency_ms_p90 = 0.25", f"latency_ms_p90 = {latency_ms_p90}"),
                     ("peak_memory_mb = 100.0", "peak_memory_mb = 400.0"), ("model_size_mb = 4.0", "model_size_mb = 40.0")):
        assert old in text
        text = text.replace(old, new)
    path.write_text(text)
    return path


def _build(folder: Path, tmp_path: Path, profile: Path, recipe_text: str) -> subprocess.CompletedProcess[str]:
    recipe = tmp_path / "own-64.toml"
    recipe.write_text(recipe_text.format(source=folder / "images"))
    return _gtnpipe("build", "--device", str(profile), "--recipe", str(recipe), "--out", str(tmp_path / "art"),
                    "--cache-dir", str(folder / "cache"), "--iterations", "20", "--train-device", "cpu", "--no-progress",
                    "--json")


def test_build_and_bench_on_a_mixed_size_colour_folder(folder: Path, tmp_path: Path) -> None:
    profile = _host_profile(tmp_path / "host-64.toml", "host-64", 50.0)
    done = _build(folder, tmp_path, profile, RECIPE)
    assert done.returncode in (0, 3), done.stderr
    result = json.loads(done.stdout)[0]
    artifact = tmp_path / "art" / "host-64"
    manifest = load_manifest(artifact)
    assert manifest["model"]["input"]["shape"] == [1, 3, 64, 64]
    assert manifest["model"]["classes"] == ["class0", "class1", "class2"]
    assert manifest["provenance"]["student_trained_on"] == "cpu"
    assert result["arch"] == manifest["model"]["arch"] and result["predicted"]["latency_source"] == "roofline-estimate"
    # no table for mbv3-32 at 3x64x64: the build says so and names the command that measures one
    assert any("gtnpipe latency-table --device host-64 --space mbv3-32 --input 3x64x64 --classes 3" in w
               for w in result["warnings"]), result["warnings"]
    # learned something: 3 classes of coloured blobs (chance is 33%); shipped = torch within the parity bar
    assert result["torch_top1"] > 60 and abs(result["shipped_top1"] - result["torch_top1"]) <= 2

    bench = _gtnpipe("bench", str(artifact), "--no-progress", "--json")
    assert bench.returncode in (0, 3), bench.stderr  # 3: a budget missed on this machine, not a broken artifact
    report = json.loads(bench.stdout)
    assert report["parity"]["passed"] and report["verdict"]["checks"]["parity"]["ok"]  # (files are sha256-checked before)


def test_elastic_resolution_ships_a_smaller_input_to_a_tight_device(folder: Path, tmp_path: Path) -> None:
    """resolutions_px = [32, 48, 64] and a latency budget no 64-px student meets (roofline estimates: no table at
    these inputs): search gives the device a smaller input; the student trains and ships at it."""
    from gtnpipe.config.profiles import load_profile
    from gtnpipe.nas.evolution import pool_minimums
    from gtnpipe.space.spaces import TaskShape, get_space
    from gtnpipe.stages.search import cost_model

    host = load_profile("host")
    model = cost_model(host, get_space("mbv3-32"), TaskShape(3, (64, 64), 3))
    cheapest_64 = pool_minimums(model)["latency_ms_p90"].latency_ms_p90
    cheapest_32 = pool_minimums(model, (32,))["latency_ms_p90"].latency_ms_p90
    budget = (cheapest_32 + cheapest_64) / 2 / (1 - host.budgets.latency_margin_pct / 100)
    profile = _host_profile(tmp_path / "host-tight.toml", "host-tight", round(budget, 4))
    recipe = RECIPE.replace('space = "auto"', 'space = "auto"\nresolutions_px = [32, 48, 64]')
    done = _build(folder, tmp_path, profile, recipe)
    assert done.returncode in (0, 3), done.stderr
    result = json.loads(done.stdout)[0]
    side = int(result["arch"].rpartition("@")[2])
    assert side in (32, 48), result["arch"]
    artifact = tmp_path / "art" / "host-tight"
    manifest = load_manifest(artifact)
    assert manifest["model"]["input"]["shape"] == [1, 3, side, side]
    assert manifest["model"]["input"]["data_image_hw"] == [64, 64]
    assert manifest["model"]["input"]["resolution_chosen_from_px"] == [32, 48, 64]
    assert f"input resolution **{side}x{side} px**, chosen by search from [32, 48, 64]" in (artifact / "report.md").read_text()
    assert result["torch_top1"] > 50 and abs(result["shipped_top1"] - result["torch_top1"]) <= 2
    bench = _gtnpipe("bench", str(artifact), "--no-progress", "--json")
    assert bench.returncode in (0, 3), bench.stderr
    assert json.loads(bench.stdout)["parity"]["passed"]
