"""Reading line-aligned bitexts (plain, .gz, .xz or .bz2 files, or one two-column TSV) in chunks
of raw bytes, so memory stays bounded; decoding and clean-up happen where a chunk is encoded."""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from nmt_cli.config import Corpus
from nmt_cli.errors import DataError

_OPENERS = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}
BOM = b"\xef\xbb\xbf"


def open_binary(path: Path) -> IO[bytes]:
    """Open a plain, .gz, .xz or .bz2 file for binary reading, with a clear error if it is missing."""
    path = Path(path)
    if not path.exists():  # a pipe such as <(zcat ...) is fine, only a missing path is not
        raise DataError("file not found; check the path", path)
    if path.is_dir():
        raise DataError("is a folder, not a text file", path)
    opener = _OPENERS.get(path.suffix.lower())
    try:
        return opener(path, "rb") if opener else open(path, "rb")  # type: ignore[operator]
    except OSError as exc:
        raise DataError(f"cannot open: {exc}", path) from None


def decode_line(raw: bytes, path: Path, lineno: int, errors: str = "strict") -> str:
    """Bytes of one line to text, without the line ending; a BOM on the first line is dropped."""
    if lineno == 1 and raw.startswith(BOM):
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


_BAD_TSV_LINE = re.compile(rb"^[^\t\n]*$|^[^\t\n]*\t[^\t\n]*\t", re.M)


def scan_file(path: Path, tsv: bool = False) -> tuple[int, int]:
    """Lines in a file (a missing final newline counts) and, for a TSV file, the number of the
    first line without exactly one tab (0: none). Reads large blocks; the regex runs in C."""
    lines = bad = 0
    rest, last = b"", b"\n"
    try:
        with open_binary(path) as fh:
            while block := fh.read(1 << 20):
                if tsv and not bad:
                    text = rest + block
                    cut = text.rfind(b"\n") + 1
                    bad = _first_bad(text[:cut], lines)
                    rest = text[cut:]
                lines += block.count(b"\n")
                last = block[-1:]
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise DataError(f"cannot read: {exc}", path) from None
    if last != b"\n":
        lines += 1
        if tsv and not bad:
            bad = _first_bad(rest, lines - 1)
    return lines, bad


def _first_bad(text: bytes, lines_before: int) -> int:
    """1-based number of the first malformed TSV line in ``text`` (whole lines), or 0."""
    body = text[:-1] if text.endswith(b"\n") else text
    if not body:
        return 0
    found = _BAD_TSV_LINE.search(body)
    return lines_before + body.count(b"\n", 0, found.start()) + 1 if found else 0


def count_pairs(corpus: Corpus, scans: dict[Path, tuple[int, int]] | None = None) -> int:
    """Pairs in a corpus, alignment checked first (equal line counts, one tab per TSV line) with a
    DataError naming the files. ``scans`` may hold ``scan_file`` results already computed."""
    scans = scans or {}

    def scan(path: Path, tsv: bool = False) -> tuple[int, int]:
        return scans[path] if path in scans else scan_file(path, tsv)

    if corpus.text is not None:  # one side: nothing to align
        return scan(corpus.text)[0]
    if corpus.tsv is not None:
        n, bad = scan(corpus.tsv, True)
        if bad:
            raise DataError(f"the TSV bitext is misaligned: line {bad} does not have exactly two "
                            "tab-separated columns (source<TAB>target)", corpus.tsv)
        return n
    src, tgt = corpus.src, corpus.tgt
    assert src is not None and tgt is not None
    n_src, n_tgt = scan(src)[0], scan(tgt)[0]
    if n_src != n_tgt:
        raise DataError(f"the bitext is misaligned: {src} has {n_src} lines but {tgt} has {n_tgt}; "
                        "both files must have one sentence per line, in the same order")
    return n_src


def read_bitext(src: Path, tgt: Path, errors: str = "strict") -> Iterator[tuple[str, str]]:
    """Aligned (source, target) lines; line counts are checked before anything is yielded, so a
    caller never writes half an output."""
    count_pairs(Corpus(src=src, tgt=tgt))
    yield from zip(read_lines(src, errors), read_lines(tgt, errors))


@dataclass
class RawChunk:
    """``n`` raw lines of one corpus joined by ``\\n``, from line ``first``; for a TSV corpus
    ``tgt`` is None and ``src`` holds whole lines (see ``split_tsv``); for a ``text`` corpus
    (``mono``) both sides hold the same lines, the text a language model learns to predict."""

    corpus: int
    first: int
    n: int
    src: bytes
    tgt: bytes | None
    src_path: str
    tgt_path: str
    mono: bool = False

    def __len__(self) -> int:
        return self.n


