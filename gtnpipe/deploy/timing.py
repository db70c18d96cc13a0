"""Measuring a compiled model the way a device runs it: one runtime session alive in a fresh process.

This is the one way gtnpipe times a model: `gtnpipe build` (every precision), `gtnpipe bench` (the artifact on the
device) and the latency-table measurement all measure a single live session, warmed up, over `runs` batches.
`measure_fresh` does it in a fresh torch-free process (python -m gtnpipe.deploy.timing) that holds only that
session and reports its peak resident memory too: the interpreter, runtime, model and activations together, which
is what a device's memory budget constrains (VmHWM from /proc/self/status on Linux; the peak working set on
Windows; ru_maxrss elsewhere, e.g. macOS, which would also count a forked parent's memory). Timing several live
sessions interleaved in one process slows each (ONNX Runtime's idle intra-op threads keep spinning on the same cores),
which is not how a device runs a model.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gtnpipe.deploy.backends import Runner

__all__ = ["FreshMeasurement", "LatencyStats", "Machine", "measure_fresh", "measure_latency", "measure_peak_rss_mb"]

MEASURE_TIMEOUT_S = 600  # one model's warmup and runs; a hung runtime still ends
MEMORY_RUNS = 20  # runs before the peak RSS is read, when only memory is wanted


@dataclass(frozen=True)
class LatencyStats:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    runs: int
    batch_size: int

    @property
    def throughput_per_s(self) -> float:
        return self.batch_size / (self.mean_ms / 1e3)

    def to_dict(self) -> dict[str, float]:
        return {**self.__dict__, "throughput_per_s": self.throughput_per_s}


def measure_latency(runner: Runner, x: np.ndarray, *, warmup: int = 20, runs: int = 200) -> LatencyStats:
    """Time `runs` calls of one live session on batch `x` after `warmup` calls (call it with no other session alive)."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    for _ in range(warmup):
        runner.run(x)
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter_ns()
        runner.run(x)
        times[i] = (time.perf_counter_ns() - start) / 1e6
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    return LatencyStats(float(p50), float(p90), float(p99), float(times.mean()), runs, int(x.shape[0]))


@dataclass(frozen=True)
class Machine:
    """What a timing or memory figure was measured on: it describes only machines like this one."""

    cpu: str
    cpu_count: int
    arch: str
    system: str
    # family/model/stepping and the vector ISA: a cloud VM's "model name" can be just "AMD EPYC" for CPUs two
    # generations apart (Zen 3 without AVX-512 and Zen 4 with it ran the same networks at different speeds)
    cpu_id: str = ""

    @classmethod
    def here(cls) -> Machine:
        # platform.processor() says only "arm" or "i386" on macOS, and only the family/model on Windows: every Apple
        # silicon Mac would share one description, and with it its timings
        cpu, cpu_id = {"darwin": _macos_cpu, "win32": _windows_cpu}.get(sys.platform, _proc_cpuinfo_cpu)()
        return cls(cpu, os.cpu_count() or 1, platform.machine(), platform.system(), cpu_id)

    def describe(self) -> str:
        return f"{self.cpu}" + (f" ({self.cpu_id})" if self.cpu_id else "") + f", {self.cpu_count} CPUs"


ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "amx_tile", "asimd", "sve")  # what changes which kernels a runtime runs


def _proc_cpuinfo_cpu() -> tuple[str, str]:
    """The CPU's name and id from /proc/cpuinfo (Linux), else what platform knows."""
    cpu = platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if not line.strip():
                break  # the first processor's block is enough
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        cpu = fields.get("model name", cpu)
    return cpu, _cpu_id(fields)


def _macos_cpu() -> tuple[str, str]:
    """'Apple M2 Pro' or 'Intel(R) Core(TM) i9-9880H ...', and 'model Mac14,12' (which Mac: its cores and memory)
    with the ISA, from sysctl."""
    cpu = _sysctl("machdep.cpu.brand_string") or platform.processor() or platform.machine()
    model = _sysctl("hw.model")
    if platform.machine() == "arm64":
        isa = ["asimd"] if _sysctl("hw.optional.AdvSIMD") == "1" else []
    else:  # an Intel Mac lists its features in capitals, AVX512 ones without the underscore
        features = set(f"{_sysctl('machdep.cpu.features')} {_sysctl('machdep.cpu.leaf7_features')}".lower().split())
        isa = [f for f in ISA_FLAGS if f.replace("_", "") in features]
    return cpu, ", ".join(filter(None, [f"model {model}" if model else "", " ".join(isa)]))


