"""`gtnpipe data ...` and `gtnpipe pool ...`: look at the dataset and the student pool (instant, nothing trained)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from gtnpipe.cli._common import (
    DataOpt,
    ImageSizeOpt,
    JsonOpt,
    RecipeOpt,
    SkipUnreadableOpt,
    SpaceOpt,
    StorageOpt,
    emit_json,
    id_column,
    open_workspace,
    print_table,
    running,
    stdout,
    value_column,
)

__all__ = ["data_app", "pool_app"]

data_app = typer.Typer(help="Inspect datasets.", no_args_is_help=True)
pool_app = typer.Typer(help="Inspect the student pool (the supernet's search space).", no_args_is_help=True)


@data_app.command("info")
def data_info(
    data: DataOpt = None,
    image_size: ImageSizeOpt = None,
    skip_unreadable: SkipUnreadableOpt = False,
    storage: StorageOpt = "auto",
    recipe: RecipeOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Dataset source, fingerprint, shape, classes, split sizes (as the recipe carves them) and the search space
    the data gets."""
    with running(as_json=as_json):
        info = open_workspace(recipe, data=data, image_size=image_size, skip_unreadable=skip_unreadable,
                              storage=storage, progress=False).info()
    if as_json:
        return emit_json(info)
    out = stdout()
    out.print(f"[bold]{info['name']}[/]  fingerprint {info['fingerprint'][:16]}…")
    out.print(f"images: {info['channels']} x {info['image_hw'][0]} x {info['image_hw'][1]} (C x H x W), "
              f"{len(info['classes'])} classes: {', '.join(info['classes'])}")
    out.print("splits: " + ", ".join(f"{k} {v}" for k, v in info["splits"].items()) + f" (kept in {info['storage']})")
    skipped = f"; skipped {len(info['skipped'])} unreadable file(s)" if info["skipped"] else ""
    out.print(f"search space: {info['space']}{skipped}")


@pool_app.command("info")
def pool_info(space: SpaceOpt = "mbv3-28", as_json: JsonOpt = False) -> None:
    """Search space, pool size, and the MACs/params range at the space's nominal input (mbv3-28: Fashion-MNIST's
    1x28x28, 10 classes; mbv3-32: CIFAR-10's 3x32x32; mbv3-224: ImageNet's 3x224x224, 1000 classes)."""
    with running(as_json=as_json):
        from gtnpipe.space.pool import pool_info as info_of

        info = info_of(space=space)
    if as_json:
        return emit_json(info)
    c, out = info["choices"], stdout()
    out.print(f"[bold]{info['space']}[/]: {len(info['stages'])} elastic stages, depths {c['depths']}, "
              f"kernels {c['kernel_sizes']}, expand ratios {c['expand_ratios']}")
    out.print(f"pool size: {info['pool_size']:,} distinct students ({info['pool_size']:.2e})")
    t = info["task"]
    out.print(f"at {t['in_channels']}x{t['image_hw'][0]}x{t['image_hw'][1]}, {t['num_classes']} classes "
              f"(the space is built for {info['image_px'][0]}-{info['image_px'][1]} px):")
    small, large = info["smallest"], info["largest"]
    out.print(f"MACs: {small['macs'] / 1e6:.2f}M .. {large['macs'] / 1e6:.2f}M "
              f"({large['macs'] / small['macs']:.1f}x); params: {small['params'] / 1e6:.2f}M .. "
              f"{large['params'] / 1e6:.2f}M")
    out.print(f"smallest: {small['arch']}\nlargest:  {large['arch']}")


@pool_app.command("sample")
def pool_sample(
    n: Annotated[int, typer.Option("-n", min=1, help="How many distinct students.")] = 5,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    space: SpaceOpt = "mbv3-28",
    as_json: JsonOpt = False,
) -> None:
    """Random distinct students from the pool, with their MACs and params."""
    with running(as_json=as_json):
        from gtnpipe.space.pool import pool_sample as sample_of

        rows = sample_of(n, seed=seed, space=space)
    if as_json:
        return emit_json(rows)
    table = Table(value_column("depths"), value_column("MACs (M)", justify="right"),
                  value_column("params (M)", justify="right"), id_column("arch id"))
    for r in rows:
        table.add_row("".join(map(str, r["depths"])), f"{r['macs'] / 1e6:.2f}", f"{r['params'] / 1e6:.3f}", r["arch"])
    print_table(table)
