"""The elastic MobileNetV3 student pool: search space, arch ids, supernet, static students, costs."""

from gtnpipe.supernet.counting import NetCost, PartCosts, count, count_module, count_parts
from gtnpipe.supernet.space import SPACES, ArchConfig, Block, SearchSpace, StageSpec, TaskShape, get_space
from gtnpipe.supernet.static import StagedNet, build_static
from gtnpipe.supernet.supernet import Supernet

__all__ = [
    "SPACES",
    "ArchConfig",
    "Block",
    "NetCost",
    "PartCosts",
    "SearchSpace",
    "StageSpec",
    "StagedNet",
    "Supernet",
    "TaskShape",
    "build_static",
    "count",
    "count_module",
    "count_parts",
    "get_space",
]
