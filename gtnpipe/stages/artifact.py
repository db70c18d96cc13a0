"""The last stage: the device's artifact folder (model files, manifest.json, report, reference images), written
atomically next to the target and swapped in. Not cached: it is assembled from cached stages in seconds."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gtnpipe.config.profiles import DeviceProfile
from gtnpipe.config.toml import as_dict
from gtnpipe.deploy.artifacts import write_artifact
from gtnpipe.deploy.export import to_unit_float
from gtnpipe.deploy.parity import PrecisionRow
from gtnpipe.stages.deploy import ARTIFACT_LOGITS, Compiled, Measured
from gtnpipe.stages.keys import package_versions
from gtnpipe.stages.search import SearchOutcome
from gtnpipe.stages.training import DistillOutcome
from gtnpipe.stages.workspace import Workspace

__all__ = ["Shipped", "write_device_artifact"]

MANIFEST_PACKAGES = ("gtnpipe", "torch", "numpy", "onnx", "onnxruntime", "openvino", "nncf", "ai-edge-litert",
                     "litert-torch", "ai-edge-quantizer", "tensorrt", "polygraphy")


@dataclass(frozen=True)
class Shipped:
    """What the build chose to ship for one device, and the evidence for it."""

    profile: DeviceProfile
    teacher: str
    search: SearchOutcome
    student: DistillOutcome
    precision: str
    compiled: Compiled
    measured: Measured | None  # None where the runtime cannot run here (TensorRT on a CPU host)
    rows: list[PrecisionRow]  # every precision: measured, chosen or rejected and why
    torch_logits: np.ndarray  # on the whole test split
    torch_top1: float
    predicted: dict[str, Any]
    violations: list[str]
    warnings: list[str]


def measured_summary(shipped: Shipped) -> dict[str, Any] | None:
    if shipped.measured is None:
        return None
    lat, c = shipped.measured.latency, shipped.compiled
    return {"latency_ms_p50": lat["p50_ms"], "latency_ms_p90": lat["p90_ms"], "latency_ms_p99": lat["p99_ms"],
            "throughput_per_s": lat["throughput_per_s"], "peak_memory_mb": shipped.measured.peak_memory_mb,
            "model_size_mb": c.meta["size_bytes"] / 1e6, "runs": lat["runs"], "threads": shipped.measured.inp.threads,
            "machine": shipped.measured.inp.machine.describe(),
            "method": f"median of {shipped.measured.inp.processes} fresh processes, one session each"}


def write_device_artifact(ws: Workspace, shipped: Shipped, out: Path) -> Path:
    """Write out/<device>/ and return it."""
    profile, c, data, task = shipped.profile, shipped.compiled, ws.data, ws.task
    meta, pick = c.meta, shipped.search.result.pick
    n_ref = min(c.inp.reference_images, len(data.test))
    versions = {k: v for k, v in package_versions(MANIFEST_PACKAGES).items() if v is not None}
    parity = meta.get("parity")
    manifest = {
        "schema_version": 1,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "gtnpipe_version": versions.get("gtnpipe", "unknown"),
        "device": {"name": profile.name, "profile": profile.to_dict(), "profile_sha256": profile.sha256()},
        "runtime": {"name": profile.runtime.name, "version_range": profile.runtime.version,
                    "built_with": meta["runtime_version"], "max_onnx_opset": profile.runtime.max_onnx_opset,
                    **({"engine_build_command": meta["notes"]["engine_build_command"]}
                       if "engine_build_command" in meta["notes"] else {})},
        "model": {"arch": shipped.student.arch, "macs": shipped.student.macs, "params": shipped.student.params,
                  "precision": shipped.precision, "file": meta["model_file"],
                  "files": [f for f in meta["files"] if f != "calibration.npy"], "threads": profile.threads,
                  "input": {"name": "input", "shape": [profile.batch_size, task.in_channels, *task.image_hw],
                            "dtype": "float32", "layout": "NCHW", "value_range": [0.0, 1.0],
                            "data_image_hw": list(data.image_hw),  # the training images' size (before any resize)
                            # elastic resolution: the sides search chose this input's from ([]: the data's only)
                            "resolution_chosen_from_px": list(ws.recipe.resolutions_px)},
                  "output": {"name": "logits", "shape": [profile.batch_size, task.num_classes],
                             "meaning": "unnormalised class scores (softmax gives probabilities)"},
                  "classes": list(data.classes), "build_notes": meta["notes"]},
        "provenance": {"recipe": ws.recipe.name, "teacher": shipped.teacher, "teacher_key": shipped.student.teacher_key,
                       "student_key": shipped.student.key, "search_key": shipped.search.key, "dataset": data.name,
                       "dataset_fingerprint": data.fingerprint, "packages": versions,
                       "student_trained_on": shipped.student.trained_on},
        "accuracy": {"test_images": len(data.test), "torch_fp32_top1": shipped.torch_top1,
                     "shipped_top1": parity["artifact_top1"] if parity else None, "estimated_top1": pick.accuracy},
        "precisions": shipped.rows,
        "predicted": shipped.predicted,
        "measured_on_build_machine": measured_summary(shipped),
        "budgets": as_dict(profile.budgets),
        "budget_violations": shipped.violations,
        "warnings": shipped.warnings,
        "reference": {"inputs": "reference/inputs.npy", "logits": "reference/logits.npy", "labels": "reference/labels.npy",
                      "images": n_ref, **({"artifact_logits": f"reference/{ARTIFACT_LOGITS}"} if parity else {})},
    }

    def fill(staging: Path) -> list[str]:
        for name in meta["files"]:
            shutil.copyfile(c.file(name), staging / name)
        (staging / "reference").mkdir()
        np.save(staging / "reference/inputs.npy", to_unit_float(data.test.x[:n_ref]))  # at the student's resolution
        np.save(staging / "reference/logits.npy", shipped.torch_logits[:n_ref])
        np.save(staging / "reference/labels.npy", data.test.y[:n_ref].astype(np.int64))
        shutil.copyfile(shipped.search.pareto_png, staging / "pareto.png")
        names = [*meta["files"], "reference/inputs.npy", "reference/logits.npy", "reference/labels.npy", "pareto.png"]
        if parity:
            shutil.copyfile(c.file(ARTIFACT_LOGITS), staging / "reference" / ARTIFACT_LOGITS)
            names.append(f"reference/{ARTIFACT_LOGITS}")
        return names

    return write_artifact(Path(out) / profile.name, manifest, fill)
