"""Named places where a test may inject a fault. Production code calls ``faults.point(NAME,
**context)`` through the module, so that a test's replacement of ``nmt_cli.faults.point`` is seen
(``monkeypatch``, or ``tests/fault_launcher.py`` for ``nmt`` in a subprocess). The places:

- ``checkpoint-write``: ``path`` and ``data`` (its bytes), just before the atomic write;
- ``train-update``: ``step`` (optimizer steps so far), after each update and its logging, before
  validation or saving;
- ``serve-batch``: ``lines`` (one batch's source lines), before it is translated.
"""


def point(name: str, **context: object) -> None:
    """A place where a test may inject a fault; does nothing otherwise."""
