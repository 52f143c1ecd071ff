"""Terminology constraints, before search: the phrases each line's translation must contain, from
a constraint file (one line per input line, phrases separated by tabs) or a glossary (source
term TAB target term), and their target pieces. No torch: the search itself is
``decoding.constrained``.

A phrase is encoded by the model's target tokenizer on its own, so it must appear in the output as
those whole pieces (its first piece starts a word). A phrase that cannot be produced (no pieces,
``<unk>`` pieces) or that cannot fit into the line's length limit is a problem of that line: the
line is translated without its constraints and the problem is reported with the line number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from nmt_cli.errors import DataError
from nmt_cli.ids import UNK_ID

# Constraints a line may have; each one also widens that line's beam by one (docs/decoding.md).
MAX_PHRASES = 32


def parse_line(line: str) -> list[str]:
    """The phrases of one constraint-file line: tab-separated, blank fields ignored."""
    return [" ".join(p.split()) for p in line.split("\t") if p.strip()]


@dataclass(frozen=True)
class Glossary:
    """Source term -> target term; a target term constrains every line whose source contains the
    source term on word boundaries (case-sensitive unless ``ignore_case``)."""

    entries: tuple[tuple[str, str], ...]
    ignore_case: bool = False
    _patterns: tuple[re.Pattern, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        flags = re.IGNORECASE if self.ignore_case else 0
        # \w-boundaries that also hold next to punctuation inside a term ("C++", "e.g.")
        patterns = tuple(re.compile(r"(?<!\w)" + re.escape(src) + r"(?!\w)", flags)
                         for src, _ in self.entries)
        object.__setattr__(self, "_patterns", patterns)

    @classmethod
    def read(cls, path: Path, ignore_case: bool = False) -> "Glossary":
        """A UTF-8 TSV of ``source term<TAB>target term`` lines; blank lines and lines starting
        with ``#`` are skipped. A bad line is a DataError naming the file and line."""
        try:
            raw = Path(path).read_bytes()
        except FileNotFoundError:
            raise DataError("glossary not found; give a TSV of source term<TAB>target term "
                            "lines", path) from None
        except OSError as exc:
            raise DataError(f"cannot read the glossary: {exc.strerror}", path) from None
        entries = []
        for lineno, data in enumerate(raw.split(b"\n"), 1):
            try:
                line = data.decode("utf-8").rstrip("\r")
            except UnicodeDecodeError as exc:
                raise DataError(f"invalid UTF-8 at byte {exc.start}; save the glossary as UTF-8",
                                path, lineno) from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
                raise DataError(f"expected 'source term<TAB>target term', found {len(fields)} "
                                "field(s)" + ("" if len(fields) != 2 else " with an empty term"),
                                path, lineno)
            entries.append((" ".join(fields[0].split()), " ".join(fields[1].split())))
        if not entries:
            raise DataError("the glossary has no entries (source term<TAB>target term lines)",
                            path)
        return cls(tuple(entries), ignore_case)

    def match(self, source: str) -> list[str]:
        """The target terms whose source term occurs in ``source``, in glossary order, once each."""
        found: list[str] = []
        for (_, target), pattern in zip(self.entries, self._patterns):
            if target not in found and pattern.search(source):
                found.append(target)
        return found


def merge(*lists: Sequence[str]) -> list[str]:
    """Phrases of several sources for one line, in order; a phrase given twice is kept twice
    only when one source repeats it (the glossary never adds a phrase already asked for)."""
    first, *rest = lists
    merged = list(first)
    for more in rest:
        merged.extend(p for p in more if p not in merged)
    return merged


@dataclass(frozen=True)
class LineConstraints:
    """One line's constraints as target pieces, or the reason they cannot be used."""

    phrases: tuple[str, ...]
    pieces: tuple[tuple[int, ...], ...]
    problem: str | None = None  # set: the line is translated without constraints

    @property
    def tokens(self) -> int:
        return sum(map(len, self.pieces))


def prepare(tok, phrases: Sequence[Sequence[str]], max_lengths: Sequence[int],
            allow_unk: bool = False) -> list[LineConstraints | None]:
    """Each line's phrases encoded with ``tok``'s target side; None for a line without any.
    ``max_lengths`` is each line's output limit in pieces (EOS not counted)."""
    flat = [p for line in phrases for p in line]
    encoded = iter(tok.encode_tgt(flat)) if flat else iter(())
    out: list[LineConstraints | None] = []
    for line, limit in zip(phrases, max_lengths):
        if not line:
            out.append(None)
            continue
        pieces = tuple(tuple(next(encoded)) for _ in line)
        problem = _problem(line, pieces, limit, allow_unk)
        out.append(LineConstraints(tuple(line), pieces if problem else needed(pieces), problem))
    return out


def needed(pieces: Sequence[tuple[int, ...]]) -> tuple[tuple[int, ...], ...]:
    """The phrases that search must produce: one of each, and none that lies inside another
    (an output holding the longer one holds both)."""
    unique = list(dict.fromkeys(pieces))
    return tuple(p for p in unique
                 if not any(q != p and _inside(p, q) for q in unique))


def _inside(short: tuple[int, ...], long: tuple[int, ...]) -> bool:
    n = len(short)
    return n <= len(long) and any(long[i:i + n] == short for i in range(len(long) - n + 1))


def _problem(phrases: Sequence[str], pieces: Sequence[Sequence[int]], limit: int,
             allow_unk: bool) -> str | None:
    if len(needed(pieces)) > MAX_PHRASES:
        return f"{len(phrases)} constraints, more than the {MAX_PHRASES} a line may have"
    for phrase, ids in zip(phrases, pieces):
        if not ids:
            return f"constraint {phrase!r} has no target pieces"
        if not allow_unk and UNK_ID in ids:
            return (f"constraint {phrase!r} holds characters the target vocabulary lacks "
                    "(<unk>), so no translation can contain it")
    total = sum(map(len, needed(pieces)))
    if total > limit:
        return (f"the constraints need {total} target pieces, but this line's output may have at "
                f"most {limit} (decode.max_len_a, decode.max_len_b)")
    return None


_CONTINUATIONS: dict[bytes, list[bool]] = {}  # per target tokenizer (its model's bytes)


def word_continuations(tok) -> list[bool]:
    """Per target piece: whether it goes on the word before it (no word mark, and a letter or
    digit first), which may not follow a completed phrase; punctuation and new words may."""
    found = _CONTINUATIONS.get(tok.tgt_bytes)
    if found is None:
        sp = tok.tgt
        pieces = (sp.id_to_piece(i) for i in range(sp.get_piece_size()))
        found = [not p.startswith("\u2581") and p[:1].isalnum() for p in pieces]
        if len(_CONTINUATIONS) >= 4:
            _CONTINUATIONS.clear()
        _CONTINUATIONS[tok.tgt_bytes] = found
    return found


def read_constraint_file(path: Path) -> list[list[str]]:
    """Every line of a constraint file, parsed (UTF-8; a bad line names the file and line)."""
    from nmt_cli.text.bitext import open_binary

    out = []
    try:
        with open_binary(path) as fh:
            for lineno, raw in enumerate(fh, 1):
                try:
                    text = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as exc:
                    raise DataError(f"invalid UTF-8 at byte {exc.start}; save the constraints as "
                                    "UTF-8", path, lineno) from None
                if lineno == 1:
                    text = text.removeprefix("\ufeff")
                out.append(parse_line(text))
    except FileNotFoundError:
        raise DataError("constraint file not found; give one line of tab-separated target "
                        "phrases per input line (empty for none)", path) from None
    return out
