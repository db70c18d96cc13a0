"""Runtime backends, each imported on demand (a device has only its own runtime installed).

A backend loads a compiled model file and runs a batch of float32 images (NCHW) to logits.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Protocol

import numpy as np

from gtnpipe.errors import BackendUnavailable, ConfigError

__all__ = ["BACKENDS", "Runner", "load_runner", "runtime_version"]


class Runner(Protocol):
    def run(self, x: np.ndarray) -> np.ndarray: ...


# runtime name -> (module, the extra that installs it)
BACKENDS: dict[str, tuple[str, str]] = {
    "onnxruntime": ("gtnpipe.backends.onnxruntime", "onnx"),
}


def _backend(runtime: str) -> ModuleType:
    if runtime not in BACKENDS:
        raise ConfigError(f"no backend for runtime {runtime!r} yet; backends: {', '.join(sorted(BACKENDS))}")
    module_name, extra = BACKENDS[runtime]
    try:
        return importlib.import_module(module_name)
    except ImportError as err:
        raise BackendUnavailable(
            f"runtime {runtime!r} is not installed ({err.name} missing); install it with "
            f"\"pip install 'gtnpipe[{extra}]'\""
        ) from err


def load_runner(runtime: str, model_path: Path, *, threads: int) -> Runner:
    return _backend(runtime).load(model_path, threads=threads)  # type: ignore[no-any-return]


def runtime_version(runtime: str) -> str:
    return str(_backend(runtime).version())
