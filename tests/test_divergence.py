"""When parity fails, say where: the first layer whose output leaves the FP32 reference, named from the compiled
model's own intermediates, on ONNX Runtime and on OpenVINO."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from gtnpipe.deploy.backends import ExportedModel, backend_class, get_backend
from gtnpipe.deploy.divergence import first_divergence, reference_intermediates
from gtnpipe.stages.deploy import locate_divergence


class Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.c = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c(torch.relu(self.b(torch.relu(self.a(x))))))
        return self.head(x.mean((2, 3)))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """The FP32 export, and a copy whose second convolution's output is 1.5x (a "wrong" compile of it)."""
    root = tmp_path_factory.mktemp("divergence")
    torch.manual_seed(0)
    reference = root / "reference.onnx"
    torch.onnx.export(Small().eval(), (torch.zeros(4, 1, 28, 28),), str(reference), dynamo=False, input_names=["input"],
                      output_names=["logits"])
    model = onnx.load(str(reference))
    conv_b = [n for n in model.graph.node if n.op_type == "Conv"][1]
    for tensor in (t for t in model.graph.initializer if t.name in conv_b.input[1:]):  # weights and bias: output x 1.5
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * 1.5, tensor.name))
    broken = root / "broken.onnx"
    onnx.save(model, str(broken))
    return reference, broken, conv_b.output[0]


def test_the_first_layer_off_is_named_in_onnx_runtime(models: tuple[Path, Path, str]) -> None:
    reference, broken, conv_b = models
    x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    located = locate_divergence(get_backend("onnxruntime"), reference, broken, x, "fp32")
    assert located is not None and located.first == conv_b and located.first_op == "Conv"
    assert located.first_relative_error == pytest.approx(0.5, rel=0.05)  # the layer's own error
    assert "first diverges at Conv" in located.describe()
    same = locate_divergence(get_backend("onnxruntime"), reference, reference, x, "fp32")
    assert same is not None and same.first is None and same.worst_relative_error < 1e-6 and same.compared >= 6


def test_the_first_layer_off_is_named_in_openvino(models: tuple[Path, Path, str], tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    reference, broken, conv_b = models
    backend = get_backend("openvino")
    inputs = ExportedModel(broken, (4, 1, 28, 28), np.zeros((4, 1, 28, 28), dtype=np.float32), 17)
    built = backend.build(inputs, "fp32", tmp_path)
    x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    located = locate_divergence(backend, reference, tmp_path / built.model_file, x, "fp32")
    assert located is not None and located.first == conv_b and located.compared >= 3


def test_a_runtime_that_hides_its_intermediates_says_nothing(models: tuple[Path, Path, str]) -> None:
    reference, _, _ = models
    x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    ref, order = reference_intermediates(reference, x)
    assert first_divergence(ref, order, {}, precision="int8") is None
    assert backend_class("tflite")().intermediates(reference, x, set(ref), precision="int8") is None
