"""Figures for people: the Pareto front of a device search (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

import io
from pathlib import Path

from gtnpipe.fsutil import atomic_write_bytes
from gtnpipe.nas.evolution import SearchResult

__all__ = ["plot_pareto"]


def plot_pareto(result: SearchResult, path: Path, *, device: str, latency_budget_ms: float,
                latency_planned_ms: float | None = None, others: list[tuple[float, float]] | None = None) -> Path:
    """Estimated top-1 vs predicted p90 latency: the front, the pick, the budget line (and the budget less its
    margin, which search planned for), memory as colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    if others:
        ax.scatter([o[0] for o in others], [o[1] for o in others], s=6, c="0.8", label="other feasible students")
    lat = [c.cost.latency_ms_p90 for c in result.front]
    acc = [c.accuracy for c in result.front]
    mem = [c.cost.peak_memory_mb for c in result.front]
    points = ax.scatter(lat, acc, c=mem, cmap="viridis", s=28, zorder=3, label="Pareto front")
    ax.step(lat, acc, where="post", color="0.4", lw=0.8, zorder=2)
    fig.colorbar(points, ax=ax, label="predicted peak memory (MB)")
    pick = result.pick
    ax.scatter([pick.cost.latency_ms_p90], [pick.accuracy], marker="*", s=220, c="crimson", zorder=4,
               label=f"pick: {pick.cost.macs / 1e6:.1f}M MACs")
    ax.axvline(latency_budget_ms, color="crimson", ls="--", lw=1, label=f"budget {latency_budget_ms:g} ms (p90)")
    if latency_planned_ms is not None and latency_planned_ms < latency_budget_ms:
        ax.axvline(latency_planned_ms, color="crimson", ls=":", lw=1,
                   label=f"planned {latency_planned_ms:.3g} ms (budget less margin)")
    ax.set_xlabel(f"predicted p90 latency (ms, {pick.cost.latency_source})")
    ax.set_ylabel("estimated top-1 (%)")
    ax.set_title(f"{device}: students within every budget, {pick.cost.precision}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path
