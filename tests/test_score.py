"""``nmt score``: each line's log-probability, token count and perplexity, and the corpus
perplexities, from a language model and from a translation model given references."""

from __future__ import annotations

import json
import math

import pytest
import torch

from _decode_fixtures import SAMPLE, source_lines, trained_checkpoint
from _lm_fixtures import tokenizer_of, trained_lm
from conftest import assert_one_line_error, run_cli
from nmt_cli.decoding.score import ScoreReport, score_lines

LINES = [line.rstrip("\n") for line in open(SAMPLE / "test.tgt", encoding="utf-8")][:6] + [""]


def _by_hand(checkpoint, lines):
    """Per line: sum of log p(piece | prefix) over the pieces and EOS, one step at a time."""
    from nmt_cli.checkpoint import load_checkpoint, model_from_checkpoint

    model, tok, _ = model_from_checkpoint(load_checkpoint(checkpoint), checkpoint)
    found = []
    with torch.no_grad():
        for ids in tok.encode_tgt(lines):
            state, prev, total = model.start(1), torch.tensor([2]), 0.0
            for token in ids + [3]:
                log_probs, state = model.step(prev, state)
                total += float(log_probs[0, token])
                prev = torch.tensor([token])
            found.append((total, len(ids) + 1))
    return found


@pytest.mark.parametrize("family", ["rnn", "transformer"])
def test_lm_scores_are_the_summed_log_probabilities_of_each_line(family):
    checkpoint = trained_lm(family)
    scores = score_lines(checkpoint, LINES, device="cpu")
    assert len(scores) == len(LINES)
    for got, (logprob, tokens), line in zip(scores, _by_hand(checkpoint, LINES), LINES):
        assert got.tokens == tokens and got.words == len(line.split()) + 1
        assert got.logprob == pytest.approx(logprob, abs=1e-3)
        assert got.perplexity == pytest.approx(math.exp(-logprob / tokens), rel=1e-4)
    report = ScoreReport(scores)
    total = sum(s.logprob for s in scores)
    assert report.perplexity_subword == pytest.approx(
        math.exp(-total / sum(s.tokens for s in scores)))
    assert report.perplexity_word == pytest.approx(
        math.exp(-total / sum(len(line.split()) + 1 for line in LINES)))


def test_a_line_scores_the_same_in_any_batch():
    checkpoint = trained_lm("transformer")
    alone = [score_lines(checkpoint, [line], device="cpu")[0].logprob for line in LINES]
    together = [s.logprob for s in score_lines(checkpoint, LINES, batch_size=3, device="cpu")]
    assert together == pytest.approx(alone, abs=1e-4)


def test_a_translation_model_scores_references_by_forced_decoding():
    from nmt_cli.checkpoint import load_checkpoint, model_from_checkpoint
    from nmt_cli.decoding.inference import score_references

    checkpoint = trained_checkpoint("rnn")
    sources = source_lines(5)
    refs = LINES[:5]
    got = score_lines(checkpoint, sources, refs, device="cpu")
    model, tok, recipe = model_from_checkpoint(load_checkpoint(checkpoint), checkpoint)
    expected = score_references(model, tok, sources, refs, recipe.decode,
                                normalize=recipe.preprocess.normalize)
    assert [s.logprob for s in got] == pytest.approx(expected, abs=1e-4)
    assert [s.tokens for s in got] == [len(ids) + 1 for ids in tok.encode_tgt(refs)]


def test_the_cli_writes_one_row_per_line_and_the_corpus_on_stderr(tmp_path):
    text = tmp_path / "in.txt"
    text.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    checkpoint = trained_lm("rnn")
    proc = run_cli("score", "-m", checkpoint, "-i", text, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    rows = [row.split("\t") for row in proc.stdout.splitlines()]
    assert len(rows) == len(LINES) and all(len(r) == 3 for r in rows)
    direct = score_lines(checkpoint, LINES, device="cpu")
    assert [float(r[0]) for r in rows] == pytest.approx([s.logprob for s in direct], abs=1e-3)
    assert [int(r[1]) for r in rows] == [s.tokens for s in direct]
    assert "per subword" in proc.stderr and "per word" in proc.stderr
    as_json = run_cli("score", "-m", checkpoint, "-i", text, "--json", "--device", "cpu",
                      "-o", tmp_path / "out.json")
    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads((tmp_path / "out.json").read_text())
    assert len(doc["lines"]) == len(LINES) and doc["corpus"]["lines"] == len(LINES)
    report = ScoreReport(direct)
    assert doc["corpus"]["perplexity_word"] == pytest.approx(report.perplexity_word, rel=1e-4)
    assert doc["corpus"]["tokens"] == sum(s.tokens for s in direct)


def test_score_mistakes_are_one_line_each(tmp_path):
    text = tmp_path / "in.txt"
    text.write_text("a b\nc d\n", encoding="utf-8")
    short = tmp_path / "ref.txt"
    short.write_text("x\n", encoding="utf-8")
    lm, tm = trained_lm("rnn"), trained_checkpoint("rnn")
    assert_one_line_error(run_cli("score", "-m", tm, "-i", text), "give -r")
    assert_one_line_error(run_cli("score", "-m", lm, "-i", text, "-r", text), "drop -r")
    assert_one_line_error(run_cli("score", "-m", tm, "-i", text, "-r", short),
                          "has 1 lines but the input has 2")
    missing = run_cli("score", "-m", tmp_path / "none.pt", "-i", text)
    assert_one_line_error(missing, "none.pt", "not found")


def test_an_lm_sharing_a_tokenizer_scores_with_it():
    """tokenizer.model: the LM encodes with the translation model's SentencePiece model."""
    from nmt_cli.checkpoint import load_checkpoint

    tm = trained_checkpoint("rnn")
    lm = trained_lm("rnn", tokenizer_of(tm))
    assert load_checkpoint(lm)["tokenizer"]["tgt"] == load_checkpoint(tm)["tokenizer"]["tgt"]
    assert len(score_lines(lm, LINES, device="cpu")) == len(LINES)
