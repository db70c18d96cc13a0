"""The device side (gtnpipe bench's timing, devices, fleet) in a Python that lacks what Windows lacks.

Every Python process these tests start, and every process those start (measure_fresh's timing child), runs a
sitecustomize that makes `import resource` fail and removes os.fchmod, as on Windows (os.fchmod arrives there in
Python 3.13), and blocks the training stack, which a device does not have. What only a real Mac or Windows machine
shows (sysctl's and the registry's answers, Windows' peak working set) is tested with those facts faked in
tests/test_timing.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HANG_TIMEOUT_S, TRAINING_STACK, block_imports_prelude

WINDOWS_LIKE = block_imports_prelude((*TRAINING_STACK, "resource")) + "import os\ndel os.fchmod\n"


@pytest.fixture
def windows_like_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(WINDOWS_LIKE)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def _python(code: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=HANG_TIMEOUT_S)


def _gtnpipe(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gtnpipe.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=HANG_TIMEOUT_S)


def test_the_sitecustomize_makes_python_windows_like(windows_like_env: dict[str, str], tmp_path: Path) -> None:
    done = _python("import os, sys\n"
                   "try:\n    import resource\nexcept ImportError:\n    print('no resource')\n"
                   "print(hasattr(os, 'fchmod'), 'torch' in sys.modules)", windows_like_env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["no resource", "False False"]


def _relu_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["logits"])], "relu",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 28, 28])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, 28, 28])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_fresh_measurement_and_atomic_writes_without_resource_and_fchmod(windows_like_env: dict[str, str],
                                                                         tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    model = _relu_onnx(tmp_path / "relu.onnx")
    code = ("import json, sys\n"
            "from pathlib import Path\n"
            "from gtnpipe.cache import Cache\n"
            "from gtnpipe.deploy.timing import Machine, measure_fresh\n"
            "from gtnpipe.fsutil import atomic_write_json\n"
            f"m = measure_fresh('onnxruntime', Path({str(model)!r}), threads=1, input_shape=(1, 1, 28, 28), warmup=2,"
            " runs=10)\n"
            "atomic_write_json(Path('bench.json'), {'p50_ms': m.latency.p50_ms, 'peak_rss_mb': m.peak_rss_mb,"
            " 'machine': Machine.here().describe()})\n"
            "cache = Cache(Path('cache'))\n"
            "with cache.locked('models', 'k' * 64), cache.writing('models', 'k' * 64, spec={}, meta={}) as d:\n"
            "    (d / 'w').write_bytes(b'x')\n"
            "print(cache.verify('models', 'k' * 64).file('w').read_bytes().decode())\n")
    done = _python(code, windows_like_env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "x"
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert 0 < bench["p50_ms"] < 1000 and 10 < bench["peak_rss_mb"] < 1000 and "CPUs" in bench["machine"]


def test_devices_and_fleet_commands_without_resource_and_fchmod(windows_like_env: dict[str, str],
                                                                tmp_path: Path) -> None:
    listed = _gtnpipe(windows_like_env, tmp_path, "devices", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "host" in {d["name"] for d in json.loads(listed.stdout)}
    runtimes = _gtnpipe(windows_like_env, tmp_path, "devices", "runtimes", "--json")
    assert runtimes.returncode == 0, runtimes.stderr
    assert "CPUs" in json.loads(runtimes.stdout)["machine"]
    fleet = tmp_path / "artifacts"
    (fleet / "phone").mkdir(parents=True)
    (fleet / "phone" / "manifest.json").write_text("{}")  # unreadable: a row that says so, and an index written
    done = _gtnpipe(windows_like_env, tmp_path, "fleet", str(fleet), "--json")
    assert done.returncode == 0, done.stderr
    assert "| phone | unreadable" in (fleet / "index.md").read_text()
