"""Preprocessing at scale: dedup, misalignment, vocabulary mismatch, workers, weights, inputs."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from nmt_cli.config import TokenizerConfig
from nmt_cli.text.bitext import scan_file
from nmt_cli.errors import DataError
from nmt_cli.text.filters import DedupTable
from nmt_cli.text.preprocess import data_dir, preprocess
from nmt_cli.recipes import load_recipe
from nmt_cli.text.tokenizer import Tokenizers, processor, train_model

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    lines = (SAMPLE / "train.src").read_text().splitlines()[:3000]
    lines += (SAMPLE / "train.tgt").read_text().splitlines()[:3000]
    return train_model(lines, TokenizerConfig(vocab_size=600, byte_fallback=True))


def make_recipe(tmp_path: Path, model: bytes, data: dict, preprocess_cfg: dict | None = None,
                name: str = "r"):
    workdir = tmp_path / f"run-{name}"
    (workdir / "tokenizer").mkdir(parents=True, exist_ok=True)
    (workdir / "tokenizer" / "joint.model").write_bytes(model)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"workdir": str(workdir), "data": data,
                                    "preprocess": preprocess_cfg or {}}))
    return load_recipe(path, [])


def write(path: Path, lines: list[str]) -> Path:
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    opener = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}.get(path.suffix, open)
    with opener(path, "wb") as fh:
        fh.write(data)
    return path


def read_pairs(recipe, split: str = "train") -> list[tuple[str, str]]:
    from nmt_cli.data import ParallelData

    manifest = json.loads((data_dir(recipe) / "manifest.json").read_text())
    data = ParallelData(data_dir(recipe), split, manifest["dtype"])
    tok = Tokenizers.load(recipe)
    return [(tok.src.decode(data.src[i].tolist()), tok.tgt.decode(data.tgt[i].tolist()))
            for i in range(len(data))]


def sentence(i: int) -> tuple[str, str]:
    return f"the small cat number {i} sleeps", f"die kleine katze nummer {i} schläft"


@pytest.mark.parametrize("workers", [1, 2])
def test_dedup_removes_exact_duplicates_and_keeps_every_other_pair(tmp_path, model_bytes, workers):
    unique = [sentence(i) for i in range(60)]
    near = [("the small cat number 1 sleeps", "die kleine katze nummer 2 schläft"),
            ("The small cat number 1 sleeps", "die kleine katze nummer 1 schläft")]
    # Duplicates inside a chunk, across chunks, and after normalization (extra spaces, CRLF).
    pairs = unique[:30] + [unique[3], unique[3]] + unique[30:] + [unique[0], unique[59]]
    pairs += near + [("the  small cat number 7 sleeps ", "die kleine katze nummer 7 schläft")]
    src = write(tmp_path / "train.src", [s for s, _ in pairs])
    tgt = write(tmp_path / "train.tgt", [t for _, t in pairs])
    recipe = make_recipe(tmp_path, model_bytes, {"train": {"src": str(src), "tgt": str(tgt)}},
                         {"chunk_size": 7, "workers": workers})
    manifest = preprocess(recipe)
    dup = manifest["splits"]["train"]["filters"]["duplicate"]
    assert dup["dropped"] == 5
    assert len(dup["examples"]) == 3 and dup["examples"][0] == list(unique[3])
    assert read_pairs(recipe) == unique + near  # every non-duplicate kept, in order


def test_dedup_table_memory_is_fixed_and_overflow_is_kept(tmp_path):
    table = DedupTable(memory_mb=1)
    assert table.nbytes == 1 << 20 and table.limit == 3 * (1 << 20) // 8 // 4
    digests = (np.arange(1, 200_001, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    dup = table.add(digests)
    assert not dup.any()  # past the table's limit pairs are kept unchecked, never dropped
    assert table.unchecked == 200_000 - table.limit
    assert table.add(digests[:1000]).all()  # a full table still finds what it holds
    assert DedupTable(memory_mb=3).nbytes == 2 << 20  # a power of two within the budget


@pytest.mark.parametrize("workers", [1, 2])
def test_misaligned_bitext_fails_before_writing_and_names_both_counts(tmp_path, model_bytes,
                                                                    workers):
    src = write(tmp_path / "train.src", [sentence(i)[0] for i in range(5)])
    tgt = write(tmp_path / "train.tgt.gz", [sentence(i)[1] for i in range(4)])
    recipe = make_recipe(tmp_path, model_bytes, {"train": {"src": str(src), "tgt": str(tgt)}},
                         {"workers": workers})
    with pytest.raises(DataError) as err:
        preprocess(recipe)
    message = str(err.value)
    assert str(src) in message and str(tgt) in message
    assert "5 lines" in message and "4" in message
    assert not data_dir(recipe).exists()


def test_misaligned_dev_set_also_stops_before_train_is_written(tmp_path, model_bytes):
    src = write(tmp_path / "train.src", [sentence(i)[0] for i in range(5)])
    tgt = write(tmp_path / "train.tgt", [sentence(i)[1] for i in range(5)])
    dev_src = write(tmp_path / "dev.src", ["a", "b"])
    dev_tgt = write(tmp_path / "dev.tgt", ["a"])
    recipe = make_recipe(tmp_path, model_bytes, {"train": {"src": str(src), "tgt": str(tgt)},
                                                 "dev": {"src": str(dev_src), "tgt": str(dev_tgt)}})
    with pytest.raises(DataError, match="2 lines"):
        preprocess(recipe)
    assert not data_dir(recipe).exists()


def test_tsv_line_without_a_tab_is_named(tmp_path, model_bytes):
    tsv = write(tmp_path / "train.tsv", ["a\tb", "no tab here", "c\td\te"])
    assert scan_file(tsv, tsv=True) == (3, 2)
    tsv.write_bytes(b"a\tb\n" * 100_000 + b"c\td\te")  # the last line, without a newline
    assert scan_file(tsv, tsv=True) == (100_001, 100_001)
    tsv.write_bytes(b"a\tb\n" * 300_000 + b"c\td")
    assert scan_file(tsv, tsv=True) == (300_001, 0)
    tsv = write(tmp_path / "train.tsv", ["a\tb", "no tab here", "c\td\te"])
    recipe = make_recipe(tmp_path, model_bytes, {"train": {"tsv": str(tsv)}})
    with pytest.raises(DataError, match=r"train\.tsv: .*line 2 does not have exactly two"):
        preprocess(recipe)
    assert not data_dir(recipe).exists()


def test_training_refuses_data_encoded_with_another_tokenizer(tmp_path, model_bytes):
    from nmt_cli.training.trainer import Trainer

    src = write(tmp_path / "train.src", [sentence(i)[0] for i in range(20)])
    tgt = write(tmp_path / "train.tgt", [sentence(i)[1] for i in range(20)])
    recipe = make_recipe(tmp_path, model_bytes, {"train": {"src": str(src), "tgt": str(tgt)}})
    preprocess(recipe)  # encoded with tokenizer A
    hash_a = Tokenizers.load(recipe).sha256()["src"]
    lines = [sentence(i)[0] for i in range(200)] + [sentence(i)[1] for i in range(200)]
    model_b = train_model(lines, TokenizerConfig(vocab_size=80))
    (recipe.workdir / "tokenizer" / "joint.model").write_bytes(model_b)  # the recipe now names B
    hash_b = Tokenizers.load(recipe).sha256()["src"]
    assert hash_a != hash_b
    with pytest.raises(DataError) as err:
        Trainer(recipe, device="cpu")
    assert hash_a in str(err.value) and hash_b in str(err.value)


def test_two_workers_write_the_same_bytes_as_one(tmp_path, model_bytes):
    pairs = [sentence(i) for i in range(500)] + [sentence(i) for i in range(0, 500, 7)]
    src = write(tmp_path / "train.src.gz", [s for s, _ in pairs])
    tgt = write(tmp_path / "train.tgt.gz", [t for _, t in pairs])
    outputs = []
    for workers in (1, 2):
        recipe = make_recipe(tmp_path, model_bytes, {"train": {"src": str(src), "tgt": str(tgt)}},
                             {"workers": workers, "chunk_size": 37}, name=f"w{workers}")
        manifest = preprocess(recipe)
        files = {p.name: p.read_bytes() for p in sorted(data_dir(recipe).glob("train.*"))}
        outputs.append((files, manifest["splits"]["train"]["filters"]))
    assert outputs[0] == outputs[1]


def test_dry_run_reports_but_writes_nothing(tmp_path, model_bytes):
    pairs = [sentence(i) for i in range(30)] + [("", "leer"), ("same", "same")]
    src = write(tmp_path / "train.src", [s for s, _ in pairs])
    tgt = write(tmp_path / "train.tgt", [t for _, t in pairs])
    recipe = make_recipe(tmp_path, model_bytes, {"train": {"src": str(src), "tgt": str(tgt)}})
    manifest = preprocess(recipe, dry_run=True)
    filters = manifest["splits"]["train"]["filters"]
    assert filters["empty"]["dropped"] == 1 and filters["copy"]["dropped"] == 1
    assert manifest["splits"]["train"]["written"] == 30
    assert not data_dir(recipe).exists()


def test_corpora_with_weights_tsv_and_compressed_inputs(tmp_path, model_bytes):
    a = [sentence(i) for i in range(40)]
    b = [sentence(i) for i in range(100, 300)]
    c = [sentence(i) for i in range(500, 510)]
    src = write(tmp_path / "a.src.bz2", [s for s, _ in a])
    tgt = write(tmp_path / "a.tgt.gz", [t for _, t in a])
    tsv = write(tmp_path / "b.tsv.xz", [f"{s}\t{t}" for s, t in b])
    tsv_c = write(tmp_path / "c.tsv", [f"{s}\t{t}" for s, t in c])
    recipe = make_recipe(tmp_path, model_bytes, {"train": {"corpora": [
        {"src": str(src), "tgt": str(tgt), "weight": 2},
        {"tsv": str(tsv), "weight": 0.5},
        {"tsv": str(tsv_c)}]}}, {"chunk_size": 16})
    manifest = preprocess(recipe)
    corpora = manifest["splits"]["train"]["corpora"]
    assert [c["written"] for c in corpora][0::2] == [80, 10]
    assert 60 < corpora[1]["written"] < 140  # each pair kept with probability 1/2
    assert all(len(c["sha256"][0]) == 64 for c in corpora)
    written = read_pairs(recipe)
    assert written.count(a[0]) == 2 and written[-10:] == c


def test_filters_report_counts_and_examples(tmp_path, model_bytes):
    pairs = [sentence(i) for i in range(20)]
    pairs += [("the cat", "x " * 30), ("same text", "same text"), ("12345 !!! ???", "12 ?? !!!"),
              ("a " * 150, "b " * 150), ("long" * 400, "lang")]
    src = write(tmp_path / "train.src", [s for s, _ in pairs])
    tgt = write(tmp_path / "train.tgt", [t for _, t in pairs])
    recipe = make_recipe(tmp_path, model_bytes, {"train": {"src": str(src), "tgt": str(tgt)}},
                         {"max_len": 100, "max_chars": 1000, "max_ratio": 3.0})
    filters = preprocess(recipe, dry_run=True)["splits"]["train"]["filters"]
    expect = {"length_ratio": 1, "copy": 1, "nonletter": 1, "too_long": 1, "too_long_chars": 1}
    for name, n in expect.items():
        assert filters[name]["dropped"] == n, (name, filters)
        assert filters[name]["examples"], name
    assert filters["too_long_chars"]["examples"][0][0].endswith("(1600 chars)")
    assert filters["nonletter"]["params"] == {"max_nonletter": 0.5}


@pytest.mark.parametrize("data", [b"", b"a\n", b"a", b"ab\ncd\n\nefghijklmnop\nq", b"\n\n\n"])
def test_line_reader_matches_splitlines_whatever_the_block_size(data):
    import io

    from nmt_cli.text.bitext import LineReader

    expected = data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n")
    expected = expected if data else []
    for block in (1, 2, 3, 7, 1 << 20):
        reader, got = LineReader(io.BytesIO(data), block), []
        while lines := reader.take(2):
            got += lines
        assert got == expected, block


def test_read_split_yields_raw_pairs_of_every_corpus(tmp_path):
    from nmt_cli.config import Corpus, Split
    from nmt_cli.text.bitext import read_split

    src = tmp_path / "a.src"
    src.write_bytes(b"\xef\xbb\xbfone\r\ntwo\n")
    tgt = write(tmp_path / "a.tgt.gz", ["eins", "zwei"])
    tsv = write(tmp_path / "b.tsv", ["three\tdrei"])
    split = Split(corpora=[Corpus(src=src, tgt=tgt), Corpus(tsv=tsv)])
    assert list(read_split(split)) == [("one", "eins"), ("two", "zwei"), ("three", "drei")]


def test_cli_dry_run_prints_the_report_and_writes_nothing(tmp_path, model_bytes):
    from typer.testing import CliRunner

    from nmt_cli.cli import app

    pairs = [sentence(i) for i in range(30)] + [sentence(3), ("", "leer")]
    src = write(tmp_path / "train.src", [s for s, _ in pairs])
    tgt = write(tmp_path / "train.tgt", [t for _, t in pairs])
    recipe = make_recipe(tmp_path, model_bytes, {"train": {"src": str(src), "tgt": str(tgt)}})
    result = CliRunner().invoke(app, ["preprocess", str(tmp_path / "r.yaml"), "--dry-run",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "dry run: nothing written" in out
    assert "duplicate" in out and "dropped by empty" in out and "p99" in out
    assert not data_dir(recipe).exists()


def test_manifest_names_input_files_and_their_hashes(tmp_path, model_bytes):
    import hashlib

    src = write(tmp_path / "train.src", [sentence(i)[0] for i in range(5)])
    tgt = write(tmp_path / "train.tgt", [sentence(i)[1] for i in range(5)])
    recipe = make_recipe(tmp_path, model_bytes, {"train": {"src": str(src), "tgt": str(tgt)}})
    train = preprocess(recipe, dry_run=True)["splits"]["train"]
    assert train["files"] == {"src": str(src), "tgt": str(tgt)}
    assert train["sha256"]["tgt"] == hashlib.sha256(tgt.read_bytes()).hexdigest()
