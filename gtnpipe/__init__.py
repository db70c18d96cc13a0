"""gtnpipe: a hardware-aware deployment pipeline for knowledge distillation from one generic teacher.

Importing the package imports nothing heavy; use the submodules (`gtnpipe.pipeline`,
`gtnpipe.space`, ...) or the `gtnpipe` command.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