def _sysctl(name: str) -> str:
    """`sysctl -n name` on macOS ('' where it has no such name). /usr/sbin is not on every PATH (ssh sessions)."""
    exe = "/usr/sbin/sysctl" if Path("/usr/sbin/sysctl").exists() else "sysctl"
    try:
        out = subprocess.run([exe, "-n", name], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def _windows_cpu() -> tuple[str, str]:
    """The CPU's name from the registry ('Intel(R) Core(TM) i7-9700K CPU @ 3.60GHz'), and its family, model and
    stepping from PROCESSOR_IDENTIFIER ('Intel64 Family 6 Model 158 Stepping 12, GenuineIntel') with the ISA."""
    ident = os.environ.get("PROCESSOR_IDENTIFIER") or platform.processor()
    cpu = _windows_cpu_name() or ident or platform.machine()
    found = re.search(r"Family\s+(\w+)\s+Model\s+(\w+)\s+(?:Stepping|Revision)\s+(\w+)", ident)
    ids = "family {} model {} stepping {}".format(*found.groups()) if found else ""
    return cpu, ", ".join(filter(None, [ids, " ".join(_windows_isa())]))


def _windows_cpu_name() -> str:
    if sys.platform != "win32":
        return ""
    try:
        import winreg

        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, r"HARDWARE\DESCRIPTION\System\CentralProcessor\0") as key:
            return str(winreg.QueryValueEx(key, "ProcessorNameString")[0]).strip()
    except (ImportError, OSError):
        return ""


# IsProcessorFeaturePresent's PF_AVX2_INSTRUCTIONS_AVAILABLE and PF_AVX512F_INSTRUCTIONS_AVAILABLE (winnt.h)
_WINDOWS_ISA_FEATURES = {"avx2": 40, "avx512f": 41}


def _windows_isa() -> list[str]:
    if platform.machine().lower() in ("arm64", "aarch64"):
        return ["asimd"]  # Advanced SIMD is part of every ARMv8-A core
    if sys.platform != "win32":
        return []
    try:
        present = ctypes.windll.kernel32.IsProcessorFeaturePresent
    except (AttributeError, OSError):  # a Python on Windows without ctypes' Windows part (tests fake the platform)
        return []
    return [name for name, feature in _WINDOWS_ISA_FEATURES.items() if present(feature)]


def _cpu_id(cpuinfo: dict[str, str]) -> str:
    """'family F model M stepping S, ISA' from /proc/cpuinfo's first block ('' where it says none of it)."""
    ids = [f"{name} {cpuinfo[key]}" for key, name in (("cpu family", "family"), ("model", "model"),
                                                      ("stepping", "stepping"), ("CPU part", "part")) if key in cpuinfo]
    flags = set((cpuinfo.get("flags") or cpuinfo.get("Features") or "").split())
    isa = [f for f in ISA_FLAGS if f in flags]
    return ", ".join(filter(None, [" ".join(ids), " ".join(isa)]))


@dataclass(frozen=True)
class FreshMeasurement:
    latency: LatencyStats
    peak_rss_mb: float  # the whole process: interpreter, runtime, model and activations


def measure_fresh(runtime: str, model_path: Path, *, threads: int, input_shape: tuple[int, ...], precision: str = "fp32",
                  warmup: int = 20, runs: int = 200, x: np.ndarray | None = None) -> FreshMeasurement:
    """Latency and peak memory of one model, measured in a fresh torch-free process that holds only its session.

    `x`: the batch to time (e.g. real images); uniform random images in [0, 1] of `input_shape` if None."""
    cmd = [sys.executable, "-m", "gtnpipe.deploy.timing", runtime, str(model_path), "--threads", str(threads),
           "--shape", ",".join(map(str, input_shape)), "--precision", precision, "--warmup", str(warmup),
           "--runs", str(runs)]
    with _batch_file(x) as path:
        out = subprocess.run([*cmd, *(["--input", str(path)] if path else [])], capture_output=True, text=True,
                             timeout=MEASURE_TIMEOUT_S)
    if out.returncode != 0:
        raise RuntimeError(f"timing {model_path} in a fresh process failed ({out.returncode}): {out.stderr.strip()}")
    raw = json.loads(out.stdout.strip().splitlines()[-1])
    lat = {k: v for k, v in raw["latency"].items() if k != "throughput_per_s"}
    return FreshMeasurement(LatencyStats(**lat), float(raw["peak_rss_mb"]))


