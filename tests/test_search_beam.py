"""Beam search and greedy search: correctness on a toy decoder, constraints, and on a trained
model batch invariance, beam beating greedy, and n-best order."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import pytest
import torch

from _decode_fixtures import (decode_settings, sample_checkpoint, sample_model,  # noqa: F401
                              source_lines, translate)
from nmt_cli.config import DecodeConfig, with_overrides
from nmt_cli.data import pad_sequences
from nmt_cli.decoding.penalties import block_repeated_ngrams
from nmt_cli.decoding.search import batched_beam_search, beam_search, greedy_search, score_targets
from nmt_cli.ids import EOS_ID

A, B, C = 4, 5, 6
VOCAB = 7


@dataclass
class ToyState:
    history: torch.Tensor  # (N, t) tokens fed so far, BOS first

    def select(self, index):
        return ToyState(self.history.index_select(0, index))


@dataclass
class ToyMemory:
    mask: torch.Tensor  # (N, S)

    def select(self, index):
        return ToyMemory(self.mask.index_select(0, index))


class ToyModel:
    """Next-token probabilities from a fixed table keyed by the output so far; unknown ones end."""

    def __init__(self, table: dict[tuple[int, ...], dict[int, float]]):
        self.table = table

    def encode(self, src, src_lengths):
        return ToyMemory(src != 0), ToyState(src.new_zeros((src.size(0), 0)))

    def step(self, prev, state, memory, need_attention=False):
        history = torch.cat([state.history, prev.unsqueeze(1)], 1)
        probs = torch.full((prev.size(0), VOCAB), 1e-9)
        for row, fed in enumerate(history.tolist()):
            for tok, p in self.table.get(tuple(fed[1:]), {EOS_ID: 1.0}).items():
                probs[row, tok] = p
        lp = probs.div(probs.sum(-1, keepdim=True)).log()
        attention = memory.mask.float() / memory.mask.sum(-1, keepdim=True)
        return lp, ToyState(history), attention


# Greedy takes A (0.55) then A (0.4): 0.22. The best sequence is B EOS: 0.45 * 0.9 = 0.405.
# Next come A A (0.22), A B (0.1925), A (0.1375), B C (0.045).
TABLE = {(): {A: 0.55, B: 0.45}, (A,): {A: 0.4, B: 0.35, EOS_ID: 0.25},
         (A, A): {EOS_ID: 1.0}, (B,): {EOS_ID: 0.9, C: 0.1}}
RAW = DecodeConfig(length_norm="none")  # scores are raw log-probabilities


def raw(**changes) -> DecodeConfig:
    return with_overrides(RAW, changes, "decode")


def _toy_src(n: int = 1):
    return torch.tensor([[7, EOS_ID]] * n), torch.tensor([2] * n)


def test_beam_finds_the_known_best_sequence_and_greedy_does_not():
    model = ToyModel(TABLE)
    src, lengths = _toy_src()
    beam = beam_search(model, src, lengths, raw(beam_size=2))
    greedy = greedy_search(model, src, lengths, RAW)
    assert beam.best() == [[B]]
    assert beam.hypotheses[0][0].log_prob == pytest.approx(math.log(0.405), abs=1e-4)
    assert greedy.best() == [[A, A]]
    assert greedy.hypotheses[0][0].log_prob == pytest.approx(math.log(0.22), abs=1e-4)


def test_n_best_is_sorted_and_complete_on_the_toy():
    model = ToyModel(TABLE)
    src, lengths = _toy_src(3)
    result = beam_search(model, src, lengths, raw(beam_size=3, n_best=3))
    for hyps in result.hypotheses:
        assert [h.tokens for h in hyps] == [[B], [A, A], [A, B]]
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)


def test_min_and_max_length_are_respected():
    model = ToyModel(TABLE)
    src, lengths = _toy_src()  # source length 2
    short = beam_search(model, src, lengths, raw(beam_size=2, max_len_a=0.0, max_len_b=1))
    assert short.best() == [[B]]
    long = beam_search(model, src, lengths, raw(beam_size=2, min_len_a=1.0, min_len_b=0))
    # at least 2 tokens
    assert long.best() == [[A, A]]


def test_block_repeated_ngrams_bans_the_follower_of_a_seen_context():
    lp = torch.zeros(1, 10)
    block_repeated_ngrams(lp, torch.tensor([[4, 5, 6, 4]]), 2)  # "4 5" seen: after 4, ban 5
    assert lp[0, 5] == float("-inf")
    assert torch.isfinite(lp[0, [4, 6, 7]]).all()


def test_no_repeat_ngram_prevents_repeats(sample_model):
    for beam in (1, 5):
        for t in translate(sample_model, source_lines(30), no_repeat_ngram=2, max_len_a=3.0,
                           beam_size=beam):
            toks = t.hypotheses[0].tokens
            bigrams = list(zip(toks, toks[1:]))
            assert len(bigrams) == len(set(bigrams)), t.text


def test_beam_one_equals_greedy(sample_model):
    model, tok, recipe = sample_model
    src, lengths = pad_sequences(tok.encode_src(source_lines(30)), suffix=EOS_ID)
    greedy = greedy_search(model, src, lengths, recipe.decode)
    one_beam = decode_settings(recipe, beam_size=1)
    assert beam_search(model, src, lengths, one_beam).best() == greedy.best()
    # The general beam code with one beam and raw scores is greedy search too.
    raw_greedy = greedy_search(model, src, lengths, RAW)
    general = batched_beam_search(model, src, lengths, raw(beam_size=1))
    assert general.best() == raw_greedy.best()


def test_batch_invariance_beam5(sample_model):
    lines = source_lines(40)
    one = translate(sample_model, lines, beam_size=5, batch_size=1)
    many = translate(sample_model, lines, beam_size=5, batch_size=64)
    tokens = translate(sample_model, lines, beam_size=5, batch_size=100, batch_type="tokens")
    assert [t.text for t in one] == [t.text for t in many] == [t.text for t in tokens]


def test_beam_scores_above_greedy_and_scores_are_model_scores(sample_model):
    model, tok, recipe = sample_model
    lines = source_lines(40)
    beam = translate(sample_model, lines, beam_size=5)
    greedy = translate(sample_model, lines, beam_size=1)
    mean = lambda ts: statistics.mean(t.hypotheses[0].score for t in ts)  # noqa: E731
    assert mean(beam) > mean(greedy)
    # Forced decoding of the beam output gives back its log-probability.
    src, lengths = pad_sequences(tok.encode_src(lines), suffix=EOS_ID)
    tgt, tgt_lengths = pad_sequences([t.hypotheses[0].tokens for t in beam], suffix=EOS_ID)
    forced = score_targets(model, src, lengths, tgt, tgt_lengths)
    assert forced.tolist() == pytest.approx([t.hypotheses[0].log_prob for t in beam], abs=1e-3)


def test_n_best_sorted_on_trained_model(sample_model):
    for t in translate(sample_model, source_lines(20), n_best=5):
        scores = [h.score for h in t.hypotheses]
        assert len(scores) == 5 and scores == sorted(scores, reverse=True)
        assert t.texts[0] == t.text


@pytest.mark.parametrize("kind", ["gnmt", "average", "none"])
def test_every_length_norm_runs_and_is_batch_invariant(sample_model, kind):
    lines = source_lines(12)
    one = translate(sample_model, lines, length_norm=kind, batch_size=1)
    many = translate(sample_model, lines, length_norm=kind, batch_size=12)
    assert [t.text for t in one] == [t.text for t in many]


def test_token_batches_respect_the_budget_and_cover_every_line():
    from nmt_cli.decoding.inference import make_batches

    lengths = [5, 0, 30, 2, 9, 9, 200, 1]
    batches = list(make_batches(lengths, 40, "tokens"))
    assert sorted(i for b in batches for i in b) == [0, 2, 3, 4, 5, 6, 7]  # not the empty one
    for b in batches:
        width = max(lengths[i] for i in b) + 1  # + EOS
        assert len(b) == 1 or len(b) * width <= 40
    assert [6] in batches  # longer than the budget: alone
    assert list(make_batches(lengths, 3)) == [[6, 2, 4], [5, 0, 3], [7]]


def test_top_per_row_matches_topk():
    from nmt_cli.decoding.search import top_per_row

    torch.manual_seed(0)
    scores = torch.randn(50, 8000)
    scores[3, :7] = 10.0  # several top values in one block
    for n in (1, 6):
        values, ids = top_per_row(scores, n)
        expected = scores.topk(n, dim=-1)
        assert torch.equal(values, expected.values)
        assert torch.equal(scores.gather(1, ids), expected.values)
