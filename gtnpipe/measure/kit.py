"""Calibrating a device from a calibration kit: time the kit's compiled models there, fit the latency table.

nn-Meter and OFA build their latency tables this way: compile on the host, time on the device,
carry the table back. `gtnpipe latency-kit --device NAME --out DIR` (gtnpipe.measure.host_table, on the
host, with torch) exports every distinct unit of the space and a few whole networks, compiles each
with the device's backend at fp32 and writes DIR/kit.json. `gtnpipe latency-table --device NAME
--kit DIR` runs this module on the device:
1. every file's sha256 is checked, and that the kit was made for this very profile (name and sha256);
2. units and networks are timed together (p50 over `runs`, in `rounds` interleaved passes whose
   median is kept, so a drift of the machine's speed moves units and networks alike instead of
   biasing some);
3. the networks' peak RSS is measured in fresh processes;
4. least squares maps the sum and the number of a network's unit latencies to its p50, and its
   model bytes (weights + peak activations, computed on the host) to its peak RSS.

The host's own calibration (`gtnpipe latency-table` without --kit) builds a kit in a temporary
folder and runs the same code. Torch-free: a device needs the kit, numpy and its runtime.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gtnpipe.config.profiles import DeviceProfile, load_profile
from gtnpipe.deploy.backends import get_backend, load_runner
from gtnpipe.deploy.manifest import verify_file_hashes
from gtnpipe.deploy.remote import Remote, RemoteError
from gtnpipe.deploy.timing import Machine, measure_latency, measure_peak_rss_mb
from gtnpipe.devices.latency_table import LatencyTable, PrecisionTable, table_write_path
from gtnpipe.errors import ArtifactError, ConfigError
from gtnpipe.fsutil import atomic_write_bytes, sha256_file
from gtnpipe.space.spaces import TaskShape

__all__ = [
    "KIT_FILE",
    "KIT_SCHEMA",
    "calibrate_device_from_kit",
    "calibrate_from_kit",
    "calibrate_remote_from_kit",
    "fit_precision_table",
    "fit_within_share",
    "kit_command",
    "load_kit",
    "table_summary",
    "time_models",
]

KIT_FILE = "kit.json"
KIT_SCHEMA = 1


def kit_command(device: str, out: Path | str) -> str:
    return f"gtnpipe latency-kit --device {device} --out {out}"


def time_models(paths: list[Path], input_shapes: list[tuple[int, ...]], profile: DeviceProfile, *, runs: int,
                rounds: int, warmup: int = 20) -> list[tuple[float, float]]:
    """(p50, p90) in ms of each model: median over `rounds` interleaved passes.

    One session is alive at a time, as on a device: each pass loads the model, warms it up, times it and drops
    it. Sessions kept alive side by side slowed each other (ONNX Runtime's idle intra-op threads keep spinning:
    one host student measured p50 0.082 ms alone and 0.111 ms with 8 sessions interleaved), so a table timed
    that way over-predicted every build by the same factor."""
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(shape, dtype=np.float32) for shape in input_shapes]
    samples: list[list[tuple[float, float]]] = [[] for _ in paths]
    for _ in range(rounds):
        for i, (path, x) in enumerate(zip(paths, inputs)):
            runner = load_runner(profile.runtime.name, path, threads=profile.threads)
            stats = measure_latency(runner, x, warmup=warmup, runs=runs)
            del runner  # its session (and thread pool) ends before the next model's starts
            samples[i].append((stats.p50_ms, stats.p90_ms))
    return [(statistics.median(p for p, _ in s), statistics.median(q for _, q in s)) for s in samples]


def fit_precision_table(units_ms: dict[str, float], network_units: list[list[str]], network_times: list[tuple[float, float]],
                        model_mb: list[float], peak_rss_mb: list[float]) -> PrecisionTable:
    """The table's fits from the timed units and networks (each network: its unit keys, (p50, p90), model MB, RSS)."""
    sums = [sum(units_ms[k] for k in keys) for keys in network_units]
    design = np.column_stack([sums, [len(keys) for keys in network_units], np.ones(len(network_units))])
    (slope, per_unit, intercept), *_ = np.linalg.lstsq(design, np.array([p50 for p50, _ in network_times]), rcond=None)
    mem_slope, mem_overhead = np.polyfit(model_mb, peak_rss_mb, 1)
    return PrecisionTable(
        units_ms=units_ms, slope=float(slope), per_unit_ms=float(per_unit), intercept_ms=float(intercept),
        p90_over_p50=float(statistics.median(p90 / p50 for p50, p90 in network_times)),
        memory_overhead_mb=float(mem_overhead), memory_slope=float(mem_slope),
    )


