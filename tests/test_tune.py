"""``nmt tune``: the MERT line search finds the exact best point along a weight, the dev score
it sums from sufficient statistics is sacreBLEU's own, and a planted optimum on synthetic
features is found from the forward-only start, reproducibly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _decode_fixtures import SAMPLE, sample_checkpoint, sample_model, trained_checkpoint  # noqa: F401
from _decode_fixtures import translate
from conftest import assert_one_line_error, run_cli
from nmt_cli.decoding.features import FeatureTable, chosen_lines, format_weights, write_table
from nmt_cli.decoding.tune import DevSet, tune_weights

WORDS = ("a man woman dog runs sits on the street in red blue small big water park two young "
         "girl boy plays ball").split()


def synthetic(seed: int = 3, sources: int = 60, k: int = 6, planted=(1.0, 2.5, -0.7)):
    """A table of random hypotheses and features; each source line's reference is the
    hypothesis that ``planted`` weights choose, so that those weights score 100."""
    rng = np.random.default_rng(seed)
    names = ["forward", "reverse", "length"]
    hyps, values, refs = [], [], []
    for i in range(sources):
        rows = k - (i % 3 == 0)  # some lines have fewer hypotheses
        texts = [" ".join(rng.choice(WORDS, size=rng.integers(4, 9))) + f" s{i}h{j}"
                 for j in range(rows)]
        feats = rng.normal(size=(rows, 3))
        feats[:, 0] = -np.sort(-feats[:, 0])  # the n-best is sorted by its forward score
        hyps.append(texts)
        values.append(feats.tolist())
        refs.append(texts[int(np.argmax(feats @ np.array(planted)))])
    return FeatureTable(names, hyps, values), refs


def test_the_planted_optimum_is_found_from_forward_only():
    table, refs = synthetic()
    result = tune_weights(table, [refs], metric="bleu", seed=1, restarts=3)
    assert result.before < 80  # forward alone picks another hypothesis on many lines
    assert result.after == pytest.approx(100.0)
    assert chosen_lines(table, result.weights) == refs  # the printed weights reproduce it
    assert result.weights["forward"] == 1.0
    again = tune_weights(table, [refs], metric="bleu", seed=1, restarts=3)
    assert again.weights == result.weights  # deterministic


def test_chrf_is_tuned_too():
    table, refs = synthetic(seed=5)
    result = tune_weights(table, [refs], metric="chrf", seed=0, restarts=2)
    assert result.after == pytest.approx(100.0) and result.before < result.after


@pytest.mark.parametrize("metric", ["bleu", "chrf"])
def test_the_summed_statistics_give_sacrebleus_corpus_score(metric):
    from sacrebleu.metrics import BLEU, CHRF

    table, refs = synthetic(seed=7)
    dev = DevSet(table, [refs], metric, table.names)
    scorer = BLEU() if metric == "bleu" else CHRF()
    rng = np.random.default_rng(0)
    for _ in range(5):
        w = rng.normal(size=3)
        lines = chosen_lines(table, dict(zip(table.names, w.tolist())))
        assert dev.score(w) == pytest.approx(scorer.corpus_score(lines, [refs]).score, abs=1e-9)


def test_the_line_search_finds_the_best_point_of_a_fine_grid():
    """MERT's exact search against brute force: no value on a fine grid beats its point."""
    table, refs = synthetic(seed=11, sources=30)
    dev = DevSet(table, [refs], "bleu", table.names)
    rng = np.random.default_rng(2)
    for k in range(3):
        w = rng.normal(size=3)
        value, score = dev.line_search(w, k, 5.0)
        trial = w.copy()
        trial[k] = value
        assert dev.score(trial) == pytest.approx(score)  # the point scores what it claims
        grid = []
        for t in np.linspace(-5, 5, 801):
            trial[k] = t
            grid.append(dev.score(trial))
        assert score >= max(grid) - 1e-9, (k, score, max(grid))


