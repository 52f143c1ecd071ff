"""The Typer app every ``nmt`` command registers on, and what the commands share: the device
choice, the recipe arguments and ``user_errors``."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Iterator, List

import typer

from nmt_cli.errors import NmtError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_enable=False,
                  help="Neural machine translation: tokenizer -> preprocess -> train -> translate "
                       "-> eval, each stage driven by a YAML recipe.")


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn NmtError into 'error: ...' on stderr and its exit code, never a traceback."""
    try:
        yield
    except NmtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise typer.Exit(130) from None
    except BrokenPipeError:
        raise typer.Exit(0) from None
    except OSError as exc:  # unwritable output folder, full disk, permissions
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}; check the path and its permissions",
              file=sys.stderr)
        raise typer.Exit(1) from None


RECIPE = typer.Argument(..., help="YAML recipe file (see recipes/).", show_default=False,
                        metavar="RECIPE")
SET = typer.Option([], "--set", help="Override a recipe key, e.g. --set train.max_steps=100; "
                                     "repeatable.", metavar="KEY.PATH=VALUE")


def _load(recipe: Path, overrides: List[str]):
    from nmt_cli.recipes import load_recipe

    return load_recipe(recipe, overrides)
