"""Every error gtnpipe raises on purpose: each says what went wrong and what to do next."""

from __future__ import annotations

__all__ = [
    "ArchError",
    "ArtifactError",
    "BackendBuildError",
    "BackendUnavailable",
    "CacheCorrupt",
    "CacheError",
    "ConfigError",
    "DataError",
    "DatasetMissing",
    "GtnpipeError",
    "ParityError",
    "TrainError",
]


class GtnpipeError(Exception):
    """Base class: the CLI prints these as one clear message instead of a traceback."""


class ConfigError(GtnpipeError):
    """A recipe or device profile has an unknown key, a wrong type or a bad value."""


class DataError(GtnpipeError):
    """A dataset is malformed (shapes, labels, image sizes) or cannot be read."""


class DatasetMissing(DataError):
    """The dataset files are not where they should be."""


class ArchError(GtnpipeError):
    """An architecture id does not parse, or names choices outside the search space."""


class CacheError(GtnpipeError):
    """The cache directory cannot be used (permissions, a foreign file in the way)."""


class CacheCorrupt(CacheError):
    """A cache entry's files do not match the hashes recorded when it was written."""


class TrainError(GtnpipeError):
    """Training cannot start or continue (e.g. a checkpoint from another run)."""


class BackendUnavailable(GtnpipeError):
    """A runtime SDK is not installed; the message names the extra that provides it."""


class BackendBuildError(GtnpipeError):
    """A runtime's toolchain could not compile one precision (a converter or quantizer failed); the cause is chained.

    `gtnpipe build` records such a precision as "build failed" and goes on with the others; any other exception
    propagates (`--strict` turns a failed precision into a failed build)."""


class ArtifactError(GtnpipeError):
    """An artifact folder is incomplete, tampered with, or its manifest does not match the schema."""


class ParityError(GtnpipeError):
    """A compiled model disagrees with the PyTorch student beyond the allowed tolerance."""
