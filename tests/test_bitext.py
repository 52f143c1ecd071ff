"""Reading bitexts: compression, line endings, BOM, alignment and encoding errors, pair filters."""

from __future__ import annotations

import bz2
import gzip
import lzma
from pathlib import Path

import pytest

from nmt_cli.errors import DataError
from nmt_cli.text.bitext import read_bitext, read_lines, scan_file
from nmt_cli.text.normalize import normalize_text as normalize

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
    assert scan_file(path)[0] == len(LINES)


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
    assert scan_file(windows)[0] == 4
    assert list(read_bitext(plain, windows)) == list(zip(expected, expected))


def test_bom_only_stripped_at_start(tmp_path):
    path = write(tmp_path / "t.txt", b"x\n\xef\xbb\xbfy\n")
    assert list(read_lines(path)) == ["x", "\ufeffy"]


def test_missing_final_newline_still_counts(tmp_path):
    src = write(tmp_path / "a.src", b"one\ntwo")
    tgt = write(tmp_path / "a.tgt", b"eins\nzwei\n")
    assert scan_file(src)[0] == 2
    assert list(read_bitext(src, tgt)) == [("one", "eins"), ("two", "zwei")]


def test_empty_file_has_no_lines(tmp_path):
    path = write(tmp_path / "e.txt", b"")
    assert scan_file(path)[0] == 0 and list(read_lines(path)) == []


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


# -- token filters (nmt_cli.text.filters; the rest is in test_preprocess_scale.py) ---------------


def test_token_filters_count_the_first_reason_and_boundaries_are_inclusive():
    import numpy as np

    from nmt_cli.config import PreprocessConfig
    from nmt_cli.text.filters import token_filter

    cfg = PreprocessConfig(min_len=2, max_len=5, max_ratio=3.0)
    src = np.array([5, 2, 1, 6, 2, 2])
    tgt = np.array([5, 6, 4, 6, 7, 2])
    masks = token_filter(cfg, True, src, tgt)
    assert masks["too_short"].tolist() == [False, False, True, False, False, False]
    assert masks["too_long"].tolist() == [False, True, False, True, True, False]
    assert masks["length_ratio"].tolist() == [False] * 6  # 2 vs 6 is too long first
    ratio = token_filter(PreprocessConfig(max_len=100, max_ratio=3.0), True, np.array([1, 2]),
                         np.array([3, 7]))["length_ratio"]
    assert ratio.tolist() == [False, True]
    assert not any(m.any() for m in token_filter(cfg, False, src, tgt).values())
