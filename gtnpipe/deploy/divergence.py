"""Where a compiled model leaves its FP32 reference: the first layer whose output diverges, for a precision that fails
parity (Polygraphy's approach for TensorRT, marking every intermediate output in both graphs, on every runtime whose
backend can show its intermediates).

The reference is the FP32 ONNX export run by ONNX Runtime with every float intermediate tensor made a graph output; the
compiled model's intermediates come from its backend (`Backend.intermediates`: ONNX Runtime reads its own QDQ graph the
same way, OpenVINO adds the same tensor names as outputs of its IR). Tensors are compared in the reference's
topological order by relative error, ||candidate - reference|| / ||reference||: the first above the precision's
threshold is named, with the worst one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DIVERGENCE_THRESHOLD", "Divergence", "first_divergence", "reference_intermediates"]

# relative error of one layer's output above which it "diverges": an INT8 layer's own rounding stays near 1-3% on
# gtnpipe's students (measured on the deploy test student, 2026-12-08); FP16 well under 1%
DIVERGENCE_THRESHOLD = {"fp16": 0.02, "int8": 0.10, "fp32": 1e-4}


@dataclass(frozen=True)
class Divergence:
    """The first tensor above the threshold (None: none is) and the worst one, in the reference's order."""

    first: str | None
    first_op: str | None
    first_relative_error: float | None
    worst: str
    worst_relative_error: float
    compared: int  # tensors found in both graphs
    threshold: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        where = (f"first diverges at {self.first_op} '{self.first}' (relative error {self.first_relative_error:.3g} > "
                 f"{self.threshold:g})" if self.first else f"no layer above relative error {self.threshold:g}")
        return (f"{where}; worst '{self.worst}' ({self.worst_relative_error:.3g}), of {self.compared} intermediate "
                "tensors compared with the FP32 reference")


def reference_intermediates(onnx_path: Path, x: np.ndarray) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
    """Every float intermediate of the FP32 ONNX model on `x` (ONNX Runtime), by tensor name, and their order."""
    from gtnpipe.deploy.backends.onnxruntime import every_intermediate

    return every_intermediate(onnx_path, x)


def first_divergence(reference: Mapping[str, np.ndarray], order: list[tuple[str, str]],
                     candidate: Mapping[str, np.ndarray], *, precision: str) -> Divergence | None:
    """Compare `candidate`'s intermediates with the reference's, in order; None where no tensor is in both."""
    threshold = DIVERGENCE_THRESHOLD.get(precision, 0.10)
    errors: list[tuple[str, str, float]] = []
    for name, op in order:
        a, b = reference.get(name), candidate.get(name)
        if a is None or b is None or a.shape != b.shape:
            continue
        scale = float(np.linalg.norm(a)) or 1.0
        errors.append((name, op, float(np.linalg.norm(np.asarray(b, dtype=np.float32) - a)) / scale))
    if not errors:
        return None
    first = next((e for e in errors if e[2] > threshold), None)
    worst = max(errors, key=lambda e: e[2])
    return Divergence(first[0] if first else None, first[1] if first else None, first[2] if first else None,
                      worst[0], worst[2], len(errors), threshold)
