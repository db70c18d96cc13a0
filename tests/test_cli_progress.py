"""One progress policy (gtnpipe.progress) for every command and every library it drives."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import HANG_TIMEOUT_S
from typer.testing import CliRunner

from gtnpipe.cli import app
from gtnpipe.progress import Progress, current

runner = CliRunner()
LONG_COMMANDS = ["train", "teacher", "distill", "search", "build", "bench", "latency-table", "latency-kit"]


@pytest.mark.parametrize("command", LONG_COMMANDS)
def test_every_long_command_takes_no_progress(command: str) -> None:
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--no-progress" in result.stdout


def test_the_policy_is_current_inside_and_restored_after(capsys: pytest.CaptureFixture[str]) -> None:
    import rich

    assert current().enabled
    with Progress(enabled=False).applied() as p:
        assert current() is p and rich.get_console().quiet
        p.say("not shown")
        with Progress(enabled=True).applied():
            assert current().enabled
        assert not current().enabled
    assert current().enabled and not rich.get_console().quiet
    Progress().say("shown: [budgets]")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "shown: [budgets]\n"  # stderr, printed as it is (no markup)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    torch = pytest.importorskip("torch")
    from gtnpipe.deploy.backends import ExportedModel

    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 26 * 26, 10)).eval()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notices, as gtnpipe.deploy.export does
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (torch.zeros(1, 1, 28, 28),), str(path), input_names=["input"], output_names=["logits"],
                          dynamo=False)
    images = np.random.default_rng(0).random((40, 1, 28, 28), dtype=np.float32)
    return ExportedModel(path, (1, 1, 28, 28), images, 17)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_nncf_draws_nothing_whatever_the_policy(runtime: str, tiny_onnx, tmp_path: Path,  # noqa: ANN001
                                                capfd: pytest.CaptureFixture[str]) -> None:
    """NNCF draws 'Statistics collection' and 'Applying Fast Bias correction' on rich's global console (stdout) and
    logs INFO lines there too; inside a backend's build neither shows, with progress on or off (gtnpipe's stage lines
    are the progress), and its logger is as it was afterwards."""
    pytest.importorskip(runtime)
    pytest.importorskip("nncf")
    import nncf
    import onnx

    from gtnpipe.deploy.backends import get_backend

    model = onnx.load(str(tiny_onnx.onnx_path))
    nncf.quantize(model, nncf.Dataset([{model.graph.input[0].name: x[None]} for x in tiny_onnx.calibration[:4]]),
                  subset_size=4)
    shown = capfd.readouterr()
    assert "Statistics collection" in shown.out + shown.err  # what NNCF called directly draws: what has to be silenced

    backend = get_backend(runtime)
    backend.build(tiny_onnx, "int8", tmp_path / "on")
    on = capfd.readouterr()
    for bar in ("Statistics collection", "Applying Fast Bias correction", "INFO:nncf"):
        assert bar not in on.out + on.err

    nncf_logger = logging.getLogger("nncf")
    before = (nncf_logger.level, [h.level for h in nncf_logger.handlers])
    with Progress(enabled=False).applied():
        result = backend.build(tiny_onnx, "int8", tmp_path / "off")
    quiet = capfd.readouterr()
    assert (tmp_path / "off" / result.model_file).stat().st_size > 0
    for bar in ("Statistics collection", "Applying Fast Bias correction", "INFO:nncf"):
        assert bar not in quiet.out + quiet.err
    assert (nncf_logger.level, [h.level for h in nncf_logger.handlers]) == before


_FORK_PROBE = """
import multiprocessing, os, sys
forks = []
os.register_at_fork(before=lambda: forks.append(1))
sys.argv = ['gtnpipe', 'devices', 'list', '--json']
from gtnpipe.cli import main
try:
    main()
except SystemExit:
    pass
p = multiprocessing.Process(target=os.getpid)  # as openvino_telemetry sends NNCF's usage events
p.start(); p.join()
print(multiprocessing.get_start_method(), p.exitcode, len(forks), file=sys.stderr)
"""


def test_the_cli_starts_library_processes_without_forking_itself() -> None:
    """A library's multiprocessing.Process (NNCF's telemetry) must not os.fork() the CLI's multithreaded process:
    JAX warns 'os.fork() was called ... JAX is multithreaded' and the child can deadlock."""
    done = subprocess.run([sys.executable, "-c", _FORK_PROBE], capture_output=True, text=True, timeout=HANG_TIMEOUT_S,
                          cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stderr.split()[-3:] == ["forkserver", "0", "0"], done.stderr
