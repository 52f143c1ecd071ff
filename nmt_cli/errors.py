"""Errors a user can cause and fix. The CLI turns each into one line and a non-zero exit."""

from __future__ import annotations


class NmtError(Exception):
    """Base class: the message is complete and says what to do about it."""

    exit_code = 1


class ConfigError(NmtError):
    """A recipe or an override is wrong; the message names the key path."""

    exit_code = 2

    def __init__(self, message: str, key: str | None = None, source: str | None = None):
        where = ""
        if source:
            where += f"{source}: "
        if key:
            where += f"{key}: "
        super().__init__(where + message)
        self.key = key
        self.source = source


class DataError(NmtError):
    """An input file is missing, misaligned or unreadable; the message names the file (and line)."""

    exit_code = 3

    def __init__(self, message: str, path: object | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f":{line}"
            where += ": "
        super().__init__(where + message)
        self.path = path
        self.line = line


class CheckpointError(NmtError):
    """A checkpoint is missing, truncated, or does not fit the model or vocabulary it is used with."""

    exit_code = 4
