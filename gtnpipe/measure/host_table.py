"""Latency/memory calibration, host side: the calibration kit a device times, and calibrating this host.

`build_calibration_kit` (what `gtnpipe latency-kit --device NAME --out DIR` runs) exports
every distinct unit of the space (stem, each block configuration, head) on its own and a few whole
networks (the smallest, the largest and `n_networks` random ones, from a seed that evaluation must
not reuse) to ONNX, compiles each with the device's backend at fp32 and writes DIR/kit.json: for
each model its file, input shape and (for networks) unit keys and model bytes, and the sha256 of
every file. The device times the kit with gtnpipe.measure.kit (torch-free) and writes the table.
For TensorRT devices a host without TensorRT ships ONNX files: the backend's `load` builds the
engines on the device.

`calibrate` is the same for this host in one go: a kit in a temporary folder, timed here.

Units are measured with random weights: latency does not depend on the values.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gtnpipe import __version__
from gtnpipe.config.profiles import DeviceProfile, load_profile
from gtnpipe.deploy.backends import Backend, ExportedModel, get_backend
from gtnpipe.deploy.export import export_onnx
from gtnpipe.deploy.manifest import file_records
from gtnpipe.deploy.timing import Machine
from gtnpipe.devices.cost import BYTES, MB, LatencyTable, activation_peak_elems, table_path, table_write_path, weight_bytes
from gtnpipe.errors import BackendUnavailable, ConfigError
from gtnpipe.fsutil import atomic_write_json
from gtnpipe.measure.kit import KIT_FILE, KIT_SCHEMA, calibrate_from_kit, kit_command, table_summary, time_models
from gtnpipe.models.static import build_static, build_unit
from gtnpipe.space.pool import FASHION_MNIST_TASK
from gtnpipe.space.schedule import all_units, units
from gtnpipe.space.spaces import ArchConfig, SearchSpace, TaskShape, get_space

__all__ = ["CALIBRATE_ENV", "CALIBRATION_SEED", "SELF_CALIBRATING", "build_calibration_kit", "calibrate",
           "calibrate_device", "calibration_archs", "calibration_wanted", "make_calibration_kit", "stale_table_reason",
           "time_models"]

CALIBRATION_SEED = 7919  # archs drawn for the whole-network fit; bench/predictor.py evaluates on other seeds
KIT_PRECISION = "fp32"  # the only precision calibrated so far
# Profiles that describe the machine running gtnpipe: `gtnpipe build/search` measure their table here first when the
# one found was measured on another machine (another CPU, CPU count or runtime version)
SELF_CALIBRATING = frozenset({"host"})
CALIBRATE_ENV = "GTNPIPE_CALIBRATE"  # "0": never calibrate the host on the way (the tests set it; --calibrate wins)


def calibration_wanted(flag: bool | None) -> bool:
    """--calibrate/--no-calibrate when given, else $GTNPIPE_CALIBRATE ("0" or "false" turn it off), else on."""
    if flag is not None:
        return flag
    return os.environ.get(CALIBRATE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def stale_table_reason(profile: DeviceProfile, space: SearchSpace, task: TaskShape) -> str | None:
    """Why this machine should measure `profile`'s table before using it (None: the table found was measured here).

    Only for the profiles of this machine (SELF_CALIBRATING): a table is stale when none exists for the space and
    input, or when it was measured on another CPU model or CPU count (`Machine.describe()`) or with another version
    of the runtime."""
    if profile.name not in SELF_CALIBRATING:
        return None
    path = table_path(profile.name, space.name, task)
    if not path.is_file():
        h, w = task.image_hw
        return f"no latency table for {profile.name} at {space.name} {task.in_channels}x{h}x{w} yet"
    table = LatencyTable.from_json(path.read_text(), where=str(path))
    here, there = Machine.here().describe(), table.measured.get("machine")
    if there != here:
        return f"{path} was measured on '{there}', this machine is '{here}'"
    version = get_backend(profile.runtime.name).version()
    if table.runtime_version != version:
        return f"{path} was measured with {table.runtime} {table.runtime_version}, this machine has {version}"
    return None


def calibration_archs(space: SearchSpace, n_networks: int) -> list[ArchConfig]:
    return [space.smallest(), space.largest(), *space.sample_many(n_networks, seed=CALIBRATION_SEED)]


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / KIT_FILE).is_file())):
        raise ConfigError(f"{out_dir} exists and is not a calibration kit; give --out a new folder (an old kit is replaced)")


def _install(staging: Path, out_dir: Path) -> None:
    """Move the finished kit into place; an old kit there is replaced only once the new one is complete."""
    _check_out_dir(out_dir)
    staging.chmod(0o755)  # mkdtemp made it private; the kit is meant to be copied around
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    os.replace(out_dir, old)
    os.replace(staging, out_dir)
    shutil.rmtree(old)


class _Compiler:
    """Export a module to ONNX and compile it with the device's backend at fp32 into kit_dir/<dest>."""

    def __init__(self, backend: Backend, task: TaskShape, kit_dir: Path, scratch: Path, max_opset: int) -> None:
        self.backend, self.task, self.kit_dir, self.scratch, self.max_opset = backend, task, kit_dir, scratch, max_opset
        self.rng = np.random.default_rng(0)
        self.files: list[str] = []

    def __call__(self, module: nn.Module, input_shape: tuple[int, ...], dest: str) -> str:
        onnx_path = export_onnx(module, self.task, self.scratch / "export.onnx", max_opset=self.max_opset,
                                input_shape=input_shape)
        # fp32 builds do not calibrate: one random batch satisfies ExportedModel
        inputs = ExportedModel(onnx_path, input_shape, self.rng.random(input_shape, dtype=np.float32), self.max_opset,
                               torch_module=module.train(False))
        result = self.backend.build(inputs, KIT_PRECISION, self.kit_dir / dest)
        self.files += [f"{dest}/{name}" for name in result.files]
        return f"{dest}/{result.model_file}"


