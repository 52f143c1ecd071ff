"""Recipes on disk: YAML in, a validated ``Recipe`` out, ``--set`` overrides, the resolved copy."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, Iterable, get_args

import yaml

from nmt_cli.config import Recipe, build, check_training, field_type, to_dict
from nmt_cli.errors import ConfigError, NmtError
from nmt_cli.files import atomic_write_text

RESOLVED_NAME = "recipe.yaml"


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``5e-4`` as a string; recipes mean a number, as YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"""),
    list("-+0123456789"))


def _yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``a.b=value``; the value is read as YAML (``0.1`` is a number, ``[a, b]`` a list)."""
    if "=" not in text:
        raise ConfigError(f"{text!r} has no '='; write it as KEY.PATH=VALUE, for example "
                          "--set train.max_steps=100", source="--set")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"{text!r} has no key before '='; write it as KEY.PATH=VALUE",
                          source="--set")
    try:
        value = _yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot read value {raw!r}: {exc.__class__.__name__}", key) from None
    return key, value


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str], cwd: Path) -> dict[str, Any]:
    """Set each dotted key in a copy of ``raw``. Relative paths given here resolve against ``cwd``."""
    out = copy.deepcopy(raw)
    for text in overrides:
        key, value = parse_override(text)
        tp = field_type(Recipe, key)  # raises ConfigError with did-you-mean on a misspelt key
        if _is_path_type(tp) and isinstance(value, str) and value and not Path(value).is_absolute():
            value = str((cwd / Path(value).expanduser()).resolve())
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError("is not a mapping in the recipe", ".".join(parts[: i + 1]))
            node = child
        node[parts[-1]] = value
    return out


def _is_path_type(tp: Any) -> bool:
    return tp is Path or Path in get_args(tp)


def load_recipe(path: str | os.PathLike[str], overrides: Iterable[str] = (),
                cwd: Path | None = None) -> Recipe:
    """Read and validate a recipe file; relative paths in it resolve against its own folder."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give a recipe file, such as recipes/sample.yaml")
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path} (see recipes/ for examples)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"is not UTF-8 text (byte {exc.start}); save it as UTF-8",
                          source=str(path)) from None
    try:
        raw = _yaml_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"invalid YAML{where}: {problem}", source=str(path)) from None
    overrides = list(overrides)
    if (raw is None or raw == {}) and not overrides:  # --set alone may still say everything
        raise ConfigError("the recipe is empty (nothing but blank lines or comments); start from "
                          "a copy of recipes/sample.yaml and set data.train at least",
                          source=str(path))
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError("the recipe must be a mapping of sections (data:, model:, train:, ...), "
                          f"not {_yaml_kind(raw)}", source=str(path))
    try:
        raw = apply_overrides(raw, overrides, cwd or Path.cwd())
        recipe = build(Recipe, raw, base_dir=path.resolve().parent)
        check_training(recipe)
        return recipe
    except ConfigError as exc:
        if exc.source is None:
            raise ConfigError(str(exc), source=str(path)) from None
        raise


def _yaml_kind(value: Any) -> str:
    return "a list" if isinstance(value, list) else f"a single value ({str(value)[:40]!r})"


def recipe_from_dict(raw: dict[str, Any], base_dir: Path | None = None) -> Recipe:
    """Rebuild a recipe from its ``to_dict`` form (for example, out of a checkpoint). A recipe
    saved before ``decode.precision`` existed decoded in fp32, and still does."""
    raw = dict(raw)
    if isinstance(raw.get("decode"), dict) and "precision" not in raw["decode"]:
        raw["decode"] = {**raw["decode"], "precision": "fp32"}
    return build(Recipe, raw, base_dir=base_dir)


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(to_dict(recipe), sort_keys=False, allow_unicode=True)


def write_resolved(recipe: Recipe, workdir: Path) -> Path:
    """Write the fully resolved recipe (defaults filled, paths absolute) into the experiment folder."""
    workdir.mkdir(parents=True, exist_ok=True)
    target = workdir / RESOLVED_NAME
    atomic_write_text(target, dump_recipe(recipe))
    return target


__all__ = ["load_recipe", "recipe_from_dict", "write_resolved", "dump_recipe", "apply_overrides",
           "parse_override", "NmtError"]
