"""Cache keys from stage inputs: the input dataclass, the stage's code and the versions of the packages it runs.

A key is the sha256 of the canonical JSON of {stage, input, code, packages}:
- `input` is the stage's frozen input dataclass (every value the stage uses is a field of it);
- `code` fingerprints the source of the modules that compute the result (their AST with docstrings removed,
  so comments and formatting do not re-key, but any change to what the code does does): a hand-bumped
  version number drifted through 13 commits that changed training. Which modules: those reachable by import from
  the stage's roots (`Stage.code_modules`), found by reading their import statements (`module_closure`), and the
  module that defines the stage's input, where its stage function lives: a hand-kept list of modules missed the
  image decoding, the augmentations and the data loader of every training stage (issue 29);
- `packages` are the installed versions of the distributions the closure imports (`closure_packages`), and of
  those a stage names besides (`Stage.package_names`: what it loads by name, e.g. a backend's SDK).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import re
import sys
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from gtnpipe.fsutil import canonical_json

__all__ = ["Stage", "closure_packages", "code_fingerprint", "module_closure", "package_versions", "stage_code",
           "stage_key", "stage_packages", "stage_spec"]

_PACKAGE = "gtnpipe"
_PACKAGE_DIR = Path(__file__).resolve().parents[1]

# gtnpipe modules left out of every closure (neither keyed nor followed), each because it cannot change a result:
_NOT_CODE = (
    "gtnpipe.cli",  # parses arguments and prints; a stage never imports it
    "gtnpipe.progress",  # whether progress bars and library status lines show: display only
    "gtnpipe.stages.keys",  # this module: it computes keys, not results (a change to what a key holds changes the
    # keys it makes by itself)
    "gtnpipe.cache",  # stores entries and verifies their sha256 on load: a result is computed before it reaches it
)
# Third-party imports of a closure left out of its packages, each because its version cannot change a result:
_NOT_PACKAGES = frozenset({
    "rich",  # progress bars and console output
    "platformdirs",  # where the user data directory is, not what is in it
})


class Stage:
    """Base of stage inputs: subclasses are frozen dataclasses that set these class attributes (not fields)."""

    STAGE: str  # the cache kind (folder under the cache root)
    # The roots of the stage's code: the modules whose functions compute its result. The key fingerprints every gtnpipe
    # module reachable from them by import (module_closure), and the module that defines the input, for its own code
    # only: it holds the stage's function, and it imports for all of its stages (tests/test_keys.py checks that every
    # module whose code runs in a stage's function is in its closure).
    CODE: tuple[str, ...]
    PACKAGES: tuple[str, ...] = ()  # distributions in the key besides those the closure imports (closure_packages)

    @property
    def key(self) -> str:
        return stage_key(self)

    def code_modules(self) -> tuple[str, ...]:
        """The roots of this input's code; an input whose code depends on its values overrides it (a compile is keyed
        on its own backend's module, not every backend's)."""
        return type(self).CODE

    def package_names(self) -> tuple[str, ...]:
        """The distributions this input names besides those its code imports (a compile: its backend's SDKs, loaded
        by name)."""
        return type(self).PACKAGES


# --- reading modules --------------------------------------------------------------------------------------------

def _source(module: str) -> Path:
    """The source file of `module`: gtnpipe's found in the package folder (importing nothing), others by import."""
    path = _package_file(module)
    if path is None:
        spec = importlib.util.find_spec(module) if not module.startswith(f"{_PACKAGE}.") else None
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            raise ModuleNotFoundError(f"stage code module {module!r} does not exist; fix the stage's CODE list")
        path = Path(spec.origin)
    return path


def _package_file(module: str) -> Path | None:
    """gtnpipe's `module` (dotted) as a file of the package folder: a module or a package's __init__; None if none."""
    parts = module.split(".")
    if parts[0] != _PACKAGE:
        return None
    base = _PACKAGE_DIR.joinpath(*parts[1:])
    for path in (base / "__init__.py", base.parent / f"{base.name}.py" if len(parts) > 1 else None):
        if path is not None and path.is_file():
            return path
    return None


@functools.cache
def _parsed(module: str) -> ast.Module:
    return ast.parse(_source(module).read_text())


