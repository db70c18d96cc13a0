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
from gtnpipe.deploy.backends import backend_class
from gtnpipe.deploy.parity import PrecisionRow
from gtnpipe.stages.deploy import ARTIFACT_LOGITS, Compiled, Measured
from gtnpipe.stages.keys import package_versions

__all__ = ["Shipped", "measured_summary", "write_device_artifact"]

# the manifest's package versions: gtnpipe, what exported the model, and what compiled it (the runtime's backend)
MANIFEST_PACKAGES = ("gtnpipe", "torch", "numpy", "onnx")


@dataclass(frozen=True)
class Shipped:
    """What a build (or gtnpipe compile) chose to ship for one device, and the evidence for it."""

    profile: DeviceProfile
    precision: str
    compiled: Compiled
    measured: Measured | None  # None where the runtime cannot run here (TensorRT on a CPU host)
    rows: list[PrecisionRow]  # every precision: measured, chosen or rejected and why
    model: dict[str, Any]  # the manifest's model facts beyond the compiled file: arch, macs, params, classes, source
    provenance: dict[str, Any]  # how the model came to be: recipe, teacher and student keys, or the user's file
    reference: str  # what the FP32 reference is: "torch" (a distilled student) or "onnxruntime" (a user's model)
    reference_inputs: np.ndarray  # float32 [0, 1] images the artifact carries for gtnpipe bench's parity check
    reference_labels: np.ndarray | None  # None: random images (gtnpipe compile without --data)
    reference_logits: np.ndarray  # the FP32 reference's logits on every image parity ran on
    reference_top1: float | None  # the FP32 reference's top-1 on the labelled test split
    estimated_top1: float | None  # what search estimated before distillation (None: not from search)
    predicted: dict[str, Any] | None  # the cost model's prediction (None: not a pool architecture)
    violations: list[str]
    warnings: list[str]
    data_name: str | None
    data_fingerprint: str | None
    pareto_png: str | None = None  # the search's Pareto plot


def measured_summary(shipped: Shipped) -> dict[str, Any] | None:
    if shipped.measured is None:
        return None
    lat, c = shipped.measured.latency, shipped.compiled
    return {"latency_ms_p50": lat["p50_ms"], "latency_ms_p90": lat["p90_ms"], "latency_ms_p99": lat["p99_ms"],
            "throughput_per_s": lat["throughput_per_s"], "peak_memory_mb": shipped.measured.peak_memory_mb,
            "model_size_mb": c.meta["size_bytes"] / 1e6, "runs": lat["runs"], "threads": shipped.measured.inp.threads,
            "machine": shipped.measured.inp.machine.describe(),
            "method": f"median of {shipped.measured.inp.processes} fresh processes, one session each"}


def write_device_artifact(shipped: Shipped, out: Path) -> Path:
    """Write out/<device>/ and return it."""
    profile, c = shipped.profile, shipped.compiled
    meta, shape = c.meta, list(c.inp.input_shape)
    n_ref = min(c.inp.reference_images, len(shipped.reference_inputs))
    packages = (*MANIFEST_PACKAGES, *backend_class(profile.runtime.name).packages)
    versions = {k: v for k, v in package_versions(packages).items() if v is not None}
    parity = meta.get("parity")
    model = {**shipped.model, "precision": shipped.precision, "file": meta["model_file"],
             "files": [f for f in meta["files"] if f != "calibration.npy"], "threads": profile.threads}
    model["input"] = {"name": "input", "shape": shape, "dtype": "float32", "layout": "NCHW", "value_range": [0.0, 1.0],
                      **model.get("input", {})}
    model["output"] = {"name": "logits", "shape": [shape[0], len(model["classes"])],
                       "meaning": "unnormalised class scores (softmax gives probabilities)"}
    model["build_notes"] = meta["notes"]
    manifest = {
        "schema_version": 1,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "gtnpipe_version": versions.get("gtnpipe", "unknown"),
        "device": {"name": profile.name, "profile": profile.to_dict(), "profile_sha256": profile.sha256()},
        "runtime": {"name": profile.runtime.name, "version_range": profile.runtime.version,
                    "built_with": meta["runtime_version"], "max_onnx_opset": profile.runtime.max_onnx_opset,
                    **({"engine_build_command": meta["notes"]["engine_build_command"]}
                       if "engine_build_command" in meta["notes"] else {})},
        "model": model,
        "provenance": {**shipped.provenance, "dataset": shipped.data_name, "dataset_fingerprint": shipped.data_fingerprint,
                       "packages": versions},
        "accuracy": {"test_images": len(shipped.reference_logits), "reference": shipped.reference,
                     "labelled": shipped.reference_labels is not None,
                     **({"torch_fp32_top1": shipped.reference_top1} if shipped.reference == "torch" else {}),
                     "reference_top1": shipped.reference_top1,
                     "shipped_top1": parity["artifact_top1"] if parity else None,
                     "estimated_top1": shipped.estimated_top1},
        "precisions": shipped.rows,
        "predicted": shipped.predicted,
        "measured_on_build_machine": measured_summary(shipped),
        "budgets": as_dict(profile.budgets),
        "budget_violations": shipped.violations,
        "warnings": shipped.warnings,
        "reference": {"inputs": "reference/inputs.npy", "logits": "reference/logits.npy", "images": n_ref,
                      **({"labels": "reference/labels.npy"} if shipped.reference_labels is not None else {}),
                      **({"artifact_logits": f"reference/{ARTIFACT_LOGITS}"} if parity else {})},
    }

    def fill(staging: Path) -> list[str]:
        for name in meta["files"]:
            shutil.copyfile(c.file(name), staging / name)
        (staging / "reference").mkdir()
        np.save(staging / "reference/inputs.npy", shipped.reference_inputs[:n_ref])  # at the model's resolution
        np.save(staging / "reference/logits.npy", shipped.reference_logits[:n_ref])
        names = [*meta["files"], "reference/inputs.npy", "reference/logits.npy"]
        if shipped.reference_labels is not None:
            np.save(staging / "reference/labels.npy", shipped.reference_labels[:n_ref].astype(np.int64))
            names.append("reference/labels.npy")
        if shipped.pareto_png is not None:
            shutil.copyfile(shipped.pareto_png, staging / "pareto.png")
            names.append("pareto.png")
        if parity:
            shutil.copyfile(c.file(ARTIFACT_LOGITS), staging / "reference" / ARTIFACT_LOGITS)
            names.append(f"reference/{ARTIFACT_LOGITS}")
        return names

    return write_artifact(Path(out) / profile.name, manifest, fill)