def test_tune_cli_prints_the_scores_and_writes_weights_rerank_takes(tmp_path):
    table, refs = synthetic()
    features = tmp_path / "dev.features.jsonl"
    write_table(table, features, {})
    (tmp_path / "dev.ref").write_text("\n".join(refs) + "\n", encoding="utf-8")
    weights = tmp_path / "weights.json"
    proc = run_cli("tune", "--cached", features, "-r", tmp_path / "dev.ref", "--restarts", "2",
                   "-o", weights)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[1].startswith("dev BLEU forward only: ") and "100.00" in lines[2], lines
    tuned = json.loads(weights.read_text())
    assert lines[-1] == f"nmt rerank ... --weights {format_weights(tuned)}"
    for given in (str(weights), format_weights(tuned)):
        out = tmp_path / "out.txt"
        proc = run_cli("rerank", "--cached", features, "--weights", given, "-o", out, "-q")
        assert proc.returncode == 0, proc.stderr
        assert out.read_text(encoding="utf-8").splitlines() == refs


def test_tune_mistakes_are_one_line(tmp_path):
    table, refs = synthetic(sources=10)
    features = tmp_path / "f.jsonl"
    write_table(table, features, {})
    short = tmp_path / "short.ref"
    short.write_text("\n".join(refs[:9]) + "\n", encoding="utf-8")
    assert_one_line_error(run_cli("tune", "--cached", features, "-r", short), str(short),
                          "9 lines", "10 source lines")
    ref = tmp_path / "dev.ref"
    ref.write_text("\n".join(refs) + "\n", encoding="utf-8")
    assert_one_line_error(run_cli("tune", "--cached", features, "-r", ref, "--metric", "ter"),
                          "--metric", "bleu, chrf")
    assert_one_line_error(run_cli("tune", "--cached", features, "-r", ref, "--tune-features",
                                  "forward,lm"), "'lm'", "forward, reverse, length")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(features.read_text().replace('"index": 3', '"index": "x"', 1))
    assert_one_line_error(run_cli("tune", "--cached", bad, "-r", ref), f"{bad}:", "features row")


def test_a_grid_of_decode_runs_scores_each_value_and_keeps_the_best(tmp_path, sample_model):
    """Each value's score is that of translating the dev set with it; the best is printed."""
    from sacrebleu.metrics import BLEU

    from nmt_cli.decoding.tune import grid_file

    src, ref = tmp_path / "dev.src", tmp_path / "dev.ref"
    src.write_text("".join(open(SAMPLE / "dev.src").readlines()[:30]), encoding="utf-8")
    ref.write_text("".join(open(SAMPLE / "dev.tgt").readlines()[:30]), encoding="utf-8")
    lines, refs = src.read_text().splitlines(), ref.read_text().splitlines()
    result = grid_file([trained_checkpoint("rnn")], src, [ref], "decode.max_len_a=0,0.5,1.5")
    assert result.key == "max_len_a" and result.values == [0, 0.5, 1.5]
    for value, score in zip(result.values, result.scores):
        hyps = [t.text for t in translate(sample_model, lines, max_len_a=value)]
        assert score == pytest.approx(BLEU().corpus_score(hyps, [refs]).score)
    # 0.5 and 1.5 give the same lines here (the outputs are short): the first of equals is kept
    assert result.scores[0] < result.scores[1] == result.scores[2] and result.best == 0.5
    assert result.report().splitlines()[-1].startswith("--set decode.max_len_a=0.5 ")


def test_a_grid_with_a_bad_key_or_value_is_one_line(tmp_path):
    ref = tmp_path / "r"
    ref.write_text("x\n")
    for grid, needle in (("beam_sise=1,2", "did you mean 'decode.beam_size'"),
                         ("length_penalty=0,-1", "decode.length_penalty: -1.0 is out of range"),
                         ("length_penalty", "give a decode key and its values")):
        assert_one_line_error(run_cli("tune", "-r", ref, "--grid", grid, "-m", "m.pt", "-i",
                                      ref), needle)
    assert_one_line_error(run_cli("tune", "-r", ref, "--grid", "beam_size=1"), "-m MODEL")
