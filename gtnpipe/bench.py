"""Timing a compiled model: warm-up, then per-run wall-clock latencies and their percentiles."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from gtnpipe.backends import Runner

__all__ = ["LatencyStats", "measure_latency"]


@dataclass(frozen=True)
class LatencyStats:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    runs: int
    batch_size: int

    @property
    def throughput_per_s(self) -> float:
        return self.batch_size / (self.mean_ms / 1e3)

    def to_dict(self) -> dict[str, float]:
        return {**self.__dict__, "throughput_per_s": self.throughput_per_s}


def measure_latency(runner: Runner, x: np.ndarray, *, warmup: int = 20, runs: int = 200) -> LatencyStats:
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    for _ in range(warmup):
        runner.run(x)
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter_ns()
        runner.run(x)
        times[i] = (time.perf_counter_ns() - start) / 1e6
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    return LatencyStats(float(p50), float(p90), float(p99), float(times.mean()), runs, int(x.shape[0]))
