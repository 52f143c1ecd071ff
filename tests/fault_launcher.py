"""Run the ``nmt`` command line with a fault injected through ``nmt_cli.faults.point``.

    python tests/fault_launcher.py SPEC train RECIPE ...
    python -m torch.distributed.run ... tests/fault_launcher.py SPEC train RECIPE ...

SPEC is one fault, or several separated by commas (each acts in that order):

- ``kill-in-save:STEP``: SIGKILL halfway through writing the checkpoint file for STEP, its first
  half on disk under the temporary name, as a crash or the OOM killer would leave it;
- ``kill-after-step:N``: SIGKILL once training has made N optimizer steps (every rank);
- ``serve-delay:SECONDS``: every server batch waits that long before it is translated;
- ``serve-fail-on:TEXT``: a server batch holding the line TEXT raises.

The spec is read here and nowhere in ``nmt_cli``, whose places do nothing unless replaced.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]

Fault = Callable[..., None]  # called as point(name, **context) is


def kill_in_save(step: str) -> Fault:
    own_file = re.compile(rf"-0*{re.escape(step)}\.pt$")

    def fault(name: str, path: Path | None = None, data: bytes = b"", **_) -> None:
        if name != "checkpoint-write" or not own_file.search(path.name):
            return
        fd, _tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            os.fsync(fh.fileno())
            os.kill(os.getpid(), signal.SIGKILL)

    return fault


def kill_after_step(steps: str) -> Fault:
    def fault(name: str, step: int | None = None, **_) -> None:
        if name == "train-update" and step == int(steps):
            os.kill(os.getpid(), signal.SIGKILL)

    return fault


def serve_delay(seconds: str) -> Fault:
    def fault(name: str, **_) -> None:
        if name == "serve-batch":
            time.sleep(float(seconds))

    return fault


def serve_fail_on(text: str) -> Fault:
    def fault(name: str, lines: list[str] = (), **_) -> None:
        if name == "serve-batch" and text in lines:
            raise RuntimeError(f"injected fault: a batch holding {text!r}")

    return fault


FAULTS = {"kill-in-save": kill_in_save, "kill-after-step": kill_after_step,
          "serve-delay": serve_delay, "serve-fail-on": serve_fail_on}


def parse(spec: str) -> list[Fault]:
    faults = []
    for part in spec.split(","):
        kind, sep, arg = part.partition(":")
        if kind not in FAULTS or not sep:
            raise SystemExit(f"fault_launcher: unknown fault {part!r}; one of "
                             f"{', '.join(k + ':ARG' for k in FAULTS)}")
        faults.append(FAULTS[kind](arg))
    return faults


def nmt_args(fault: str | None) -> list[str]:
    """What follows ``python`` (or torchrun's options) to run ``nmt``: ``-m nmt_cli``, or this
    launcher with ``fault`` when one is given."""
    return [str(Path(__file__).resolve()), fault] if fault else ["-m", "nmt_cli"]


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    injected = parse(argv[0])
    sys.path.insert(0, str(ROOT))
    import nmt_cli.faults

    def point(name: str, **context: object) -> None:
        for fault in injected:
            fault(name, **context)

    nmt_cli.faults.point = point
    from nmt_cli.cli import run

    sys.argv = ["nmt", *argv[1:]]
    run()


if __name__ == "__main__":
    main(sys.argv[1:])
