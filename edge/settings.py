"""Typed settings from plain YAML data: dataclasses in, one clear error naming the key out.

Every config section, core or plugin, is a dataclass; `build` checks unknown keys, types and required
values and raises `ConfigError` with the dotted path of the first bad key. A duration's name ends in its
unit, `_seconds` or `_ms`; an old name (`_s`, or none) is refused with the new one in the message.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Container
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


class ConfigError(Exception):
    """A bad configuration: the message names the key. The CLI turns it into exit code 2."""


class Missing:
    """Stands where `${VAR}` named an unset variable with no default."""

    __slots__ = ("var",)

    def __init__(self, var: str) -> None:
        self.var = var

    def __repr__(self) -> str:
        return f"Missing({self.var})"


def field_name(field: dataclasses.Field[Any]) -> str:
    return str(field.metadata.get("key", field.name))


def build(cls: type[T], data: Any, path: str) -> T:
    """Build dataclass `cls` from a mapping, or raise ConfigError naming `path.key`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {_kind(data)}")
    hints = get_type_hints(cls)
    fields = {field_name(f): f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            renamed = unit_suffixed(str(key), fields)
            if renamed is not None:
                raise ConfigError(f"{_join(path, str(key))}: renamed to {renamed} (durations name their unit)")
            raise ConfigError(f"{_join(path, str(key))}: unknown key")
    values: dict[str, Any] = {}
    for key, field in fields.items():
        where = _join(path, key)
        if key in data:
            raw = data[key]
            if isinstance(raw, Missing):
                if _optional(hints[field.name]):
                    values[field.name] = None
                    continue
                raise ConfigError(f"{where}: required, but the environment variable {raw.var} is not set")
            values[field.name] = convert(hints[field.name], raw, where)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: required")
    return cls(**values)


def unit_suffixed(key: str, fields: Container[str]) -> str | None:
    """The name a duration setting has now that every one ends in `_seconds` or `_ms`, when `key` is its old
    name (`down_window_s`, or a bare `connect`); None when `key` is no such name."""
    stem = key.removesuffix("_s")
    for name in (f"{stem}_seconds", f"{stem}_ms"):
        if name in fields:
            return name
    return None


def _optional(hint: Any) -> bool:
    return get_origin(hint) in (Union, types.UnionType) and type(None) in get_args(hint)


def convert(hint: Any, value: Any, where: str) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        args = get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: unsupported value")
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            raise ConfigError(f"{where}: must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if origin is list:
        (item,) = get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {_kind(value)}")
        return [convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_kind(value)}")
        return {str(k): convert(item, v, _join(where, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return build(hint, value, where)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_kind(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected a whole number, got {_kind(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {_kind(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected text, got {_kind(value)}")
        return value
    raise ConfigError(f"{where}: unsupported setting type {hint!r}")


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {
        dict: "a mapping",
        list: "a list",
        str: "text",
        bool: "true/false",
        int: "a number",
        float: "a number",
    }.get(type(value), type(value).__name__)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


__all__ = ["ConfigError", "Missing", "build", "convert"]
