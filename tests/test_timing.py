"""The one way gtnpipe measures a compiled model: a fresh process holding one session (gtnpipe.deploy.timing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DeployCase

from gtnpipe.deploy.timing import Machine, measure_fresh, measure_peak_rss_mb


def _bare_python_rss_mb() -> float:
    code = ("from pathlib import Path\n"
            "print(next(int(l.split()[1]) for l in Path('/proc/self/status').read_text().splitlines() "
            "if l.startswith('VmHWM:')) / 1e3)")
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is read from /proc (Linux)")
def test_fresh_measurement_times_the_given_batch_and_counts_the_runtime(deploy_case: DeployCase) -> None:
    onnx = deploy_case.inputs.onnx_path
    m = measure_fresh("onnxruntime", onnx, threads=1, input_shape=(1, 1, 28, 28), warmup=3, runs=25,
                      x=deploy_case.x_test[:1])
    assert m.latency.runs == 25 and m.latency.batch_size == 1
    assert 0 < m.latency.p50_ms <= m.latency.p90_ms <= m.latency.p99_ms
    # the child loaded ONNX Runtime and the model: well above a bare interpreter (~10 MB), far below torch's ~300 MB
    assert _bare_python_rss_mb() + 10 < m.peak_rss_mb < 250
    assert measure_peak_rss_mb("onnxruntime", onnx, threads=1, input_shape=(1, 1, 28, 28)) == pytest.approx(
        m.peak_rss_mb, rel=0.25)


def test_fresh_measurement_rejects_a_batch_of_the_wrong_shape(deploy_case: DeployCase) -> None:
    with pytest.raises(RuntimeError, match="fresh process failed"):
        measure_fresh("onnxruntime", deploy_case.inputs.onnx_path, threads=1, input_shape=(1, 1, 28, 28), warmup=0,
                      runs=1, x=np.zeros((1, 3, 28, 28), dtype=np.float32))


def test_machine_names_this_cpu() -> None:
    here = Machine.here()
    assert here.cpu_count >= 1 and here.cpu and str(here.cpu_count) in here.describe()
    if Path("/proc/cpuinfo").exists():
        assert here.cpu in Path("/proc/cpuinfo").read_text()
