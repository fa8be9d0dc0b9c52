"""Recipe TOML files: one typed, frozen config dataclass per app, built from a TOML section."""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from matmeta.errors import RecipeError

ConfigT = TypeVar("ConfigT")


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a recipe TOML file into a dict; relative paths inside stay relative to the caller."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: not valid TOML ({exc})") from None


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Turn TOML values into the annotated field type (lists become tuples for frozen configs)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where) if len(args) == 1 else value
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(annotation)
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, where) for v in value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is Path and isinstance(value, str):
        return Path(value)
    return value


def renamed_keys(values: dict[str, Any], renames: dict[str, str], where: str) -> dict[str, Any]:
    """``values`` with old setting names replaced by new ones, one deprecation line each (one more release).

    Raises:
        RecipeError: a setting given under both its old and its new name.
    """
    out = dict(values)
    for old, new in renames.items():
        if old not in out:
            continue
        if new in out:
            raise RecipeError(f"{where}: {old} and {new} are the same setting ({old} is its old name); keep {new}")
        from matmeta.console import warn

        warn(f"{where}: {old} is deprecated (removed in the next release): use {new}")
        out[new] = out.pop(old)
    return out


def config_from_dict(cls: type[ConfigT], values: dict[str, Any] | None, where: str = "recipe") -> ConfigT:
    """Build the frozen dataclass ``cls`` from ``values``, refusing unknown keys by name."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - fields)
    if unknown:
        raise RecipeError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"{where}: {exc}") from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready dict of a config dataclass (tuples become lists, paths strings)."""

    def plain(value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}
