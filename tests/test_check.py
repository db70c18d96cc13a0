"""Parity bars on constructed logits: each failure is named with its figures."""

from __future__ import annotations

import numpy as np
import pytest

from gtnpipe.deploy.parity import ParityFailure, compare, lost_accuracy_only, run_batched
from gtnpipe.errors import ParityError

RNG = np.random.default_rng(0)
REF = RNG.standard_normal((1000, 10)).astype(np.float32)
LABELS = REF.argmax(1)  # torch is 100% right on these labels


def test_fp32_passes_within_1e_4_and_fails_beyond() -> None:
    ok = compare(REF + 5e-5, REF, LABELS, backend="onnxruntime", precision="fp32", max_drop_points=1.0)
    assert ok.passed and ok.max_abs_diff == pytest.approx(5e-5, rel=1e-2) and ok.agreement_pct == 100.0
    bad = compare(REF + 3e-4, REF, LABELS, backend="onnxruntime", precision="fp32", max_drop_points=1.0)
    assert not bad.passed and "max abs logit difference 0.0003 > 0.0001" in bad.messages[0]
    assert [f.kind for f in bad.failures] == ["max-abs-diff"]
    with pytest.raises(ParityError, match="onnxruntime fp32 artifact fails parity .* 1000 test images"):
        bad.raise_if_failed()


def _flip(n: int) -> np.ndarray:
    """REF with the top-1 of the first n images moved to another class."""
    out = REF.copy()
    out[np.arange(n), (LABELS[:n] + 1) % 10] += 100
    return out


def test_fp32_agreement_bar_is_99_9_percent() -> None:
    assert compare(_flip(2), REF, LABELS, backend="x", precision="fp32", max_drop_points=1).failures[-1] == ParityFailure(
        "agreement", "top-1 agreement 99.80% < 99.9%")


def test_fp16_agreement_and_drop() -> None:
    assert compare(_flip(5), REF, LABELS, backend="openvino", precision="fp16", max_drop_points=1.0).passed  # 99.5%
    fails = compare(_flip(6), REF, LABELS, backend="openvino", precision="fp16", max_drop_points=0.5).failures
    assert fails[0] == ParityFailure("agreement", "top-1 agreement 99.40% < 99.5%")
    assert fails[1].kind == "accuracy-drop" and fails[1].message.startswith("top-1 99.40% is 0.60 points below torch's")


def test_int8_is_judged_by_accuracy_drop_only() -> None:
    report = compare(_flip(9), REF, LABELS, backend="tflite", precision="int8", max_drop_points=1.0)
    assert report.passed and report.drop_points == pytest.approx(0.9)
    report = compare(_flip(11), REF, LABELS, backend="tflite", precision="int8", max_drop_points=1.0)
    assert not report.passed and "budgets.max_accuracy_drop_points" in report.messages[0]
    assert lost_accuracy_only(report.to_dict())  # what triggers accuracy-control INT8: the kind, not the wording
    assert not lost_accuracy_only(compare(_flip(11) * np.nan, REF, LABELS, backend="tflite", precision="int8",
                                          max_drop_points=1.0).to_dict())


def test_non_finite_and_shape_mismatch() -> None:
    nan = REF.copy()
    nan[0, 0] = np.nan
    assert "non-finite logits" in compare(nan, REF, LABELS, backend="x", precision="int8", max_drop_points=5).messages
    with pytest.raises(ParityError, match="shape"):
        compare(REF[:, :5], REF, LABELS, backend="x", precision="fp32", max_drop_points=1)


class _Doubler:
    def __init__(self, batch: int) -> None:
        self.batch = batch

    def run(self, x: np.ndarray) -> np.ndarray:
        assert x.shape[0] == self.batch  # a static-batch model sees only full batches
        return x.reshape(len(x), -1)[:, :3] * 2


def test_run_batched_pads_the_last_batch() -> None:
    x = RNG.random((10, 1, 2, 2), dtype=np.float32)
    out = run_batched(_Doubler(4), x, batch_size=4)
    np.testing.assert_array_equal(out, x.reshape(10, -1)[:, :3] * 2)


def test_on_device_int8_is_judged_against_the_build_machines_outputs() -> None:
    from gtnpipe.deploy.parity import compare_on_device

    built = _flip(30)  # the artifact as the build saw it: 3 points below torch on these images
    same = compare_on_device(built.copy(), REF, LABELS, built, backend="openvino", precision="int8", max_drop_points=1.0)
    assert same.passed and same.drop_points == pytest.approx(3.0)  # accuracy was judged on the whole test split
    drifted = _flip(45)  # 15 more images changed on the device: 98.5% agreement with the build
    report = compare_on_device(drifted, REF, LABELS, built, backend="openvino", precision="int8", max_drop_points=1.0)
    assert report.failures == (ParityFailure("agreement-with-build", "top-1 agreement with the same artifact on the build "
                                             "machine 98.50% < 99.0%"),)
    unchecked = compare_on_device(built, REF, LABELS, None, backend="tensorrt", precision="fp16", max_drop_points=1.0)
    assert not unchecked.passed  # no build-machine outputs (an engine built on the device): judged against torch
