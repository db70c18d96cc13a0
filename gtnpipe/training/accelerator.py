"""Where training runs: `--train-device auto|cpu|cuda[:N]` resolved to a torch device, with errors that say why not.

auto is CUDA when this torch sees a GPU (under torchrun, the GPU of the process's LOCAL_RANK), else the CPU. Where a
student trained is recorded (the stage's cache entry, the manifest), not keyed: the same input trained on a CPU or
a GPU is one cache entry (the first to finish writes it).
"""

from __future__ import annotations

import os

import torch

from gtnpipe.errors import TrainError

__all__ = ["describe", "train_device"]


def train_device(name: str = "auto") -> torch.device:
    """The device `name` asks for: "auto", "cpu", "cuda" or "cuda:N"."""
    text = name.strip().lower()
    if text == "auto":
        return _cuda(None) if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA (a CPU build)"
            raise TrainError(f"--train-device {name}: torch {torch.__version__} ({build}) sees no GPU here; train with "
                             "--train-device cpu (or auto), or install a CUDA build of torch on a machine with a GPU")
        return _cuda(int(text[5:]) if ":" in text else None)
    raise TrainError(f"--train-device {name!r}: allowed values are auto, cpu, cuda and cuda:N (N a GPU index)")


def _cuda(index: int | None) -> torch.device:
    count = torch.cuda.device_count()
    if index is None:
        index = int(os.environ.get("LOCAL_RANK", "0")) % count  # torchrun: one GPU per process
    if index >= count:
        raise TrainError(f"--train-device cuda:{index}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
    # deterministic cuBLAS (what torch.use_deterministic_algorithms asks for), set before cuBLAS starts
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return torch.device("cuda", index)


def describe(device: torch.device) -> str:
    """"cpu", or "cuda:0 (NVIDIA H200)": what a manifest records."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)