def build_calibration_kit(profile: DeviceProfile, space: SearchSpace, task: TaskShape, out_dir: Path, *,
                          n_networks: int = 30, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Export and compile the calibration models for `profile`'s runtime into `out_dir` (with kit.json); returns kit.json."""
    if n_networks < 2:
        # 3 fitted parameters (slope, per unit, intercept) need more than the smallest + largest + 1 networks
        raise ConfigError(f"n_networks must be at least 2 (got {n_networks}): the whole-network fit needs 4 networks or more")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    backend = get_backend(profile.runtime.name)  # a runtime this host cannot build for fails before any export
    torch.manual_seed(0)
    batch = profile.batch_size
    unit_list = all_units(space, task)
    archs = calibration_archs(space, n_networks)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # built beside out_dir and moved in when complete: an interrupted build leaves no half kit
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="gtnpipe-kit-export-") as scratch:
            compile_ = _Compiler(backend, task, staging, Path(scratch), profile.runtime.max_onnx_opset)
            progress(f"exporting and compiling {len(unit_list)} units for {profile.runtime.name}")
            unit_entries = []
            for u in unit_list:
                shape = (batch, u.c_in, *u.hw_in)
                unit_entries.append({"key": u.key, "input_shape": list(shape),
                                     "model": compile_(build_unit(u, space, task), shape, f"units/{u.key}")})
            progress(f"exporting and compiling {len(archs)} whole networks")
            shape = (batch, task.in_channels, *task.image_hw)
            net_entries = []
            for i, a in enumerate(archs):
                schedule = units(a, space, task)
                model_bytes = (weight_bytes(schedule, KIT_PRECISION)
                               + activation_peak_elems(schedule) * batch * BYTES[KIT_PRECISION])
                net_entries.append({"arch": a.id, "input_shape": list(shape), "units": [u.key for u in schedule],
                                    "model_mb": model_bytes / MB,
                                    "model": compile_(build_static(a, space, task), shape, f"networks/net{i:03d}")})
        kit = {
            "schema": KIT_SCHEMA, "device": profile.name, "profile_sha256": profile.sha256(), "profile": profile.to_dict(),
            "runtime": profile.runtime.name, "precision": KIT_PRECISION, "space": space.name,
            "task": TaskShape.of(task).to_dict(), "batch_size": batch, "threads": profile.threads,
            "calibration_seed": CALIBRATION_SEED, "made_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "made_with": {"gtnpipe": __version__, "command": kit_command(profile.name, out_dir)},
            "units": unit_entries, "networks": net_entries, "files": file_records(staging, compile_.files),
        }
        atomic_write_json(staging / KIT_FILE, kit)
        _install(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return kit


def calibrate(profile: DeviceProfile, space: SearchSpace, task: TaskShape, *, precision: str = "fp32",
              n_networks: int = 30, runs: int = 100, rounds: int = 10,
              progress: Callable[[str], None] = lambda _: None) -> LatencyTable:
    """Calibrate this host as `profile`: a kit in a temporary folder, timed here by the device-side code."""
    if precision != KIT_PRECISION:
        raise ConfigError(f"calibration at {precision!r} is not available yet; calibrate with precision 'fp32'")
    try:
        get_backend(profile.runtime.name).version()  # the runtime must run here: this host is timed as the device
    except BackendUnavailable as err:
        kit = f"kit-{profile.name}"
        raise ConfigError(f"device {profile.name!r} runs {profile.runtime.name}, which cannot run on this host ({err}). "
                          f"Build a calibration kit here ('{kit_command(profile.name, kit)}'), copy it to the device and "
                          f"run 'gtnpipe latency-table --device {profile.name} --kit {kit}' there") from err
    with tempfile.TemporaryDirectory(prefix="gtnpipe-calibrate-") as tmp:
        kit_dir = Path(tmp) / "kit"
        build_calibration_kit(profile, space, task, kit_dir, n_networks=n_networks, progress=progress)
        return calibrate_from_kit(kit_dir, profile, runs=runs, rounds=rounds, progress=progress)


def calibrate_device(device: str | Path | DeviceProfile, *, space: str = "mbv3-28", task: TaskShape = FASHION_MNIST_TASK,
                     n_networks: int = 30, runs: int = 100, rounds: int = 10, tables_dir: Path | None = None,
                     progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Measure the device's latency table here (run this ON the device) and write it where search reads it."""
    profile = load_profile(device)
    table = calibrate(profile, get_space(space), task, n_networks=n_networks, runs=runs, rounds=rounds, progress=progress)
    path = table_write_path(profile.name, space, task, tables_dir)  # the user data directory unless told: never the package
    table.save(path)
    return table_summary(table, path)


def make_calibration_kit(device: str | Path, out: Path, *, space: str = "mbv3-28", task: TaskShape = FASHION_MNIST_TASK,
                         n_networks: int = 30, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """On the host: export and compile the device's latency-table models into `out` (the device times them)."""
    profile = load_profile(device)
    started = time.time()
    kit = build_calibration_kit(profile, get_space(space), task, Path(out), n_networks=n_networks, progress=progress)
    return {"device": profile.name, "kit": str(out), "runtime": kit["runtime"], "units": len(kit["units"]),
            "networks": len(kit["networks"]), "files": len(kit["files"]),
            "size_mb": sum(r["bytes"] for r in kit["files"].values()) / 1e6, "seconds": round(time.time() - started, 1),
            "device_command": f"gtnpipe latency-table --device {profile.name} --kit {out}"}
