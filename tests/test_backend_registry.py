"""The backend registry: every runtime's facts live on its backend class, and a new runtime is one module, one
profile and its tests (shown end to end with a toy runtime installed as a `gtnpipe.backends` entry point)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import HANG_TIMEOUT_S, block_imports_prelude

from gtnpipe.config.profiles import PRECISIONS, known_profiles, load_profile, profiles_dir
from gtnpipe.deploy import backends
from gtnpipe.deploy.backends import Backend, backend_class, get_backend, runtimes
from gtnpipe.errors import ConfigError
from gtnpipe.stages.keys import code_fingerprint

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("runtime", runtimes())
def test_every_registered_backend_states_what_gtnpipe_needs_to_know(runtime: str) -> None:
    cls = backend_class(runtime)
    assert issubclass(cls, Backend) and cls.runtime == runtime
    assert "fp32" in cls.precisions and set(cls.precisions) <= set(PRECISIONS)
    assert cls.extra is None or re.fullmatch(r"[a-z0-9-]+", cls.extra)
    assert cls.packages and all(re.fullmatch(r"[a-z0-9-]+", p) for p in cls.packages)
    assert cls.suffixes and all(s.startswith(".") for s in cls.suffixes)
    assert cls.converts_from and cls.converts_from <= {"onnx", "torch"}
    assert cls.int8_size_factor >= 1.0
    kind, _, where = cls.int8_size_factor_source.partition(": ")
    assert kind in ("measured", "guess") and where
    if kind == "measured":  # a measured factor names the committed results file it comes from
        assert (REPO / where).is_file(), where
        assert f"| {runtime} |" in (REPO / where).read_text()
    assert code_fingerprint(cls.code_roots())  # its compile key's code: modules that exist


def test_the_registry_imports_no_runtime_and_no_helper_module() -> None:
    """Listing runtimes (what profiles validate against) needs no SDK: a device with only numpy can load a profile."""
    code = block_imports_prelude(("torch", "onnxruntime", "openvino", "ai_edge_litert", "tflite_runtime", "tensorrt",
                                  "onnx", "nncf")) + (
        "from gtnpipe.deploy.backends import runtimes\n"
        "from gtnpipe.config.profiles import load_profile\n"
        "print(','.join(runtimes()), load_profile('raspberry-pi-4').runtime.name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('gtnpipe.deploy.backends.')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert first == "onnxruntime,openvino,tensorrt,tflite tflite"
    assert eval(second) == [f"gtnpipe.deploy.backends.{m}" for m in  # noqa: S307 (our own subprocess's list)
                            ("onnxruntime", "openvino", "tensorrt", "tensorrt_engine", "tensorrt_runner", "tflite")]


def test_every_shipped_profile_names_a_registered_runtime() -> None:
    assert {load_profile(name).runtime.name for name in known_profiles()} <= set(runtimes())


def test_an_unknown_runtime_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"no backend for runtime 'coreml'; known runtimes: onnxruntime, openvino, "
                                          r"tensorrt, tflite"):
        get_backend("coreml")


def test_a_compile_is_keyed_on_its_own_backend_only() -> None:
    """An edit in the TensorRT backend must not re-key ONNX Runtime compiles: each backend's code roots are its own."""
    roots = {r: set(backend_class(r).code_roots()) for r in runtimes()}
    for runtime, mine in roots.items():
        for other, theirs in roots.items():
            if other != runtime:
                assert not mine & theirs, (runtime, other)


# --- a toy runtime, added the way the docs say: its module, its profile, its tests; nothing in gtnpipe changes ---

TOY_MODULE = '''
"""A toy runtime: ONNX Runtime under another name, shipped by its own distribution."""
from pathlib import Path
import shutil

import numpy as np

from gtnpipe.deploy.backends import Backend, BuildResult


class ToyRunner:
    def __init__(self, path, threads):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(self, x):
        return self.session.run(None, {self.session.get_inputs()[0].name: x})[0]


class ToyBackend(Backend):
    runtime = "toy"
    precisions = ("fp32",)
    extra = None
    sdk_modules = ("onnxruntime",)
    packages = ("onnxruntime",)
    suffixes = (".toy",)
    int8_size_factor = 1.0
    int8_size_factor_source = "guess: the toy runtime builds no INT8"

    def version(self):
        return "1.0"

    def build(self, inputs, precision, out_dir):
        self.check_precision(precision)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(inputs.onnx_path, Path(out_dir) / "model.toy")
        return BuildResult("model.toy", ("model.toy",), {"toy": True})

    def load(self, model_path, *, threads, precision="fp32"):
        return ToyRunner(model_path, threads)
'''


