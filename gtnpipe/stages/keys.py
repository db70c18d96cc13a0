"""Cache keys from stage inputs: the input dataclass, the stage's code and the versions of the packages it runs.

A key is the sha256 of the canonical JSON of {stage, input, code, packages}:
- `input` is the stage's frozen input dataclass (every value the stage uses is a field of it);
- `code` fingerprints the source of the modules that compute the result (their AST with docstrings removed,
  so comments and formatting do not re-key, but any change to what the code does does): a hand-bumped
  version number drifted through 13 commits that changed training;
- `packages` are the installed versions of the libraries whose output the result depends on.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
from dataclasses import fields, is_dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from gtnpipe.fsutil import canonical_json

__all__ = ["Stage", "code_fingerprint", "package_versions", "stage_key", "stage_spec"]


class Stage:
    """Base of stage inputs: subclasses are frozen dataclasses that set these class attributes (not fields)."""

    STAGE: str  # the cache kind (folder under the cache root)
    CODE: tuple[str, ...]  # modules whose code computes the result (their fingerprint is in the key)
    PACKAGES: tuple[str, ...] = ()  # distributions whose versions are in the key

    @property
    def key(self) -> str:
        return stage_key(self)


@functools.cache
def _module_digest(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"stage code module {module!r} does not exist; fix the stage's CODE list")
    tree = ast.parse(Path(spec.origin).read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree, include_attributes=False).encode()).hexdigest()


def code_fingerprint(modules: tuple[str, ...]) -> str:
    """One digest of the code of `modules` (dotted names), insensitive to comments, docstrings and layout."""
    return hashlib.sha256("".join(f"{m}:{_module_digest(m)}\n" for m in sorted(modules)).encode()).hexdigest()[:16]


def package_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    """Installed version of each distribution (None when it is not installed)."""
    return {name: _installed_version(name) for name in names}


@functools.cache  # read once per process: ~2.4 ms a lookup, and a compile key names a dozen packages at every level
def _installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _keyed(value: Any) -> list[Any]:
    """The fields of a dataclass that are part of a key: all but those marked `metadata={"keyed": False}` (where to
    find something whose content another field names, e.g. a file's path beside its sha256)."""
    return [f for f in fields(value) if f.metadata.get("keyed", True)]


def _plain(value: Any) -> Any:
    if isinstance(value, Stage):  # a nested input: its kind and code are part of what it means; its key names its entry
        spec = stage_spec(value)  # once: computing its fields and then its key apart doubled the work at every level
        return {**spec["input"], "stage": spec["stage"], "code": spec["code"], "key": _digest(spec)}
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in _keyed(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def stage_spec(inp: Stage) -> dict[str, Any]:
    """What a stage's key is the hash of: the input, its stage's code fingerprint and package versions.

    The input class names its stage with three class attributes: STAGE (the cache kind), CODE (the modules that
    compute it) and PACKAGES (the distributions whose output it depends on)."""
    if not isinstance(inp, Stage) or not is_dataclass(inp) or not getattr(type(inp), "__dataclass_params__").frozen:  # noqa: B009
        raise TypeError(f"a stage input must be a frozen dataclass, not {type(inp).__name__}")
    cls = type(inp)
    fields_ = {f.name: _plain(getattr(inp, f.name)) for f in _keyed(inp)}  # nested inputs carry their own key
    return {"stage": cls.STAGE, "input": fields_, "code": code_fingerprint(cls.CODE), "packages": package_versions(cls.PACKAGES)}


def stage_key(inp: Stage) -> str:
    return _digest(stage_spec(inp))


def _digest(spec: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()
