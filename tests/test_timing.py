"""The one way gtnpipe measures a compiled model: a fresh process holding one session (gtnpipe.deploy.timing)."""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import DeployCase

from gtnpipe.deploy.timing import Machine, _ProcessMemoryCounters, measure_fresh, measure_peak_rss_mb


def _bare_python_rss_mb() -> float:
    code = ("from pathlib import Path\n"
            "print(next(int(l.split()[1]) for l in Path('/proc/self/status').read_text().splitlines() "
            "if l.startswith('VmHWM:')) / 1e3)")
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is read from /proc (Linux)")
def test_fresh_measurement_times_the_given_batch_and_counts_the_runtime(deploy_case: DeployCase) -> None:
    onnx = deploy_case.inputs.onnx_path
    m = measure_fresh("onnxruntime", onnx, threads=1, input_shape=(1, 1, 28, 28), warmup=3, runs=25,
                      x=deploy_case.x_test[:1])
    assert m.latency.runs == 25 and m.latency.batch_size == 1
    assert 0 < m.latency.p50_ms <= m.latency.p90_ms <= m.latency.p99_ms
    # the child loaded ONNX Runtime and the model: well above a bare interpreter (~10 MB), far below torch's ~300 MB
    assert _bare_python_rss_mb() + 10 < m.peak_rss_mb < 250
    assert measure_peak_rss_mb("onnxruntime", onnx, threads=1, input_shape=(1, 1, 28, 28)) == pytest.approx(
        m.peak_rss_mb, rel=0.25)


def test_fresh_measurement_rejects_a_batch_of_the_wrong_shape(deploy_case: DeployCase) -> None:
    with pytest.raises(RuntimeError, match="fresh process failed"):
        measure_fresh("onnxruntime", deploy_case.inputs.onnx_path, threads=1, input_shape=(1, 1, 28, 28), warmup=0,
                      runs=1, x=np.zeros((1, 3, 28, 28), dtype=np.float32))


def test_machine_names_this_cpu() -> None:
    here = Machine.here()
    assert here.cpu_count >= 1 and here.cpu and str(here.cpu_count) in here.describe()
    if Path("/proc/cpuinfo").exists():
        assert here.cpu in Path("/proc/cpuinfo").read_text()


