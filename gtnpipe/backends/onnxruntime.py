"""ONNX Runtime, CPU execution provider."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

__all__ = ["OrtRunner", "load", "version"]


def version() -> str:
    return str(ort.__version__)


class OrtRunner:
    def __init__(self, model_path: Path, *, threads: int) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]


def load(model_path: Path, *, threads: int) -> OrtRunner:
    return OrtRunner(model_path, threads=threads)
