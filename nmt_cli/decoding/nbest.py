"""The n-best list ``nmt translate --n-best K`` writes, read back: one TSV row per hypothesis,
``index<TAB>score<TAB>text``, the 0-based source line index first, rows of one line together and
best first, an empty source line as one row with score 0 and no text. Both engines write the same
rows (docs/decoding.md, "N-best lists"). No torch here."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from nmt_cli.errors import DataError
from nmt_cli.text.bitext import decode_line, open_binary


@dataclass(frozen=True)
class NbestEntry:
    index: int  # the source line, 0-based
    score: float  # the forward model's score as written (log-probability / length normalizer)
    text: str  # the hypothesis, detokenized


def format_entry(entry: NbestEntry) -> str:
    """One row, as ``nmt translate --n-best`` writes it (without the newline)."""
    return f"{entry.index}\t{entry.score:.4f}\t{entry.text}"


def parse_entry(line: str, path: object, lineno: int) -> NbestEntry:
    """One row; a malformed one is a DataError naming ``path`` and ``lineno``. The text is
    everything after the second tab, so a tab inside a hypothesis survives."""
    fields = line.split("\t", 2)
    if len(fields) < 3:
        raise DataError(f"not an n-best row: expected index<TAB>score<TAB>text, found "
                        f"{len(fields) - 1} tab(s); write the list with nmt translate --n-best K",
                        path, lineno)
    index, score, text = fields
    if not index.isdigit():
        raise DataError(f"the source line index {index[:20]!r} is not a whole number >= 0; write "
                        "the list with nmt translate --n-best K", path, lineno)
    try:
        value = float(score)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"the score {score[:20]!r} is not a finite number; write the list with "
                        "nmt translate --n-best K", path, lineno)
    return NbestEntry(int(index), value, text)


def read_nbest(path: Path) -> Iterator[NbestEntry]:
    """Every row of an n-best file (plain or compressed), in order. Rows of one source line must be
    together and the indices must not go down; each breach is one DataError naming the line."""
    last = -1
    with open_binary(path) as fh:
        for lineno, raw in enumerate(fh, 1):
            line = decode_line(raw, path, lineno)
            entry = parse_entry(line, path, lineno)
            if entry.index < last:
                raise DataError(f"index {entry.index} after index {last}: the rows of one source "
                                "line must be together, in source order, as nmt translate "
                                "--n-best writes them", path, lineno)
            last = entry.index
            yield entry


def group_nbest(path: Path, sources: int) -> list[list[NbestEntry]]:
    """The rows of ``path`` per source line, for a source of ``sources`` lines: every line must have
    at least one row (``nmt translate`` writes one even for an empty line), none may be past it."""
    groups: list[list[NbestEntry]] = [[] for _ in range(sources)]
    lineno = 0
    for lineno, entry in enumerate(read_nbest(path), 1):
        if entry.index >= sources:
            raise DataError(f"index {entry.index}, but the source has {sources} line(s); give the "
                            "source file this n-best list was translated from", path, lineno)
        groups[entry.index].append(entry)
    missing = [i for i, g in enumerate(groups) if not g]
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise DataError(f"no rows for {len(missing)} of the {sources} source line(s) (index "
                        f"{shown}); give the source file this n-best list was translated from, "
                        "or translate it again with --n-best K", path)
    return groups
