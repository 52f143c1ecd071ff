"""Checks for the bundled synthetic sample corpus in data/sample/."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "data" / "make_sample.py"
SAMPLE = ROOT / "data" / "sample"
SPLITS = ("train", "dev", "test")
SIDES = ("src", "tgt")
FILES = [f"{split}.{side}" for split in SPLITS for side in SIDES]


def _load_script():
    spec = importlib.util.spec_from_file_location("nmt_make_sample", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return text[:-1].split("\n")


def test_regeneration_is_byte_identical(tmp_path):
    module = _load_script()
    assert module.main(["--out", str(tmp_path)]) == 0
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (SAMPLE / name).read_bytes(), name


@pytest.mark.parametrize("split", SPLITS)
def test_alignment_and_format(split):
    src = _lines(SAMPLE / f"{split}.src")
    tgt = _lines(SAMPLE / f"{split}.tgt")
    assert len(src) == len(tgt) == {"train": 15000, "dev": 500, "test": 500}[split]
    for s, t in zip(src, tgt):
        assert s and t and s == s.strip() and t == t.strip()
        assert s.endswith(".") and t.endswith(".")
        assert s[0].isupper() and t[0].isupper()
    assert len(set(zip(src, tgt))) == len(src)  # no duplicate pairs
    for side in SIDES:
        assert (SAMPLE / f"{split}.{side}").stat().st_size < 1_000_000


def test_dev_and_test_do_not_overlap_train():
    train = set(_lines(SAMPLE / "train.src"))
    dev = set(_lines(SAMPLE / "dev.src"))
    test = set(_lines(SAMPLE / "test.src"))
    assert not dev & train
    assert not test & train
    assert not dev & test