def _fake_sysctl(values: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """subprocess.run answering `sysctl -n NAME` as a Mac with `values` would (a name it lacks: exit 1)."""

    def run(cmd: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        assert Path(cmd[0]).name == "sysctl" and cmd[1] == "-n", cmd
        if cmd[2] in values:
            return subprocess.CompletedProcess(cmd, 0, values[cmd[2]] + "\n", "")
        return subprocess.CompletedProcess(cmd, 1, "", f"sysctl: unknown oid '{cmd[2]}'\n")

    return run


def _on(monkeypatch: pytest.MonkeyPatch, system: str, machine: str, processor: str, cpus: int) -> None:
    monkeypatch.setattr(sys, "platform", {"Darwin": "darwin", "Windows": "win32"}[system])
    monkeypatch.setattr(platform, "system", lambda: system)
    monkeypatch.setattr(platform, "machine", lambda: machine)
    monkeypatch.setattr(platform, "processor", lambda: processor)
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)


# what `sysctl` says on these Macs (machdep.cpu.features abridged)
APPLE_M1_AIR = {"machdep.cpu.brand_string": "Apple M1", "hw.model": "MacBookAir10,1", "hw.optional.AdvSIMD": "1"}
APPLE_M2_PRO_MINI = {"machdep.cpu.brand_string": "Apple M2 Pro", "hw.model": "Mac14,12", "hw.optional.AdvSIMD": "1"}
INTEL_MACBOOK_PRO = {"machdep.cpu.brand_string": "Intel(R) Core(TM) i9-9880H CPU @ 2.30GHz", "hw.model": "MacBookPro16,1",
                     "machdep.cpu.features": "FPU VME DE PSE TSC MSR PAE SSE SSE2 SSE3 SSSE3 FMA SSE4.1 SSE4.2 AVX1.0",
                     "machdep.cpu.leaf7_features": "RDWRFSGS TSC_THREAD_OFFSET SGX BMI1 AVX2 SMEP BMI2 ERMS"}


def test_apple_silicon_macs_are_told_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    """platform.processor() is "arm" on every Apple silicon Mac: timings of an M1 must not pass for an M2 Pro's."""
    described = {}
    for facts, cpus in ((APPLE_M1_AIR, 8), (APPLE_M2_PRO_MINI, 10)):
        _on(monkeypatch, "Darwin", "arm64", "arm", cpus)
        monkeypatch.setattr(subprocess, "run", _fake_sysctl(facts))
        here = Machine.here()
        assert here.system == "Darwin" and here.arch == "arm64"
        described[facts["hw.model"]] = (here.cpu, here.cpu_id, here.describe())
    assert described == {
        "MacBookAir10,1": ("Apple M1", "model MacBookAir10,1, asimd", "Apple M1 (model MacBookAir10,1, asimd), 8 CPUs"),
        "Mac14,12": ("Apple M2 Pro", "model Mac14,12, asimd", "Apple M2 Pro (model Mac14,12, asimd), 10 CPUs"),
    }


def test_intel_mac_names_its_cpu_and_vector_isa(monkeypatch: pytest.MonkeyPatch) -> None:
    _on(monkeypatch, "Darwin", "x86_64", "i386", 16)
    monkeypatch.setattr(subprocess, "run", _fake_sysctl(INTEL_MACBOOK_PRO))
    assert Machine.here().describe() == "Intel(R) Core(TM) i9-9880H CPU @ 2.30GHz (model MacBookPro16,1, avx2), 16 CPUs"


def test_mac_without_sysctl_still_has_a_description(monkeypatch: pytest.MonkeyPatch) -> None:
    _on(monkeypatch, "Darwin", "arm64", "arm", 8)
    monkeypatch.setattr(subprocess, "run", _fake_sysctl({}))
    assert Machine.here().describe() == "arm, 8 CPUs"


class _FakeWinreg:
    """The part of winreg that Machine reads: one CPU's ProcessorNameString, or no such key."""

    HKEY_LOCAL_MACHINE = "HKLM"

    def __init__(self, name: str | None) -> None:
        self.name = name

    @contextmanager
    def OpenKey(self, root: str, path: str) -> Iterator[str]:  # noqa: N802 - winreg's name
        if self.name is None:
            raise FileNotFoundError(2, "The system cannot find the file specified", path)
        assert (root, path) == ("HKLM", r"HARDWARE\DESCRIPTION\System\CentralProcessor\0")
        yield path

    def QueryValueEx(self, key: str, value: str) -> tuple[str, int]:  # noqa: N802 - winreg's name
        assert value == "ProcessorNameString"
        return f"{self.name}   ", 1  # REG_SZ, with the trailing blanks some CPUs have


@pytest.mark.parametrize(("machine", "identifier", "name", "describe"), [
    ("AMD64", "Intel64 Family 6 Model 158 Stepping 12, GenuineIntel", "Intel(R) Core(TM) i7-9700K CPU @ 3.60GHz",
     "Intel(R) Core(TM) i7-9700K CPU @ 3.60GHz (family 6 model 158 stepping 12), 8 CPUs"),
    ("ARM64", "ARMv8 (64-bit) Family 8 Model D4B Revision   0, Qualcomm Technologies Inc",
     "Snapdragon X Elite - X1E78100 - Qualcomm Oryon CPU",
     "Snapdragon X Elite - X1E78100 - Qualcomm Oryon CPU (family 8 model D4B stepping 0, asimd), 8 CPUs"),
    ("AMD64", "AMD64 Family 25 Model 33 Stepping 0, AuthenticAMD", None,  # no registry key: the identifier only
     "AMD64 Family 25 Model 33 Stepping 0, AuthenticAMD (family 25 model 33 stepping 0), 8 CPUs"),
])
def test_windows_names_its_cpu_from_the_registry(monkeypatch: pytest.MonkeyPatch, machine: str, identifier: str,
                                                 name: str | None, describe: str) -> None:
    """(IsProcessorFeaturePresent, which adds avx2/avx512f on x86, exists only on Windows: not here.)"""
    _on(monkeypatch, "Windows", machine, identifier, 8)
    monkeypatch.setenv("PROCESSOR_IDENTIFIER", identifier)
    monkeypatch.setitem(sys.modules, "winreg", _FakeWinreg(name))
    here = Machine.here()
    assert here.system == "Windows" and here.describe() == describe


def test_windows_memory_counters_have_psapis_layout() -> None:
    """The peak working set is read into PROCESS_MEMORY_COUNTERS: 72 bytes on 64-bit Windows, 40 on 32-bit."""
    assert ctypes.sizeof(_ProcessMemoryCounters) == (72 if ctypes.sizeof(ctypes.c_void_p) == 8 else 40)
    assert _ProcessMemoryCounters.PeakWorkingSetSize.offset == 8
