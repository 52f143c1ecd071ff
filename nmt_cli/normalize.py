"""Line clean-up before filtering and encoding: CRLF, BOM, control and zero-width characters,
Unicode normalization and whitespace, each step switchable and counted.

Work is done a chunk of lines at a time. The chunk is scanned once with numpy lookup tables over
code points; only lines that a step would change go through the per-line Python code, so clean
text costs well under a microsecond a line.
"""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=1)
def char_table() -> np.ndarray:
    """Flags for every code point: control, zero-width, whitespace other than ' ', letter, space."""
    table = np.zeros(0x110000, dtype=np.uint8)
    chars = [chr(c) for c in range(0x110000)]
    table[np.fromiter((c.isalpha() for c in chars), bool, 0x110000)] |= LETTER
    table[np.fromiter((c.isspace() for c in chars), bool, 0x110000)] |= SPACE | ODD_SPACE
    table[32] = SPACE
    for lo, hi in ((0x00, 0x08), (0x0E, 0x1B), (0x7F, 0x84), (0x86, 0x9F)):  # as _CONTROL_RE
        table[lo:hi + 1] |= CONTROL
    for ch in ZERO_WIDTH_CHARS:
        table[ord(ch)] |= ZERO_WIDTH
    return table


def _code_points(lines: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The lines joined by newlines as a code-point array, with each line's start and end."""
    text = "\n".join(lines)
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    lengths = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))
    ends = np.cumsum(lengths + 1) - 1
    return cps, ends - lengths, ends


def _nonletter(flags: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    letters = np.concatenate([[0], np.cumsum((flags & LETTER) != 0)])
    spaces = np.concatenate([[0], np.cumsum((flags & SPACE) != 0)])
    n_letters = letters[ends] - letters[starts]
    n_visible = (ends - starts) - (spaces[ends] - spaces[starts])
    return np.where(n_visible > 0, 1.0 - n_letters / np.maximum(n_visible, 1), 0.0)


def nonletter_ratio(lines: list[str]) -> np.ndarray:
    """Per line, the share of its non-space characters that are not letters (0 for a blank line)."""
    if not lines:
        return np.zeros(0)
    cps, starts, ends = _code_points(lines)
    return _nonletter(char_table()[cps], starts, ends)


class Normalizer:
    """Applies a ``NormalizeConfig`` to chunks of lines and counts the lines each step changed."""

    def __init__(self, cfg: NormalizeConfig):
        self.cfg = cfg
        self.form = cfg.unicode.upper() if cfg.unicode != "none" else None
        mask = 0
        if cfg.remove_control:
            mask |= CONTROL
        if cfg.remove_zero_width:
            mask |= ZERO_WIDTH
        if cfg.collapse_whitespace:
            mask |= ODD_SPACE
        self.mask = mask

    def clean_lines(self, lines: list[str], file_start: bool,
                    counts: Counter) -> tuple[list[str], np.ndarray]:
        """Clean one side of a chunk; ``file_start`` says the first line opens its file (BOM).

        Returns the cleaned lines and, as a by-product of the scan, their non-letter ratios.
        """
        if not lines:
            return lines, np.zeros(0)
        if any(line.endswith("\r") for line in lines):
            stripped = [line[:-1] if line.endswith("\r") else line for line in lines]
            counts["crlf"] += sum(a is not b for a, b in zip(lines, stripped))
            lines = stripped
        if file_start and lines[0].startswith("\ufeff"):
            lines = [lines[0][1:]] + lines[1:]
            counts["bom"] += 1
        cps, starts, ends = _code_points(lines)
        flags = char_table()[cps]
        ratio = _nonletter(flags, starts, ends)
        dirty = self._dirty(lines, cps, flags, starts, ends)
        if dirty.size:
            lines = list(lines)
            for i in dirty.tolist():
                lines[i] = self.clean_line(lines[i], counts)
            ratio[dirty] = nonletter_ratio([lines[i] for i in dirty.tolist()])
        return lines, ratio

    def _dirty(self, lines: list[str], cps: np.ndarray, flags: np.ndarray, starts: np.ndarray,
               ends: np.ndarray) -> np.ndarray:
        """Indices of lines some enabled step may change."""
        bad = np.zeros(len(cps) + 1, dtype=bool)
        if self.mask:
            bad[:-1] = (flags & self.mask) != 0
        if self.cfg.collapse_whitespace and len(cps):
            space = cps == 32
            bad[:-2] |= space[:-1] & space[1:]  # two spaces in a row
            nonempty = ends > starts
            bad[starts[nonempty]] |= space[starts[nonempty]]  # leading space
            bad[ends[nonempty] - 1] |= space[ends[nonempty] - 1]  # trailing space
        marked = np.concatenate([[0], np.cumsum(bad[:-1])])
        dirty = (marked[ends] - marked[starts]) > 0
        if self.form and not unicodedata.is_normalized(self.form, "\n".join(lines)):
            dirty |= np.fromiter((not unicodedata.is_normalized(self.form, line) for line in lines),
                                 bool, len(lines))
        return np.flatnonzero(dirty)

    def clean_line(self, line: str, counts: Counter) -> str:
        """Every enabled step on one line, in order, counting the steps that changed it."""
        cfg = self.cfg
        if cfg.remove_control:
            new = _CONTROL_RE.sub("", line)
            if len(new) != len(line):
                counts["control"] += 1
            line = new
        if cfg.remove_zero_width:
            new = _ZERO_WIDTH_RE.sub("", line)
            if len(new) != len(line):
                counts["zero_width"] += 1
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
