"""`--remote USER@HOST`: benchmarks and latency tables measured on a device over SSH, against a real sshd.

The server (tests/sshd.py) is Debian's OpenSSH on 127.0.0.1 with throwaway keys; the client is the system's ssh
and scp, as for a user. The "device" of the round trips is the wheel installed with [onnx] in a fresh venv (no
torch: tests/installed_wheel.py), reached through that server; the failure tests use this checkout's gtnpipe there.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from installed_wheel import InstalledWheel
from sshd import LocalSshd
from typer.testing import CliRunner

from gtnpipe import __version__
from gtnpipe.cli import app
from gtnpipe.deploy.fleet import INDEX, fleet_rows, write_index
from gtnpipe.deploy.remote import Remote, RemoteError
from gtnpipe.deploy.timing import Machine
from gtnpipe.devices.latency_table import LatencyTable, table_path
from gtnpipe.errors import GtnpipeError
from gtnpipe.space.pool import FASHION_MNIST_TASK

HERE_GTNPIPE = str(Path(sys.executable).parent / "gtnpipe")  # this checkout's, on the same machine as the server


def _remote(sshd: LocalSshd, gtnpipe: str = HERE_GTNPIPE) -> Remote:
    return Remote(sshd.target, sshd.options, gtnpipe)


# --- each step's failure names the step and what to do ---------------------------------------------------------


def test_the_device_answers_with_its_gtnpipe_runtimes_and_machine(sshd: LocalSshd) -> None:
    info = _remote(sshd).check("onnxruntime")
    assert info["gtnpipe"] == __version__ and info["runtimes"]["onnxruntime"]["installed"]
    assert info["machine"] == Machine.here().describe()  # the server runs on this very machine


def test_a_device_that_cannot_be_reached_fails_at_connect(sshd: LocalSshd) -> None:
    wrong_key = Remote(sshd.target, (*sshd.options[:1], f"IdentityFile={sshd.root / 'host_key'}",
                                     *sshd.options[2:]), HERE_GTNPIPE)
    with pytest.raises(RemoteError, match=r"step 'connect': ssh could not reach or log in.*Permission denied.*"
                                          r"'ssh .* true' works without a prompt") as err:
        wrong_key.check("onnxruntime")
    assert err.value.step == "connect"
    closed_port = Remote(sshd.target, ("Port=1", *sshd.options[1:]), HERE_GTNPIPE)
    with pytest.raises(RemoteError, match=r"step 'connect'.*Connection refused"):
        closed_port.check("onnxruntime")


def test_a_device_without_gtnpipe_is_told_how_to_install_it(sshd: LocalSshd) -> None:
    with pytest.raises(RemoteError, match=r"step 'gtnpipe': there is no '/nonexistent/bin/gtnpipe' on the device.*"
                                          r"make wheel.*--remote-gtnpipe"):
        _remote(sshd, "/nonexistent/bin/gtnpipe").check("onnxruntime")


def test_another_gtnpipe_version_on_the_device_is_refused(sshd: LocalSshd, tmp_path: Path) -> None:
    older = tmp_path / "gtnpipe"  # a real program on the device that says it is another release
    older.write_text("#!/bin/sh\necho 'gtnpipe 0.0.9'\n")
    older.chmod(0o755)
    with pytest.raises(RemoteError, match=rf"step 'version': the device runs 'gtnpipe 0.0.9', this host gtnpipe "
                                          rf"{__version__}.*Install gtnpipe {__version__} on the device"):
        _remote(sshd, str(older)).check("onnxruntime")


def test_a_runtime_missing_on_the_device_names_what_installs_it(sshd: LocalSshd) -> None:
    with pytest.raises(RemoteError, match=r"step 'runtime': tensorrt is missing on the device: TensorRT is not "
                                          r"installed.*does not come from PyPI"):
        _remote(sshd).check("tensorrt")


def test_a_failed_copy_says_so(sshd: LocalSshd, tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(RemoteError, match=r"step 'copy': scp of .*f.txt failed"):
        _remote(sshd).put(tmp_path / "f.txt", "/nonexistent-folder/below")


def test_malformed_remote_options_are_refused_before_any_connection() -> None:
    with pytest.raises(GtnpipeError, match="--ssh-option '-p 2222': give one ssh -o option as NAME=VALUE"):
        Remote("me@device", ("-p 2222",))
    with pytest.raises(GtnpipeError, match="--remote '-oProxyCommand=x': give the device as USER@HOST"):
        Remote("-oProxyCommand=x")
    done = CliRunner().invoke(app, ["bench", "artifacts/host", "--remote", "me@device", "--ssh-option", "Port"])
    assert done.exit_code == 2 and "give one ssh -o option as NAME=VALUE, e.g. Port=2222" in done.output


# --- the round trips, to a device with the installed wheel ------------------------------------------------------


@pytest.mark.slow
def test_bench_remote_brings_bench_json_back_and_updates_the_fleet_index(
        installed: InstalledWheel, host_artifact: Path, sshd: LocalSshd, tmp_path: Path) -> None:
    fleet = tmp_path / "artifacts"
    folder = shutil.copytree(host_artifact, fleet / "host")
    write_index(fleet)
    assert "not benched on the device" in (fleet / INDEX).read_text()
    installed.wait()
    device_gtnpipe = str(installed.venv / "bin" / "gtnpipe")
    done = CliRunner().invoke(app, ["bench", str(folder), "--remote", sshd.target, *sshd.cli_options(),
                                    "--remote-gtnpipe", device_gtnpipe, "--runs", "20", "--warmup", "2", "--no-progress"])
    assert done.exit_code in (0, 3), done.output  # 3: a budget missed on this machine; bench.json comes back anyway
    result = json.loads((folder / "bench.json").read_text())
    assert result["latency"]["runs"] == 20 and result["parity"]["passed"] and result["device_profile"] == "host"
    assert result["machine"]["description"] == Machine.here().describe()
    assert f"on {sshd.target} ({Machine.here().describe()})" in done.output
    assert ("within budgets" if done.exit_code == 0 else "FAILS") in done.output
    assert not list(sshd.remote_tmp.glob("gtnpipe.*")), "the device's temporary folder was left behind"
    # the fleet view now shows the device's own figures
    (row,) = fleet_rows(fleet)
    assert row["measured_on_device"] and row["measured_latency_ms_p90"] == result["latency"]["p90_ms"]
    assert "gtnpipe bench, " in (fleet / INDEX).read_text() and f"updated the fleet index {fleet / INDEX}" in done.output


@pytest.mark.slow
def test_latency_table_remote_times_the_kit_there_and_installs_the_table_here(
        installed: InstalledWheel, sshd: LocalSshd, tmp_path: Path) -> None:
    installed.wait()
    done = CliRunner().invoke(app, ["latency-table", "--device", "host", "--remote", sshd.target, *sshd.cli_options(),
                                    "--remote-gtnpipe", str(installed.venv / "bin" / "gtnpipe"), "--networks", "2",
                                    "--runs", "10", "--rounds", "1", "--tables-dir", str(tmp_path), "--json"])
    assert done.exit_code == 0, done.output
    info = json.loads(done.stdout)
    path = table_path("host", "mbv3-28", FASHION_MNIST_TASK, tmp_path)
    assert info["table"] == str(path) and info["remote"] == sshd.target
    assert info["remote_table"].startswith(str(sshd.remote_tmp))  # measured there, in the session's temporary folder
    table = LatencyTable.from_json(path.read_text(), where=str(path))
    assert table.measured["runs"] == 10 and table.measured["machine"] == Machine.here().describe() == info["machine"]
    assert len(table.measured["networks"]) == 4 and info["units"] == len(table.precisions["fp32"].units_ms)
    assert not list(sshd.remote_tmp.glob("gtnpipe.*")), "the device's temporary folder was left behind"
