"""Parity of a compiled model with the PyTorch student: the bars a build must pass to ship.

- FP32: max abs logit difference <= 1e-4 and top-1 agreement >= 99.9% with torch;
- FP16: top-1 agreement >= 99.5%;
- FP16 and INT8: test top-1 at most the profile's `max_accuracy_drop_points` below torch's.

numpy only: `gtnpipe bench` re-runs the same check on the device against the reference
images and logits the artifact carries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, NotRequired, TypedDict, cast, final

import numpy as np

from gtnpipe.config.profiles import DeviceProfile
from gtnpipe.deploy.backends import Runner
from gtnpipe.errors import ParityError

__all__ = [
    "DEVICE_MIN_AGREEMENT_WITH_BUILD_PCT",
    "FailureKind",
    "FP16_MIN_AGREEMENT_PCT",
    "FP32_MAX_ABS_DIFF",
    "FP32_MIN_AGREEMENT_PCT",
    "BuildFailure",
    "CompiledPrecision",
    "ParityDict",
    "ParityFailure",
    "ParityReport",
    "PrecisionRow",
    "choose_precision",
    "compare",
    "compare_on_device",
    "failure_reason",
    "lost_accuracy_only",
    "run_batched",
    "top1_pct",
]

FP32_MAX_ABS_DIFF = 1e-4
FP32_MIN_AGREEMENT_PCT = 99.9
FP16_MIN_AGREEMENT_PCT = 99.5
# On the device, an FP16/INT8 artifact is compared with its own outputs on the build machine (whose accuracy
# the build judged on the whole test split): another CPU's int8/fp16 kernels round a little differently.
DEVICE_MIN_AGREEMENT_WITH_BUILD_PCT = 99.0


def top1_pct(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean() * 100)


def run_batched(runner: Runner, x: np.ndarray, *, batch_size: int) -> np.ndarray:
    """Logits of every image in `x` through a runner compiled for a static batch (the last batch is padded)."""
    outs = []
    for start in range(0, len(x), batch_size):
        chunk = x[start:start + batch_size]
        n = len(chunk)
        if n < batch_size:
            chunk = np.concatenate([chunk, np.zeros((batch_size - n, *chunk.shape[1:]), dtype=chunk.dtype)])
        outs.append(np.asarray(runner.run(np.ascontiguousarray(chunk)), dtype=np.float32)[:n])
    return np.concatenate(outs)


# What a parity failure is, for the code that acts on it (the messages are for people)
FailureKind = Literal["non-finite", "max-abs-diff", "agreement", "accuracy-drop", "agreement-with-build"]


@dataclass(frozen=True)
class ParityFailure:
    kind: FailureKind
    message: str


class ParityDict(TypedDict):
    """`ParityReport.to_dict()`: what compile entries and manifests record."""

    backend: str
    precision: str
    images: int
    max_abs_diff: float
    agreement_pct: float
    torch_top1: float | None
    artifact_top1: float | None
    max_drop_points: float
    failures: list[str]  # the messages, for people
    failure_kinds: list[str]  # the same failures' kinds (FailureKind), for code
    passed: bool
    drop_points: float | None
    # where a failed precision leaves its FP32 reference (gtnpipe.deploy.divergence), where the runtime shows it
    divergence: NotRequired[dict[str, Any]]
    divergence_note: NotRequired[str]


def failure_reason(parity: ParityDict) -> str:
    """Why a precision failed parity, for people: its failures, then where it left the reference when that is known."""
    return "; ".join([*parity["failures"], *([parity["divergence_note"]] if "divergence_note" in parity else [])])


def lost_accuracy_only(parity: ParityDict | None) -> bool:
    """Parity failed on the accuracy drop alone (the model runs, it just loses too much top-1)."""
    return parity is not None and not parity["passed"] and set(parity["failure_kinds"]) == {"accuracy-drop"}


@dataclass(frozen=True)
class ParityReport:
    backend: str
    precision: str
    images: int
    max_abs_diff: float
    agreement_pct: float  # share of images where the artifact's top-1 class equals the reference's
    # top-1 on labelled images of the reference (torch FP32 for a student; ONNX Runtime FP32 of a user's model) and of
    # the artifact; None on unlabelled (random) images
    torch_top1: float | None
    artifact_top1: float | None
    max_drop_points: float
    failures: tuple[ParityFailure, ...]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def drop_points(self) -> float | None:
        return None if self.torch_top1 is None or self.artifact_top1 is None else self.torch_top1 - self.artifact_top1

    def to_dict(self) -> ParityDict:
        return cast(ParityDict, {**asdict(self), "failures": self.messages, "failure_kinds": [f.kind for f in self.failures],
                                 "passed": self.passed, "drop_points": self.drop_points})

    @property
    def messages(self) -> list[str]:
        return [f.message for f in self.failures]

    def raise_if_failed(self) -> None:
        if self.failures:
            raise ParityError(f"{self.backend} {self.precision} artifact fails parity with the PyTorch student on "
                              f"{self.images} test images: {'; '.join(self.messages)}. The compiled model is wrong, "
                              "not just imprecise: check the runtime version against the profile's, or report it")


def compare(logits: np.ndarray, reference: np.ndarray, labels: np.ndarray | None, *, backend: str, precision: str,
            max_drop_points: float) -> ParityReport:
    """Check `logits` (the artifact's) against `reference` (the FP32 reference's) on the same images; the accuracy
    drop is judged only where they are labelled (`labels` None: random images, agreement bars only)."""
    if logits.shape != reference.shape:
        raise ParityError(f"{backend} {precision} artifact returns logits of shape {logits.shape}, torch {reference.shape}")
    max_abs = float(np.abs(logits.astype(np.float64) - reference).max())
    agreement = float((logits.argmax(1) == reference.argmax(1)).mean() * 100)
    torch_top1 = float((reference.argmax(1) == labels).mean() * 100) if labels is not None else None
    top1 = float((logits.argmax(1) == labels).mean() * 100) if labels is not None else None
    failures = []
    if not np.isfinite(logits).all():
        failures.append(ParityFailure("non-finite", "non-finite logits"))
    if precision == "fp32":
        if max_abs > FP32_MAX_ABS_DIFF:
            failures.append(ParityFailure("max-abs-diff", f"max abs logit difference {max_abs:.3g} > {FP32_MAX_ABS_DIFF:g}"))
        if agreement < FP32_MIN_AGREEMENT_PCT:
            failures.append(ParityFailure("agreement", f"top-1 agreement {agreement:.2f}% < {FP32_MIN_AGREEMENT_PCT}%"))
    else:
        if precision == "fp16" and agreement < FP16_MIN_AGREEMENT_PCT:
            failures.append(ParityFailure("agreement", f"top-1 agreement {agreement:.2f}% < {FP16_MIN_AGREEMENT_PCT}%"))
        if torch_top1 is not None and top1 is not None and torch_top1 - top1 > max_drop_points:
            failures.append(ParityFailure(
                "accuracy-drop", f"top-1 {top1:.2f}% is {torch_top1 - top1:.2f} points below torch's {torch_top1:.2f}% "
                f"(the profile allows {max_drop_points:g}: budgets.max_accuracy_drop_points)"))
    return ParityReport(backend, precision, len(logits), max_abs, agreement, torch_top1, top1, max_drop_points,
                        tuple(failures))


def compare_on_device(logits: np.ndarray, reference: np.ndarray, labels: np.ndarray | None, built: np.ndarray | None, *,
                      backend: str, precision: str, max_drop_points: float) -> ParityReport:
    """`gtnpipe bench`'s check on the few hundred reference images an artifact carries.

    FP32 meets the build's bars against torch. FP16/INT8 were judged for accuracy on the whole test split at
    build time; here they must reproduce the build machine's outputs (`built`), since a top-1 drop measured
    on 500 images is too noisy to re-judge. Without `built` (an engine the build could not run), the
    accuracy drop is judged here.
    """
    if precision == "fp32" or built is None:
        return compare(logits, reference, labels, backend=backend, precision=precision, max_drop_points=max_drop_points)
    report = compare(logits, reference, labels, backend=backend, precision=precision, max_drop_points=float("inf"))
    failures = [f for f in report.failures if f.kind != "agreement"]  # agreement with torch: judged at build
    with_build = float((logits.argmax(1) == built.argmax(1)).mean() * 100)
    if with_build < DEVICE_MIN_AGREEMENT_WITH_BUILD_PCT:
        failures.append(ParityFailure("agreement-with-build", f"top-1 agreement with the same artifact on the build "
                                      f"machine {with_build:.2f}% < {DEVICE_MIN_AGREEMENT_WITH_BUILD_PCT}%"))
    return dataclasses.replace(report, max_drop_points=max_drop_points, failures=tuple(failures))


@final  # final: `"error" in m` then tells the two kinds of entry apart
class CompiledPrecision(TypedDict):
    """What `choose_precision` reads of one built precision: its compile entry's meta plus the latency measured here."""

    parity: ParityDict | None  # None: the runtime cannot run here (unchecked_reason says why)
    latency: Mapping[str, float] | None  # LatencyStats.to_dict() (p50_ms, ...); None when not measured here
    size_bytes: int
    deployed_format: bool  # False: a format the device compiles further (its size is not the shipped file's)
    unchecked_reason: NotRequired[str]