def load_kit(kit_dir: Path, profile: DeviceProfile) -> dict[str, Any]:
    """The kit's kit.json, once it is shown to be made for `profile` and every file matches its sha256."""
    kit_dir = Path(kit_dir)
    rebuild = f"rebuild the kit on the host with '{kit_command(profile.name, kit_dir)}'"
    path = kit_dir / KIT_FILE
    if not path.is_file():
        raise ConfigError(f"{kit_dir} has no {KIT_FILE}: it is not a calibration kit (or its build was interrupted); {rebuild}")
    try:
        kit = json.loads(path.read_text())
    except ValueError as err:
        raise ArtifactError(f"{path} is not valid JSON ({err}); {rebuild}") from err
    if not isinstance(kit, dict) or kit.get("schema") != KIT_SCHEMA:
        found = kit.get("schema") if isinstance(kit, dict) else None
        raise ConfigError(f"{path} has kit schema {found!r}, this gtnpipe reads {KIT_SCHEMA}; {rebuild}")
    if (kit["device"], kit["profile_sha256"]) != (profile.name, profile.sha256()):
        made_for, mine = kit.get("profile", {}), json.loads(json.dumps(profile.to_dict()))
        differ = sorted(k for k in set(made_for) | set(mine) if made_for.get(k) != mine.get(k))
        raise ConfigError(f"{kit_dir} was made for device {kit['device']!r} (profile sha256 {kit['profile_sha256'][:12]}…), "
                          f"not for this {profile.name!r} profile (sha256 {profile.sha256()[:12]}…; fields that differ: "
                          f"{', '.join(differ) or 'none recorded'}); a table timed from it would describe other settings. "
                          f"{rebuild[0].upper()}{rebuild[1:]}")
    verify_file_hashes(kit_dir, kit["files"], listing=KIT_FILE, purpose="time",
                       fix=f"copy the whole kit folder again or {rebuild}")
    for entry in kit["units"] + kit["networks"]:
        if entry["model"] not in kit["files"]:
            raise ArtifactError(f"{path}: model {entry['model']!r} has no sha256 in 'files'; {rebuild}")
    return kit


def machine_description() -> str:
    """The CPU the table was measured on: a table only predicts latency on the same kind of machine."""
    return Machine.here().describe()


def calibrate_from_kit(kit_dir: Path, profile: DeviceProfile, *, runs: int = 100, rounds: int = 10,
                       progress: Callable[[str], None] = lambda _: None) -> LatencyTable:
    """Time a calibration kit's models here, in the device's runtime, and fit the device's latency table."""
    kit_dir = Path(kit_dir)
    kit = load_kit(kit_dir, profile)
    started = time.time()
    runtime = kit["runtime"]
    version = get_backend(runtime).version()  # a missing runtime fails here, naming the extra that installs it
    unit_entries, networks = kit["units"], kit["networks"]
    entries = unit_entries + networks
    # units and networks in the same interleaved rounds: a drift of the machine's speed moves both alike
    progress(f"timing {len(unit_entries)} units and {len(networks)} networks ({rounds} rounds of {runs} runs)")
    times = time_models([kit_dir / e["model"] for e in entries], [tuple(e["input_shape"]) for e in entries], profile,
                        runs=runs, rounds=rounds)
    units_ms = {u["key"]: p50 for u, (p50, _) in zip(unit_entries, times)}
    net_times = times[len(unit_entries):]
    progress("measuring peak memory")
    rss = [measure_peak_rss_mb(runtime, kit_dir / n["model"], threads=profile.threads, input_shape=tuple(n["input_shape"]))
           for n in networks]
    model_mb = [float(n["model_mb"]) for n in networks]
    fit = fit_precision_table(units_ms, [n["units"] for n in networks], net_times, model_mb, rss)
    measured = {
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": round(time.time() - started, 1),
        "runs": runs, "rounds": rounds, "profile_sha256": profile.sha256(), "calibration_seed": kit["calibration_seed"],
        "machine": machine_description(),
        "kit": {"made_at": kit["made_at"], "sha256": sha256_file(kit_dir / KIT_FILE)},
        "networks": [{"arch": n["arch"], "units_sum_ms": sum(units_ms[k] for k in n["units"]),
                      "units": len(n["units"]), "p50_ms": p50, "p90_ms": p90,
                      "model_mb": m, "peak_rss_mb": r} for n, (p50, p90), m, r in zip(networks, net_times, model_mb, rss)],
    }
    return LatencyTable(profile.name, runtime, version, profile.threads, kit["batch_size"], kit["space"],
                        TaskShape.of(kit["task"]), {kit["precision"]: fit}, measured)


