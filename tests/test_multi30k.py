"""The whole pipeline on real data: Multi30k de-en through the shipped CPU recipe, shrunk with
``--set`` (2k subwords, a small model, 30 updates), then 50 test lines translated and scored.

Needs Multi30k (``../shared/data/multi30k`` beside the repository, or ``$NMT_MULTI30K``); skips
without it, and fails under CI, which has it.
"""

from __future__ import annotations

import gzip
import json

import pytest

from conftest import ROOT, require_multi30k, run_cli

RECIPE = ROOT / "recipes" / "multi30k-de-en-cpu.yaml"
FILES = {"train": ("train.de.gz", "train.en.gz"), "dev": ("val.de.gz", "val.en.gz"),
         "test": ("test_2016_flickr.de.gz", "test_2016_flickr.en.gz")}
SMALL = ["tokenizer.vocab_size=2000", "tokenizer.num_threads=1", "preprocess.workers=1",
         "model.emb_size=64", "model.encoder.hidden_size=64", "model.decoder.hidden_size=64",
         "train.batch_tokens=1500", "train.max_steps=30", "train.max_time=0",
         "train.log_every=10", "train.valid_every=30", "train.valid_max_sentences=20",
         "train.threads=1", "train.device=cpu"]


def _head_gz(path, n: int) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [line.rstrip("\n") for _, line in zip(range(n), fh)]


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_tokenizer_preprocess_train_translate_on_multi30k(tmp_path):
    data = require_multi30k()
    workdir = tmp_path / "run"
    sets = [f"workdir={workdir}", *SMALL]
    for split, (src, tgt) in FILES.items():
        sets += [f"data.{split}.src={data / src}", f"data.{split}.tgt={data / tgt}"]
    args = [x for s in sets for x in ("--set", s)]

    _ok(run_cli("tokenizer", RECIPE, *args))
    models = sorted(p.name for p in (workdir / "tokenizer").glob("*.model"))
    assert models, list((workdir / "tokenizer").iterdir())

    _ok(run_cli("preprocess", RECIPE, *args))
    manifest = json.loads((workdir / "data" / "manifest.json").read_text(encoding="utf-8"))
    assert set(manifest["splits"]) == {"train", "dev", "test"}

    _ok(run_cli("train", RECIPE, *args))
    for name in ("best.pt", "last.pt"):
        assert (workdir / "checkpoints" / name).is_file(), name
    records = [json.loads(line) for line in
               (workdir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["step"] for r in records if r["event"] == "train"] == [10, 20, 30]
    valid = [r for r in records if r["event"] == "valid"]
    assert [r["step"] for r in valid] == [30] and "dev_bleu" in valid[0]
    assert json.loads((workdir / "train_summary.json").read_text())["steps"] == 30

    src_lines = _head_gz(data / FILES["test"][0], 50)
    ref_lines = _head_gz(data / FILES["test"][1], 50)
    src, ref, hyp = tmp_path / "test50.de", tmp_path / "test50.en", tmp_path / "test50.hyp"
    src.write_text("".join(line + "\n" for line in src_lines), encoding="utf-8")
    ref.write_text("".join(line + "\n" for line in ref_lines), encoding="utf-8")
    _ok(run_cli("translate", "-m", workdir / "checkpoints" / "best.pt", "-i", src, "-o", hyp,
                "--beam-size", "2", "--min-len-b", "2", "--device", "cpu", "--quiet"))
    out = hyp.read_text(encoding="utf-8").split("\n")
    assert out[-1] == "" and len(out[:-1]) == 50  # N lines in, N lines out
    # 30 updates teach little (alone, the model ends most lines at once); with a minimum length
    # every line shows text decoded through the Multi30k tokenizer.
    assert all(line.strip() for line in out[:-1]), out

    scored = _ok(run_cli("eval", "-i", hyp, "-r", ref, "--metrics", "bleu,chrf", "--json"))
    scores = {s["metric"]: s for s in json.loads(scored.stdout)}
    assert set(scores) == {"bleu", "chrf"} and "nrefs:1" in scores["bleu"]["signature"]
    assert scores["chrf"]["score"] > 0.0  # some characters right, even after 30 updates
