"""Pair filters, the bounded-memory duplicate table, and the per-split report they fill in.

Filters run in a fixed order and a pair is counted by the first filter that drops it:

    invalid_utf8, empty, too_long_chars, copy, nonletter   (on text, before encoding)
    too_short, too_long, length_ratio                      (on subword tokens)
    duplicate                                              (on an 8-byte digest of the pair)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nmt_cli.config import PreprocessConfig

TEXT_FILTERS = ("invalid_utf8", "empty", "too_long_chars", "copy", "nonletter")
TOKEN_FILTERS = ("too_short", "too_long", "length_ratio")
FILTERS = TEXT_FILTERS + TOKEN_FILTERS + ("duplicate",)
EXAMPLE_CHARS = 120  # an example is cut to this many characters per side


def filter_params(cfg: PreprocessConfig, full: bool = True) -> dict[str, dict[str, Any]]:
    """Each active filter's parameters as the report shows them; ``full`` is False for dev and
    test sets, which only lose unreadable and empty pairs."""
    params: dict[str, dict[str, Any]] = {
        "invalid_utf8": {"policy": cfg.normalize.invalid_utf8}, "empty": {}}
    if not full:
        return params
    if cfg.max_chars:
        params["too_long_chars"] = {"max_chars": cfg.max_chars}
    if cfg.drop_copies:
        params["copy"] = {}
    if cfg.max_nonletter < 1.0:
        params["nonletter"] = {"max_nonletter": cfg.max_nonletter}
    if cfg.min_len:
        params["too_short"] = {"min_len": cfg.min_len}
    params["too_long"] = {"max_len": cfg.max_len}
    params["length_ratio"] = {"max_ratio": cfg.max_ratio}
    if cfg.dedup:
        params["duplicate"] = {"memory_mb": cfg.dedup_memory_mb}
    return params


def example(src: str, tgt: str) -> list[str]:
    """A dropped pair as the report shows it, each side cut to ``EXAMPLE_CHARS``."""
    def cut(text: str) -> str:
        return (text if len(text) <= EXAMPLE_CHARS
                else text[:EXAMPLE_CHARS] + f"... ({len(text)} chars)")
    return [cut(src), cut(tgt)]


@dataclass
class FilterCounts:
    """Drops and a few example pairs per filter, mergeable across chunks."""

    max_examples: int = 3
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FILTERS, 0))
    examples: dict[str, list[list[str]]] = field(default_factory=dict)

    def drop(self, name: str, src: str, tgt: str) -> None:
        self.dropped[name] += 1
        shown = self.examples.setdefault(name, [])
        if len(shown) < self.max_examples:
            shown.append(example(src, tgt))

    def merge(self, other: "FilterCounts") -> None:
        for name, n in other.dropped.items():
            self.dropped[name] += n
        for name, shown in other.examples.items():
            mine = self.examples.setdefault(name, [])
            mine.extend(shown[: max(0, self.max_examples - len(mine))])


def text_filter(cfg: PreprocessConfig, full: bool, src: list[str], tgt: list[str],
                bad: set[int], src_nonletter: np.ndarray, tgt_nonletter: np.ndarray,
                counts: FilterCounts) -> list[int]:
    """Indices of the pairs that pass the text filters; drops are counted in ``counts``."""
    max_chars = cfg.max_chars if full and cfg.max_chars else math.inf
    copies = full and cfg.drop_copies
    max_nonletter = cfg.max_nonletter if full and cfg.max_nonletter < 1.0 else math.inf
    noisy = set(np.flatnonzero(np.maximum(src_nonletter, tgt_nonletter) > max_nonletter).tolist())
    keep = []
    for i, (s, t) in enumerate(zip(src, tgt)):
        if bad and i in bad:
            counts.drop("invalid_utf8", s, t)
        elif not s or not t:
            counts.drop("empty", s, t)
        elif len(s) > max_chars or len(t) > max_chars:
            counts.drop("too_long_chars", s, t)
        elif copies and s == t:
            counts.drop("copy", s, t)
        elif noisy and i in noisy:
            counts.drop("nonletter", s, t)
        else:
            keep.append(i)
    return keep


def token_filter(cfg: PreprocessConfig, full: bool, src_len: np.ndarray,
                 tgt_len: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks, one per token filter, each true where that filter is the first to drop."""
    n = len(src_len)
    if not full:
        return {name: np.zeros(n, dtype=bool) for name in TOKEN_FILTERS}
    shorter, longer = np.minimum(src_len, tgt_len), np.maximum(src_len, tgt_len)
    too_short = shorter < cfg.min_len
    too_long = ~too_short & (longer > cfg.max_len)
    ratio = ~too_short & ~too_long & (longer > cfg.max_ratio * np.maximum(shorter, 1))
    return {"too_short": too_short, "too_long": too_long, "length_ratio": ratio}


class DedupTable:
    """A fixed-size open-addressing hash set of 8-byte pair digests: the largest power of two of
    slots that fits in ``memory_mb``, touched once, so memory never grows. Pairs that find it full
    are kept unchecked (and counted), so only a digest collision can drop a non-duplicate
    (capacity and odds: docs/results.md)."""

    def __init__(self, memory_mb: int):
        slots = 1 << (((memory_mb << 20) // 8).bit_length() - 1)
        self.table = np.zeros(slots, dtype=np.uint64)  # 0 marks an empty slot
        self.table.fill(0)  # touch every page now, so memory does not grow during the run
        self.mask = np.uint64(slots - 1)
        self.limit = slots * 3 // 4
        self.size = 0
        self.unchecked = 0

    @property
    def nbytes(self) -> int:
        return self.table.nbytes

    def add(self, digests: np.ndarray) -> np.ndarray:
        """Insert a chunk of digests; return a mask that is true for the duplicates."""
        digests = np.where(digests == 0, np.uint64(1), digests).astype(np.uint64)
        # Repeats inside the chunk: only each digest's first occurrence goes on to the table.
        _, first = np.unique(digests, return_index=True)
        dup = np.ones(len(digests), dtype=bool)
        dup[first] = False
        todo = np.sort(first)
        slot = digests[todo] & self.mask
        while len(todo):
            found = self.table[slot]
            seen = found == digests[todo]
            dup[todo[seen]] = True
            empty = np.flatnonzero(found == 0)
            room = max(self.limit - self.size, 0)
            overflow = np.zeros(len(todo), dtype=bool)
            if len(empty) > room:  # full: new pairs are kept unchecked, old ones still found
                self.unchecked += len(empty) - room
                overflow[empty[room:]] = True
                empty = empty[:room]
            self.table[slot[empty]] = digests[todo[empty]]  # rivals for one slot: one wins
            won = np.zeros(len(todo), dtype=bool)
            won[empty] = self.table[slot[empty]] == digests[todo[empty]]
            self.size += int(won.sum())
            moving = ~(seen | won | overflow)
            todo, slot = todo[moving], (slot[moving] + np.uint64(1)) & self.mask
        return dup