class PrecisionRow(TypedDict):
    """One row of `choose_precision`'s answer (manifests and reports list one per precision the profile allows)."""

    precision: str
    status: str  # shipped, built-unchecked, rejected, not-built
    reason: str
    parity: ParityDict | None
    latency_ms_p50: float | None  # measured here; None when not built or not measurable here
    size_bytes: int | None
    # INT8 by NNCF's accuracy control ("accuracy-control", which replaced the "plain" INT8 that lost too much top-1):
    # the layers it kept in float, and what that cost in p50 latency here against plain INT8
    variant: NotRequired[str]
    float_layers: NotRequired[list[str]]
    latency_cost_ms_p50: NotRequired[float]


@final
class BuildFailure(TypedDict):
    """A precision whose build failed (the toolchain's error, recorded instead of aborting the build)."""

    error: str


def choose_precision(profile: DeviceProfile, compiled: Mapping[str, CompiledPrecision | BuildFailure]
                     ) -> tuple[str, list[PrecisionRow]]:
    """The precision that ships: fastest measured among those within the accuracy limit and the size budget
    (profile order where nothing could be measured here), and a row per precision saying why."""
    rows: dict[str, PrecisionRow] = {}
    passing = []
    for precision in profile.precisions:
        m = compiled.get(precision)
        if m is None or "error" in m:
            rows[precision] = {"precision": precision, "status": "not-built", "reason": m["error"] if m else "the backend "
                               f"does not build {precision}", "parity": None, "latency_ms_p50": None, "size_bytes": None}
            continue
        lat = cast(Mapping[str, float], m["latency"])["p50_ms"] if m.get("latency") else None
        rows[precision] = {"precision": precision, "status": "", "reason": "", "parity": m["parity"],
                           "latency_ms_p50": lat, "size_bytes": m["size_bytes"]}
        if m["parity"] is not None and not m["parity"]["passed"]:
            rows[precision] |= {"status": "rejected", "reason": failure_reason(m["parity"])}
        elif m["deployed_format"] and m["size_bytes"] / 1e6 > profile.budgets.model_size_mb:
            rows[precision] |= {"status": "rejected", "reason": f"file {m['size_bytes'] / 1e6:.3f} MB > budget "
                                f"model_size_mb {profile.budgets.model_size_mb:g}"}
        else:
            passing.append(precision)  # status and reason come below, once the choice is made
    if not passing:
        raise ParityError(f"no precision of device {profile.name!r} passes its checks: "
                          + "; ".join(f"{p}: {r['reason']}" for p, r in rows.items())
                          + ". Allow another precision in the profile's 'precisions', or relax the [budgets] field named "
                          "above (max_accuracy_drop_points, model_size_mb)")
    timed = {p: ms for p in passing if (ms := rows[p]["latency_ms_p50"]) is not None}
    if len(timed) == len(passing):
        chosen = min(timed, key=timed.__getitem__)
        why = "fastest measured here within the accuracy limit and size budget"
    else:
        chosen = passing[0]
        why = "first of the profile's precisions that passed (latency not measurable here; gtnpipe bench on the device)"
    for p in passing:
        if p == chosen:
            rows[p] |= {"status": "shipped" if rows[p]["parity"] is not None else "built-unchecked", "reason": why}
        else:
            rows[p] |= {"status": "rejected", "reason": f"slower here: p50 {timed[p]:.3f} ms vs {timed[chosen]:.3f} ms"
                        if p in timed and chosen in timed else f"{chosen} comes first in the profile's precisions"}
    if rows[chosen]["parity"] is None:
        rows[chosen]["reason"] += f" (parity not checked here: {cast(CompiledPrecision, compiled[chosen])['unchecked_reason']})"
    return chosen, [rows[p] for p in profile.precisions]
