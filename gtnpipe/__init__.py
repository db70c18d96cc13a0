"""gtnpipe: a hardware-aware deployment pipeline for knowledge distillation from one generic teacher.

The Python API (`gtnpipe.api`): `gtnpipe.build`, `gtnpipe.compile`, `gtnpipe.distill`, `gtnpipe.search`,
`gtnpipe.teacher_from_module`, `gtnpipe.workspace`. Importing the package imports nothing heavy: the first use of
one of those imports torch and the pipeline. The `gtnpipe` command does the same from a shell.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "build", "compile", "distill", "search", "teacher_from_module", "workspace"]
_API = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    if name in _API:
        from gtnpipe import api

        return getattr(api, name)
    raise AttributeError(f"module 'gtnpipe' has no attribute {name!r}")
