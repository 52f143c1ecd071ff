"""Tokenizer training on a bounded random sample; byte fallback, user symbols, separate models."""

from __future__ import annotations

from pathlib import Path

import yaml

from nmt_cli.config import NormalizeConfig, Split
from nmt_cli.recipes import load_recipe
from nmt_cli.text.tokenizer import Tokenizers, _sample_lines, dev_statistics, train_tokenizers


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_sample_is_bounded_and_drawn_from_the_whole_corpus(tmp_path):
    src = write_lines(tmp_path / "a.src", [f"line {i}" for i in range(5000)])
    tgt = write_lines(tmp_path / "a.tgt", [f"zeile {i}" for i in range(5000)])
    sample = _sample_lines(Split(src, tgt), ("src",), 200, 1, NormalizeConfig())
    numbers = sorted(int(line.split()[1]) for line in sample)
    assert len(sample) == 200 and len(set(numbers)) == 200
    assert numbers[0] < 500 and numbers[-1] > 4500  # not just the first lines
    assert _sample_lines(Split(src, tgt), ("src", "tgt"), 0, 1, NormalizeConfig())[-1] == "zeile 4999"


def test_separate_models_byte_fallback_user_symbols_and_dev_statistics(tmp_path):
    words = ["haus", "baum", "katze", "hund", "auto", "straße", "garten", "fenster"]
    src = write_lines(tmp_path / "train.de",
                      [" ".join(words[(i + k) % 8] for k in range(5)) for i in range(400)])
    tgt = write_lines(tmp_path / "train.en",
                      [f"<num> item {i % 7} of the list" for i in range(400)])
    dev_src = write_lines(tmp_path / "dev.de", ["haus baum ünbekannt 漢字"])
    dev_tgt = write_lines(tmp_path / "dev.en", ["item <num> of the list"])
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({
        "workdir": str(tmp_path / "run"),
        "data": {"src_lang": "de", "tgt_lang": "en",
                 "train": {"src": str(src), "tgt": str(tgt)},
                 "dev": {"src": str(dev_src), "tgt": str(dev_tgt)}},
        "tokenizer": {"joint": False, "vocab_size": 300, "byte_fallback": True,
                      "user_defined_symbols": ["<num>"], "input_sentence_size": 300}}))
    recipe = load_recipe(path, [])
    paths = train_tokenizers(recipe)
    assert paths["src"].name == "de.model" and paths["tgt"].name == "en.model"
    tok = Tokenizers.load(recipe)
    assert not tok.joint
    assert "<num>" in tok.tgt.encode("item <num>", out_type=str)
    stats = dev_statistics(recipe, tok)
    assert stats["src"]["unk_rate"] == 0.0  # unseen characters fall back to bytes
    assert stats["src"]["pieces_per_word"] > 1.0
    assert stats["tgt"]["lines"] == 1
