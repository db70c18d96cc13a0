"""TensorRT backend: the ONNX compatibility check, the host-side build and the engine-freshness rules run everywhere;
engines need TensorRT (and Polygraphy, the `tensorrt` extra).

TensorRT cannot be installed on the project's machines (../shared/DEPS.md): the contract tests and
the engine tests skip there with that reason and run on a Jetson or a GPU box that has it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
from backend_template import FP32_MAX_ABS, BackendContract
from conftest import HANG_TIMEOUT_S, DeployCase, block_imports_prelude

import gtnpipe.deploy.backends.tensorrt as trt_backend
from gtnpipe.deploy.backends import ExportedModel, get_backend
from gtnpipe.deploy.backends.tensorrt import CALIBRATION_FILE, TensorRtBackend, engine_build_command, main
from gtnpipe.deploy.backends.tensorrt_engine import (
    PRECISIONS,
    builder_flags,
    engine_file_name,
    engine_for_onnx,
    engine_stamp,
    gpu_name,
    read_sidecar,
    sidecar_path,
    stale_reason,
)
from gtnpipe.deploy.backends.tensorrt_onnx import (
    TENSORRT_8_0_ONNX_OPS,
    TENSORRT_8_5_ONNX_OPS,
    check_onnx_for_tensorrt,
    require_onnx_for_tensorrt,
    summarize_onnx_check,
    supported_onnx_ops,
    tensorrt_version_for_opset,
)
from gtnpipe.errors import BackendBuildError, BackendUnavailable, ConfigError
from gtnpipe.fsutil import atomic_write_json, sha256_file

onnx = pytest.importorskip("onnx", reason="the ONNX check needs onnx (pip install 'gtnpipe[onnx]')")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

NO_TENSORRT = "TensorRT is not installable here (no GPU; PyPI has only stubs): runs on a Jetson or a GPU box with TensorRT"
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
needs_tensorrt = pytest.mark.skipif(not HAS_TENSORRT, reason=NO_TENSORRT)
needs_no_tensorrt = pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here: the missing-TensorRT path cannot run")

MOBILENET_OPS = {"Conv", "Relu", "Clip", "HardSigmoid", "Add", "Mul", "Div", "Sub", "GlobalAveragePool", "ReduceMean",
                 "Flatten", "Gemm", "MatMul", "Reshape", "BatchNormalization", "Sigmoid", "Constant", "Identity",
                 "Concat", "Pad"}


@pytest.fixture(scope="module")
def nano_onnx(deploy_case: DeployCase, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The DeployCase student exported as for the Jetson Nano profile (max_onnx_opset 13)."""
    from gtnpipe.deploy.export import export_onnx

    path = tmp_path_factory.mktemp("nano") / "model.onnx"
    return export_onnx(deploy_case.model, deploy_case.task, path, max_opset=13, input_shape=deploy_case.inputs.input_shape)


@pytest.fixture
def nano_inputs(deploy_case: DeployCase, nano_onnx: Path) -> ExportedModel:
    return ExportedModel(onnx_path=nano_onnx, input_shape=deploy_case.inputs.input_shape,
                         calibration=deploy_case.inputs.calibration, max_onnx_opset=13)


