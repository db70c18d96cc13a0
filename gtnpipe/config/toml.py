"""Strict TOML -> frozen dataclass loading, shared by recipes and device profiles.

Every problem names the file, the dotted field, the bad value and what is allowed:
unknown keys, missing keys, wrong types and values that fail a dataclass's own
`__post_init__` checks (which raise `ValueError` with a message naming the field).
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Union, cast, get_args, get_origin, get_type_hints

from gtnpipe.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["as_dict", "from_mapping", "load_named", "load_toml"]

T = TypeVar("T", bound="DataclassInstance")


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: file not found") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err


def load_named(cls: type[T], name_or_path: str | Path, folder: Path, *, kind: str,
               hint: str = "or pass the path to a .toml file") -> T:
    """`cls` from folder/<name>.toml or from a path; its `name` field must equal the file stem.

    A name that is neither is an error listing the known `kind`s (e.g. "recipe") and the `hint`.
    """
    path = Path(name_or_path)
    if path.suffix != ".toml" and not path.exists():
        path = folder / f"{name_or_path}.toml"
        if not path.exists():
            known = ", ".join(sorted(p.stem for p in folder.glob("*.toml")))
            raise ConfigError(f"unknown {kind} {str(name_or_path)!r}; known {kind}s: {known} ({hint})")
    obj = from_mapping(cls, load_toml(path), where=str(path))
    name = getattr(obj, "name")  # noqa: B009 - every named config class has one
    if name != path.stem:
        raise ConfigError(f"{path}: 'name' = {name!r} must equal the file name {path.stem!r}")
    return obj


def from_mapping(cls: type[T], raw: Mapping[str, Any], *, where: str, prefix: str = "") -> T:
    """Build dataclass `cls` from `raw`, rejecting unknown keys and wrong types."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: [{prefix.rstrip('.') or 'top level'}] must be a table, got {raw!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {', '.join(repr(prefix + k) for k in unknown)}; "
            f"allowed keys{' in [' + prefix.rstrip('.') + ']' if prefix else ''}: {', '.join(sorted(fields))}"
        )
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        dotted = prefix + name
        if name not in raw:
            has_default = field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
            if not has_default:
                raise ConfigError(f"{where}: missing required key '{dotted}'")
            continue
        kwargs[name] = _convert(hints[name], raw[name], where=where, dotted=dotted)
    try:
        return cls(**kwargs)
    except ValueError as err:
        scope = f"[{prefix.rstrip('.')}] " if prefix else ""
        raise ConfigError(f"{where}: {scope}{err}") from err


def _convert(hint: Any, value: Any, *, where: str, dotted: str) -> Any:
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_mapping(cast("type[DataclassInstance]", hint), value, where=where, prefix=dotted + ".")
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise ConfigError(
                f"{where}: '{dotted}' = {value!r} is not allowed; allowed values: {', '.join(map(repr, allowed))}"
            )
        return value
    if origin in (Union, types.UnionType) and set(get_args(hint)) == {int, float}:  # a count or a share: kept as given
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: '{dotted}' must be a number, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        args: Sequence[Any] = [a for a in get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported config type {hint!r}")  # a bug in a config class, not user input
        return _convert(args[0], value, where=where, dotted=dotted)
    if origin is tuple:
        args = get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: '{dotted}' must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where=where, dotted=f"{dotted}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: '{dotted}' must have {len(args)} items, got {len(value)}")
        return tuple(_convert(a, v, where=where, dotted=f"{dotted}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: '{dotted}' must be a number, got {value!r}")
        return float(value)
    if hint in (int, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: '{dotted}' must be {hint.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r}")  # a bug in a config class, not user input


def as_dict(obj: DataclassInstance) -> dict[str, Any]:
    """A dataclass as plain JSON-able data (tuples become lists), for cache keys and manifests."""
    return typing.cast(dict[str, Any], _plain(dataclasses.asdict(obj)))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
