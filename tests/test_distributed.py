"""Data-parallel training: two CPU processes under torchrun (gloo) end with identical weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import HANG_TIMEOUT_S

pytestmark = pytest.mark.slow  # trains under torchrun
WORKER = Path(__file__).parent / "ddp_worker.py"


@pytest.mark.parametrize("model_kind", ["static", "supernet"])
def test_two_ranks_end_with_identical_weights(tmp_path: Path, model_kind: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(WORKER),
         str(tmp_path), model_kind],
        env=env, capture_output=True, text=True, timeout=HANG_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world"] == r1["world"] == 2
    assert r0["state"].keys() == r1["state"].keys()
    for name in r0["state"]:
        assert torch.equal(r0["state"][name], r1["state"][name]), name
    assert r0["test_top1"] == r1["test_top1"]
