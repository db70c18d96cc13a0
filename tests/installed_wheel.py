"""What tests/test_wheel.py and tests/test_remote.py share: the wheel installed in a fresh venv (a device with
gtnpipe[onnx] and no torch) and a real host artifact for it to benchmark. tests/conftest.py makes them session
fixtures (`installed`, `host_artifact`), so the wheel is built and installed once for both.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
from conftest import HANG_TIMEOUT_S, DeployCase

from gtnpipe.config.profiles import load_profile
from gtnpipe.config.toml import as_dict

REPO = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
REFERENCE_IMAGES = 200  # what the test artifact carries for bench's parity check (a real build ships 500)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without what would let the checkout or this venv leak into the fresh one."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    return {**env, "PYTHONNOUSERSITE": "1", "NO_COLOR": "1", "COLUMNS": "200", **extra}


class InstalledWheel:
    """A fresh venv outside the tree into which `gtnpipe[onnx]` is being installed from the wheel built here."""

    def __init__(self, root: Path) -> None:
        assert not root.is_relative_to(REPO), f"{root} must be outside the checkout"
        self.root, self.venv, self.data_dir = root, root / "venv", root / "user-data"
        # The build reads only what pyproject names: the package, the folders package-dir maps in, the readme.
        # Copying those keeps the build's build/ and egg-info out of the checkout others work in.
        src = root / "src"
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for name in {"gtnpipe", *SETUPTOOLS["package-dir"].values()}:
            shutil.copytree(REPO / name, src / name, ignore=ignore)
        for name in ("pyproject.toml", tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["readme"]):
            shutil.copyfile(REPO / name, src / name)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--disable-pip-version-check",
                        "-q", "-w", str(root / "dist"), str(src)], check=True, cwd=root, timeout=HANG_TIMEOUT_S, env=clean_env())
        (self.wheel,) = (root / "dist").glob("gtnpipe-*.whl")
        subprocess.run([sys.executable, "-m", "venv", str(self.venv)], check=True, cwd=root, timeout=HANG_TIMEOUT_S,
                       env=clean_env())
        self.log = (root / "pip-install.log").open("w")
        self.install = subprocess.Popen([str(self.venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                                         f"{self.wheel}[onnx]"], cwd=root, env=clean_env(), stdout=self.log,
                                        stderr=subprocess.STDOUT)
        self.seconds = {"build and venv": time.perf_counter() - start}

    def wait(self) -> None:
        start = time.perf_counter()
        rc = self.install.wait(timeout=HANG_TIMEOUT_S)
        self.log.close()
        self.seconds["install"] = time.perf_counter() - start
        assert rc == 0, f"pip install of {self.wheel.name}[onnx] failed:\n{(self.root / 'pip-install.log').read_text()[-3000:]}"

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A command of the installed venv, run from a folder outside the checkout, with its own user data dir."""
        exe = self.venv / "bin" / args[0]
        return subprocess.run([str(exe), *args[1:]], cwd=self.root, env=clean_env(GTNPIPE_DATA_DIR=str(self.data_dir)),
                              capture_output=True, text=True, timeout=HANG_TIMEOUT_S)

    def close(self) -> None:
        if self.install.poll() is None:
            self.install.kill()
            self.install.wait()
        self.log.close()


def make_host_artifact(deploy_case: DeployCase, root: Path) -> Path:
    """A real host artifact folder under `root`: the deploy fixture's trained student compiled by the ONNX Runtime
    backend at fp32, its reference images and torch logits, a schema-checked manifest with every file's sha256."""
    from gtnpipe.deploy.artifacts import write_artifact
    from gtnpipe.deploy.backends import get_backend
    from gtnpipe.deploy.parity import compare, run_batched
    from gtnpipe.space.counting import count
    from gtnpipe.space.spaces import get_space

    profile, backend = load_profile("host"), get_backend("onnxruntime")
    assert deploy_case.inputs.input_shape[0] == profile.batch_size
    built = backend.build(deploy_case.inputs, "fp32", root / "compiled")
    x = deploy_case.x_test[:REFERENCE_IMAGES]
    torch_logits, labels = deploy_case.torch_logits[:REFERENCE_IMAGES], deploy_case.y_test[:REFERENCE_IMAGES]
    runner = backend.load(root / "compiled" / built.model_file, threads=profile.threads)
    logits = run_batched(runner, x, batch_size=profile.batch_size)
    parity = compare(logits, torch_logits, labels, backend="onnxruntime", precision="fp32",
                     max_drop_points=profile.budgets.max_accuracy_drop_points)
    assert parity.passed, parity.failures
    space = get_space("mbv3-28")
    net = count(space.parse(deploy_case.arch), space, deploy_case.task)
    size = (root / "compiled" / built.model_file).stat().st_size
    manifest = {
        "schema_version": 1,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "gtnpipe_version": "0.1.0",
        "device": {"name": profile.name, "profile": profile.to_dict(), "profile_sha256": profile.sha256()},
        "runtime": {"name": "onnxruntime", "version_range": profile.runtime.version, "built_with": backend.version(),
                    "max_onnx_opset": profile.runtime.max_onnx_opset},
        "model": {"arch": deploy_case.arch, "macs": net.macs, "params": net.params, "precision": "fp32",
                  "file": built.model_file, "files": list(built.files), "threads": profile.threads,
                  "input": {"name": "input", "shape": list(deploy_case.inputs.input_shape), "dtype": "float32",
                            "layout": "NCHW", "value_range": [0.0, 1.0]},
                  "output": {"name": "logits", "shape": [profile.batch_size, 10], "meaning": "unnormalised class scores"},
                  "classes": [f"class {i}" for i in range(10)], "build_notes": built.notes},
        "provenance": {"recipe": "deploy (tests/data/deploy.toml)", "teacher": "none", "teacher_key": None,
                       "student_key": "tests/test_wheel.py", "dataset": "fashion-mnist", "dataset_fingerprint": "test slice",
                       "packages": {}},
        "accuracy": {"test_images": REFERENCE_IMAGES, "torch_fp32_top1": parity.torch_top1,
                     "shipped_top1": parity.artifact_top1, "estimated_top1": parity.torch_top1},
        "precisions": [{"precision": "fp32", "status": "shipped", "reason": "the test artifact", "parity": parity.to_dict(),
                        "latency_ms_p50": None, "size_bytes": size}],
        "predicted": {"latency_ms_p90": 0.0, "latency_source": "none", "peak_memory_mb": 0.0, "memory_source": "none",
                      "model_size_mb": size / 1e6, "size_source": "file"},
        "budgets": as_dict(profile.budgets),
        "reference": {"inputs": "reference/inputs.npy", "logits": "reference/logits.npy", "labels": "reference/labels.npy",
                      "artifact_logits": "reference/artifact_logits.npy", "images": REFERENCE_IMAGES},
    }

    def fill(staging: Path) -> list[str]:
        for name in built.files:
            shutil.copyfile(root / "compiled" / name, staging / name)
        (staging / "reference").mkdir()
        arrays = {"inputs": x, "logits": torch_logits, "labels": labels.astype(np.int64), "artifact_logits": logits}
        for name, array in arrays.items():
            np.save(staging / "reference" / f"{name}.npy", array)
        return [*built.files, *(f"reference/{name}.npy" for name in arrays)]

    return write_artifact(root / "artifacts" / "host", manifest, fill)
