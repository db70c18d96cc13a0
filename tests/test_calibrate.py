"""Calibration in the real runtimes (few runs: this checks the mechanics, bench/predictor.py the accuracy)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HANG_TIMEOUT_S, block_imports_prelude

from gtnpipe.config.profiles import load_profile
from gtnpipe.deploy.backends import get_backend
from gtnpipe.deploy.timing import Machine
from gtnpipe.devices.cost import LatencyTable, table_path
from gtnpipe.devices.latency_table import user_tables_dir
from gtnpipe.errors import ArtifactError, ConfigError
from gtnpipe.fsutil import sha256_file
from gtnpipe.measure.host_table import (
    CALIBRATE_ENV,
    build_calibration_kit,
    calibrate,
    calibration_archs,
    calibration_wanted,
    stale_table_reason,
)
from gtnpipe.measure.kit import KIT_FILE, calibrate_from_kit, fit_precision_table
from gtnpipe.space.schedule import all_units, units
from gtnpipe.space.spaces import TaskShape, get_space
from gtnpipe.stages.search import cost_model

SPACE = get_space("mbv3-28")
TASK = TaskShape(1, (28, 28), 10)


@pytest.fixture(scope="module")
def host_kit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    kit_dir = tmp_path_factory.mktemp("kits") / "host"
    build_calibration_kit(load_profile("host"), SPACE, TASK, kit_dir, n_networks=2)
    return kit_dir


def _check_table(table: LatencyTable, kit: dict, tables_dir: Path, device: str) -> None:
    """What every calibrated table must show: all units timed, plausible memory, the cost model reading it."""
    fp32 = table.precisions["fp32"]
    assert set(fp32.units_ms) == {u.key for u in all_units(SPACE, TASK)}
    assert all(ms > 0 for ms in fp32.units_ms.values())
    networks = table.measured["networks"]
    assert [n["arch"] for n in networks] == [a.id for a in calibration_archs(SPACE, 2)]
    # a real process with python, numpy and the runtime loaded takes tens of MB; the largest student most
    assert all(30 < n["peak_rss_mb"] < 1000 for n in networks)
    assert networks[1]["peak_rss_mb"] > networks[0]["peak_rss_mb"]
    # one fit, whoever runs it: refitting the recorded measurements gives the table's figures
    refit = fit_precision_table(fp32.units_ms, [n["units"] for n in kit["networks"]],
                                [(n["p50_ms"], n["p90_ms"]) for n in networks], [n["model_mb"] for n in networks],
                                [n["peak_rss_mb"] for n in networks])
    assert refit == fp32
    model = cost_model(load_profile(device), SPACE, TASK, precision="fp32", tables_dir=tables_dir)  # the kit is fp32
    largest = model.estimate(SPACE.largest())
    assert largest.latency_source == "measured-table" and largest.memory_source == "measured-table"
    # the kit's model bytes are the cost model's: its memory estimate is the fit at the recorded model_mb
    assert largest.peak_memory_mb == pytest.approx(fp32.memory_overhead_mb + fp32.memory_slope * networks[1]["model_mb"],
                                                   rel=1e-9)
    assert table.runtime_version == get_backend(table.runtime).version() != ""


@pytest.mark.slow
def test_a_kit_timed_without_torch_writes_the_table_the_cost_model_uses(host_kit: Path, tmp_path: Path) -> None:
    kit = json.loads((host_kit / KIT_FILE).read_text())
    assert [u["key"] for u in kit["units"]] == [u.key for u in all_units(SPACE, TASK)]
    assert [n["units"] for n in kit["networks"]] == [[u.key for u in units(a, SPACE, TASK)] for a in calibration_archs(SPACE, 2)]
    assert kit["profile_sha256"] == load_profile("host").sha256() and kit["runtime"] == "onnxruntime"
    assert all(sha256_file(host_kit / name) == record["sha256"] for name, record in kit["files"].items())
    # the device side, as a device without the training stack runs it
    code = block_imports_prelude() + (
        f"sys.argv = ['gtnpipe', 'bench', '--calibrate', '--device', 'host', '--kit', {str(host_kit)!r}, '--runs', '10', "
        f"'--rounds', '1', '--tables-dir', {str(tmp_path)!r}, '--json']\nfrom gtnpipe.cli import main\nmain()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    path = table_path("host", SPACE.name, TASK, tmp_path)
    assert info["table"] == str(path) and info["units"] == len(kit["units"])
    table = LatencyTable.from_json(path.read_text(), where=str(path))
    assert table.measured["runs"] == 10 and table.measured["kit"]["sha256"] == sha256_file(host_kit / KIT_FILE)
    _check_table(table, kit, tmp_path, "host")


def test_a_kit_for_another_profile_is_refused(host_kit: Path) -> None:
    command = re.escape(f"'gtnpipe latency-kit --device x86-server --out {host_kit}'")
    with pytest.raises(ConfigError, match=f"made for device 'host'.*{command}"):
        calibrate_from_kit(host_kit, load_profile("x86-server"), runs=5, rounds=1)
    changed = dataclasses.replace(load_profile("host"), threads=1)  # same name, other settings
    with pytest.raises(ConfigError, match="fields that differ: threads"):
        calibrate_from_kit(host_kit, changed, runs=5, rounds=1)


def test_a_tampered_kit_file_is_refused_by_name(host_kit: Path, tmp_path: Path) -> None:
    kit_dir = shutil.copytree(host_kit, tmp_path / "kit")
    name = json.loads((kit_dir / KIT_FILE).read_text())["units"][3]["model"]
    data = bytearray((kit_dir / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (kit_dir / name).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"{name} does not match its sha256 in kit.json"):
        calibrate_from_kit(kit_dir, load_profile("host"), runs=5, rounds=1)


@pytest.mark.slow
def test_an_openvino_kit_is_timed_in_openvino(tmp_path: Path) -> None:
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'gtnpipe[openvino]')")
    nuc = load_profile("intel-nuc")
    kit_dir = tmp_path / "kit"
    build_calibration_kit(nuc, SPACE, TASK, kit_dir, n_networks=2)
    kit = json.loads((kit_dir / KIT_FILE).read_text())
    assert all(m["model"].endswith("/model-fp32.xml") for m in kit["units"] + kit["networks"])
    assert len(kit["files"]) == 2 * (len(kit["units"]) + len(kit["networks"]))  # .xml + .bin each
    table = calibrate_from_kit(kit_dir, nuc, runs=5, rounds=1)
    assert (table.device, table.runtime, table.threads) == ("intel-nuc", "openvino", nuc.threads)
    table.save(table_path("intel-nuc", SPACE.name, TASK, tmp_path))
    _check_table(table, kit, tmp_path, "intel-nuc")


@pytest.mark.slow
def test_calibrating_this_host_in_one_go(tmp_path: Path) -> None:
    table = calibrate(load_profile("host"), SPACE, TASK, n_networks=2, runs=5, rounds=1)
    table.save(table_path("host", SPACE.name, TASK, tmp_path))
    assert LatencyTable.from_json(table_path("host", SPACE.name, TASK, tmp_path).read_text(), where="t") == table
    assert cost_model(load_profile("host"), SPACE, TASK, tables_dir=tmp_path).estimate(SPACE.smallest()).latency_source \
        == "measured-table"


def test_calibration_refuses_what_this_host_cannot_measure(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="runs tensorrt, which cannot run on this host .*TensorRT.* Build a calibration "
                                          r"kit here \('gtnpipe latency-kit --device jetson-nano --out kit-jetson-nano'\)"):
        calibrate(load_profile("jetson-nano"), SPACE, TASK)
    with pytest.raises(ConfigError, match="calibration at 'int8' is not available yet"):
        calibrate(load_profile("host"), SPACE, TASK, precision="int8")
    (tmp_path / "notes.txt").write_text("not a kit")
    with pytest.raises(ConfigError, match="is not a calibration kit; give --out a new folder"):
        build_calibration_kit(load_profile("host"), SPACE, TASK, tmp_path, n_networks=2)


def test_the_committed_host_table_matches_the_host_profile() -> None:
    model = cost_model(load_profile("host"), SPACE, TASK)
    assert model.table is not None, model.table_note
    assert model.estimate(SPACE.smallest()).latency_source == "measured-table"


def test_host_calibration_on_the_way_is_on_unless_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CALIBRATE_ENV, raising=False)
    assert calibration_wanted(None)
    for off in ("0", "false", "no"):
        monkeypatch.setenv(CALIBRATE_ENV, off)
        assert not calibration_wanted(None)
        assert calibration_wanted(True)  # --calibrate wins over the environment
    monkeypatch.setenv(CALIBRATE_ENV, "1")
    assert not calibration_wanted(False)
    assert stale_table_reason(load_profile("raspberry-pi-4"), SPACE, TASK) is None  # not this machine: never measured here


@pytest.mark.slow
def test_the_host_table_is_reused_on_this_machine_and_remeasured_on_another(tmp_path: Path) -> None:
    from gtnpipe import pipeline

    host = load_profile("host")
    other = TaskShape(1, (20, 20), 10)
    assert "no latency table for host at mbv3-28 1x20x20" in (stale_table_reason(host, SPACE, other) or "")
    info = pipeline.calibrate_device(host, n_networks=2, runs=5, rounds=1)  # into the user data directory
    path = Path(info["table"])
    assert path.is_relative_to(user_tables_dir()) and table_path("host", SPACE.name, TASK) == path
    assert stale_table_reason(host, SPACE, TASK) is None  # measured here: the next build reuses it
    assert 0.0 <= info["fit_within_10pct"] <= 1.0 and info["networks"] == 4
    raw = json.loads(path.read_text())
    assert raw["measured"]["machine"] == Machine.here().describe()
    # same name, another CPU (no real one is family 0: the test once named family 25, then ran on one)
    raw["measured"]["machine"] = "AMD EPYC (family 0 model 1 stepping 1, avx2), 2 CPUs"
    path.write_text(json.dumps(raw))
    assert "was measured on 'AMD EPYC (family 0 model 1" in (stale_table_reason(host, SPACE, TASK) or "")
    raw["measured"]["machine"] = Machine.here().describe()
    raw["runtime_version"] = "1.0.0"
    path.write_text(json.dumps(raw))
    assert "measured with onnxruntime 1.0.0, this machine has" in (stale_table_reason(host, SPACE, TASK) or "")
