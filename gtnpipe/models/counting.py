"""MACs and parameters of any torch module, by hooks on one forward pass (the reference that the
analytic `gtnpipe.space.counting.count` is tested against, and the counter for the teacher)."""

from __future__ import annotations

import torch
from torch import nn

from gtnpipe.space.counting import NetCost
from gtnpipe.space.spaces import TaskShape

__all__ = ["count_module"]


def count_module(model: nn.Module, task: TaskShape) -> NetCost:
    """MACs and parameters of any module by running one input through it with hooks.

    The reference that `count` is tested against, and the counter for models outside the
    pool (the teacher). Same conventions as `count`.
    """
    macs = 0

    def on_conv(module: nn.Conv2d, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal macs
        kh, kw = module.kernel_size
        macs += output.shape[2] * output.shape[3] * kh * kw * module.in_channels // module.groups * module.out_channels

    def on_linear(module: nn.Linear, _inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        nonlocal macs
        macs += module.in_features * module.out_features

    handles = [m.register_forward_hook(on_conv) for m in model.modules() if isinstance(m, nn.Conv2d)]
    handles += [m.register_forward_hook(on_linear) for m in model.modules() if isinstance(m, nn.Linear)]
    was_training = model.training
    try:
        model.train(False)
        with torch.no_grad():
            model(torch.zeros(1, task.in_channels, *task.image_hw))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return NetCost(macs, sum(p.numel() for p in model.parameters()))
