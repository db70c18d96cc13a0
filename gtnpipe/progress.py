"""The one progress policy: whether long work shows progress, for gtnpipe and for the libraries it drives.

`Progress(enabled=False)` (the CLI's --no-progress, and --json) means: no progress bars and no status lines,
gtnpipe's own or a library's. Warnings and errors are not progress: they always show.

How each library is kept quiet, from its source:
- NNCF 3.4 draws "Statistics collection" and "Applying Fast Bias correction" with
  `nncf.common.logging.track_progress.track`, a rich `Progress` built with `console=None`, i.e. on rich's
  global console (`rich.get_console()`), on stdout. NNCF has no switch of its own for these bars (no
  argument reaches them from `nncf.quantize`, no environment variable); the rich console's `quiet` flag is
  the switch: a quiet console writes nothing. `Progress.applied()` sets it for the duration and restores it.
- NNCF's logger ("nncf") prints INFO lines on stdout through its own handler, and `import nncf` resets its
  level to INFO, so the level is set right around the call, after the import: `quiet_loggers("nncf")`
  does what `nncf.set_log_level(logging.WARNING)` does (logger and handlers), and restores them.

Not reached: ai-edge-quantizer (TFLite INT8) draws tqdm bars on stderr whose `disable` it computes itself
(tqdm's TQDM_DISABLE is read when tqdm is imported, and an explicit `disable=` argument overrides it).

The current policy travels in a context variable that `applied()` sets and restores (STYLE.md: no mutable
module flags), so a backend deep inside a build reads it without a `progress` argument in its protocol.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

__all__ = ["Progress", "StageLog", "current", "quiet_loggers"]


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