def _install(site: Path, module: str, source: str, runtime: str, cls: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`module` installed as a distribution with a `gtnpipe.backends` entry point, on sys.path (and PYTHONPATH, for
    the fresh processes that time it)."""
    info = site / f"{module}-1.0.dist-info"
    info.mkdir(parents=True)
    (site / f"{module}.py").write_text(source)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[gtnpipe.backends]\n{runtime} = {module}:{cls}\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", str(site))


@pytest.fixture
def toy_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    _install(tmp_path / "site", "toy_runtime", TOY_MODULE, "toy", "ToyBackend", monkeypatch)
    backends._registry.cache_clear()
    yield tmp_path / "site"
    backends._registry.cache_clear()


def _toy_profile(tmp_path: Path, runtime: str, **replace: str) -> Path:
    """host's profile as device `<runtime>-board` running `runtime`."""
    text = (profiles_dir() / "host.toml").read_text().replace('name = "host"', f'name = "{runtime}-board"').replace(
        'name = "onnxruntime"', f'name = "{runtime}"').replace('version = ">=1.20,<2"', 'version = ">=1"')
    for old, new in replace.items():
        text = text.replace(old, new)
    path = tmp_path / f"{runtime}-board.toml"
    path.write_text(text)
    return path


@pytest.mark.slow
def test_a_new_runtime_is_its_module_its_profile_and_its_tests(toy_runtime: Path, tmp_path: Path) -> None:
    from gtnpipe.deploy.device_bench import bench_artifact
    from gtnpipe.pipeline import CompileOptions, compile_model

    assert "toy" in runtimes() and backend_class("toy").__module__ == "toy_runtime"
    profile = _toy_profile(tmp_path, "toy")
    assert load_profile(profile).runtime.name == "toy"

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 26 * 26, 10))
    model = tmp_path / "net.onnx"
    torch.onnx.export(net.eval(), (torch.zeros(1, 1, 28, 28),), str(model), dynamo=False)

    out = compile_model(model, profile, CompileOptions(out=tmp_path / "artifacts", cache_dir=tmp_path / "cache"))
    assert (out.runtime, out.precision, out.not_built) == ("toy", "fp32", {})
    manifest = json.loads((Path(out.folder) / "manifest.json").read_text())
    assert manifest["runtime"]["name"] == "toy" and manifest["model"]["file"] == "model.toy"
    assert manifest["provenance"]["packages"]["onnxruntime"]  # the manifest names the backend's packages
    assert manifest["precisions"][0]["parity"]["passed"]  # against ONNX Runtime FP32: the same graph, exactly
    bench = bench_artifact(Path(out.folder), runs=20, warmup=2)
    assert bench["parity"]["passed"] and bench["latency"]["p50_ms"] > 0


# A runtime whose INT8 loses the accuracy (its runner flips the logits) and whose accuracy-controlled INT8 fails in the
# toolchain: the build must record that and ship FP32, not crash (the KeyError issue 29 found by reading).
LOSSY_MODULE = TOY_MODULE.replace('runtime = "toy"', 'runtime = "lossy"').replace(
    'precisions = ("fp32",)', 'precisions = ("fp32", "int8")\n    accuracy_control = True').replace(
    "return ToyRunner(model_path, threads)", "return ToyRunner(model_path, threads, flip=precision == 'int8')").replace(
    "def __init__(self, path, threads):", "def __init__(self, path, threads, flip=False):\n        self.flip = flip").replace(
    "return self.session.run(None, {self.session.get_inputs()[0].name: x})[0]",
    "out = self.session.run(None, {self.session.get_inputs()[0].name: x})[0]\n        return -out if self.flip else out"
) + """

    def build_accuracy_controlled(self, inputs, out_dir):
        from gtnpipe.errors import BackendBuildError

        raise BackendBuildError("the lossy toolchain has no accuracy control that works")
"""


@pytest.mark.slow
def test_a_failed_accuracy_controlled_int8_is_recorded_and_fp32_ships(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       fmnist_small) -> None:
    import numpy as np

    from gtnpipe.pipeline import CompileOptions, compile_model

    _install(tmp_path / "site", "lossy_runtime", LOSSY_MODULE, "lossy", "ToyBackend", monkeypatch)
    backends._registry.cache_clear()
    try:
        profile = _toy_profile(tmp_path, "lossy", **{'precisions = ["fp32"]': 'precisions = ["int8", "fp32"]'})
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
        x, y = torch.from_numpy(fmnist_small.train.x).float() / 255, torch.from_numpy(fmnist_small.train.y)
        opt = torch.optim.Adam(net.parameters(), 1e-2)
        for _ in range(30):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        model = tmp_path / "linear.onnx"
        torch.onnx.export(net.eval(), (torch.zeros(1, 1, 28, 28),), str(model), dynamo=False)
        data = tmp_path / "slice.npz"
        np.savez(data, x_train=fmnist_small.train.x, y_train=fmnist_small.train.y, x_test=fmnist_small.test.x,
                 y_test=fmnist_small.test.y)
        options = CompileOptions(data=str(data), out=tmp_path / "artifacts", cache_dir=tmp_path / "cache")
        out = compile_model(model, profile, options)
    finally:
        backends._registry.cache_clear()
    assert out.precision == "fp32" and out.reference_top1 is not None and out.reference_top1 > 60
    assert "the lossy toolchain has no accuracy control that works" in out.not_built["int8"]
    rows = {row["precision"]: row for row in json.loads((Path(out.folder) / "manifest.json").read_text())["precisions"]}
    assert rows["int8"]["status"] == "rejected" and "points below" in rows["int8"]["reason"]
    assert rows["fp32"]["status"] == "shipped"
