"""Named places where a test may inject a fault: a crash halfway through writing a checkpoint,
a kill after a training step, a slow or failing server batch.

Production code calls ``faults.point(NAME, **context)`` (through the module, so that a
replacement is seen) and nothing happens. A test replaces ``nmt_cli.faults.point`` with a
function that acts on the name and context: with ``monkeypatch`` in its own process, or through
``tests/fault_launcher.py`` for ``nmt`` in a subprocess. The places, and what each passes:

- ``checkpoint-write``: ``path`` (the checkpoint file about to be written) and ``data`` (its
  bytes), just before the atomic write;
- ``train-update``: ``step`` (the optimizer steps so far), after every update and its logging,
  before validation or saving;
- ``serve-batch``: ``lines`` (the source lines of one batch), before it is translated.
"""


def point(name: str, **context: object) -> None:
    """A place where a test may inject a fault; does nothing otherwise."""
