"""ONNX Runtime backend against the template contract (FP32 copy of the export, NNCF INT8)."""

from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed (pip install 'gtnpipe[onnx]')")

from backend_template import BackendContract  # noqa: E402


class TestOnnxRuntime(BackendContract):
    runtime = "onnxruntime"