def fit_within_share(table: LatencyTable, tolerance: float = 0.10) -> float:
    """The share of the calibration networks whose p50 the table's fit predicts within `tolerance` (in-sample)."""
    fit = table.precisions["fp32"]
    nets = table.measured["networks"]
    return sum(abs(fit.network_p50_ms(n["units_sum_ms"], n["units"]) / n["p50_ms"] - 1) <= tolerance for n in nets) / len(nets)


def table_summary(table: LatencyTable, path: Path) -> dict[str, Any]:
    """What `gtnpipe latency-table` reports about a table it wrote."""
    fit = table.precisions["fp32"]
    return {"device": table.device, "table": str(path), "units": len(fit.units_ms), "slope": fit.slope,
            "networks": len(table.measured["networks"]), "fit_within_10pct": fit_within_share(table),
            "per_unit_ms": fit.per_unit_ms, "intercept_ms": fit.intercept_ms, "memory_overhead_mb": fit.memory_overhead_mb,
            "seconds": table.measured["seconds"], "machine": table.measured["machine"]}


def calibrate_device_from_kit(kit_dir: Path, device: str | Path, *, runs: int = 100, rounds: int = 10,
                              tables_dir: Path | None = None, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """On the device: time the kit, write the table to the user data directory, which search reads first (or into
    `tables_dir`), and summarise it.

    The device-side twin of gtnpipe.pipeline.calibrate_device; it lives here because pipeline imports torch.
    """
    profile = load_profile(device)
    table = calibrate_from_kit(kit_dir, profile, runs=runs, rounds=rounds, progress=progress)
    path = table_write_path(profile.name, table.space, table.task, tables_dir)
    table.save(path)
    return table_summary(table, path)


def calibrate_remote_from_kit(kit_dir: Path | str, device: str | Path, remote: Remote, *, runs: int = 100, rounds: int = 10,
                              tables_dir: Path | None = None,
                              progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """On the host: time a kit on `remote` (`gtnpipe latency-table --kit` there) and install the table it measured
    here, where search reads it for that profile (the user data directory, or `tables_dir`).

    The kit is checked here first (made for this profile, every sha256), then again on the device after the copy.
    A profile given as a .toml path is copied along, so the device checks the kit against the very same profile."""
    profile = load_profile(device)
    kit = load_kit(Path(kit_dir), profile)
    remote.check(kit["runtime"], progress)
    with remote.temp_dir() as tmp:
        progress(f"{remote.target}: copying the kit ({len(kit['files'])} files) to {tmp}")
        there = remote.put(Path(kit_dir), tmp)
        name = remote.put(Path(device), tmp) if Path(device).suffix == ".toml" else profile.name
        progress(f"{remote.target}: gtnpipe latency-table, {len(kit['units'])} units and {len(kit['networks'])} networks "
                 f"({rounds} rounds of {runs} runs)")
        done = remote.run_gtnpipe("run", "latency-table", "--device", name, "--kit", there, "--tables-dir", f"{tmp}/tables",
                                  "--runs", str(runs), "--rounds", str(rounds), "--json")
        measured = json.loads(done.stdout)
        data = remote.fetch(measured["table"])
    table = LatencyTable.from_json(data.decode(), where=f"{remote.target}:{measured['table']}")
    if (table.device, table.space, table.task) != (profile.name, kit["space"], TaskShape.of(kit["task"])):
        raise RemoteError(remote.target, "fetch", f"the device returned a table for {table.device} {table.space}, not "
                          f"for the kit's {profile.name} {kit['space']}; run the command again")
    path = table_write_path(profile.name, table.space, table.task, tables_dir)
    atomic_write_bytes(path, data)
    progress(f"installed the table measured on {remote.target} as {path}")
    return {**table_summary(table, path), "remote": remote.target, "remote_table": measured["table"]}
