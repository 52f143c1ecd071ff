"""Line clean-up before filtering and encoding: CRLF, BOM, control and zero-width characters,
Unicode normalization and whitespace, each step switchable and counted. A chunk is scanned once
with numpy lookup tables; only lines some step would change go through per-line Python."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

import numpy as np

from nmt_cli.config import NormalizeConfig

# Bits of the per-code-point lookup table.
CONTROL, ZERO_WIDTH, ODD_SPACE, LETTER, SPACE = 1, 2, 4, 8, 16
ZERO_WIDTH_CHARS = "\u200b\u200c\u200d\u2060\ufeff"
_CONTROL_RE = re.compile(r"[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f]")
_ZERO_WIDTH_RE = re.compile(f"[{ZERO_WIDTH_CHARS}]")
STEPS = ("crlf", "bom", "control", "zero_width", "unicode", "whitespace")

_FIELD = 21  # bits per count in the packed per-line sums below
_LONG = 1 << (_FIELD - 1)  # lines at least this long are counted exactly, one by one

_BLOCK = 1 << 12  # code points per block of the table, filled on first use
_TABLE = np.zeros(0x110000, dtype=np.uint8)
_FILLED = np.zeros(0x110000 // _BLOCK, dtype=bool)


def _fill_block(block: int) -> None:
    """Flags for the code points of one block: control, zero-width, whitespace other than ' ',
    letter, space. Letters are what ``re`` calls ``[^\\W\\d_]`` (Unicode letters, plus a few
    numeric symbols such as circled digits); spaces are ``\\s``."""
    lo = block * _BLOCK
    chars = "".join(map(chr, range(lo, lo + _BLOCK)))

    def marks(pattern: str) -> np.ndarray:
        text = re.sub(pattern, "\x01", chars).encode("utf-32-le", "surrogatepass")
        hit = np.frombuffer(text, dtype=np.uint32) == 1
        if lo == 0:  # \x01 itself, the marker
            hit[1] = re.fullmatch(pattern, "\x01") is not None
        return hit

    flags = np.zeros(_BLOCK, dtype=np.uint8)
    flags[marks(r"[^\W\d_]")] |= LETTER
    flags[marks(r"\s")] |= SPACE | ODD_SPACE
    if lo == 0:
        flags[32] = SPACE
        for first, last in ((0x00, 0x08), (0x0E, 0x1B), (0x7F, 0x84), (0x86, 0x9F)):
            flags[first:last + 1] |= CONTROL  # as _CONTROL_RE
    for ch in ZERO_WIDTH_CHARS:
        if lo <= ord(ch) < lo + _BLOCK:
            flags[ord(ch) - lo] |= ZERO_WIDTH
    _TABLE[lo:lo + _BLOCK] = flags
    _FILLED[block] = True


def char_flags(cps: np.ndarray) -> np.ndarray:
    """The flags of each code point of ``cps`` (uint32); the table is filled lazily, 4,096 code
    points at a time, so Latin-script text builds two or three of its 272 blocks."""
    if not _FILLED.all():
        used = np.flatnonzero((np.bincount(cps >> 12, minlength=_FILLED.size) > 0) & ~_FILLED)
        for block in used.tolist():
            _fill_block(block)
    return _TABLE[cps]


def char_table() -> np.ndarray:
    """The whole table, every block filled (a fraction of a second): built once before worker
    processes fork, so that they share it."""
    for block in np.flatnonzero(~_FILLED).tolist():
        _fill_block(block)
    return _TABLE


def _code_points(text: str, lines: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``text`` (the lines joined by newlines) as code points, with each line's start and end."""
    cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    lengths = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))
    ends = np.cumsum(lengths + 1) - 1
    return cps, ends - lengths, ends


