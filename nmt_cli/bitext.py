"""Reading line-aligned bitexts (plain or compressed), cleaning and filtering them. No torch here."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

from nmt_cli.config import Split
from nmt_cli.errors import DataError

_OPENERS = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}


def open_binary(path: Path) -> IO[bytes]:
    """Open a plain, .gz, .xz or .bz2 file for binary reading, with a clear error if it is missing."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found; check the path in the recipe", path)
    opener = _OPENERS.get(path.suffix.lower())
    return opener(path, "rb") if opener else open(path, "rb")  # type: ignore[operator]


def decode_line(raw: bytes, path: Path, lineno: int, errors: str = "strict") -> str:
    """Bytes of one line to text, without the line ending; a BOM on the first line is dropped."""
    if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        raise DataError(f"invalid UTF-8 at byte {exc.start}; fix the encoding (for example with "
                        "iconv) or remove the line", path, lineno) from None
    return text.rstrip("\r\n")


def read_lines(path: Path, errors: str = "strict") -> Iterator[str]:
    """Yield the lines of a text file without their endings (\\n or \\r\\n)."""
    with open_binary(path) as fh:
        for lineno, raw in enumerate(fh, 1):
            yield decode_line(raw, path, lineno, errors)


def count_lines(path: Path) -> int:
    n = 0
    last = b"\n"
    with open_binary(path) as fh:
        while chunk := fh.read(1 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (0 if last == b"\n" else 1)


def check_aligned(split: Split) -> int:
    """Return the line count of a bitext, or raise naming both files and both counts."""
    n_src, n_tgt = count_lines(split.src), count_lines(split.tgt)
    if n_src != n_tgt:
        raise DataError(f"the bitext is misaligned: {split.src} has {n_src} lines but {split.tgt} "
                        f"has {n_tgt}; both files must have one sentence per line, in the same order")
    return n_src


def read_bitext(src: Path, tgt: Path, errors: str = "strict") -> Iterator[tuple[str, str]]:
    """Yield aligned (source, target) lines; differing line counts are an error naming both files.

    Counts are checked before anything is yielded, so a caller never writes half an output.
    """
    check_aligned(Split(src, tgt))
    yield from zip(read_lines(src, errors), read_lines(tgt, errors))


def normalize(text: str) -> str:
    """NFC, with runs of whitespace collapsed to one space and the ends trimmed."""
    return " ".join(unicodedata.normalize("NFC", text).split())


@dataclass
class FilterReport:
    """How many pairs came in, how many each filter dropped, and how many were kept."""

    pairs_in: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: {
        "empty": 0, "too_short": 0, "too_long": 0, "length_ratio": 0, "duplicate": 0})

    def as_dict(self) -> dict[str, object]:
        return {"pairs_in": self.pairs_in, "kept": self.kept, "dropped": dict(self.dropped)}


@dataclass
class PairFilter:
    """Drops empty, too short, too long, badly proportioned and duplicate pairs, counting each.

    Lengths are in subword tokens when the caller passes token counts, else in whitespace words.
    """

    min_len: int = 1
    max_len: int = 100
    max_ratio: float = 3.0
    dedup: bool = True
    report: FilterReport = field(default_factory=FilterReport)
    _seen: set[bytes] = field(default_factory=set, repr=False)

    def keep(self, src: str, tgt: str, src_len: int, tgt_len: int) -> bool:
        self.report.pairs_in += 1
        reason = self._reason(src, tgt, src_len, tgt_len)
        if reason:
            self.report.dropped[reason] += 1
            return False
        self.report.kept += 1
        return True

    def _reason(self, src: str, tgt: str, src_len: int, tgt_len: int) -> str | None:
        if not src.strip() or not tgt.strip():
            return "empty"
        if min(src_len, tgt_len) < self.min_len:
            return "too_short"
        if max(src_len, tgt_len) > self.max_len:
            return "too_long"
        if max(src_len, tgt_len) > self.max_ratio * max(1, min(src_len, tgt_len)):
            return "length_ratio"
        if self.dedup:
            digest = hashlib.blake2b(f"{src}\t{tgt}".encode("utf-8"), digest_size=12).digest()
            if digest in self._seen:
                return "duplicate"
            self._seen.add(digest)
        return None
