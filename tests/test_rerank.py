"""``nmt rerank``: forward-only weights keep the n-best's first rows; N source lines give N output
lines in order, also where a line has fewer than K hypotheses; the reverse feature is the reverse
model's forced score of the source; the weights decide; cached features choose as computed ones
do; every mistake is one line."""

from __future__ import annotations

import json

import pytest

from _decode_fixtures import source_lines, trained_checkpoint
from conftest import assert_one_line_error, run_cli
from nmt_cli.decoding.features import read_table
from nmt_cli.decoding.nbest import group_nbest


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A source of 12 lines (one empty) and its 4-best list by the tiny RNN, with the
    rows past the first dropped for lines 2 and 7 (fewer than K)."""
    folder = tmp_path_factory.mktemp("rerank")
    lines = source_lines(12)
    lines[5] = ""
    src = folder / "src.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    full = folder / "full.tsv"
    proc = run_cli("translate", "-m", trained_checkpoint("rnn"), "-i", src, "-o", full,
                   "--beam-size", "4", "--n-best", "4", "-q")
    assert proc.returncode == 0, proc.stderr
    rows = full.read_text(encoding="utf-8").splitlines()
    kept, seen = [], set()
    for row in rows:
        index = int(row.split("\t")[0])
        if index in (2, 7) and index in seen:
            continue
        seen.add(index)
        kept.append(row)
    nbest = folder / "nbest.tsv"
    nbest.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return folder, src, nbest, lines


def _rerank(made, *args):
    folder, src, nbest, _ = made
    out = folder / "out.txt"
    out.unlink(missing_ok=True)
    proc = run_cli("rerank", "-n", nbest, "-s", src, "-o", out, *args)
    assert proc.returncode == 0, proc.stderr
    return out.read_text(encoding="utf-8").split("\n")[:-1], proc


def test_forward_only_keeps_the_first_rows_one_line_per_source(made):
    _, src, nbest, lines = made
    groups = group_nbest(nbest, len(lines))
    assert [len(g) for g in groups] == [4, 4, 1, 4, 4, 1, 4, 1, 4, 4, 4, 4]
    first = [g[0].text for g in groups]
    for args in ((), ("--weights", "forward=1"), ("--weights", "forward=2,length=0")):
        out, proc = _rerank(made, *args)
        assert out == first, args
        assert "0 changed" in proc.stderr
    assert out[5] == ""


def test_an_output_that_is_a_symlink_is_written_through(made, tmp_path):
    _, src, nbest, lines = made
    target = tmp_path / "target.txt"
    target.write_text("old\n", encoding="utf-8")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    proc = run_cli("rerank", "-n", nbest, "-s", src, "-o", link, "-q")
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink()
    assert len(target.read_text(encoding="utf-8").split("\n")[:-1]) == len(lines)


def test_the_weights_decide(made):
    """length=1 takes the longest hypothesis of each line (the first among equals)."""
    _, _, nbest, lines = made
    groups = group_nbest(nbest, len(lines))
    out, _ = _rerank(made, "--weights", "length=1")
    longest = [max(g, key=lambda e: (len(e.text.split()), -g.index(e))).text for g in groups]
    assert out == longest and out != [g[0].text for g in groups]


def test_the_reverse_feature_is_the_reverse_models_forced_score(made, tmp_path):
    """The tiny model stands in for a reverse model: the features give its forced score of each
    source line given each hypothesis, per source word, as translate --score-reference does."""
    folder, src, nbest, lines = made
    reverse = trained_checkpoint("rnn")
    features = tmp_path / "f.jsonl"
    out, proc = _rerank(made, "--reverse", reverse, "--features", features,
                        "--weights", "forward=1,reverse=0.5,length=0.1")
    assert len(out) == len(lines) and "reverse" in proc.stderr
    table = read_table(features)
    assert table.names == ["forward", "reverse", "length"]
    pairs = [(lines[i], h) for i, hyps in enumerate(table.hypotheses) for h in hyps]
    (tmp_path / "hyp").write_text("\n".join(h for _, h in pairs) + "\n", encoding="utf-8")
    (tmp_path / "ref").write_text("\n".join(s for s, _ in pairs) + "\n", encoding="utf-8")
    forced = run_cli("translate", "-m", reverse, "-i", tmp_path / "hyp", "--score-reference",
                     tmp_path / "ref", "-q")
    assert forced.returncode == 0, forced.stderr
    want = [float(v) / max(1, len(s.split())) for v, (s, _) in
            zip(forced.stdout.split(), pairs)]
    got = [row[1] for rows in table.values for row in rows]
    assert got == pytest.approx(want, abs=1e-4)
    assert [row[2] for rows in table.values for row in rows] == [len(h.split()) for _, h in pairs]
    cached = folder / "cached.txt"
    proc = run_cli("rerank", "--cached", features, "--weights", "forward=1,reverse=0.5,length=0.1",
                   "-o", cached, "-q")
    assert proc.returncode == 0, proc.stderr
    assert cached.read_text(encoding="utf-8").split("\n")[:-1] == out


def test_the_lm_feature_is_the_language_models_score_of_each_hypothesis(made, tmp_path):
    """The lm feature is nmt score's log-probability of each hypothesis, per source word; with
    reverse it makes the table's columns in order, and its weight changes the choice."""
    from _lm_fixtures import trained_lm

    folder, src, nbest, lines = made
    lm = trained_lm("rnn")
    features = tmp_path / "f.jsonl"
    out, proc = _rerank(made, "--lm", lm, "--reverse", trained_checkpoint("rnn"), "--features",
                        features, "--weights", "forward=1,lm=0.5")
    assert len(out) == len(lines) and "lm" in proc.stderr
    table = read_table(features)
    assert table.names == ["forward", "reverse", "lm", "length"]
    pairs = [(lines[i], h) for i, hyps in enumerate(table.hypotheses) for h in hyps]
    (tmp_path / "hyp").write_text("\n".join(h for _, h in pairs) + "\n", encoding="utf-8")
    scored = run_cli("score", "-m", lm, "-i", tmp_path / "hyp")
    assert scored.returncode == 0, scored.stderr
    logprobs = [float(row.split("\t")[0]) for row in scored.stdout.splitlines()]
    want = [v / max(1, len(s.split())) for v, (s, _) in zip(logprobs, pairs)]
    assert [row[2] for rows in table.values for row in rows] == pytest.approx(want, abs=1e-3)
    heavy, _ = _rerank(made, "--lm", lm, "--weights", "forward=0,lm=1")
    by_lm = [hyps[max(range(len(rows)), key=lambda j: (rows[j][2], -j))]
             for hyps, rows in zip(table.hypotheses, table.values)]
    assert heavy == by_lm