def _ratio(letters: np.ndarray, spaces: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    visible = lengths - spaces
    return np.where(visible > 0, 1.0 - letters / np.maximum(visible, 1), 0.0)


def nonletter_ratio(lines: list[str]) -> np.ndarray:
    """Per line, the share of its non-space characters that are not letters (0 for a blank line)."""
    out = np.zeros(len(lines))
    for i, line in enumerate(lines):
        cps = np.frombuffer(line.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        flags = char_flags(cps)
        out[i] = _ratio(np.count_nonzero(flags & LETTER), np.count_nonzero(flags & SPACE),
                        len(line))
    return out


class Normalizer:
    """Applies a ``NormalizeConfig`` to chunks of lines and counts the lines each step changed."""

    def __init__(self, cfg: NormalizeConfig):
        self.cfg = cfg
        self.form = cfg.unicode.upper() if cfg.unicode != "none" else None
        mask = (CONTROL * cfg.remove_control | ZERO_WIDTH * cfg.remove_zero_width
                | ODD_SPACE * cfg.collapse_whitespace)
        # One int64 per flag combination packing three counters, so one cumulative sum counts
        # letters, spaces and characters some step would change, for every line of a chunk.
        flags = np.arange(256)
        self.codes = (((flags & LETTER) != 0).astype(np.int64)
                      | (((flags & SPACE) != 0).astype(np.int64) << _FIELD)
                      | (((flags & mask) != 0).astype(np.int64) << (2 * _FIELD)))

    def clean_lines(self, lines: list[str], file_start: bool,
                    counts: Counter) -> tuple[list[str], np.ndarray]:
        """Clean one side of a chunk (``file_start``: its first line opens a file, BOM): the cleaned
        lines and, a by-product of the scan, their non-letter ratios."""
        if not lines:
            return lines, np.zeros(0)
        text = "\n".join(lines)
        if "\r" in text:
            stripped = [line[:-1] if line.endswith("\r") else line for line in lines]
            counts["crlf"] += sum(a is not b for a, b in zip(lines, stripped))
            lines = stripped
            text = "\n".join(lines)
        if file_start and lines[0].startswith("\ufeff"):
            lines = [lines[0][1:]] + lines[1:]
            counts["bom"] += 1
            text = text[1:]
        cps, starts, ends = _code_points(text, lines)
        sums = np.concatenate([[0], np.cumsum(self.codes[char_flags(cps)])])
        per_line = sums[ends] - sums[starts]
        field = (1 << _FIELD) - 1
        lengths = ends - starts
        ratio = _ratio(per_line & field, (per_line >> _FIELD) & field, lengths)
        dirty = (per_line >> (2 * _FIELD)) > 0
        dirty |= lengths >= _LONG
        if self.cfg.collapse_whitespace:
            space = cps == 32
            doubled = np.flatnonzero(space[:-1] & space[1:])
            dirty[np.searchsorted(ends, doubled, side="left")] = True
            nonempty = lengths > 0
            dirty[nonempty] |= space[starts[nonempty]] | space[ends[nonempty] - 1]
        if self.form and not unicodedata.is_normalized(self.form, text):
            dirty |= np.fromiter((not unicodedata.is_normalized(self.form, line) for line in lines),
                                 bool, len(lines))
        rows = np.flatnonzero(dirty).tolist()
        if rows:
            lines = list(lines)
            for i in rows:
                lines[i] = self.clean_line(lines[i], counts)
            ratio[rows] = nonletter_ratio([lines[i] for i in rows])
        return lines, ratio

    def clean_line(self, line: str, counts: Counter) -> str:
        """Every enabled step on one line, in order, counting the steps that changed it."""
        cfg = self.cfg
        for step, pattern, enabled in (("control", _CONTROL_RE, cfg.remove_control),
                                       ("zero_width", _ZERO_WIDTH_RE, cfg.remove_zero_width)):
            if enabled:
                new = pattern.sub("", line)
                if len(new) != len(line):
                    counts[step] += 1
                line = new
        if self.form and not unicodedata.is_normalized(self.form, line):
            line = unicodedata.normalize(self.form, line)
            counts["unicode"] += 1
        if cfg.collapse_whitespace:
            new = " ".join(line.split())
            if new != line:
                counts["whitespace"] += 1
            line = new
        return line


def normalize_text(line: str, cfg: NormalizeConfig | None = None) -> str:
    """One line through the whole clean-up (for callers outside the chunked pipeline)."""
    return Normalizer(cfg or NormalizeConfig()).clean_line(line.rstrip("\r"), Counter())