@functools.cache
def _module_digest(module: str) -> str:
    tree = ast.parse(_source(module).read_text())  # a copy: docstrings are cut out of it
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree, include_attributes=False).encode()).hexdigest()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"
            or isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(node: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement under `node`, in functions too, but not under `if TYPE_CHECKING:` (annotations only)."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        return [node]
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        return [n for child in node.orelse for n in _import_nodes(child)]
    return [n for child in ast.iter_child_nodes(node) for n in _import_nodes(child)]


@functools.cache
def _imports(module: str) -> frozenset[str]:
    """The absolute names `module` imports: relative imports resolved, and `from pkg import name` read as module
    `pkg.name` where gtnpipe has one (else as `pkg`, for the name defined in it)."""
    here = module if _source(module).name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in _import_nodes(_parsed(module)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        base = ".".join(here.split(".")[:len(here.split(".")) - node.level + 1]) if node.level else ""
        base = ".".join(p for p in (base, node.module or "") if p)
        names.add(base)
        names.update(f"{base}.{alias.name}" for alias in node.names if _package_file(f"{base}.{alias.name}"))
    return frozenset(names)


# --- what a stage's key covers --------------------------------------------------------------------------------------

def _excluded(module: str) -> bool:
    return any(module == m or module.startswith(f"{m}.") for m in _NOT_CODE)


@functools.cache
def module_closure(roots: tuple[str, ...]) -> tuple[str, ...]:
    """`roots` and the gtnpipe modules reachable from them by import, sorted: read from the import statements
    (function-level ones included, `if TYPE_CHECKING:` ones not), each package's __init__ with what is under it;
    modules named by string (importlib.import_module) are not followed, nor those in _NOT_CODE."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in seen or (module not in roots and _excluded(module)):
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts)) if parts[0] == _PACKAGE]  # its packages' __init__
        todo += [m for m in _imports(module) if m.split(".")[0] == _PACKAGE and _package_file(m)]
    return tuple(sorted(seen))


@functools.cache
def _distributions() -> Mapping[str, list[str]]:
    return metadata.packages_distributions()  # top-level import name -> distributions; ~0.1 s: once per process


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503: "Pillow" and "pillow" are one distribution


@functools.cache
def closure_packages(modules: tuple[str, ...]) -> tuple[str, ...]:
    """The distributions `modules` import (third-party top-level names, those in _NOT_PACKAGES left out), sorted; one
    not installed here is named by its import name."""
    tops = {name.split(".")[0] for m in modules for name in _imports(m)}
    tops -= {_PACKAGE, "__future__", *sys.stdlib_module_names, *_NOT_PACKAGES}
    return tuple(sorted({_normalized(d) for top in tops for d in _distributions().get(top, [top])}))


def stage_code(inp: Stage) -> tuple[str, ...]:
    """The modules whose code is in `inp`'s key: the closure of its roots, and the gtnpipe module that defines its
    input, for its own code (its imports serve all of its stages; each stage's roots name those of its function)."""
    own = type(inp).__module__
    return tuple(sorted({*module_closure(inp.code_modules()), *((own,) if own.startswith(f"{_PACKAGE}.") else ())}))


def stage_packages(inp: Stage, code: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The distributions whose versions are in `inp`'s key: those its code imports and those it names
    (`Stage.package_names`)."""
    code = stage_code(inp) if code is None else code
    return tuple(sorted({*closure_packages(code), *map(_normalized, inp.package_names())}))


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


# --- the key ------------------------------------------------------------------------------------------------------

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

    The input class names its stage with class attributes: STAGE (the cache kind), CODE (the roots of the code that
    computes it; `code_modules` may choose them by the input's values) and PACKAGES (distributions its code does not
    import but its result depends on; `package_names` may choose them by the input's values)."""
    if not isinstance(inp, Stage) or not is_dataclass(inp) or not getattr(type(inp), "__dataclass_params__").frozen:  # noqa: B009
        raise TypeError(f"a stage input must be a frozen dataclass, not {type(inp).__name__}")
    fields_ = {f.name: _plain(getattr(inp, f.name)) for f in _keyed(inp)}  # nested inputs carry their own key
    code = stage_code(inp)
    return {"stage": type(inp).STAGE, "input": fields_, "code": code_fingerprint(code),
            "packages": package_versions(stage_packages(inp, code))}


def stage_key(inp: Stage) -> str:
    return _digest(stage_spec(inp))


def _digest(spec: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()