def measure_peak_rss_mb(runtime: str, model_path: Path, *, threads: int, input_shape: tuple[int, ...],
                        precision: str = "fp32") -> float:
    """Peak resident memory of a fresh process running the model (MEMORY_RUNS batches)."""
    return measure_fresh(runtime, model_path, threads=threads, input_shape=input_shape, precision=precision, warmup=0,
                         runs=MEMORY_RUNS).peak_rss_mb


class _batch_file:  # noqa: N801 - a context manager used like a function
    """A temporary .npy holding `x` for the child process (None: no file)."""

    def __init__(self, x: np.ndarray | None) -> None:
        self.x = x
        self.path: Path | None = None

    def __enter__(self) -> Path | None:
        if self.x is None:
            return None
        import tempfile

        fd, name = tempfile.mkstemp(suffix=".npy", prefix="gtnpipe-batch-")
        os.close(fd)
        self.path = path = Path(name)
        np.save(path, np.ascontiguousarray(self.x, dtype=np.float32))
        return path

    def __exit__(self, *_: object) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _peak_rss_bytes() -> int:
    if sys.platform == "win32":
        return _windows_peak_working_set_bytes()
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    import resource  # POSIX only

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


class _ProcessMemoryCounters(ctypes.Structure):
    """PROCESS_MEMORY_COUNTERS (psapi.h): DWORDs are 32-bit, SIZE_Ts pointer-sized."""

    _fields_ = [("cb", ctypes.c_uint32), ("PageFaultCount", ctypes.c_uint32),
                *((name, ctypes.c_size_t) for name in ("PeakWorkingSetSize", "WorkingSetSize", "QuotaPeakPagedPoolUsage",
                                                        "QuotaPagedPoolUsage", "QuotaPeakNonPagedPoolUsage",
                                                        "QuotaNonPagedPoolUsage", "PagefileUsage", "PeakPagefileUsage"))]


def _windows_peak_working_set_bytes() -> int:
    """The process's peak working set: Windows' peak resident memory (K32GetProcessMemoryInfo, Windows 7 and later)."""
    if sys.platform != "win32":
        raise OSError("the peak working set is Windows' own; elsewhere read VmHWM or ru_maxrss")
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.GetCurrentProcess.restype = ctypes.c_void_p
    kernel32.K32GetProcessMemoryInfo.argtypes = [ctypes.c_void_p, ctypes.POINTER(_ProcessMemoryCounters),
                                                 ctypes.c_uint32]
    counters = _ProcessMemoryCounters(cb=ctypes.sizeof(_ProcessMemoryCounters))
    if not kernel32.K32GetProcessMemoryInfo(kernel32.GetCurrentProcess(), ctypes.byref(counters), counters.cb):
        raise OSError(ctypes.get_last_error(), "GetProcessMemoryInfo failed: cannot read this process's peak memory")
    return int(counters.PeakWorkingSetSize)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runtime")
    parser.add_argument("model", type=Path)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--shape", required=True, help="input shape, comma separated (N,C,H,W)")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--input", type=Path, help=".npy batch to time (default: random images in [0, 1])")
    args = parser.parse_args()
    from gtnpipe.deploy.backends import load_runner

    shape = tuple(int(d) for d in args.shape.split(","))
    x = np.load(args.input) if args.input else np.random.default_rng(0).random(shape, dtype=np.float32)
    runner = load_runner(args.runtime, args.model, threads=args.threads, precision=args.precision)
    stats = measure_latency(runner, x, warmup=args.warmup, runs=args.runs)
    print(json.dumps({"latency": stats.to_dict(), "peak_rss_mb": _peak_rss_bytes() / 1e6}))


if __name__ == "__main__":
    main()
