"""PyTorch -> ONNX export at the opset a device's runtime parses, and what every backend compiles from.

The deployed model takes what a device has: float32 NCHW images with pixel values in [0, 1].
`Deployable` folds the training normalisation (the train split's mean and std) into the graph,
so no runtime needs to know it.

Uses torch's TorchScript-based exporter (`dynamo=False`): it writes any opset from 7 up
(TensorRT 8.2 on a Jetson Nano parses at most opset 13), takes ~0.5 s for a student, and
folds constants. The dynamo exporter starts at opset 18 and takes ~8 s per student here
(measured, torch 2.13); switch when the TorchScript exporter is removed.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gtnpipe.deploy.backends import ExportedModel
from gtnpipe.fsutil import atomic_write_bytes
from gtnpipe.space.spaces import TaskShape

__all__ = ["EXPORT_OPSET", "Deployable", "compile_inputs", "export_onnx", "logits_of", "to_unit_float"]

EXPORT_OPSET = 17  # what we export at unless the device's runtime needs lower (profile runtime.max_onnx_opset)


def to_unit_float(x_uint8: np.ndarray) -> np.ndarray:
    """uint8 images -> the deployed model's input: float32 in [0, 1]."""
    return x_uint8.astype(np.float32) / np.float32(255.0)


class Deployable(nn.Module):
    """`net` with the input normalisation inside: float32 [0, 1] images in, logits out."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.get_buffer("mean"), self.get_buffer("std")
        out: torch.Tensor = self.net((x - mean) / std)
        return out


def logits_of(model: nn.Module, chunks: Iterable[np.ndarray]) -> np.ndarray:
    """`model`'s logits on uint8 image chunks (a split on disk is decoded a chunk at a time: Split.chunks(512))."""
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(to_unit_float(x))).numpy() for x in chunks])


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
            torch.onnx.export(model, (torch.zeros(shape),), buffer,  # type: ignore[arg-type]  # a file object works
                              opset_version=min(EXPORT_OPSET, max_opset), dynamo=False, input_names=["input"],
                              output_names=["logits"], do_constant_folding=True)
    finally:
        model.train(was_training)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def compile_inputs(model: Deployable, task: TaskShape, work_dir: Path, *, batch_size: int, max_opset: int,
                   calibration_uint8: np.ndarray) -> ExportedModel:
    """Export `model` to `work_dir/model.onnx` and bundle what the backends build from."""
    shape = (batch_size, task.in_channels, *task.image_hw)
    onnx_path = export_onnx(model, task, work_dir / "model.onnx", input_shape=shape, max_opset=max_opset)
    return ExportedModel(onnx_path=onnx_path, input_shape=shape, calibration=to_unit_float(calibration_uint8),
                         max_onnx_opset=max_opset, torch_module=model.train(False))
