"""Configs are plain dataclasses. This module turns them into dicts and back, strictly.

Unknown keys are errors naming the full key path (``fusion.projector.kind``); values of the wrong
type are errors naming the path, the value and the type wanted. Per-field help text lives in
``field(metadata={"help": ...})`` so the CLI and the UI can show it.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, TypeVar

from mmassist.core.errors import ConfigError

T = TypeVar("T")


@functools.cache
def _yaml_loader() -> type:
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                                 re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                                 list("-+0123456789"))
    return Loader


def yaml_load(text: str) -> Any:
    """``yaml.safe_load``, except that numbers written like ``1e-3`` or ``3E-4`` are floats, as in YAML 1.2
    and JSON (PyYAML follows YAML 1.1, where an exponent needs a dot, ``1.0e-3``, or the value is a string)."""
    import yaml

    return yaml.load(text, Loader=_yaml_loader())


def help_field(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING,
               choices: tuple | None = None) -> Any:
    """A dataclass field with help text (and optional allowed values) in its metadata."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def check_choice(path: str, value: Any, choices: tuple) -> None:
    """Raise ConfigError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{path}={value!r} is not allowed; choose one of {', '.join(map(repr, choices))}")


def check_range(path: str, value: float, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False) -> None:
    """Raise ConfigError unless lo <= value <= hi (lo < value when lo_open); NaN is never in range."""
    if value != value:  # NaN compares false with everything, so it would pass every bound below
        raise ConfigError(f"{path}={value!r} must be a number, not NaN")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ConfigError(f"{path}={value!r} must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{path}={value!r} must be <= {hi}")


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Build dataclass ``cls`` from a dict, recursing into nested dataclass fields.

    Raises ConfigError on unknown keys, missing required keys and values of the wrong type.
    """
    if isinstance(data, cls):
        return data
    where = path or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {type(data).__name__}: {_show(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields), key=_show)  # keys of a YAML file may be numbers, null...
    if unknown:
        keys = ", ".join(_join(path, k if isinstance(k, str) else _show(k)) for k in unknown)
        raise ConfigError(f"unknown config key {keys}; known keys here: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(hints[name], value, _join(path, name)) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field left out
        raise ConfigError(f"{where}: {e}") from None


def to_dict(obj: Any) -> Any:
    """A JSON-ready dict of a dataclass config (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def field_help(cls: type) -> dict[str, str]:
    """Per-field help texts of a config dataclass (for forms and ``--help``)."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def _show(value: Any, limit: int = 200) -> str:
    """``repr(value)`` for an error message, shortened; never fails (Python refuses to print an
    integer of over 4300 digits)."""
    try:
        text = repr(value)
    except ValueError:
        text = f"<a {type(value).__name__} too large to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 1000:
        # past any float, and past what Python prints (4300 digits): refuse it here, by its size
        digits = int(value.bit_length() * 0.30103) + 1
        raise ConfigError(f"{path}: a whole number of about {digits} digits is too large")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}={_show(value)} has the wrong type; wanted {tp}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}={_show(value)} must be a list")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}={_show(value)} must be a mapping")
        args = typing.get_args(tp)
        if args and args[0] is str:
            bad = next((k for k in value if not isinstance(k, str)), None)
            if bad is not None or None in value:  # YAML reads `1:` or `null:` as a number or None
                raise ConfigError(f"{path}: the key {_show(bad)} must be a string")
        val_tp = args[1] if len(args) == 2 else Any
        return {k: _coerce(val_tp, v, _join(path, k)) for k, v in value.items()}
    if origin is typing.Literal:
        check_choice(path, value, typing.get_args(tp))
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}={_show(value)} must be a number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path}={_show(value)} must be a whole number")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}={_show(value)} must be true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}={_show(value)} must be a string")
        return value
    return value
