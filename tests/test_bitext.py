"""Reading bitexts: compression, line endings, BOM, alignment and encoding errors, pair filters."""

from __future__ import annotations

import bz2
import gzip
import lzma
from pathlib import Path

import pytest

from nmt_cli.bitext import PairFilter, count_lines, normalize, read_bitext, read_lines
from nmt_cli.errors import DataError

LINES = ["Der Hund läuft.", "", "  spaces  inside  ", "naïve café – ☃", "last line"]

WRITERS = {
    "": lambda p, b: p.write_bytes(b),
    ".gz": lambda p, b: p.write_bytes(gzip.compress(b)),
    ".xz": lambda p, b: p.write_bytes(lzma.compress(b)),
    ".bz2": lambda p, b: p.write_bytes(bz2.compress(b)),
}


def write(path: Path, data: bytes) -> Path:
    WRITERS[next((s for s in (".gz", ".xz", ".bz2") if path.name.endswith(s)), "")](path, data)
    return path


@pytest.mark.parametrize("suffix", ["", ".gz", ".xz", ".bz2", ".GZ"])
def test_compressed_and_plain_read_the_same(tmp_path, suffix):
    data = ("\n".join(LINES) + "\n").encode("utf-8")
    writer = WRITERS[suffix.lower()]
    path = tmp_path / f"text.txt{suffix}"
    writer(path, data)
    assert list(read_lines(path)) == LINES
    assert count_lines(path) == len(LINES)


@pytest.mark.parametrize("suffix", ["", ".gz", ".xz", ".bz2"])
def test_bitext_from_compressed_files(tmp_path, suffix):
    src = write(tmp_path / f"a.src{suffix}", b"one\ntwo\nthree\n")
    tgt = write(tmp_path / f"a.tgt{suffix}", b"eins\nzwei\ndrei\n")
    assert list(read_bitext(src, tgt)) == [("one", "eins"), ("two", "zwei"), ("three", "drei")]


def test_mixed_compression_pairs(tmp_path):
    src = write(tmp_path / "a.src.xz", b"one\ntwo\n")
    tgt = write(tmp_path / "a.tgt", b"eins\nzwei\n")
    assert list(read_bitext(src, tgt)) == [("one", "eins"), ("two", "zwei")]


def test_crlf_and_bom_are_handled(tmp_path):
    plain = write(tmp_path / "unix.txt", "a\nb c\n\nd\n".encode("utf-8"))
    windows = write(tmp_path / "dos.txt", b"\xef\xbb\xbf" + "a\r\nb c\r\n\r\nd\r\n".encode())
    windows_gz = write(tmp_path / "dos.txt.gz", b"\xef\xbb\xbf" + "a\r\nb c\r\n\r\nd\r\n".encode())
    expected = ["a", "b c", "", "d"]
    assert list(read_lines(plain)) == expected
    assert list(read_lines(windows)) == expected
    assert list(read_lines(windows_gz)) == expected
    assert count_lines(windows) == 4
    assert list(read_bitext(plain, windows)) == list(zip(expected, expected))


def test_bom_only_stripped_at_start(tmp_path):
    path = write(tmp_path / "t.txt", b"x\n\xef\xbb\xbfy\n")
    assert list(read_lines(path)) == ["x", "\ufeffy"]


def test_missing_final_newline_still_counts(tmp_path):
    src = write(tmp_path / "a.src", b"one\ntwo")
    tgt = write(tmp_path / "a.tgt", b"eins\nzwei\n")
    assert count_lines(src) == 2
    assert list(read_bitext(src, tgt)) == [("one", "eins"), ("two", "zwei")]


def test_empty_file_has_no_lines(tmp_path):
    path = write(tmp_path / "e.txt", b"")
    assert count_lines(path) == 0 and list(read_lines(path)) == []


def test_misaligned_bitext_names_both_files_and_counts(tmp_path):
    src = write(tmp_path / "train.src", b"1\n2\n3\n")
    tgt = write(tmp_path / "train.tgt.gz", b"1\n2\n")
    with pytest.raises(DataError) as info:
        next(read_bitext(src, tgt))  # fails before the first pair, not at the end
    msg = str(info.value)
    assert str(src) in msg and str(tgt) in msg
    assert "3" in msg and "2" in msg
    assert "misaligned" in msg


def test_invalid_utf8_names_file_and_line(tmp_path):
    path = write(tmp_path / "bad.txt", b"fine\nalso fine\nbroken \xff\xfe here\nok\n")
    with pytest.raises(DataError) as info:
        list(read_lines(path))
    msg = str(info.value)
    assert f"{path}:3" in msg
    assert "UTF-8" in msg
    assert info.value.line == 3


def test_invalid_utf8_in_compressed_bitext(tmp_path):
    src = write(tmp_path / "a.src.gz", b"ok\n\xc3(\n")
    tgt = write(tmp_path / "a.tgt", b"ok\nok\n")
    with pytest.raises(DataError) as info:
        list(read_bitext(src, tgt))
    assert f"{src}:2" in str(info.value)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError) as info:
        list(read_lines(tmp_path / "missing.txt"))
    assert "missing.txt" in str(info.value) and "not found" in str(info.value)


def test_normalize_nfc_and_whitespace():
    assert normalize("  a \t b\u00a0 c  ") == "a b c"
    assert normalize("cafe\u0301") == "caf\u00e9"


# -- PairFilter ----------------------------------------------------------------------------------


def words(s: str) -> int:
    return len(s.split())


def run_filter(pairs, **kwargs):
    filt = PairFilter(**kwargs)
    kept = [(s, t) for s, t in pairs if filt.keep(s, t, words(s), words(t))]
    return filt, kept


def test_pair_filter_counts_each_reason():
    pairs = [
        ("a b c", "x y z"),  # kept
        ("", "x"),  # empty source
        ("a", "   "),  # empty target
        ("a b c d e f", "u v w x y z"),  # too long (6 > 5)
        ("a", "x y z w"),  # ratio 4 > 3
        ("a b c", "x y z"),  # duplicate of the first
        ("a b c", "x y q"),  # different target: not a duplicate
        ("a b c d", "x"),  # ratio 4 > 3
        ("a b", "x y"),  # kept
        ("a b", "x y"),  # duplicate
    ]
    filt, kept = run_filter(pairs, min_len=1, max_len=5, max_ratio=3.0, dedup=True)
    report = filt.report.as_dict()
    assert report["pairs_in"] == len(pairs)
    assert report["dropped"] == {"empty": 2, "too_short": 0, "too_long": 1, "length_ratio": 2,
                                 "duplicate": 2}
    assert report["kept"] == 3 == len(kept)
    assert kept == [("a b c", "x y z"), ("a b c", "x y q"), ("a b", "x y")]
    assert report["kept"] + sum(report["dropped"].values()) == report["pairs_in"]


def test_pair_filter_boundaries_are_inclusive():
    filt, kept = run_filter([("a b c d e", "v w x y z"), ("a", "x y z")], max_len=5, max_ratio=3.0)
    assert len(kept) == 2, filt.report.as_dict()


def test_pair_filter_too_short():
    filt, kept = run_filter([("a", "x y"), ("a b", "x y")], min_len=2)
    assert filt.report.dropped["too_short"] == 1 and kept == [("a b", "x y")]


def test_pair_filter_without_dedup_keeps_duplicates():
    filt, kept = run_filter([("a", "x")] * 3, dedup=False)
    assert len(kept) == 3 and filt.report.dropped["duplicate"] == 0

