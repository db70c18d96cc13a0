"""One training loop for any model: SGD/AdamW, warmup + cosine, label smoothing, augmentation (training.augment).

Deterministic given a seed: the data order and augmentation of epoch e come from a
generator seeded with (seed, e), and the global RNG (dropout) is reseeded per epoch too.
That is what makes resume exact: a checkpoint is written atomically after every epoch, and
a restarted run loads it and replays epochs e+1.. exactly as the uninterrupted run would.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from gtnpipe.config.recipes import TrainConfig
from gtnpipe.data.datasets import Dataset, Split
from gtnpipe.environment import warn_missing_process_defaults
from gtnpipe.errors import TrainError
from gtnpipe.fsutil import atomic_write_bytes
from gtnpipe.training import distributed
from gtnpipe.training.augment import color_jitter, crop_flip, resized_crop_flip
from gtnpipe.training.loader import SplitLoader, in_order

__all__ = ["EpochLog", "FitResult", "LossFn", "Normalizer", "augment_batch", "evaluate", "fit", "recalibrate_bn",
           "seed_everything"]

# loss_fn(model, x, y, idx) -> (loss, logits); idx are the batch's indices into the train split
# (so a distillation loss can look up cached teacher logits).
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
_CHECKPOINT = "last.pt"
log = logging.getLogger("gtnpipe.training.train")


@dataclass(frozen=True)
class EpochLog:
    epoch: int
    train_loss: float
    train_top1: float
    val_top1: float
    seconds: float


@dataclass(frozen=True)
class FitResult:
    history: tuple[EpochLog, ...]
    test_top1: float
    resumed_from_epoch: int  # 0 = started fresh
    train_seconds: float  # this process only (not epochs done before a resume)


class Normalizer:
    """uint8 NCHW numpy -> normalised float tensor, with the train split's mean and std."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x_uint8: torch.Tensor) -> torch.Tensor:
        # channels-last activations: oneDNN's depthwise and 1x1 convolutions run faster on them on a CPU (the largest
        # mbv3-28 student's training step 2.40 s vs 3.14 s at batch 128 on 2 Zen 3 cores; weights stay as they are)
        mean, std = self.mean.to(x_uint8.device), self.std.to(x_uint8.device)
        return ((x_uint8.float() / 255.0 - mean) / std).to(memory_format=torch.channels_last)


def augment_batch(x: torch.Tensor, cfg: TrainConfig, *, generator: torch.Generator) -> torch.Tensor:
    """The recipe's augmentation (`augment`, then `color_jitter`) of a batch of uint8 images (gtnpipe.training.augment)."""
    if cfg.augment == "crop-flip":
        x = crop_flip(x, padding_px=cfg.crop_padding_px, generator=generator)
    elif cfg.augment == "resized-crop":
        x = resized_crop_flip(x, scale=cfg.resized_crop_scale, ratio=cfg.resized_crop_ratio, generator=generator)
    if cfg.color_jitter:
        x = color_jitter(x, cfg.color_jitter, generator=generator)
    return x


