"""Accuracy-aware INT8 (NNCF's `quantize_with_accuracy_control`), shared by the OpenVINO and ONNX Runtime backends.

Plain post-training INT8 quantizes every layer it can; when that loses more top-1 than the profile allows,
NNCF's accuracy control quantizes, ranks the quantized layers by how much each costs on a validation set, and
reverts the worst to float one group at a time until the drop is within `max_drop` (absolute, as a fraction)
or nothing is left to revert. Its decisions are made on the validation split (ExportedModel.validation), never on
the test split the build then judges the result on.

What stayed in float is read off the two graphs: the layers fed by a quantizer in the plain INT8 model but not in
the accuracy-controlled one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from gtnpipe.deploy.backends import ExportedModel, calibration_batches
from gtnpipe.errors import ConfigError

__all__ = ["ACCURACY_CONTROL_IMAGES", "quantize_with_accuracy_control"]

# validation images accuracy control ranks layers on: each revert step re-evaluates the model on all of them, and
# one image is 0.1 points of top-1 at 1000 (the drop it steers by is that noisy)
ACCURACY_CONTROL_IMAGES = 1000


def quantize_with_accuracy_control(model: Any, inputs: ExportedModel, *, feed: Callable[[np.ndarray], Any],
                                   logits: Callable[[Any, np.ndarray], np.ndarray]) -> Any:
    """`model` (an ov.Model or onnx.ModelProto) quantized to INT8 with accuracy control.

    Args:
        feed: one batch of images as the backend's inference input (the array, or {input name: array}).
        logits: (NNCF's model for inference, one batch of images) -> logits.
    """
    import nncf

    if inputs.validation is None or inputs.max_drop_points is None:
        raise ConfigError("accuracy-control INT8 needs labelled validation images and the profile's "
                          "max_accuracy_drop_points (ExportedModel.validation, max_drop_points)")
    x_val, y_val = inputs.validation
    batch = inputs.input_shape[0]
    n = len(x_val) // batch * batch
    if n == 0:
        raise ConfigError(f"accuracy-control INT8 needs at least one batch of {batch} validation images")
    items = [(x_val[i:i + batch], y_val[i:i + batch]) for i in range(0, n, batch)]

    def validate(prepared: Any, data: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[float, list[float]]:
        per_item = [float((logits(prepared, x).argmax(1) == y).mean()) for x, y in data]
        return float(np.mean(per_item)), per_item

    batches = calibration_batches(inputs)
    return nncf.quantize_with_accuracy_control(
        model, nncf.Dataset(batches, feed), nncf.Dataset(items, lambda item: feed(item[0])), validate,
        max_drop=inputs.max_drop_points / 100.0, drop_type=nncf.DropType.ABSOLUTE, subset_size=len(batches))
