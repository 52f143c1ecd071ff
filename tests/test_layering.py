"""Import layering, read from the source with ``ast``: the CLI is the only Typer user, and the light
modules (recipes, data reading, scoring) never pull in torch, not even through another module."""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nmt_cli"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def resolve(name: str, level: int, current: str) -> str:
    if not level:
        return name
    base = current.split(".")
    if not is_package(current):
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


@lru_cache(maxsize=None)
def imports(name: str, top_level_only: bool = False) -> frozenset[str]:
    """Every module ``name`` imports (anywhere in the file, or only at module level)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = resolve(node.module or "", node.level, name)
            found.add(target)
            for alias in node.names:  # `from nmt_cli.model import encoder` imports a module
                if f"{target}.{alias.name}" in MODULES:
                    found.add(f"{target}.{alias.name}")
    return frozenset(found)


def closure(name: str, top_level_only: bool = False) -> set[str]:
    """Everything importing ``name`` loads, following nmt_cli modules (and their packages)."""
    seen, todo, external = set(), [name], set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        for imp in imports(mod, top_level_only):
            parts = imp.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
                prefix = ".".join(parts[:i])
                if prefix in MODULES:
                    todo.append(prefix)
            if imp.split(".")[0] != "nmt_cli":
                external.add(imp.split(".")[0])
    return external | {m for m in seen if m != name}


def test_the_package_is_found():
    assert {"nmt_cli.cli", "nmt_cli.config", "nmt_cli.model.decoder", "nmt_cli.search"} <= set(
        MODULES)


def test_only_the_cli_imports_typer():
    users = {name for name in MODULES if any(i.split(".")[0] == "typer" for i in imports(name))}
    assert users == {"nmt_cli.cli"}


@pytest.mark.parametrize("name", ["nmt_cli.config", "nmt_cli.errors", "nmt_cli.recipes",
                                  "nmt_cli.bitext", "nmt_cli.scoring", "nmt_cli.files"])
def test_light_modules_never_import_torch(name):
    loaded = closure(name)
    assert "torch" not in loaded, sorted(loaded)
    assert "typer" not in loaded


def test_cli_module_level_stays_light():
    loaded = closure("nmt_cli.cli", top_level_only=True)
    assert not {"torch", "sentencepiece", "numpy", "sacrebleu"} & loaded, sorted(loaded)


def test_model_does_not_depend_on_the_tokenizer_or_io():
    for name in [n for n in MODULES if n.startswith("nmt_cli.model")]:
        loaded = closure(name)
        assert "nmt_cli.tokenizer" not in loaded, (name, sorted(loaded))
        assert "sentencepiece" not in loaded and "typer" not in loaded


def test_search_is_free_of_io_and_cli():
    loaded = closure("nmt_cli.search")
    assert not {"nmt_cli.cli", "nmt_cli.translate", "nmt_cli.trainer", "typer", "rich"} & loaded


def test_the_import_scan_sees_torch_where_it_is():
    """A control for the checks above: the scan does find torch behind a chain of modules."""
    assert "torch" in closure("nmt_cli.trainer")
    assert {"nmt_cli.model", "nmt_cli.model.seq2seq", "torch"} <= closure("nmt_cli.checkpoint")
    assert "torch" in closure("nmt_cli.cli")  # lazily, inside the commands


def test_the_server_package_loads_without_its_extra():
    """``nmt serve`` can say which extra to install: FastAPI, uvicorn and torch load later."""
    loaded = closure("nmt_cli.serve", top_level_only=True)
    assert not {"fastapi", "uvicorn", "starlette", "torch"} & loaded, sorted(loaded)
