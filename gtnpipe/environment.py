"""Process-wide settings gtnpipe relies on, set once where a process starts (the `gtnpipe` command, the test
session), never as a side effect of importing a module; a Python API user's process is checked instead, with a
warning that says what to set before Python starts.

- ONEDNN_MAX_CPU_ISA=AVX2 on AMD CPUs with AVX-512 (Zen 4 and later). torch 2.13.0's bundled oneDNN AVX-512 CPU
  kernels corrupt memory in the backward pass of the 64-px colour builds on an AMD EPYC with AVX-512: "double free
  or corruption", then SIGABRT or SIGSEGV, every time (tests/test_own_data.py); capped at AVX2 the same builds pass.
  oneDNN reads the variable once, at its first kernel, so it must be set before any torch work. Intel CPUs with
  AVX-512 never showed it and keep their AVX-512 kernels (the cap costs training speed: docs/results.md).
- LITERT_TORCH_SHOW_PROGRESS=n: litert-torch prints a line per conversion stage unless this is off (it reads the
  variable at each stage; its own setter, `config.show_progress`, sets the same variable).
- TORCH_FORCE_WEIGHTS_ONLY_LOAD=1: torch.export's loader calls torch.load with weights_only=False for a .pt2's
  pickled constants; forced, every torch.load is restricted to tensors and plain containers, so loading a teacher
  file cannot run Python code. gtnpipe's own torch.load calls all pass weights_only=True already.

They are read on every use (weights-only, litert-torch's) or once per process (oneDNN): toggling them around a call,
as gtnpipe once did, is not thread-safe and, for oneDNN, too late. The crash narrowed to one kernel, and what the cap
costs: bench/onednn_cap.py, docs/development.md ("Known problems").
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path

__all__ = ["ONEDNN_CAP", "QUIET_CONVERTER", "WEIGHTS_ONLY", "apply_process_defaults", "missing_process_defaults",
           "process_defaults", "warn_missing_process_defaults", "weights_only_forced"]

ONEDNN_CAP = ("ONEDNN_MAX_CPU_ISA", "AVX2")
WEIGHTS_ONLY = ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")
QUIET_CONVERTER = ("LITERT_TORCH_SHOW_PROGRESS", "n")
_CPUINFO = Path("/proc/cpuinfo")


def _amd_with_avx512(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo describes an AMD CPU with AVX-512 (the CPUs the oneDNN crash was seen on)."""
    vendor = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("vendor_id")), "")
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return vendor == "AuthenticAMD" and "avx512f" in flags


def process_defaults(cpuinfo: str | None = None) -> dict[str, str]:
    """The environment variables this machine's gtnpipe processes should start with (`cpuinfo`: /proc/cpuinfo's text;
    None reads it where it exists, i.e. on Linux)."""
    if cpuinfo is None:
        cpuinfo = _CPUINFO.read_text() if _CPUINFO.is_file() else ""
    wanted = dict([WEIGHTS_ONLY, QUIET_CONVERTER])
    if _amd_with_avx512(cpuinfo):
        wanted[ONEDNN_CAP[0]] = ONEDNN_CAP[1]
    return wanted


def apply_process_defaults(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set what `process_defaults` wants where the user has not set it (call first thing in a process); returns
    what was set."""
    env = os.environ if environ is None else environ
    applied = {k: v for k, v in process_defaults().items() if k not in env}
    env.update(applied)
    return applied


def missing_process_defaults(environ: Mapping[str, str] | None = None, cpuinfo: str | None = None) -> list[str]:
    """For a process gtnpipe did not start (the Python API): a line per setting it lacks, saying what to set."""
    return list(_missing(environ, cpuinfo).values())


def _missing(environ: Mapping[str, str] | None, cpuinfo: str | None) -> dict[str, str]:
    env = os.environ if environ is None else environ
    return {name: f"{name} is not set: start Python with {name}={value} in the environment (the gtnpipe command sets "
                  f"it; without it {_WHY[name]})" for name, value in process_defaults(cpuinfo).items() if name not in env}


_WHY = {ONEDNN_CAP[0]: "torch's oneDNN AVX-512 kernels corrupt memory in training on this AMD CPU",
        WEIGHTS_ONLY[0]: "loading a .pt2 teacher file could run Python code",
        QUIET_CONVERTER[0]: "litert-torch prints a line per conversion stage"}


@functools.cache  # once per process: at the first training run of an API user's process
def warn_missing_process_defaults() -> None:
    """The oneDNN cap, where it is wanted and missing (the weights-only setting is enforced where a .pt2 loads)."""
    line = _missing(None, None).get(ONEDNN_CAP[0])
    if line is not None:
        logging.getLogger("gtnpipe").warning(line)


def weights_only_forced() -> bool:
    """Whether every torch.load of this process is restricted to tensors and plain containers."""
    return os.environ.get(WEIGHTS_ONLY[0], "0").lower() in ("1", "y", "yes", "true")
