"""PyTorch -> ONNX export at the opset a device's runtime parses.

Uses torch's TorchScript-based exporter (`dynamo=False`): it writes any opset from 7 up
(TensorRT 8.2 on a Jetson Nano parses at most opset 13), takes ~0.5 s for a student, and
folds constants. The dynamo exporter starts at opset 18 and takes ~8 s per student here
(measured, torch 2.13); switch when the TorchScript exporter is removed.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from torch import nn

from gtnpipe.fsutil import atomic_write_bytes
from gtnpipe.supernet.space import TaskShape

__all__ = ["EXPORT_OPSET", "export_onnx"]

EXPORT_OPSET = 17  # what we export at unless the device's runtime needs lower (profile runtime.max_onnx_opset)


def export_onnx(model: nn.Module, task: TaskShape, path: Path, *, batch_size: int = 1, max_opset: int = EXPORT_OPSET,
                input_shape: tuple[int, ...] | None = None) -> Path:
    """Write `model` (in inference mode) as ONNX with input 'input' and output 'logits', atomically."""
    shape = input_shape or (batch_size, task.in_channels, *task.image_hw)
    was_training = model.training
    model.train(False)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            torch.onnx.export(model, (torch.zeros(shape),), buffer, opset_version=min(EXPORT_OPSET, max_opset),
                              dynamo=False, input_names=["input"], output_names=["logits"], do_constant_folding=True)
    finally:
        model.train(was_training)
    atomic_write_bytes(path, buffer.getvalue())
    return path
