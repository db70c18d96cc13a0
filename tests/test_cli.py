"""The `gtnpipe` command: JSON outputs, clear errors with exit code 2, --help without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HANG_TIMEOUT_S, TINY_RECIPE
from typer.testing import CliRunner

from gtnpipe.cli import app
from gtnpipe.config.recipes import load_recipe
from gtnpipe.space.spaces import ArchConfig, get_space

runner = CliRunner()

_BLOCK_HEAVY = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'torch', 'nncf', 'onnxruntime', 'openvino', 'tensorrt', 'ai_edge_litert'}:
            raise ImportError('blocked for this test: ' + name)
sys.meta_path.insert(0, _Block())
"""


def _run_blocked(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _BLOCK_HEAVY + code], capture_output=True, text=True, timeout=HANG_TIMEOUT_S)


def test_help_works_without_torch() -> None:
    done = _run_blocked("sys.argv = ['gtnpipe', '--help']\nfrom gtnpipe.cli import main\nmain()")
    assert done.returncode == 0, done.stderr
    for command in ("train", "data", "pool", "bench", "latency-table", "latency-kit", "devices"):
        assert command in done.stdout
    assert "calibration-kit" not in done.stdout  # the old name still works, hidden
    done = _run_blocked("import gtnpipe, gtnpipe.cli, gtnpipe.errors; print(gtnpipe.__version__)")
    assert done.returncode == 0 and done.stdout.strip() == "0.1.0", done.stderr


def test_pool_commands_work_without_torch() -> None:
    for args in (["pool", "info", "--json"], ["pool", "sample", "-n", "2", "--json"]):
        done = _run_blocked(f"sys.argv = ['gtnpipe', *{args!r}]\nfrom gtnpipe.cli import main\nmain()")
        assert done.returncode == 0, done.stderr
        assert "mbv3-28" in done.stdout or len(json.loads(done.stdout)) == 2


