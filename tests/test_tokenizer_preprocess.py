"""SentencePiece models (joint and separate) and binarized data that round-trips to the same ids."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nmt_cli.data import ParallelData
from nmt_cli.errors import DataError
from nmt_cli.ids import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from nmt_cli.recipes import load_recipe
from nmt_cli.text.bitext import read_bitext
from nmt_cli.text.normalize import normalize_text as normalize
from nmt_cli.text.preprocess import MANIFEST, data_dir, load_manifest, preprocess
from nmt_cli.text.tokenizer import Tokenizers, model_paths, train_tokenizers

from conftest import SAMPLE, sample_lines


def small_recipe(tmp_path, n_src: int = 300, n_tgt: int | None = None, *, joint: bool = True,
                 dev: tuple[int, int] | None = None, extra: str = ""):
    """A recipe over the first lines of the sample, optionally misaligned, in ``tmp_path``."""
    n_tgt = n_src if n_tgt is None else n_tgt
    data = tmp_path / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "train.src").write_text("\n".join(sample_lines("train", "src", n_src)) + "\n",
                                    encoding="utf-8")
    (data / "train.tgt").write_text("\n".join(sample_lines("train", "tgt", n_tgt)) + "\n",
                                    encoding="utf-8")
    dev_yaml = ""
    if dev is not None:
        (data / "dev.src").write_text("\n".join(sample_lines("dev", "src", dev[0])) + "\n",
                                      encoding="utf-8")
        (data / "dev.tgt").write_text("\n".join(sample_lines("dev", "tgt", dev[1])) + "\n",
                                      encoding="utf-8")
        dev_yaml = "  dev: {src: data/dev.src, tgt: data/dev.tgt}\n"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "workdir: work\n"
        "data:\n  src_lang: en\n  tgt_lang: xx\n"
        "  train: {src: data/train.src, tgt: data/train.tgt}\n" + dev_yaml +
        f"tokenizer: {{vocab_size: 120, joint: {'true' if joint else 'false'}}}\n" + extra,
        encoding="utf-8")
    return load_recipe(recipe)


def files_under(path):
    return sorted(p.relative_to(path) for p in path.rglob("*")) if path.exists() else []


# -- tokenizers ----------------------------------------------------------------------------------


def test_special_ids_are_fixed(tokenizers):
    for sp in (tokenizers.src, tokenizers.tgt):
        assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (PAD_ID, UNK_ID, BOS_ID,
                                                                         EOS_ID) == (0, 1, 2, 3)
        assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
        ids = [i for line in sample_lines("dev", "src", 50) for i in sp.encode(line)]
        assert not {PAD_ID, BOS_ID, EOS_ID} & set(ids)  # specials never come out of text


def test_joint_tokenizer(experiment, tokenizers):
    paths = model_paths(experiment.recipe)
    assert paths["src"] == paths["tgt"] and paths["src"].name == "joint.model"
    assert paths["src"].is_file()
    assert tokenizers.joint and tokenizers.src_vocab_size == tokenizers.tgt_vocab_size == 300
    line = sample_lines("dev", "tgt", 1)[0]
    assert tokenizers.encode_src([line]) == tokenizers.encode_tgt([line])
    assert tokenizers.decode_tgt(tokenizers.encode_tgt([line])) == [line]


def test_separate_tokenizers(tmp_path):
    recipe = small_recipe(tmp_path, joint=False)
    paths = train_tokenizers(recipe)
    assert paths["src"].name == "en.model" and paths["tgt"].name == "xx.model"
    assert paths["src"].is_file() and paths["tgt"].is_file()
    assert paths["src"].read_bytes() != paths["tgt"].read_bytes()
    tok = Tokenizers.load(recipe)
    assert not tok.joint
    for sp in (tok.src, tok.tgt):
        assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2, 3)
    # Each model fits its own language: the target model splits target text into fewer pieces.
    tgt_text = sample_lines("train", "tgt", 300)
    src_text = sample_lines("train", "src", 300)
    assert sum(map(len, tok.encode_tgt(tgt_text))) < sum(map(len, tok.encode_src(tgt_text)))
    assert sum(map(len, tok.encode_src(src_text))) < sum(map(len, tok.encode_tgt(src_text)))
    assert tok.decode_tgt(tok.encode_tgt(tgt_text[:5])) == tgt_text[:5]


def test_tokenizer_training_is_deterministic(tmp_path):
    a = small_recipe(tmp_path / "a")
    b = small_recipe(tmp_path / "b")
    assert train_tokenizers(a)["src"].read_bytes() == train_tokenizers(b)["src"].read_bytes()


def test_load_without_training_is_a_data_error(tmp_path):
    recipe = small_recipe(tmp_path)
    with pytest.raises(DataError) as info:
        Tokenizers.load(recipe)
    assert "nmt tokenizer" in str(info.value)


# -- preprocess ----------------------------------------------------------------------------------


def expected_pairs(recipe, split, filtered: bool):
    """The kept pairs and drop counts, worked out one pair at a time (sample text is clean)."""
    cfg = recipe.preprocess
    tok = Tokenizers.load(recipe)
    out, dropped, seen = [], {}, set()
    for s, t in read_bitext(split.src, split.tgt):
        s, t = normalize(s), normalize(t)
        si, ti = tok.src.encode(s), tok.tgt.encode(t)
        short, long_ = min(len(si), len(ti)), max(len(si), len(ti))
        reason = None
        if not s or not t:
            reason = "empty"
        elif filtered and short < cfg.min_len:
            reason = "too_short"
        elif filtered and long_ > cfg.max_len:
            reason = "too_long"
        elif filtered and long_ > cfg.max_ratio * max(short, 1):
            reason = "length_ratio"
        elif filtered and cfg.dedup and (s, t) in seen:
            reason = "duplicate"
        if reason:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        seen.add((s, t))
        out.append((si, ti))
    return out, {"kept": len(out), "dropped": dropped}


def dropped_counts(split_report) -> dict[str, int]:
    return {name: f["dropped"] for name, f in split_report["filters"].items() if f["dropped"]}


def test_binarized_train_round_trips_to_encoded_text(experiment):
    recipe = experiment.recipe
    manifest = load_manifest(recipe)
    data = ParallelData(data_dir(recipe), "train", manifest["dtype"])
    pairs, report = expected_pairs(recipe, recipe.data.train, filtered=True)
    assert len(data) == len(pairs) == report["kept"]
    for i in (0, 1, 2, len(pairs) // 2, len(pairs) - 1):
        assert data.src[i].tolist() == pairs[i][0]
        assert data.tgt[i].tolist() == pairs[i][1]
    flat_src = np.concatenate([np.asarray(s) for s, _ in pairs])
    assert np.array_equal(np.asarray(data.src.ids), flat_src)
    flat_tgt = np.concatenate([np.asarray(t) for _, t in pairs])
    assert np.array_equal(np.asarray(data.tgt.ids), flat_tgt)
    assert dropped_counts(manifest["splits"]["train"]) == report["dropped"]


def test_binarized_dev_keeps_every_pair(experiment):
    recipe = experiment.recipe
    manifest = load_manifest(recipe)
    dev = ParallelData(data_dir(recipe), "dev", manifest["dtype"])
    tok = Tokenizers.load(recipe)
    src, tgt = sample_lines("dev", "src"), sample_lines("dev", "tgt")
    assert len(dev) == len(src) == 500
    assert [dev.src[i].tolist() for i in range(len(dev))] == tok.encode_src([normalize(s) for s in src])
    assert [dev.tgt[i].tolist() for i in range(len(dev))] == tok.encode_tgt([normalize(t) for t in tgt])


def test_manifest_counts(experiment):
    recipe = experiment.recipe
    manifest = json.loads((data_dir(recipe) / MANIFEST).read_text(encoding="utf-8"))
    tok = Tokenizers.load(recipe)
    assert manifest["src_vocab_size"] == tok.src_vocab_size == 300
    assert manifest["tokenizer_sha256"] == tok.sha256()
    assert manifest["dtype"] == {"src": "uint16", "tgt": "uint16"}
    train = manifest["splits"]["train"]
    assert train["pairs_in"] == len(sample_lines("train", "src")) == 15000
    assert train["kept"] + sum(dropped_counts(train).values()) == train["pairs_in"]
    arrays = ParallelData(data_dir(recipe), "train", manifest["dtype"])
    assert len(arrays) == train["kept"] == train["written"]
    assert train["src"]["tokens"] == int(arrays.src.lengths.sum())
    assert train["tgt"]["tokens"] == int(arrays.tgt.lengths.sum())
    assert train["src"]["percentiles"]["p100"] == arrays.src.lengths.max()
    assert train["corpora"][0]["files"] == [str(SAMPLE / "train.src"), str(SAMPLE / "train.tgt")]
    dev = manifest["splits"]["dev"]
    assert dev["pairs_in"] == dev["kept"] == 500


def test_filters_apply_to_train_only(tmp_path):
    recipe = small_recipe(tmp_path, dev=(40, 40), extra="preprocess: {max_len: 12}\n")
    train_tokenizers(recipe)
    manifest = preprocess(recipe)
    train, dev = manifest["splits"]["train"], manifest["splits"]["dev"]
    assert train["filters"]["too_long"]["dropped"] > 0
    assert "too_long" not in dev["filters"]
    assert train["kept"] == len(ParallelData(data_dir(recipe), "train", manifest["dtype"]))
    assert dev["kept"] == 40 == len(ParallelData(data_dir(recipe), "dev", manifest["dtype"]))
    lengths = ParallelData(data_dir(recipe), "train", manifest["dtype"])
    assert max(lengths.src.lengths.max(), lengths.tgt.lengths.max()) <= 12


def test_misaligned_train_fails_before_writing(tmp_path):
    recipe = small_recipe(tmp_path, 200, 199)
    train_tokenizers(recipe)  # the tokenizer only needs lines
    with pytest.raises(DataError) as info:
        preprocess(recipe)
    msg = str(info.value)
    assert "200" in msg and "199" in msg
    assert str(recipe.data.train.src) in msg and str(recipe.data.train.tgt) in msg
    assert files_under(data_dir(recipe)) == []


def test_misaligned_dev_fails_before_writing(tmp_path):
    """A bad dev split must not leave a half-written data folder (train arrays, no manifest)."""
    recipe = small_recipe(tmp_path, 200, dev=(30, 31))
    train_tokenizers(recipe)
    with pytest.raises(DataError) as info:
        preprocess(recipe)
    assert str(recipe.data.dev.tgt) in str(info.value)
    assert files_under(data_dir(recipe)) == []


def test_dry_run_writes_nothing_and_reports_the_same(tmp_path):
    recipe = small_recipe(tmp_path, dev=(20, 20), extra="preprocess: {max_len: 15}\n")
    train_tokenizers(recipe)
    before = files_under(recipe.workdir)
    dry = preprocess(recipe, dry_run=True)
    assert files_under(recipe.workdir) == before
    assert not data_dir(recipe).exists()
    real = preprocess(recipe)
    for split in ("train", "dev"):
        for key in ("filters", "pairs_in", "kept", "written", "src", "tgt"):
            assert dry["splits"][split][key] == real["splits"][split][key]


def test_preprocess_without_tokenizer_is_a_data_error(tmp_path):
    recipe = small_recipe(tmp_path)
    with pytest.raises(DataError):
        preprocess(recipe)
    assert files_under(data_dir(recipe)) == []

