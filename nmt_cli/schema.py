"""Building frozen dataclasses from plain dicts (a recipe's sections): every value checked for
its type, range (the field's metadata) and choices (``Literal``), an unknown key refused with a
did-you-mean, and the full key path named in every error."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal

from nmt_cli.errors import ConfigError


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp)
        return f"a list of {_type_name(item)}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            Path: "a path", type(None): "null"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str, base_dir: Path | None) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it converted; raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        return _coerce(value, _strip_optional(tp), key, base_dir)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            tail = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"{value!r} is not allowed, choose one of "
                              + ", ".join(repr(c) for c in choices) + tail, key)
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"expected {_type_name(tp)}, got {value!r}", key)
        return [_coerce(v, item, f"{key}[{i}]", base_dir) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping of keys, got {value!r}", key)
        return build(tp, value, prefix=key, base_dir=base_dir)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {value!r}", key)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"expected an integer, got {value!r}", key)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"expected a number, got {value!r}", key)
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"expected a string, got {value!r}", key)
        return str(value)
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"expected a path, got {value!r}", key)
        path = Path(value).expanduser()
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        return path.resolve() if path.is_absolute() else path
    raise ConfigError(f"unsupported type {tp}", key)  # pragma: no cover - schema bug


def _check_range(value: Any, meta: typing.Mapping[str, Any], key: str) -> None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    checks = (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
              ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<"))
    for name, ok, sign in checks:
        bound = meta.get(name)
        if bound is not None and not ok(value, bound):
            raise ConfigError(f"{value!r} is out of range, it must be {sign} {bound}", key)


def _checked(cls: type, raw: typing.Mapping[str, Any], prefix: str,
             base_dir: Path | None) -> dict[str, Any]:
    """``raw``'s values as ``cls``'s field types, checked (type, range, choices, unknown keys)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            raise ConfigError(_unknown_key_message(str(name), list(fields), prefix), key)
        values[name] = _coerce(value, hints[name], key, base_dir)
        _check_range(values[name], fields[name].metadata, key)
    return values


def build(cls: type, raw: dict[str, Any], prefix: str = "", base_dir: Path | None = None) -> Any:
    """Build dataclass ``cls`` from ``raw``, rejecting unknown keys with a did-you-mean."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = _checked(cls, raw, prefix, base_dir)
    for name, f in fields.items():  # a relative default path is relative to the recipe, too
        if name not in kwargs and base_dir is not None and hints[name] is Path \
                and isinstance(f.default, Path) and not f.default.is_absolute():
            kwargs[name] = (base_dir / f.default).resolve()
    missing = [n for n, f in fields.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        key = f"{prefix}.{missing[0]}" if prefix else missing[0]
        raise ConfigError("this key is required", key)
    return cls(**kwargs)


def _unknown_key_message(name: str, known: list[str], prefix: str) -> str:
    hint = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    where = f"in '{prefix}'" if prefix else "at the top level"
    if hint:
        full = f"{prefix}.{hint[0]}" if prefix else hint[0]
        return f"unknown key; did you mean '{full}'?"
    return f"unknown key (known keys {where}: {', '.join(known)})"


def with_overrides(cfg: Any, overrides: typing.Mapping[str, Any], prefix: str = "") -> Any:
    """``cfg`` with some keys changed, checked as recipe keys are: the one way to change a built
    config (CLI options, the Python API, request settings)."""
    if not overrides:
        return cfg
    return dataclasses.replace(cfg, **_checked(type(cfg), overrides, prefix, None))


def to_dict(obj: Any) -> Any:
    """A plain, YAML- and JSON-friendly view of a config object (paths become strings)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def field_type(cls: type, dotted: str) -> Any:
    """The annotation of a dotted key (``train.learning_rate``), or ConfigError if there is none."""
    parts = dotted.split(".")
    tp: Any = cls
    for i, part in enumerate(parts):
        tp = _strip_optional(tp)
        if not dataclasses.is_dataclass(tp):
            raise ConfigError("is not a section, it has no sub-keys", ".".join(parts[:i]))
        fields = {f.name for f in dataclasses.fields(tp)}
        if part not in fields:
            prefix = ".".join(parts[:i])
            raise ConfigError(_unknown_key_message(part, sorted(fields), prefix), dotted)
        tp = typing.get_type_hints(tp)[part]
    return tp


def _strip_optional(tp: Any) -> Any:
    """``X`` for ``X | None`` (the first non-None member of a union); any other ``tp`` itself."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(tp) if a is not type(None)][0]
    return tp


def number(default: Any, *, ge: float | None = None, gt: float | None = None,
           le: float | None = None, lt: float | None = None, doc: str = "") -> Any:
    """A numeric dataclass field with an allowed range, which ``build`` checks."""
    return dataclasses.field(default=default, metadata={"ge": ge, "gt": gt, "le": le, "lt": lt, "doc": doc})
