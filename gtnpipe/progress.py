"""The one progress policy: whether long work shows progress, for gtnpipe and for the libraries it drives.

`Progress(enabled=False)` (the CLI's --no-progress, and --json) means: no progress bars and no status lines.
gtnpipe's own stage lines are its progress; a library's bars and status lines never show (below). Warnings and
errors are not progress: they always show.

How each library is kept quiet, from its source:
- NNCF 3.4 draws "Statistics collection" and "Applying Fast Bias correction" with
  `nncf.common.logging.track_progress.track`, a rich `Progress` built with `console=None`, i.e. on rich's
  global console (`rich.get_console()`), on stdout. NNCF has no switch of its own for these bars (no
  argument reaches them from `nncf.quantize`, no environment variable); the rich console's `quiet` flag is
  the switch: a quiet console writes nothing. `Progress.applied()` sets it for the duration and restores it.
- NNCF's logger ("nncf") prints INFO lines on stdout through its own handler, and `import nncf` resets its
  level to INFO, so the level is set right around the call, after the import: `quiet_loggers("nncf")`
  does what `nncf.set_log_level(logging.WARNING)` does (logger and handlers), and restores them.

Third-party noise is not progress either, and is dropped whatever the policy (`quiet_libraries`, around every
converter and runtime call gtnpipe makes: `toolchain_step`, the runners' loading): what the libraries write on the
process's stdout and stderr file descriptors during the call (C++ logs included) is captured, lines matching
LIBRARY_NOISE are dropped and the rest is written to stderr after the call; their Python loggers go to ERROR for
its duration, and rich's global console (where NNCF draws its bars) is quiet. Seen on `make demo` (2026-12-08,
each pattern's comment names the line): absl's and TensorFlow's C++ start-up lines, torchao's missing CUDA
kernels, torch's pytree deprecation, TFLite's XNNPACK line, and ai-edge-quantizer's "Running Calibration" tqdm bar
(its `disable` is computed inside ai-edge-quantizer, so no setting reaches it). `gtnpipe -v` lets everything
through.

The current policy travels in a context variable that `applied()` sets and restores (STYLE.md: no mutable
module flags), so a backend deep inside a build reads it without a `progress` argument in its protocol.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

__all__ = ["LIBRARY_NOISE", "Progress", "StageLog", "current", "quiet_libraries", "quiet_loggers"]


@dataclass(frozen=True)
class Progress:
    """Whether long work shows progress (bars, status lines); `applied()` makes it the current policy."""

    enabled: bool = True

    @contextmanager
    def applied(self) -> Iterator[Progress]:
        """For the duration: this is `current()`, and when it is off rich's global console (where NNCF and
        other libraries draw their bars) prints nothing."""
        token = _CURRENT.set(self)
        try:
            if self.enabled:
                yield self
            else:
                with _quiet_rich_console():
                    yield self
        finally:
            _CURRENT.reset(token)

    def say(self, message: str) -> None:
        """A status line on stderr (never stdout: that is for results), only when progress is on."""
        if self.enabled:
            from rich.console import Console

            # soft_wrap: the line goes out as it is, a path in it never re-wrapped at 80 columns in a log
            Console(stderr=True, soft_wrap=True, highlight=False).print(message, markup=False)


_CURRENT: ContextVar[Progress] = ContextVar("gtnpipe_progress", default=Progress())  # noqa: B039 (frozen)


def current() -> Progress:
    """The policy in force: the innermost `Progress.applied()`, else progress on."""
    return _CURRENT.get()


@contextmanager
def _quiet_rich_console() -> Iterator[None]:
    import rich

    console = rich.get_console()
    before = console.quiet
    console.quiet = True
    try:
        yield
    finally:
        console.quiet = before


@contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """Around a library call, when the current policy is off: the named loggers and their handlers at
    WARNING, restored after (enter it after importing the library: NNCF resets its level on import)."""
    if current().enabled:
        yield
        return
    loggers = [logging.getLogger(name) for name in names]
    saved = [(lg, lg.level, [(h, h.level) for h in lg.handlers]) for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
        for handler in lg.handlers:
            handler.setLevel(max(handler.level, logging.WARNING))
    try:
        yield
    finally:
        for lg, level, handlers in saved:
            lg.setLevel(level)
            for handler, handler_level in handlers:
                handler.setLevel(handler_level)


# Lines the libraries gtnpipe drives write that say nothing about the build (each seen in `make demo`'s output)
LIBRARY_NOISE = tuple(re.compile(p) for p in (
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",  # absl (C++)
    r"^[IW]\d{4} [\d:. ]+\d+ \S+\.cc:\d+\] ",  # TensorFlow's C++ INFO/WARNING lines (oneDNN custom operations ...)
    r"^W\d{4} [\d:. ]+\d+ torch/utils/_pytree\.py:\d+\] ",  # torch's pytree deprecation, raised inside litert-torch
    r"torchao",  # torchao's missing CUDA kernels and Triton ("Failed to load ..._C_mxfp8...", "Detected no triton")
    r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$",  # the TFLite interpreter's default delegate
    r"^Running Calibration:",  # ai-edge-quantizer's tqdm bar (one segment per \r)
    r"\[( INFO|START| DONE)\] ",  # litert-torch's conversion stages (litert_torch/progress.py)
    r"^\s*$",
))
# Python loggers of those libraries, at ERROR during a call (their warnings are the lines above)
LIBRARY_LOGGERS = ("torchao", "torch.utils._pytree", "absl", "tensorflow", "nncf", "openvino")


def _noise(line: str) -> bool:
    return any(p.search(line) for p in LIBRARY_NOISE)


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """Around a call into a converter or a runtime: its noise dropped, anything else it writes kept (on stderr, after
    the call). With gtnpipe's logger at DEBUG (`gtnpipe -v`) everything passes through as it is."""
    if logging.getLogger("gtnpipe").isEnabledFor(logging.DEBUG):
        yield
        return
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.ERROR))
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile() as captured, _quiet_rich_console():  # NNCF's bars: on rich's global console
        try:
            for fd in saved:
                os.dup2(captured.fileno(), fd)
            yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
    kept = [line for line in re.split(r"[\r\n]+", text) if not _noise(line)]
    if kept:
        sys.stderr.write("\n".join(kept) + "\n")


class StageLog:
    """One line per finished stage of a build (cache hit or done, seconds since the build started), kept for the
    build's outcome and manifest."""

    def __init__(self, say: Callable[[str], None], *, stages: int) -> None:
        self.say, self.total, self.started = say, stages, time.perf_counter()
        self.stages: dict[str, dict[str, Any]] = {}

    def __call__(self, name: str, cached: bool, **info: Any) -> None:
        self.stages[name] = {"cached": cached, **info, "seconds": round(time.perf_counter() - self.started, 1)}
        self.say(f"[{len(self.stages)}/{self.total}] {name}: {'cache hit' if cached else 'done'} "
                 f"({self.stages[name]['seconds']:.1f} s in all)")
