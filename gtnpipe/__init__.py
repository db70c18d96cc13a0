"""gtnpipe: a hardware-aware deployment pipeline for knowledge distillation from one generic teacher.

The Python API (`gtnpipe.api`): `gtnpipe.build`, `gtnpipe.compile`, `gtnpipe.distill`, `gtnpipe.search`,
`gtnpipe.teacher_file`, `gtnpipe.teacher_from_module`, `gtnpipe.workspace`, and their options (`BuildOptions`,
`CompileOptions`, `WorkspaceOptions`, `SearchConfig`). Importing the package imports nothing
heavy: the first use of one of those imports torch and the pipeline. The `gtnpipe` command does the same from a shell.
"""

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["BuildOptions", "CompileOptions", "SearchConfig", "WorkspaceOptions", "__version__", "build", "compile",
           "distill", "search", "teacher_file", "teacher_from_module", "workspace"]
_API = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    if name in _API:  # imported on first use (by name: the package's own modules import it for __version__ only)
        return getattr(importlib.import_module("gtnpipe.api"), name)
    raise AttributeError(f"module 'gtnpipe' has no attribute {name!r}")