@pytest.fixture
def no_tensorrt_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make build() take the host path (no TensorRT Python API, no trtexec) whatever is installed."""
    monkeypatch.setattr(trt_backend, "_optional_tensorrt", lambda: None)
    monkeypatch.setattr(trt_backend, "_trtexec_path", lambda: None)


def save_model(path: Path, nodes: list, inputs: list, outputs: list, *, initializers: list | None = None,
               opset: int = 13, extra_opsets: tuple = ()) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])
    onnx.save(model, str(path))
    return path


def image_input(shape: list) -> object:
    return helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)


def logits_output() -> object:
    return helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)


# ---------------------------------------------------------------------------------------------
# The operator tables

def test_tables_cover_a_mobilenetv3_export() -> None:
    assert MOBILENET_OPS <= TENSORRT_8_0_ONNX_OPS
    assert "HardSwish" not in TENSORRT_8_0_ONNX_OPS and "HardSwish" in TENSORRT_8_5_ONNX_OPS
    assert "NonMaxSuppression" not in supported_onnx_ops("8.2.1.8")
    assert supported_onnx_ops("8.2") == TENSORRT_8_0_ONNX_OPS  # the Nano's range is checked against 8.0's table
    assert supported_onnx_ops("10.3.0") >= TENSORRT_8_5_ONNX_OPS


def test_version_for_opset_is_the_oldest_parser_that_reads_it() -> None:
    assert tensorrt_version_for_opset(13) == "8.0"
    assert tensorrt_version_for_opset(17) == "8.5"
    assert tensorrt_version_for_opset(20) == "10.0"


def test_unknown_versions_are_refused() -> None:
    with pytest.raises(ConfigError, match="8.0 and later"):
        supported_onnx_ops("7.2")
    with pytest.raises(ConfigError, match="not a version"):
        supported_onnx_ops("latest")


# ---------------------------------------------------------------------------------------------
# The check on real exports

def test_opset13_export_passes(nano_onnx: Path) -> None:
    assert check_onnx_for_tensorrt(nano_onnx, max_opset=13, trt_version="8.0") == []
    require_onnx_for_tensorrt(nano_onnx, max_opset=13, trt_version="8.2")
    summary = summarize_onnx_check(nano_onnx, max_opset=13, trt_version="8.0")
    assert summary.splitlines()[0].endswith(": OK") and "opset 13" in summary and "HardSigmoid" in summary


def test_opset17_export_is_flagged_for_the_nano(deploy_case: DeployCase) -> None:
    problems = check_onnx_for_tensorrt(deploy_case.inputs.onnx_path, max_opset=13, trt_version="8.0")
    assert any("opset 17" in p and "max_opset=13" in p for p in problems), problems
    assert any("HardSwish" in p for p in problems), problems
    with pytest.raises(ConfigError, match="will not parse in TensorRT 8.0") as raised:
        require_onnx_for_tensorrt(deploy_case.inputs.onnx_path, max_opset=13, trt_version="8.0")
    assert "HardSwish" in str(raised.value) and "export_onnx" in str(raised.value)
    # the same export is fine for a TensorRT that reads opset 17
    assert check_onnx_for_tensorrt(deploy_case.inputs.onnx_path, max_opset=17, trt_version="8.6") == []


def test_profile_limit_above_the_parser_limit_is_flagged(nano_onnx: Path, deploy_case: DeployCase) -> None:
    problems = check_onnx_for_tensorrt(deploy_case.inputs.onnx_path, max_opset=17, trt_version="8.2")
    assert any("parser's limit 13" in p for p in problems), problems


# ---------------------------------------------------------------------------------------------
# The check on hand-made models

def test_op_outside_the_table_is_flagged(tmp_path: Path) -> None:
    boxes = helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 10, 4])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 10])
    selected = helper.make_tensor_value_info("selected", TensorProto.INT64, None)
    path = save_model(tmp_path / "nms.onnx", [helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["selected"],
                                                                name="nms")], [boxes, scores], [selected])
    problems = check_onnx_for_tensorrt(path, max_opset=13, trt_version="8.0")
    assert len(problems) == 1 and "NonMaxSuppression" in problems[0] and "'nms'" in problems[0]
    assert check_onnx_for_tensorrt(path, max_opset=13, trt_version="8.4") == []  # 8.4's table has it


def test_custom_domain_op_is_flagged(tmp_path: Path) -> None:
    node = helper.make_node("FusedConv", ["input"], ["logits"], domain="com.microsoft", name="fused")
    path = save_model(tmp_path / "custom.onnx", [node], [image_input([1, 1, 28, 28])], [logits_output()],
                      extra_opsets=(helper.make_opsetid("com.microsoft", 1),))
    problems = check_onnx_for_tensorrt(path, max_opset=13, trt_version="10.3")
    assert len(problems) == 1 and "com.microsoft::FusedConv" in problems[0] and "plugin" in problems[0]


def test_dynamic_input_dim_is_flagged(tmp_path: Path) -> None:
    path = save_model(tmp_path / "dynamic.onnx", [helper.make_node("Relu", ["input"], ["logits"])],
                      [image_input(["batch", 1, 28, 28])], [logits_output()])
    problems = check_onnx_for_tensorrt(path, max_opset=13, trt_version="8.0")
    assert len(problems) == 1 and "dynamic" in problems[0] and "batch" in problems[0]


def test_weight_types(tmp_path: Path) -> None:
    """float64 weights are flagged; int64 shape constants (also through Identity) are not; int64 data is."""
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    scale64 = numpy_helper.from_array(np.ones((1, 784), np.float64), "scale")
    offset = numpy_helper.from_array(np.ones((1, 784), np.int64), "offset")
    nodes = [helper.make_node("Identity", ["shape"], ["shape_copy"]),
             helper.make_node("Reshape", ["input", "shape_copy"], ["flat"]),
             helper.make_node("Mul", ["flat", "scale"], ["scaled"]),
             helper.make_node("Add", ["scaled", "offset"], ["logits"])]
    path = save_model(tmp_path / "types.onnx", nodes, [image_input([1, 1, 28, 28])], [logits_output()],
                      initializers=[shape, scale64, offset])
    problems = check_onnx_for_tensorrt(path, max_opset=13, trt_version="8.0")
    assert len(problems) == 2, problems
    assert any("DOUBLE" in p and "'scale'" in p for p in problems)
    assert any("INT64" in p and "'offset'" in p and "'shape'" not in p for p in problems)


def test_parser_restrictions_of_8_0(tmp_path: Path) -> None:
    """8.0's table: Clip bounds must be initializers; Pad only zero-pads the last two dims."""
    lo = numpy_helper.from_array(np.array(0.0, np.float32), "lo")
    pads = numpy_helper.from_array(np.array([0, 1, 0, 0, 0, 1, 0, 0], np.int64), "pads")
    nodes = [helper.make_node("ReduceMax", ["input"], ["hi"], keepdims=0),
             helper.make_node("Clip", ["input", "lo", "hi"], ["clipped"], name="clip"),
             helper.make_node("Pad", ["clipped", "pads"], ["logits"], name="pad")]
    path = save_model(tmp_path / "restricted.onnx", nodes, [image_input([1, 1, 28, 28])], [logits_output()],
                      initializers=[lo, pads])
    problems = check_onnx_for_tensorrt(path, max_opset=13, trt_version="8.0")
    assert any("Clip input 2 must be an initializer" in p for p in problems), problems
    assert any("Pad" in p and "other than the last two" in p for p in problems), problems
    assert check_onnx_for_tensorrt(path, max_opset=13, trt_version="8.5") == []


