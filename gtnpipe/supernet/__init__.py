"""The elastic MobileNetV3 student pool: search space, arch ids, supernet, static students, costs."""

from gtnpipe.supernet.counting import NetCost, count, count_module
from gtnpipe.supernet.space import SPACES, ArchConfig, Block, SearchSpace, StageSpec, TaskShape, get_space
from gtnpipe.supernet.static import StagedNet, build_static
from gtnpipe.supernet.supernet import Supernet

__all__ = [
    "SPACES",
    "ArchConfig",
    "Block",
    "NetCost",
    "SearchSpace",
    "StageSpec",
    "StagedNet",
    "Supernet",
    "TaskShape",
    "build_static",
    "count",
    "count_module",
    "get_space",
]
