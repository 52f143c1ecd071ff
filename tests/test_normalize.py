"""Bad text: invalid UTF-8, NUL bytes, CRLF, BOM, huge lines; each step of the clean-up."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from nmt_cli.config import NormalizeConfig, TokenizerConfig
from nmt_cli.errors import ConfigError, DataError
from nmt_cli.recipes import load_recipe
import nmt_cli.text.normalize as N
from nmt_cli.text.normalize import Normalizer, nonletter_ratio
from nmt_cli.text.preprocess import preprocess
from nmt_cli.text.tokenizer import train_model, train_tokenizers

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
LONG = "lorem ipsum " * 16_667  # 200,004 characters


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    lines = (SAMPLE / "train.src").read_text().splitlines()[:2000]
    lines += (SAMPLE / "train.tgt").read_text().splitlines()[:2000]
    return train_model(lines, TokenizerConfig(vocab_size=500, byte_fallback=True))


def bad_bitext(tmp_path: Path) -> tuple[Path, Path]:
    """Seven pairs: BOM + CRLF, invalid UTF-8, NUL bytes, a 200,000-character line, clean ones."""
    src = (b"\xef\xbb\xbfthe first line\r\n"
           b"bad \xff\xfe bytes here\r\n"
           b"nul\x00 inside\r\n"
           + LONG.encode() + b"\r\n"
           b"a clean line\r\n"
           b"zero\xe2\x80\x8bwidth  and   spaces \r\n"
           b"Cafe\xcc\x81 time\r\n")
    tgt = (b"die erste zeile\n"
           b"kaputte bytes\n"
           b"nul drin\n"
           b"kurz\n"
           b"eine saubere zeile\n"
           b"null breite\n"
           b"kaffee zeit\n")
    (tmp_path / "train.src").write_bytes(src)
    (tmp_path / "train.tgt").write_bytes(tgt)
    return tmp_path / "train.src", tmp_path / "train.tgt"


def recipe_for(tmp_path: Path, model: bytes, pre: dict):
    src, tgt = bad_bitext(tmp_path)
    (tmp_path / "run" / "tokenizer").mkdir(parents=True, exist_ok=True)
    (tmp_path / "run" / "tokenizer" / "joint.model").write_bytes(model)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"workdir": str(tmp_path / "run"),
                                    "data": {"train": {"src": str(src), "tgt": str(tgt)}},
                                    "preprocess": pre}))
    return load_recipe(path, [])


def test_bad_text_is_handled_and_counted_when_dropping(tmp_path, model_bytes):
    recipe = recipe_for(tmp_path, model_bytes, {"normalize": {"invalid_utf8": "drop"}})
    train = preprocess(recipe)["splits"]["train"]
    src = train["normalized"]["src"]
    assert src["bom"] == 1 and src["crlf"] == 7 and src["invalid_utf8"] == 1
    assert src["control"] == 1 and src["zero_width"] == 1 and src["unicode"] == 1
    assert src["whitespace"] >= 1
    filters = train["filters"]
    assert filters["invalid_utf8"]["dropped"] == 1
    assert "\ufffd" in filters["invalid_utf8"]["examples"][0][0]
    assert filters["too_long_chars"]["dropped"] == 1
    assert filters["too_long_chars"]["examples"][0][0].endswith("(200003 chars)")
    assert train["written"] == 5


def test_bad_text_replace_keeps_the_pair(tmp_path, model_bytes):
    recipe = recipe_for(tmp_path, model_bytes,
                        {"normalize": {"invalid_utf8": "replace"}, "max_chars": 0,
                         "max_len": 1_000_000, "max_ratio": 1_000_000.0})
    train = preprocess(recipe)["splits"]["train"]
    assert train["normalized"]["src"]["invalid_utf8"] == 1
    assert train["filters"]["invalid_utf8"]["dropped"] == 0
    assert train["written"] == 7  # the long line too: with the limits off it is encoded whole
    assert train["src"]["percentiles"]["p100"] > 30_000


def test_bad_text_error_policy_names_file_and_line(tmp_path, model_bytes):
    recipe = recipe_for(tmp_path, model_bytes, {"normalize": {"invalid_utf8": "error"}})
    with pytest.raises(DataError, match=r"train\.src:2: invalid UTF-8"):
        preprocess(recipe)
    assert not (tmp_path / "run" / "data" / "train.src.bin").exists()


def test_tokenizer_trains_on_bad_text(tmp_path, model_bytes):
    recipe = recipe_for(tmp_path, model_bytes, {})
    recipe = load_recipe(tmp_path / "r.yaml", ["tokenizer.vocab_size=40"])
    paths = train_tokenizers(recipe)
    assert paths["src"].stat().st_size > 0


@pytest.mark.parametrize("cfg, line, expected, step", [
    (NormalizeConfig(), "Cafe\u0301", "Café", "unicode"),
    (NormalizeConfig(unicode="nfkc"), "\ufb01ne \u2460", "fine 1", "unicode"),
    (NormalizeConfig(unicode="none"), "Cafe\u0301", "Cafe\u0301", None),
    (NormalizeConfig(), "a\u200bb\ufeffc", "abc", "zero_width"),
    (NormalizeConfig(remove_zero_width=False), "a\u200bb", "a\u200bb", None),
    (NormalizeConfig(), "x\x00y\x1b", "xy", "control"),
    (NormalizeConfig(), " a \t b\u00a0c  ", "a b c", "whitespace"),
    (NormalizeConfig(collapse_whitespace=False), "a  b", "a  b", None),
])
def test_each_step_can_be_switched(cfg, line, expected, step):
    counts: Counter = Counter()
    lines, _ = Normalizer(cfg).clean_lines(["clean", line, "clean too"], False, counts)
    assert lines == ["clean", expected, "clean too"]
    assert dict(counts) == ({step: 1} if step else {})


def test_nonletter_ratio_ignores_spaces():
    ratios = nonletter_ratio(["abc def", "12 34", "ab 12", "", "Straße!"])
    assert list(ratios) == [0.0, 1.0, 0.5, 0.0, pytest.approx(1 / 7)]


def test_split_needs_files(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"data": {"train": {"src": "a.txt"}}}))
    with pytest.raises(ConfigError, match="data.train.tgt: this key is required"):
        load_recipe(path, [])
    path.write_text(yaml.safe_dump({"data": {"dev": {"tsv": "a.tsv", "src": "b"}}}))
    with pytest.raises(ConfigError, match="data.dev.tsv: give either tsv or src and tgt"):
        load_recipe(path, [])


def _expected_flags(cp: int) -> int:
    ch = chr(cp)
    flags = 0
    if re.fullmatch(r"[^\W\d_]", ch):
        flags |= N.LETTER
    if re.fullmatch(r"\s", ch):
        flags |= N.SPACE | (0 if cp == 32 else N.ODD_SPACE)
    if re.fullmatch(r"[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f]", ch):
        flags |= N.CONTROL
    if ch in N.ZERO_WIDTH_CHARS:
        flags |= N.ZERO_WIDTH
    return flags


def test_char_flags_fill_only_the_blocks_a_text_uses_and_match_the_character_classes(
        monkeypatch):
    monkeypatch.setattr(N, "_TABLE", np.zeros_like(N._TABLE))
    monkeypatch.setattr(N, "_FILLED", np.zeros_like(N._FILLED))
    text = "Ein Mann\u00a0läuft\u200b – schnell.\x07"
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    flags = N.char_flags(cps)
    assert N._FILLED.sum() == 2  # U+0000-U+0FFF and U+2000-U+2FFF: a translation's start-up
    assert flags.tolist() == [_expected_flags(int(cp)) for cp in cps]
    # code points from every block, against the character classes one by one
    sample = np.array(sorted(set(range(0, 0x110000, 997)) | {1, 32, 0x85, 0x2028, 0x3000,
                                                             0xFEFF, 0xD800, 0x10FFFF}),
                      dtype=np.uint32)
    got = N.char_flags(sample)
    assert got.tolist() == [_expected_flags(int(cp)) for cp in sample]
    assert np.array_equal(N.char_table()[sample], got) and N._FILLED.all()
