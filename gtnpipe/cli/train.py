"""`gtnpipe train`, `gtnpipe teacher`, `gtnpipe distill`: train and cache models (resumable, data-parallel under torchrun)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

import typer

from gtnpipe.cli._common import (
    CacheOpt,
    JsonOpt,
    ProgressOpt,
    RecipeOpt,
    TrainDeviceOpt,
    emit_json,
    open_workspace,
    running,
    stdout,
)

__all__ = ["distill", "teacher", "train"]


def _report(result: Any, text: str, *, as_json: bool) -> None:
    """Print a pipeline outcome (a dataclass) as JSON or as `text`; only rank 0 under torchrun."""
    from gtnpipe.training import distributed

    if not distributed.is_main():
        return
    if as_json:
        emit_json(asdict(result))
    else:
        stdout().print(text)


def train(
    model: Annotated[str, typer.Option("--model", "-m", help="'teacher', an arch id, 'largest' or 'smallest'.")],
    recipe: RecipeOpt = "quick",
    cache_dir: CacheOpt = None,
    train_device: TrainDeviceOpt = "auto",
    progress: ProgressOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Train the teacher or one student from scratch, cache it, and print its test top-1.

    Cached: an unchanged second call returns at once. Interrupted (Ctrl-C, kill): run it
    again and it resumes after the last finished epoch.
    """
    with running(progress=progress, as_json=as_json) as p:
        from gtnpipe import pipeline

        ws = open_workspace(recipe, cache_dir=cache_dir, train_device=train_device, progress=p.enabled)
        result = pipeline.train_model(ws, model)
    state = "cache hit" if result.cached else "trained"
    _report(result, f"[bold]{result.model}[/] ({state}, key {result.key[:12]}): test top-1 [bold]{result.test_top1:.2f}%[/] "
                    f"(val {result.val_top1:.2f}%), {result.macs / 1e6:.2f}M MACs, {result.params / 1e6:.3f}M params, "
                    f"{result.epochs} epochs at {result.seconds_per_epoch:.1f} s/epoch", as_json=as_json)


def teacher(
    method: Annotated[str, typer.Option("--method", help="gtn (generic, for the whole pool), vanilla (CE only) "
                                        "or sftn (specialised to --student).")] = "gtn",
    student: Annotated[str | None, typer.Option("--student", help="Arch id: the SFTN teacher's student.")] = None,
    recipe: RecipeOpt = "quick",
    cache_dir: CacheOpt = None,
    train_device: TrainDeviceOpt = "auto",
    progress: ProgressOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Train a teacher once and cache it; a second call returns the cached key at once.

    Runs data-parallel under torchrun: torchrun --nproc-per-node 2 -m gtnpipe.cli teacher ...
    """
    with running(progress=progress, as_json=as_json) as p:
        from gtnpipe import pipeline
        from gtnpipe.training import distributed

        distributed.init_from_env()
        ws = open_workspace(recipe, cache_dir=cache_dir, train_device=train_device, progress=p.enabled)
        result = pipeline.train_teacher(ws, method, student=student)
    state = "cache hit" if result.cached else "trained"
    target = f" for {result.student}" if result.student else ""
    _report(result, f"[bold]{result.method} teacher[/]{target} ({state}, key {result.key}): test top-1 "
                    f"[bold]{result.test_top1:.2f}%[/], {result.epochs} epochs in {result.train_seconds:.0f} s",
            as_json=as_json)


def distill(
    arch: Annotated[str, typer.Option("--arch", "-a", help="Student arch id, 'largest' or 'smallest'.")],
    teacher: Annotated[str | None, typer.Option("--teacher", "-t", help="gtn, vanilla, sftn, none, or a teacher file: .onnx, "
                                         "torch.export .pt2, TorchScript .pt/.ts (float32 NCHW [0, 1] images in, "
                                         "logits out) [default: the recipe's [teacher] source, else its "
                                         "[distill] teacher: vanilla].")] = None,
    recipe: RecipeOpt = "quick",
    seed: Annotated[int | None, typer.Option("--seed", help="Student seed [default: the recipe's].")] = None,
    cache_dir: CacheOpt = None,
    train_device: TrainDeviceOpt = "auto",
    progress: ProgressOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Distill one pool student from a cached teacher (trained first if needed); print top-1 and key."""
    with running(progress=progress, as_json=as_json) as p:
        from gtnpipe import pipeline
        from gtnpipe.training import distributed

        distributed.init_from_env()
        ws = open_workspace(recipe, cache_dir=cache_dir, train_device=train_device, progress=p.enabled)
        result = pipeline.distill_student(ws, arch, teacher=teacher, seed=seed)
    state = "cache hit" if result.cached else "trained"
    _report(result, f"[bold]{result.arch}[/] from {result.teacher} teacher ({state}, key {result.key}): test top-1 "
                    f"[bold]{result.test_top1:.2f}%[/] (val {result.val_top1:.2f}%), {result.macs / 1e6:.2f}M MACs",
            as_json=as_json)