class LineReader:
    """Hands out lines of a binary stream ``n`` at a time, reading it in large blocks."""

    def __init__(self, fh: IO[bytes], block: int = 1 << 20):
        self.fh, self.block = fh, block
        self.lines: list[bytes] = []
        self.pos, self.rest, self.eof = 0, b"", False

    def take(self, n: int) -> list[bytes]:
        out: list[bytes] = []
        while len(out) < n:
            if self.pos >= len(self.lines) and not self._fill():
                break
            k = min(n - len(out), len(self.lines) - self.pos)
            out += self.lines[self.pos:self.pos + k]
            self.pos += k
        return out

    def _fill(self) -> bool:
        while not self.eof:
            data = self.fh.read(self.block)
            if not data:
                self.eof = True
                self.lines, self.pos, self.rest = ([self.rest] if self.rest else []), 0, b""
                return bool(self.lines)
            lines = (self.rest + data).split(b"\n") if self.rest else data.split(b"\n")
            self.rest = lines.pop()
            if lines:
                self.lines, self.pos = lines, 0
                return True
        return False


def read_chunks(corpus: Corpus, index: int, size: int) -> Iterator[RawChunk]:
    """Yield a corpus as chunks of ``size`` raw line pairs. Call ``count_pairs`` first."""
    one = corpus.text if corpus.text is not None else corpus.tsv
    if one is not None:
        path, mono = str(one), corpus.text is not None
        with open_binary(one) as fh:
            reader, first = LineReader(fh), 1
            while lines := reader.take(size):
                block = b"\n".join(lines)
                yield RawChunk(index, first, len(lines), block, block if mono else None, path,
                               path, mono)
                first += len(lines)
        return
    assert corpus.src is not None and corpus.tgt is not None
    with open_binary(corpus.src) as fs, open_binary(corpus.tgt) as ft:
        src_reader, tgt_reader, first = LineReader(fs), LineReader(ft), 1
        while src := src_reader.take(size):
            tgt = tgt_reader.take(size)
            if len(tgt) != len(src):  # the file changed since it was counted
                raise DataError(f"the bitext is misaligned: {corpus.tgt} ends at line "
                                f"{first + len(tgt) - 1} but {corpus.src} goes on")
            yield RawChunk(index, first, len(src), b"\n".join(src), b"\n".join(tgt),
                           str(corpus.src), str(corpus.tgt))
            first += len(src)


def split_tsv(chunk: RawChunk) -> tuple[bytes, bytes]:
    """The source and target columns of a TSV chunk, each as lines joined by ``\\n``."""
    cols = [line.split(b"\t", 1) for line in chunk.src.split(b"\n")]
    for i, col in enumerate(cols):
        if len(col) != 2:
            raise DataError("the TSV bitext is misaligned: this line has no tab; expected "
                            "source<TAB>target", chunk.src_path, chunk.first + i)
    return b"\n".join(c[0] for c in cols), b"\n".join(c[1] for c in cols)


def decode_side(block: bytes, n: int, policy: str, path: str, first: int,
                counts: Counter) -> tuple[list[str], list[int]]:
    """Decode ``n`` raw lines joined by newlines: the text and the indices of undecodable lines,
    which ``drop`` and ``replace`` count in ``counts['invalid_utf8']`` (decoded with U+FFFD) and
    ``error`` raises as a DataError naming the file and line."""
    try:
        return block.decode("utf-8").split("\n") if n else [], []
    except UnicodeDecodeError:
        pass
    text, bad = [], []
    for i, line in enumerate(block.split(b"\n")):
        try:
            text.append(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            if policy == "error":
                raise DataError(f"invalid UTF-8 at byte {exc.start}; fix the encoding (for example "
                                "with iconv), or set preprocess.normalize.invalid_utf8 to drop or "
                                "replace", path, first + i) from None
            counts["invalid_utf8"] += 1
            bad.append(i)
            text.append(line.decode("utf-8", errors="replace"))
    return text, bad


def read_split(split: Corpus, errors: str = "strict") -> Iterator[tuple[str, str]]:
    """The raw (source, target) text of every corpus of a split, in order, alignment checked first;
    only line endings and a leading BOM are removed. ``errors``: the UTF-8 error handler."""
    for index, corpus in enumerate(split.sources()):
        count_pairs(corpus)
        for chunk in read_chunks(corpus, index, 10_000):
            blocks = split_tsv(chunk) if chunk.tgt is None else (chunk.src, chunk.tgt)
            sides = []
            for block, path in zip(blocks, (chunk.src_path, chunk.tgt_path)):
                sides.append([decode_line(raw, Path(path), chunk.first + i, errors)
                              for i, raw in enumerate(block.split(b"\n"))] if chunk.n else [])
            yield from zip(*sides)