def test_an_exported_reverse_model_and_n_best_work_alike(made, tmp_path):
    from nmt_cli.export.ct2 import export_ctranslate2

    folder = export_ctranslate2(trained_checkpoint("transformer"), tmp_path / "ct2", "float32")
    _, src, _, lines = made
    nbest = tmp_path / "ct2.tsv"
    proc = run_cli("translate", "-m", folder, "-i", src, "-o", nbest, "--beam-size", "4",
                   "--n-best", "4", "-q")
    assert proc.returncode == 0, proc.stderr
    first = [g[0].text for g in group_nbest(nbest, len(lines))]
    out = tmp_path / "out.txt"
    proc = run_cli("rerank", "-n", nbest, "-s", src, "--reverse", folder, "-o", out,
                   "--weights", "forward=1,reverse=0", "-q")
    assert proc.returncode == 0, proc.stderr
    assert out.read_text(encoding="utf-8").split("\n")[:-1] == first
    proc = run_cli("rerank", "-n", nbest, "-s", src, "--reverse", folder, "-o", out,
                   "--weights", "forward=1,reverse=1", "-q")
    assert proc.returncode == 0 and len(out.read_text().split("\n")[:-1]) == len(lines)


def test_mistakes_are_one_line_and_write_nothing(made, tmp_path):
    folder, src, nbest, lines = made
    out = tmp_path / "out.txt"
    cases = [
        (("--weights", "forward=1,revrse=2"), ("unknown feature 'revrse'", "forward, reverse")),
        (("--weights", "forward=1,reverse=2"), ("--weights gives reverse a weight",
                                                "--reverse CKPT")),
        (("--weights", "forward=x"), ("'forward=x' is not NAME=NUMBER",)),
        (("--weights", str(tmp_path / "none.yaml")), ("none.yaml", "not found")),
        (("--reverse", tmp_path / "missing.pt"), ("missing.pt", "checkpoint not found")),
        (("--lm", tmp_path / "missing.pt"), ("missing.pt", "checkpoint not found")),
        (("--lm", trained_checkpoint("rnn")), ("a translation model", "model.arch: lm")),
        (("--weights", "forward=1,lm=1"), ("--weights gives lm a weight", "--lm CKPT")),
    ]
    for args, needles in cases:
        proc = run_cli("rerank", "-n", nbest, "-s", src, "-o", out, *args)
        assert_one_line_error(proc, *needles)
        assert not out.exists()
    short = tmp_path / "short.txt"
    short.write_text("\n".join(lines[:10]) + "\n", encoding="utf-8")
    assert_one_line_error(run_cli("rerank", "-n", nbest, "-s", short, "-o", out),
                          str(nbest), "the source has 10 line(s)")
    assert_one_line_error(run_cli("rerank", "-n", nbest, "-o", out), "-s SOURCE")
    bad = tmp_path / "w.json"
    bad.write_text(json.dumps({"forward": "high"}))
    assert_one_line_error(run_cli("rerank", "-n", nbest, "-s", src, "--weights", bad),
                          str(bad), "mapping of feature names to numbers")
    assert not out.exists()


def test_a_model_feature_scores_in_chunks_and_keeps_the_pairs_order():
    from nmt_cli.decoding.features import ModelScore

    seen = []

    def scorer(sources, hyps):
        seen.append(len(hyps))
        return [float(len(h)) for h in hyps]

    sources = ["a b", "c", "d e f", "", "g h"]
    hyps = ["xxxx", "x", "xxx", "xx", "xxxxx"]
    got = ModelScore("reverse", scorer, chunk=2)(sources, hyps)
    assert got == [4 / 2, 1 / 1, 3 / 3, 2 / 1, 5 / 2]  # per source word (at least 1)
    assert seen == [2, 2, 1]