@torch.no_grad()
def recalibrate_bn(model: nn.Module, split: Split, norm: Normalizer, *, images: int = 512, batch_size: int = 128,
                   seed: int = 0, device: torch.device | None = None) -> None:
    """Recompute every BatchNorm's running mean/var as the plain average over `images` training images."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    idx = np.random.default_rng(seed).permutation(len(split))[:images]
    model.train()
    for start in range(0, len(idx), batch_size):  # a few hundred images: decoded here when the split is on disk
        model(norm(torch.from_numpy(split.x[idx[start:start + batch_size]]).to(device or "cpu")))
    model.train(False)


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, norm: Normalizer, *, batch_size: int = 100,
             device: torch.device | None = None) -> float:
    """Top-1 accuracy in percent, the batches run on `device` (default the CPU; the model must be there)."""
    was_training = model.training
    model.train(False)
    correct = 0
    for x, y in SplitLoader(split)(in_order(len(split), batch_size)):
        logits = model(norm(x.to(device or "cpu")))
        correct += int((logits.argmax(1).cpu() == y).sum())
    model.train(was_training)
    return 100.0 * correct / max(len(split), 1)


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # A model may give parts of itself a multiple of the learning rate through `lr_groups()` -> [(params, scale)]
    # (GTN fine-tuning: a pretrained teacher beside new branches); every trainable parameter exactly once.
    parts = model.lr_groups() if hasattr(model, "lr_groups") else [(list(model.parameters()), 1.0)]
    listed = [id(p) for params, _ in parts for p in params if p.requires_grad]
    if sorted(listed) != sorted(id(p) for p in model.parameters() if p.requires_grad):
        raise TrainError(f"{type(model).__name__}.lr_groups() must list every trainable parameter exactly once")
    groups = []
    for params, scale in parts:
        # No weight decay on BN and biases (1-D tensors), as timm and OFA train MobileNets.
        for decayed in (True, False):
            chosen = [p for p in params if p.requires_grad and (p.ndim > 1) == decayed]
            if chosen:
                groups.append({"params": chosen, "lr": cfg.lr * scale,
                               "weight_decay": cfg.weight_decay if decayed else 0.0})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    total = cfg.epochs * steps_per_epoch
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**63)


@contextmanager
def _deterministic() -> Iterator[None]:
    """torch's deterministic-algorithms switch for the duration of a fit, restored after
    (used as a decorator: a @contextmanager is also one)."""
    previous = torch.are_deterministic_algorithms_enabled()
    # CUDA has no deterministic kernel for a few backward passes (adaptive average pooling): warn there, not fail
    torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


@_deterministic()
def fit(
    model: nn.Module,
    data: Dataset,
    cfg: TrainConfig,
    *,
    seed: int,
    run_id: str,
    checkpoint_dir: Path | None = None,
    loss_fn: LossFn | None = None,
    progress: bool = True,
    description: str = "train",
    find_unused_parameters: bool = False,
    eval_model: nn.Module | None = None,
    device: torch.device | None = None,
) -> FitResult:
    """Train `model` in place on `data.train`, evaluating on val every epoch and on test at the end.

    Args:
        run_id: identifies the run; a checkpoint in `checkpoint_dir` written by another run
            is refused rather than silently resumed.
        checkpoint_dir: where `last.pt` is written after each epoch and resumed from.
        find_unused_parameters: tell DistributedDataParallel that a step may leave some
            parameters without gradient (a supernet's inactive blocks).
        eval_model: what val/test top-1 is measured on when `model(x)` is not a classifier
            (e.g. the teacher inside a generic-teacher training module); default `model`.
        device: where the model trains (gtnpipe.training.accelerator; default the CPU). On CUDA: batches copied from
            pinned memory without blocking, bf16 autocast, and the model back on the CPU when done. The batches and
            their augmentation are drawn on the CPU either way, so the data order does not depend on the device.

    Under torchrun every rank takes its share of each batch of `cfg.batch_size` (so the
    hyperparameters mean the same at any world size; a last batch smaller than the batch
    size is dropped), gradients are averaged, and rank 0 writes the checkpoints.
    """
    warn_missing_process_defaults()  # an API user's process: what the gtnpipe command would have set, once
    eval_model = eval_model if eval_model is not None else model
    device = device or torch.device("cpu")
    on_gpu = device.type == "cuda"
    model.to(device)
    eval_model.to(device)
    norm = Normalizer(data.mean, data.std)
    loader = SplitLoader(data.train)
    n = len(data.train)
    rank, world = distributed.rank(), distributed.world_size()
    steps_per_epoch = math.ceil(n / cfg.batch_size) if world == 1 else n // cfg.batch_size
    if steps_per_epoch == 0:
        raise TrainError(f"{description}: {n} training images are fewer than one batch of {cfg.batch_size}; "
                         "lower batch_size in the recipe")
    progress = progress and rank == 0
    optimizer = _optimizer(model, cfg)
    scheduler = _schedule(optimizer, cfg, steps_per_epoch)
    net = distributed.wrap(model, find_unused_parameters=find_unused_parameters)
    if loss_fn is None:
        def loss_fn(m: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = m(x)
            return F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing), logits

    history: list[EpochLog] = []
    start_epoch = 0
    ckpt_path = checkpoint_dir / _CHECKPOINT if checkpoint_dir is not None else None
    if ckpt_path is not None and ckpt_path.exists():
        start_epoch, history = _load_checkpoint(ckpt_path, run_id, model, optimizer, scheduler)

    console = Console(stderr=True, quiet=not progress)
    if start_epoch:
        log.info("%s: resuming after epoch %d/%d from %s", description, start_epoch, cfg.epochs, ckpt_path)
    t_start = time.perf_counter()
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.3f} acc {task.fields[acc]:5.1f}%"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not progress) as bar:
        for epoch in range(start_epoch, cfg.epochs):
            task = bar.add_task(f"{description} {epoch + 1}/{cfg.epochs}", total=steps_per_epoch, loss=0.0, acc=0.0)
            t_epoch = time.perf_counter()
            generator = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
            torch.manual_seed(_epoch_seed(seed, epoch) + 1)  # dropout and anything else on the global RNG
            order = torch.randperm(n, generator=generator)
            batches = [order[step * cfg.batch_size : (step + 1) * cfg.batch_size] for step in range(steps_per_epoch)]
            model.train()
            loss_sum, correct, seen = 0.0, 0, 0
            for step, (idx, (xb, yb)) in enumerate(zip(batches, loader(batches), strict=True)):
                if cfg.augments:  # on the whole batch, so the generator stays in step on every rank
                    xb = augment_batch(xb, cfg, generator=generator)
                idx, xb, yb = idx[rank::world], xb[rank::world], yb[rank::world]
                if on_gpu:  # page-locked, after augmentation made the batch: the copy then overlaps with compute
                    xb, yb = xb.pin_memory(), yb.pin_memory()
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
                    loss, logits = loss_fn(net, norm(xb), yb, idx)
                if not torch.isfinite(loss):
                    raise TrainError(
                        f"{description}: loss became {loss.item()} at epoch {epoch + 1} step {step + 1}; "
                        f"lower the learning rate (lr = {cfg.lr}) in the recipe"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                loss_sum += loss.item() * len(idx)
                correct += int((logits.detach().argmax(1) == yb).sum())
                seen += len(idx)
                bar.update(task, advance=1, loss=loss_sum / seen, acc=100.0 * correct / seen)
            distributed.average_buffers(model)
            if epoch == cfg.epochs - 1 and cfg.precise_bn_images:  # the same images on every rank: the same statistics
                recalibrate_bn(eval_model, data.train, norm, images=cfg.precise_bn_images, seed=seed, device=device)
            val_top1 = (evaluate(eval_model, data.val, norm, batch_size=cfg.eval_batch_size, device=device)
                        if len(data.val) else float("nan"))
            history.append(EpochLog(epoch + 1, loss_sum / seen, 100.0 * correct / seen, val_top1,
                                    time.perf_counter() - t_epoch))
            bar.update(task, description=f"{description} {epoch + 1}/{cfg.epochs} val {val_top1:5.1f}%")
            if ckpt_path is not None and rank == 0:
                _save_checkpoint(ckpt_path, run_id, epoch + 1, model, optimizer, scheduler, history)
            distributed.barrier()
    test_top1 = evaluate(eval_model, data.test, norm, batch_size=cfg.eval_batch_size, device=device)
    model.train(False)
    model.to("cpu")  # what follows (export, caching, comparison) expects the CPU
    eval_model.to("cpu")
    return FitResult(tuple(history), test_top1, start_epoch, time.perf_counter() - t_start)


def _save_checkpoint(path: Path, run_id: str, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LambdaLR, history: list[EpochLog]) -> None:
    buffer = io.BytesIO()
    torch.save({
        "run_id": run_id,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "history": [list(vars(h).values()) for h in history],
    }, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _load_checkpoint(path: Path, run_id: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LambdaLR) -> tuple[int, list[EpochLog]]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a torn or foreign file: say which and how to start over
        raise TrainError(f"cannot read checkpoint {path} ({err}); delete it to train from the start") from err
    if state.get("run_id") != run_id:
        raise TrainError(
            f"checkpoint {path} belongs to another run ({state.get('run_id')!r}, expected {run_id!r}); "
            "delete it to train from the start"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    history = [EpochLog(int(e), *map(float, rest)) for e, *rest in state["history"]]
    return int(state["epoch"]), history


def seed_everything(seed: int) -> None:
    """Seed torch and numpy before building a model, so its initial weights are reproducible."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