def test_unreadable_file_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a model")
    problems = check_onnx_for_tensorrt(path, max_opset=13, trt_version="8.0")
    assert len(problems) == 1 and "cannot be read" in problems[0]


def test_cli_check(nano_onnx: Path, deploy_case: DeployCase, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(nano_onnx), "--max-opset", "13"]) == 0
    assert "TensorRT 8.0 check" in capsys.readouterr().out
    assert main(["check", str(deploy_case.inputs.onnx_path), "--max-opset", "13", "--trt-version", "8.2"]) == 1
    assert "HardSwish" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# build() and load() on a machine without TensorRT

def test_module_imports_without_tensorrt_or_torch() -> None:
    """get_backend needs neither TensorRT, Polygraphy, torch nor onnx, and the device side never loads tensorrt_onnx."""
    code = block_imports_prelude(("tensorrt", "torch", "onnx", "polygraphy", "cuda", "pycuda")) + (
        "from gtnpipe.deploy.backends import get_backend\n"
        "b = get_backend('tensorrt')\n"
        "print(b.runtime, ','.join(b.precisions), b.calibration_images)\n"
        "print('gtnpipe.deploy.backends.tensorrt_onnx' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["tensorrt", "fp32,fp16,int8", "500", "False"]


@pytest.mark.usefixtures("no_tensorrt_here")
def test_build_without_tensorrt_ships_a_parity_clean_onnx(nano_inputs: ExportedModel, deploy_case: DeployCase,
                                                          tmp_path: Path) -> None:
    import onnxruntime as ort

    result = TensorRtBackend().build(nano_inputs, "fp16", tmp_path)
    assert result.model_file == "model.onnx" and result.files == ("model.onnx",)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    command = result.notes["engine_build_command"]
    assert command == "trtexec --onnx=model.onnx --saveEngine=model-fp16.engine --fp16"
    assert result.notes["engine"] == "not built: TensorRT not installed here; gtnpipe bench builds it on the device"
    assert (tmp_path / "model.onnx").read_bytes() == nano_inputs.onnx_path.read_bytes()
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = np.concatenate([session.run(None, {"input": deploy_case.x_test[i:i + 1]})[0]
                             for i in range(len(deploy_case.x_test))])
    assert np.abs(logits - deploy_case.torch_logits).max() <= FP32_MAX_ABS


@pytest.mark.usefixtures("no_tensorrt_here")
def test_build_fp32_and_int8_without_tensorrt(nano_inputs: ExportedModel, tmp_path: Path) -> None:
    backend = TensorRtBackend()
    fp32 = backend.build(nano_inputs, "fp32", tmp_path / "fp32")
    # TF32 off: TensorRT's default TF32 convolutions break the 1e-4 fp32 parity bar on Ampere and later
    assert fp32.notes["engine_build_command"] == "trtexec --onnx=model.onnx --saveEngine=model-fp32.engine --noTF32"
    int8 = backend.build(nano_inputs, "int8", tmp_path / "int8")
    assert int8.model_file == "model.onnx" and set(int8.files) == {"model.onnx", CALIBRATION_FILE}
    calibration = np.load(tmp_path / "int8" / CALIBRATION_FILE)
    given = len(nano_inputs.calibration)
    assert given == 300 < TensorRtBackend.calibration_images == 500  # what DeployCase passes, as gtnpipe build did
    assert calibration.dtype == np.float32 and calibration.shape == (given, 1, 28, 28)
    np.testing.assert_array_equal(calibration, nano_inputs.calibration)
    assert int8.notes["calibration_images"] == given and int8.notes["calibration_images_wanted"] == 500
    assert "wants 500 images but was given 300: 300 are used" in int8.notes["calibration_shortfall"]
    assert "gtnpipe.deploy.backends.tensorrt build model.onnx --precision int8" in int8.notes["engine_build_command"]
    assert "--int8 --fp16 --calib=calibration.cache" in int8.notes["calibration"]
    assert "placeholder scales" in int8.notes["calibration"]


@pytest.mark.usefixtures("no_tensorrt_here")
def test_int8_calibration_count(deploy_case: DeployCase, nano_inputs: ExportedModel, tmp_path: Path) -> None:
    """Given enough images the build ships exactly calibration_images; whole batches that fall short are noted."""
    from gtnpipe.deploy.export import export_onnx

    train = nano_inputs.calibration
    many = np.concatenate([train, train[::-1]])  # 600 training images (each twice): more than the 500 wanted
    enough = replace(nano_inputs, calibration=many)
    result = TensorRtBackend().build(enough, "int8", tmp_path / "b1")
    np.testing.assert_array_equal(np.load(tmp_path / "b1" / CALIBRATION_FILE), many[:500])
    assert result.notes["calibration_images"] == 500 and "calibration_shortfall" not in result.notes

    shape = (32, *deploy_case.inputs.input_shape[1:])
    batch32 = export_onnx(deploy_case.model, deploy_case.task, tmp_path / "b32.onnx", max_opset=13, input_shape=shape)
    for images, used, given in ((train, 288, 300), (many, 480, 600)):
        out = tmp_path / f"b32-{given}"
        result = TensorRtBackend().build(ExportedModel(onnx_path=batch32, input_shape=shape, calibration=images,
                                                       max_onnx_opset=13), "int8", out)
        assert np.load(out / CALIBRATION_FILE).shape[0] == used == result.notes["calibration_images"]
        assert (f"wants 500 images but was given {given}, and whole batches of 32 of them make {used}: {used} are used"
                in result.notes["calibration_shortfall"])


@pytest.mark.usefixtures("no_tensorrt_here")
def test_build_refuses_an_export_tensorrt_cannot_parse(deploy_case: DeployCase, tmp_path: Path) -> None:
    opset17_for_nano = ExportedModel(onnx_path=deploy_case.inputs.onnx_path, input_shape=deploy_case.inputs.input_shape,
                                     calibration=deploy_case.inputs.calibration, max_onnx_opset=13)
    with pytest.raises(ConfigError, match="HardSwish"):
        TensorRtBackend().build(opset17_for_nano, "fp16", tmp_path)
    assert not (tmp_path / "model.onnx").exists()
    with pytest.raises(ConfigError, match="builds fp32, fp16, int8"):
        TensorRtBackend().build(opset17_for_nano, "fp8", tmp_path)


def test_build_with_trtexec(nano_inputs: ExportedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where only trtexec is there, build() runs it in out_dir. The stand-in executable records its arguments and
    writes a placeholder file: what is checked is gtnpipe's side (command, folder, failure), not TensorRT."""
    fake = tmp_path / "bin" / "trtexec"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n"
                    "echo \"$@\" > args.txt\n"
                    "for a in \"$@\"; do case $a in --saveEngine=*) echo engine > \"${a#--saveEngine=}\";; esac; done\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(trt_backend, "_optional_tensorrt", lambda: None)
    monkeypatch.setattr(trt_backend, "_trtexec_path", lambda: str(fake))
    out = tmp_path / "out"
    result = TensorRtBackend().build(nano_inputs, "fp16", out)
    assert result.model_file == "model-fp16.engine" and set(result.files) == {"model.onnx", "model-fp16.engine"}
    assert (out / "args.txt").read_text().split() == engine_build_command("fp16")[1:]
    # int8: trtexec cannot calibrate from images, so the engine is left to the device
    int8 = TensorRtBackend().build(nano_inputs, "int8", tmp_path / "int8")
    assert int8.model_file == "model.onnx" and "trtexec cannot calibrate" in int8.notes["engine"]
    # a failing trtexec is a BackendBuildError naming the command, with the process failure chained
    fake.write_text("#!/bin/sh\necho 'Unsupported ONNX data type' >&2\nexit 1\n")
    with pytest.raises(BackendBuildError, match="Unsupported ONNX data type") as raised:
        TensorRtBackend().build(nano_inputs, "fp32", tmp_path / "failing")
    assert "--noTF32" in str(raised.value)
    cause = raised.value.__cause__
    assert isinstance(cause, subprocess.CalledProcessError) and cause.returncode == 1


@needs_no_tensorrt
def test_load_and_version_without_tensorrt_say_how_to_get_it(tmp_path: Path) -> None:
    backend = get_backend("tensorrt")
    for call in (lambda: backend.load(tmp_path / "model.onnx", threads=1, precision="fp16"), backend.version):
        with pytest.raises(BackendUnavailable) as raised:
            call()
        message = str(raised.value)
        assert "TensorRT is not installed" in message and "JetPack" in message and "not come from PyPI" in message


@needs_no_tensorrt
def test_engine_build_without_tensorrt_says_how_to_get_it(nano_onnx: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model.onnx"
    shutil.copy(nano_onnx, model)
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed.*JetPack"):
        engine_for_onnx(model, "fp16")
    assert main(["build", str(model), "--precision", "int8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: TensorRT is not installed") and "not come from PyPI" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # nothing half-built


def test_gpu_name_without_a_driver_says_so() -> None:
    import ctypes.util

    if ctypes.util.find_library("cuda"):
        pytest.skip("an NVIDIA driver is installed here: gpu_name reads the real GPU")
    with pytest.raises(BackendUnavailable, match="libcuda.so.1 cannot be loaded.*nvidia-smi"):
        gpu_name()


def test_missing_polygraphy_names_the_extra() -> None:
    code = block_imports_prelude(("polygraphy",)) + (
        "from gtnpipe.deploy.backends.tensorrt_engine import _import_polygraphy\n"
        "from gtnpipe.errors import BackendUnavailable\n"
        "try:\n"
        "    _import_polygraphy()\n"
        "except BackendUnavailable as err:\n"
        "    print(err)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert "Polygraphy" in done.stdout and "pip install 'gtnpipe[tensorrt]'" in done.stdout


def test_builder_flags_fit_polygraphy_and_trtexec() -> None:
    """The flags build_engine hands Polygraphy's CreateConfig, and the trtexec command, agree per precision; the
    Polygraphy calls the engine side makes exist with these parameter names in the pinned release."""
    poly = pytest.importorskip("polygraphy.backend.trt", reason="Polygraphy is not installed (pip install 'gtnpipe[tensorrt]')")
    from polygraphy import cuda

    expected = {"fp32": (False, False, False), "fp16": (True, True, False), "int8": (True, True, True)}
    for precision in PRECISIONS:
        config = poly.CreateConfig(**builder_flags(precision), calibrator=None)  # no TensorRT needed to construct
        assert (config.tf32, config.fp16, config.int8) == expected[precision]
        command = engine_build_command(precision)
        assert ("--noTF32" not in command, "--fp16" in command, "--int8" in command) == expected[precision]
    with pytest.raises(ConfigError, match="not 'fp8'"):
        builder_flags("fp8")
    assert {"tf32", "fp16", "int8", "calibrator"} <= set(inspect.signature(poly.CreateConfig.__init__).parameters)
    assert "memory_pool_limits" in inspect.signature(poly.CreateConfig.__mro__[1].__init__).parameters
    assert list(inspect.signature(poly.Calibrator).parameters)[:2] == ["data_loader", "cache"]
    assert list(inspect.signature(poly.EngineBytesFromNetwork.__init__).parameters)[1:3] == ["network", "config"]
    assert list(inspect.signature(poly.EngineFromBytes.__init__).parameters)[1:3] == ["serialized_engine", "runtime"]
    assert list(inspect.signature(poly.NetworkFromOnnxPath.__init__).parameters)[1] == "path"
    assert list(inspect.signature(cuda.Cuda.memcpy).parameters)[1:] == ["dst", "src", "nbytes", "kind", "stream_ptr"]
    assert callable(cuda.DeviceArray.raw) and callable(poly.get_trt_logger)


# ---------------------------------------------------------------------------------------------
# Engine freshness: the sidecar, not file times

def test_sidecar_decides_freshness(nano_onnx: Path, deploy_case: DeployCase, tmp_path: Path) -> None:
    onnx_file = tmp_path / "model.onnx"
    shutil.copy(nano_onnx, onnx_file)
    stamp = engine_stamp(onnx_file, "fp16", tensorrt_version="10.3.0", gpu_name="Orin (nvgpu)")
    assert stamp.onnx_sha256 == hashlib.sha256(nano_onnx.read_bytes()).hexdigest()
    assert (stamp.tensorrt_version, stamp.gpu_name, stamp.precision, stamp.calibration_sha256) == (
        "10.3.0", "Orin (nvgpu)", "fp16", None)
    engine = tmp_path / engine_file_name("fp16")
    assert stale_reason(engine, stamp) == "model-fp16.engine does not exist yet"
    engine.write_bytes(b"an engine from elsewhere")  # stale_reason reads only the sidecar, never the engine
    assert "model-fp16.engine.json is missing or unreadable" in stale_reason(engine, stamp)  # e.g. built by trtexec
    sidecar_path(engine).write_text("{not json")
    assert "missing or unreadable" in stale_reason(engine, stamp) and read_sidecar(engine) is None
    atomic_write_json(sidecar_path(engine), asdict(stamp) | {"tf32": True, "calibration_images": 0})
    assert stale_reason(engine, stamp) is None

    # file times say nothing: an ONNX touched after the engine is still the same model
    later = engine.stat().st_mtime_ns + 10**9
    os.utime(onnx_file, ns=(later, later))
    assert stale_reason(engine, engine_stamp(onnx_file, "fp16", tensorrt_version="10.3.0", gpu_name="Orin (nvgpu)")) is None
    # ... while another TensorRT, another GPU or another precision is stale, saying which
    assert stale_reason(engine, replace(stamp, tensorrt_version="10.4.0")) == "TensorRT version '10.3.0' -> '10.4.0'"
    assert stale_reason(engine, replace(stamp, gpu_name="NVIDIA H200")) == "GPU 'Orin (nvgpu)' -> 'NVIDIA H200'"
    assert stale_reason(engine, replace(stamp, precision="fp32")) == "precision 'fp16' -> 'fp32'"
    # ... and so is another export, even with an older file time
    shutil.copy(deploy_case.inputs.onnx_path, onnx_file)
    os.utime(onnx_file, ns=(later - 10**10, later - 10**10))
    reason = stale_reason(engine, engine_stamp(onnx_file, "fp16", tensorrt_version="10.3.0", gpu_name="Orin (nvgpu)"))
    assert reason is not None and reason.startswith(f"ONNX sha256 '{stamp.onnx_sha256}' -> ")


def test_int8_stamp_covers_the_calibration_images(nano_onnx: Path, nano_inputs: ExportedModel, tmp_path: Path) -> None:
    onnx_file = tmp_path / "model.onnx"
    shutil.copy(nano_onnx, onnx_file)
    device = {"tensorrt_version": "8.6.2", "gpu_name": "Orin"}
    assert engine_stamp(onnx_file, "int8", **device).calibration_sha256 is None  # no images: a cache-only build
    calibration = tmp_path / CALIBRATION_FILE
    np.save(calibration, nano_inputs.calibration[:10])
    first = engine_stamp(onnx_file, "int8", **device)
    assert first.calibration_sha256 == sha256_file(calibration)
    assert engine_stamp(onnx_file, "fp16", **device).calibration_sha256 is None  # fp16 does not calibrate
    engine = tmp_path / engine_file_name("int8")
    engine.write_bytes(b"an engine")
    atomic_write_json(sidecar_path(engine), asdict(first) | {"calibration_images": 10})
    assert stale_reason(engine, engine_stamp(onnx_file, "int8", **device)) is None
    np.save(calibration, nano_inputs.calibration[10:20])  # other images, same ONNX
    assert stale_reason(engine, engine_stamp(onnx_file, "int8", **device)).startswith("calibration.npy sha256 ")


# ---------------------------------------------------------------------------------------------
# Where TensorRT is installed (a Jetson, a GPU box), with Polygraphy

@needs_tensorrt
class TestTensorRt(BackendContract):
    runtime = "tensorrt"

    @pytest.fixture(autouse=True)
    def _tensorrt(self) -> None:
        pytest.importorskip("tensorrt", reason=NO_TENSORRT)
        pytest.importorskip("polygraphy", reason="the engine side needs Polygraphy: pip install 'gtnpipe[tensorrt]'")

    def test_load_onnx_builds_and_reuses_the_engine(self, deploy_case: DeployCase, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(trt_backend, "_optional_tensorrt", lambda: None)  # ship the ONNX as a host without TensorRT
        monkeypatch.setattr(trt_backend, "_trtexec_path", lambda: None)
        backend = TensorRtBackend()
        result = backend.build(deploy_case.inputs, "fp32", tmp_path)
        assert result.model_file == "model.onnx"
        x = deploy_case.x_test[:8]
        first = np.concatenate([backend.load(tmp_path / "model.onnx", threads=1).run(x[i:i + 1]) for i in range(len(x))])
        engine = tmp_path / "model-fp32.engine"
        built_at = engine.stat().st_mtime_ns
        recorded = read_sidecar(engine)
        assert recorded is not None and recorded["onnx_sha256"] == sha256_file(tmp_path / "model.onnx")
        assert recorded["precision"] == "fp32" and recorded["tf32"] is False
        runner = backend.load(tmp_path / "model.onnx", threads=1)
        assert engine.stat().st_mtime_ns == built_at  # reused, not rebuilt
        np.testing.assert_allclose(first, deploy_case.torch_logits[:8], atol=FP32_MAX_ABS, rtol=0)
        np.testing.assert_array_equal(runner.run(x[:1]), first[:1])
