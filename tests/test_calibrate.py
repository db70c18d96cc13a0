"""Calibration in the real ONNX Runtime (few runs: this checks the mechanics, bench/predictor.py the accuracy)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from gtnpipe.calibrate import calibrate, calibration_archs
from gtnpipe.cost import CostModel, LatencyTable, table_path
from gtnpipe.errors import ConfigError
from gtnpipe.profiles import load_profile
from gtnpipe.supernet import TaskShape, get_space
from gtnpipe.supernet.schedule import all_units

SPACE = get_space("mbv3-28")
TASK = TaskShape(1, (28, 28), 10)


@pytest.mark.slow
def test_calibration_writes_a_table_the_cost_model_uses(tmp_path: Path) -> None:
    host = load_profile("host")
    table = calibrate(host, SPACE, TASK, n_networks=2, runs=5, rounds=1)
    fp32 = table.precisions["fp32"]
    assert set(fp32.units_ms) == {u.key for u in all_units(SPACE, TASK)}
    assert all(ms > 0 for ms in fp32.units_ms.values())
    networks = table.measured["networks"]
    assert [n["arch"] for n in networks] == [a.id for a in calibration_archs(SPACE, 2)]
    # a real process with python, numpy and onnxruntime loaded takes tens of MB; the largest student most
    assert all(30 < n["peak_rss_mb"] < 1000 for n in networks)
    assert networks[1]["peak_rss_mb"] > networks[0]["peak_rss_mb"]
    table.save(table_path("host", tmp_path))
    assert LatencyTable.from_json(table_path("host", tmp_path).read_text(), where="t") == table
    estimate = CostModel(host, SPACE, TASK, tables_dir=tmp_path).estimate(SPACE.largest())
    assert estimate.latency_source == "measured-table" and estimate.memory_source == "measured-table"
    assert json.loads(table.to_json())["runtime_version"] == table.runtime_version != ""


def test_calibration_refuses_what_this_host_cannot_measure() -> None:
    with pytest.raises(ConfigError, match="can calibrate onnxruntime devices only"):
        calibrate(load_profile("raspberry-pi-4"), SPACE, TASK)
    with pytest.raises(ConfigError, match="calibration at 'int8' is not available yet"):
        calibrate(dataclasses.replace(load_profile("host")), SPACE, TASK, precision="int8")


def test_the_committed_host_table_matches_the_host_profile() -> None:
    model = CostModel(load_profile("host"), SPACE, TASK)
    assert model.table is not None, model.table_note
    assert model.estimate(SPACE.smallest()).latency_source == "measured-table"