def test_python_m_gtnpipe_cli_runs_the_cli() -> None:
    """What torchrun runs (torchrun ... -m gtnpipe.cli teacher ...)."""
    done = subprocess.run([sys.executable, "-m", "gtnpipe.cli", "devices", "list", "--json"], capture_output=True,
                          text=True, timeout=HANG_TIMEOUT_S, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    assert "host" in {d["name"] for d in json.loads(done.stdout)}


@pytest.mark.parametrize(("new", "old", "message"), [
    (["latency-table", "--device", "jetson-nano"], ["bench", "--calibrate", "--device", "jetson-nano"],
     "runs tensorrt, which cannot run on this host"),
    (["latency-kit", "--device", "no-such-device", "--out", "kit"],
     ["calibration-kit", "--device", "no-such-device", "--out", "kit"], "unknown device 'no-such-device'"),
])
def test_old_command_names_still_work(new: list[str], old: list[str], message: str) -> None:
    """The latency table's commands were named after 'calibration' (which is INT8's); the old spellings are aliases."""
    for args in (new, old):
        result = runner.invoke(app, args)
        assert result.exit_code == 2
        assert message in " ".join(result.stderr.split()), result.stderr
    if old[0] == "bench":
        assert "'gtnpipe bench --calibrate' is now 'gtnpipe latency-table'" in result.stderr


def test_pool_info_json() -> None:
    result = runner.invoke(app, ["pool", "info", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["pool_size"] == get_space("mbv3-28").pool_size >= 10**6
    assert info["largest"]["macs"] / info["smallest"]["macs"] >= 8
    assert info["smallest"]["arch"] == "k3e3_k3e3_k3e3_k3e3"
    assert info["choices"] == {"depths": [1, 2, 3, 4], "kernel_sizes": [3, 5, 7], "expand_ratios": [3, 4, 6]}


def test_pool_info_text() -> None:
    result = runner.invoke(app, ["pool", "info"])
    assert result.exit_code == 0
    assert "pool size: 2,966,370,867,360,000" in result.stdout
    assert "4.10M .. 35.45M (8.6x)" in result.stdout


def test_pool_sample_is_seeded_and_valid() -> None:
    first = json.loads(runner.invoke(app, ["pool", "sample", "-n", "4", "--seed", "3", "--json"]).stdout)
    again = json.loads(runner.invoke(app, ["pool", "sample", "-n", "4", "--seed", "3", "--json"]).stdout)
    assert first == again and len(first) == 4 and len({r["arch"] for r in first}) == 4
    space = get_space("mbv3-28")
    for row in first:
        arch = space.parse(row["arch"])
        assert list(arch.depths) == row["depths"]
        assert row["macs"] > 0 and row["params"] > 0
    assert ArchConfig.from_id(first[0]["arch"]).id == first[0]["arch"]


def test_data_info_json() -> None:
    result = runner.invoke(app, ["data", "info", "--recipe", "quick", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    data = load_recipe("quick").data  # the recipe's slices, not the full 55k / 5k / 10k
    assert info["splits"] == {"train": data.train_subset, "val": data.val_size, "test": data.test_subset}
    assert info["splits"]["train"] < 55000
    assert (info["channels"], info["image_hw"], len(info["classes"])) == (1, [28, 28], 10)
    assert len(info["fingerprint"]) == 64


def test_train_json_and_cache_hit(tmp_path: Path) -> None:
    args = ["train", "--model", "smallest", "--recipe", str(TINY_RECIPE), "--cache-dir", str(tmp_path), "--json"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    out = json.loads(first.stdout)
    assert out["model"] == "k3e3_k3e3_k3e3_k3e3" and out["cached"] is False
    # the figure printed is the cached model's own on the test split (the tiny recipe's students sit near chance,
    # so no accuracy bar can tell training from noise here; tests/test_train.py has that bar)
    from gtnpipe.pipeline import Workspace, load_trained
    from gtnpipe.training.train import Normalizer, evaluate

    ws = Workspace.open(TINY_RECIPE, cache_dir=tmp_path, progress=False)
    net = load_trained(ws, "smallest")
    assert out["test_top1"] == evaluate(net, ws.data.test, Normalizer(ws.data.mean, ws.data.std))
    second = json.loads(runner.invoke(app, args).stdout)
    assert second["cached"] is True and second["key"] == out["key"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--model", "teacher", "--recipe", "nope"],
         "unknown recipe 'nope'; known recipes: default, kd, kd-quick, quick"),
        (["train", "--model", "k3e9_k3e3_k3e3_k3e3", "--recipe", str(TINY_RECIPE)], "expand ratios [3, 4, 6]"),
        (["train", "--model", "resnet50", "--recipe", str(TINY_RECIPE)], "cannot parse arch id 'resnet50'"),
        (["pool", "info", "--space", "vit"], "unknown search space 'vit'"),
        (["data", "info", "--data", "/no/such/data.npz"], "not found"),
        (["devices", "show", "jetson-orin"], "unknown device 'jetson-orin'; known devices: android-pixel"),
        (["bench"], "give an artifact folder (gtnpipe bench artifacts/host); the device's latency table is "
                    "'gtnpipe latency-table --device NAME'"),
        (["bench", "--calibrate"], "--calibrate needs --device NAME"),
        (["bench", "--kit", "kit"], "--device and --kit belong to 'gtnpipe latency-table --device NAME [--kit DIR]'"),
        (["bench", "no-such-folder"], "no-such-folder is not a folder"),
        (["build"], "give --device NAME|PATH (repeatable) or --all"),
        (["latency-table", "--device", "jetson-nano"], "runs tensorrt, which cannot run on this host"),
        (["latency-table", "--device", "no-such-device", "--kit", "kit"], "unknown device 'no-such-device'"),
    ],
)
def test_bad_input_is_a_clear_error(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())


def test_missing_dataset_gives_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GTNPIPE_FASHION_MNIST", str(tmp_path))
    result = runner.invoke(app, ["data", "info"])
    assert result.exit_code == 2
    assert "apt-get update && apt-get install -y dataset-fashion-mnist" in " ".join(result.stderr.split())


def test_devices_commands_run_without_torch(tmp_path: Path) -> None:
    from gtnpipe.config.profiles import profiles_dir

    listed = _run_blocked("sys.argv = ['gtnpipe', 'devices', 'list', '--json']\nfrom gtnpipe.cli import main\nmain()")
    assert listed.returncode == 0, listed.stderr
    assert {d["name"] for d in json.loads(listed.stdout)} >= {"jetson-nano", "host", "raspberry-pi-4"}
    bad = tmp_path / "host.toml"
    bad.write_text((profiles_dir() / "host.toml").read_text().replace("threads = 2", "threads = 0"))
    checked = _run_blocked(f"sys.argv = ['gtnpipe', 'devices', 'validate', {str(profiles_dir() / 'host.toml')!r}, "
                           f"{str(bad)!r}]\nfrom gtnpipe.cli import main\nmain()")
    assert checked.returncode == 2 and "ok" in checked.stdout
    assert "'threads' must be >= 1, got 0" in " ".join(checked.stderr.split())


def test_search_with_an_impossible_budget_says_how_far_to_relax(tmp_path: Path) -> None:
    from gtnpipe.config.profiles import profiles_dir

    profile = tmp_path / "tiny-mcu.toml"
    text = (profiles_dir() / "raspberry-pi-4.toml").read_text().replace('name = "raspberry-pi-4"', 'name = "tiny-mcu"')
    profile.write_text(text.replace("model_size_mb = 0.8", "model_size_mb = 0.1"))
    result = runner.invoke(app, ["search", "--device", str(profile), "--recipe", str(TINY_RECIPE)])
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    # the smallest student's INT8 .tflite: 0.398 MB at one byte per weight, times TFLite's measured INT8 factor 1.40
    assert "no student fits device 'tiny-mcu' at int8: model_size_mb = 0.1 but the lowest in the pool is 0.558" in message
    assert "Relax [budgets]" in message


def test_core_dependencies_leave_out_the_training_stack() -> None:
    """A device installs gtnpipe plus its runtime extra: the core must not pull torch, nncf or the converters."""
    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    core = {d.split("==")[0] for d in project["dependencies"]}
    assert not core & {"torch", "nncf", "onnx", "litert-torch", "ai-edge-quantizer", "onnxscript", "matplotlib"}
    extras = project["optional-dependencies"]
    assert "torch==2.13.0" in extras["train"]
    assert all(not any(d.startswith("torch") for d in extras[runtime]) for runtime in ("onnx", "openvino", "tflite"))


@pytest.mark.parametrize("bad", ["3x224", "2x28x28", "axbxc", "3x0x28"])
def test_latency_table_input_must_be_channels_by_height_by_width(bad: str) -> None:
    done = subprocess.run([sys.executable, "-m", "gtnpipe.cli", "latency-table", "--device", "host", "--input", bad],
                          capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    assert done.returncode == 2 and f"--input {bad!r}: give channels x height x width" in done.stderr
