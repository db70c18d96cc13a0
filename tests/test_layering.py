"""Dependencies point one way (STYLE.md), and runtime SDKs are imported only by backends."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gtnpipe"
# Lowest first; a module may import only modules to its left (STYLE.md's order).
ORDER = [
    "errors", "fsutil", "distributed", "tomlconfig", "data", "recipes", "profiles", "manifest", "latency_table", "supernet",
    "teacher", "cost", "search", "plots", "train", "gtn", "distill", "accuracy", "backends", "export", "check", "bench",
    "calibrate_kit", "calibrate", "cache", "artifacts", "pipeline", "cli",
]
SDKS = {"onnxruntime", "openvino", "nncf", "tensorrt", "ai_edge_litert", "tflite_runtime", "litert_torch", "ai_edge_quantizer",
        "cuda", "pycuda"}


def _unit(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_module_has_a_place_in_the_order() -> None:
    units = {_unit(p) for p in MODULES}
    assert units <= set(ORDER), f"add {sorted(units - set(ORDER))} to ORDER in this test and to STYLE's order"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_left(path: Path) -> None:
    me = _unit(path)
    for name in _imports(path):
        if not name.startswith("gtnpipe.") or name == "gtnpipe":
            continue
        target = name.split(".")[1]
        if target == me:
            continue
        assert ORDER.index(target) < ORDER.index(me), f"{path.name} ({me}) imports {name}, which is to its right"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_runtime_sdks_only_in_backends(path: Path) -> None:
    if _unit(path) == "backends":
        return
    used = {n.split(".")[0] for n in _imports(path)} & SDKS
    assert not used, f"{path.name} imports {used}; only gtnpipe/backends/* may import runtime SDKs"
