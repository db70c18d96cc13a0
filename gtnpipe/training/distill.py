"""Student distillation: Hinton KD, (1 - alpha) CE + alpha tau^2 KL(p_T^tau || p_S^tau).

The teacher is the costly part on a CPU. When the student trains without augmentation, the
teacher sees exactly the same images every epoch, so its logits are computed once
(`teacher_logits`) and looked up by index; with augmentation the teacher runs on each batch.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gtnpipe.config.recipes import DistillConfig, TrainConfig
from gtnpipe.data.datasets import Dataset, Split
from gtnpipe.training.gtn import kd_kl
from gtnpipe.training.loader import SplitLoader, in_order
from gtnpipe.training.train import FitResult, LossFn, Normalizer, fit

__all__ = ["distill", "kd_loss", "logit_scale", "teacher_logits"]


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor, *, alpha: float,
            temperature: float, label_smoothing: float = 0.0) -> torch.Tensor:
    ce = F.cross_entropy(student_logits, y, label_smoothing=label_smoothing)
    return (1 - alpha) * ce + alpha * kd_kl(teacher_logits, student_logits, temperature)


def logit_scale(logits: torch.Tensor, target_std: float) -> float:
    """The factor that makes the mean per-image standard deviation of `logits` equal `target_std`."""
    return target_std / float(logits.std(dim=1).mean())


@torch.no_grad()
def teacher_logits(teacher: nn.Module, split: Split, norm: Normalizer, *, batch_size: int = 1000,
                   device: torch.device | None = None) -> torch.Tensor:
    """The teacher's logits (eval mode) for every image of `split`, in order, on the CPU (computed on `device`)."""
    first = next(teacher.parameters(), None)  # a teacher run by ONNX Runtime has none
    was_training, was_on = teacher.training, first.device if first is not None else torch.device("cpu")
    teacher.train(False)
    teacher.to(device or "cpu")
    out = torch.cat([teacher(norm(x.to(device or "cpu"))).float().cpu()
                     for x, _ in SplitLoader(split)(in_order(len(split), batch_size))])
    teacher.train(was_training).to(was_on)
    return out


def distill(
    student: nn.Module,
    teacher: nn.Module | None,
    data: Dataset,
    train_cfg: TrainConfig,
    kd_cfg: DistillConfig | None,
    *,
    seed: int,
    run_id: str,
    checkpoint_dir: Path | None = None,
    cached_logits: torch.Tensor | None = None,
    progress: bool = True,
    device: torch.device | None = None,
) -> FitResult:
    """Train `student` in place by KD from `teacher` (None: plain CE, the no-KD baseline).

    Args:
        cached_logits: the teacher's logits on `data.train` (see `teacher_logits`); used, and
            required to match, when the student trains without augmentation.
    """
    if teacher is None:
        return fit(student, data, train_cfg, seed=seed, run_id=run_id, checkpoint_dir=checkpoint_dir,
                   progress=progress, description="student (no KD)", device=device)
    if kd_cfg is None:
        raise ValueError("distillation from a teacher needs its [distill] settings (kd_cfg)")
    teacher.train(False).to(device or "cpu")
    for p in teacher.parameters():
        p.requires_grad_(False)
    norm = Normalizer(data.mean, data.std)
    if not train_cfg.augments:
        logits = cached_logits if cached_logits is not None else teacher_logits(teacher, data.train, norm, device=device)
        if logits.shape[0] != len(data.train):
            raise ValueError(f"cached teacher logits cover {logits.shape[0]} images, the train split has {len(data.train)}")
    else:
        logits = None
    scale = 1.0
    if kd_cfg.teacher_logit_std:
        train_logits = logits if logits is not None else teacher_logits(teacher, data.train, norm, device=device)
        scale = logit_scale(train_logits, kd_cfg.teacher_logit_std)

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if logits is not None:
            t = logits[idx].to(x.device, non_blocking=True)
        else:
            with torch.no_grad():
                t = teacher(x)
        s = model(x)
        return kd_loss(s, t * scale, y, alpha=kd_cfg.alpha, temperature=kd_cfg.temperature,
                       label_smoothing=train_cfg.label_smoothing), s

    kd: LossFn = loss_fn
    result = fit(student, data, train_cfg, seed=seed, run_id=run_id, checkpoint_dir=checkpoint_dir, loss_fn=kd,
                 progress=progress, description="student (KD)", device=device)
    teacher.to("cpu")
    return result
