"""Latency/memory calibration of a device: the measured table the cost model reads.

What `gtnpipe bench --calibrate --device NAME` runs, in the device's runtime:
1. every distinct unit of the space (stem, each block configuration, head) exported on
   its own, and a few whole networks (the smallest, the largest and `n_networks` random
   ones, from a seed that evaluation must not reuse), all timed together (p50 over `runs`,
   in `rounds` interleaved passes whose median is kept, so a drift of the machine's speed
   moves units and networks alike instead of biasing some);
2. the networks' peak RSS measured in fresh processes;
3. least squares maps the sum and the number of a network's unit latencies to its p50, and
   its model bytes (weights + peak activations) to its peak RSS.

Units are measured with random weights: latency does not depend on the values.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from gtnpipe.backends import load_runner, runtime_version
from gtnpipe.backends.probe import measure_peak_rss_mb
from gtnpipe.bench import measure_latency
from gtnpipe.cost import BYTES, MB, LatencyTable, PrecisionTable, activation_peak_elems, weight_bytes
from gtnpipe.errors import ConfigError
from gtnpipe.export import export_onnx
from gtnpipe.profiles import DeviceProfile
from gtnpipe.supernet.schedule import all_units, units
from gtnpipe.supernet.space import ArchConfig, SearchSpace, TaskShape
from gtnpipe.supernet.static import build_static, build_unit

__all__ = ["CALIBRATION_SEED", "calibrate", "calibration_archs", "time_models"]

CALIBRATION_SEED = 7919  # archs drawn for the whole-network fit; bench/predictor.py evaluates on other seeds


def calibration_archs(space: SearchSpace, n_networks: int) -> list[ArchConfig]:
    return [space.smallest(), space.largest(), *space.sample_many(n_networks, seed=CALIBRATION_SEED)]


def time_models(paths: list[Path], input_shapes: list[tuple[int, ...]], profile: DeviceProfile, *, runs: int,
                rounds: int, warmup: int = 20) -> list[tuple[float, float]]:
    """(p50, p90) in ms of each model: median over `rounds` interleaved passes."""
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(shape, dtype=np.float32) for shape in input_shapes]
    runners = [load_runner(profile.runtime.name, p, threads=profile.threads) for p in paths]
    samples: list[list[tuple[float, float]]] = [[] for _ in paths]
    for _ in range(rounds):
        for i, (runner, x) in enumerate(zip(runners, inputs)):
            stats = measure_latency(runner, x, warmup=warmup, runs=runs)
            samples[i].append((stats.p50_ms, stats.p90_ms))
    return [(statistics.median(p for p, _ in s), statistics.median(q for _, q in s)) for s in samples]


def calibrate(profile: DeviceProfile, space: SearchSpace, task: TaskShape, *, precision: str = "fp32",
              n_networks: int = 30, runs: int = 100, rounds: int = 10,
              progress: Callable[[str], None] = lambda _: None) -> LatencyTable:
    if precision != "fp32":
        raise ConfigError(f"calibration at {precision!r} is not available yet; calibrate with precision 'fp32'")
    if profile.runtime.name != "onnxruntime":
        raise ConfigError(f"device {profile.name!r} runs {profile.runtime.name}; this host can calibrate onnxruntime "
                          "devices only (the calibration kit for other runtimes comes with the backends)")
    started = time.time()
    torch.manual_seed(0)
    batch = profile.batch_size
    with tempfile.TemporaryDirectory(prefix="gtnpipe-calibrate-") as tmp:
        work = Path(tmp)
        unit_list = all_units(space, task)
        progress(f"exporting {len(unit_list)} units")
        opset = profile.runtime.max_onnx_opset
        unit_paths = [export_onnx(build_unit(u, space, task), task, work / f"{u.key}.onnx", max_opset=opset,
                                  input_shape=(batch, u.c_in, *u.hw_in)) for u in unit_list]
        archs = calibration_archs(space, n_networks)
        progress(f"exporting {len(archs)} whole networks")
        net_paths = [export_onnx(build_static(a, space, task), task, work / f"net{i}.onnx", batch_size=batch,
                                 max_opset=opset) for i, a in enumerate(archs)]
        shape = (batch, task.in_channels, *task.image_hw)
        # units and networks in the same interleaved rounds: a drift of the machine's speed moves both alike
        progress("timing units and networks")
        times = time_models(unit_paths + net_paths, [(batch, u.c_in, *u.hw_in) for u in unit_list] + [shape] * len(archs),
                            profile, runs=runs, rounds=rounds)
        units_ms = {u.key: p50 for u, (p50, _) in zip(unit_list, times)}
        net_times = times[len(unit_list):]
        progress("measuring peak memory")
        rss = [measure_peak_rss_mb(profile.runtime.name, p, threads=profile.threads, input_shape=shape) for p in net_paths]

    sums = [sum(units_ms[u.key] for u in units(a, space, task)) for a in archs]
    counts = [len(units(a, space, task)) for a in archs]
    design = np.column_stack([sums, counts, np.ones(len(archs))])
    (slope, per_unit, intercept), *_ = np.linalg.lstsq(design, np.array([p50 for p50, _ in net_times]), rcond=None)
    model_mb = [(weight_bytes(units(a, space, task), precision)
                 + activation_peak_elems(units(a, space, task)) * batch * BYTES[precision]) / MB for a in archs]
    mem_slope, mem_overhead = np.polyfit(model_mb, rss, 1)
    table = PrecisionTable(
        units_ms=units_ms, slope=float(slope), per_unit_ms=float(per_unit), intercept_ms=float(intercept),
        p90_over_p50=float(statistics.median(p90 / p50 for p50, p90 in net_times)),
        memory_overhead_mb=float(mem_overhead), memory_slope=float(mem_slope),
    )
    measured = {
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": round(time.time() - started, 1),
        "runs": runs, "rounds": rounds, "profile_sha256": profile.sha256(), "calibration_seed": CALIBRATION_SEED,
        "networks": [{"arch": a.id, "units_sum_ms": s, "p50_ms": p50, "p90_ms": p90, "model_mb": m, "peak_rss_mb": r}
                     for a, s, (p50, p90), m, r in zip(archs, sums, net_times, model_mb, rss)],
    }
    return LatencyTable(profile.name, profile.runtime.name, runtime_version(profile.runtime.name), profile.threads,
                        batch, space.name, task, {precision: table}, measured)
