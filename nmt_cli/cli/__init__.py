"""The ``nmt`` command line: thin Typer wrappers over plain functions. Only this package imports
Typer, and torch is imported inside the commands, so ``nmt --help`` stays fast."""

from __future__ import annotations

import os
import sys

import typer

# importing the command modules registers their commands on ``app``, in the pipeline's order
import nmt_cli.cli.train  # noqa: F401, I001
import nmt_cli.cli.decode  # noqa: F401, I001
import nmt_cli.cli.rerank  # noqa: F401, I001
from nmt_cli.cli.app import app
from nmt_cli.cli.decode import DECODE_OPTIONS

__all__ = ["app", "main", "run", "DECODE_OPTIONS"]


def main() -> None:
    """The ``nmt`` command; a mistyped command, option or value is one ``error:`` line (exit 2)."""
    try:  # typer's own copy of click (newer typer), else click itself
        from typer._click import exceptions as errors
    except ImportError:  # pragma: no cover - depends on the installed typer
        from click import exceptions as errors

    no_args = getattr(errors, "NoArgsIsHelpError", ())
    try:
        code = app(prog_name="nmt", standalone_mode=False)
    except no_args as exc:  # bare `nmt` or `nmt COMMAND`: the help, as click shows it
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except errors.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "nmt"
        print(f"error: {where}: {exc.format_message()} (see '{where} --help')", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    except errors.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        raise SystemExit(1) from None
    raise SystemExit(code if isinstance(code, int) else 0)


# Commands that leave nothing to tidy once they return (files closed, threads joined).
QUICK_EXIT_COMMANDS = frozenset({"translate", "eval", "rerank", "tune"})


def run() -> None:
    """:func:`main`; after a successful ``QUICK_EXIT_COMMANDS`` command, flush and ``os._exit``, as
    unloading torch is a large share of a short translate (docs/results.md). Failures, profilers
    and tracers (which write at exit) and ``NMT_QUICK_EXIT=0`` end the ordinary way."""
    command = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    quick = (command in QUICK_EXIT_COMMANDS and os.environ.get("NMT_QUICK_EXIT", "1") != "0"
             and sys.gettrace() is None and sys.getprofile() is None)
    try:
        main()
    except SystemExit as exc:
        if quick and not exc.code:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except OSError:  # a reader that left early (broken pipe): the ordinary way
                raise exc from None
            os._exit(0)
        raise


if __name__ == "__main__":
    run()
