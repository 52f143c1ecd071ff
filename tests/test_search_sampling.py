"""Sampling: reproducible with a seed, independent of the batch, and cut by top-k / top-p."""

from __future__ import annotations

from dataclasses import replace

from _decode_fixtures import sample_checkpoint, sample_model, source_lines  # noqa: F401
from nmt_cli.data import pad_sequences
from nmt_cli.inference import translate_lines
from nmt_cli.search import greedy_search, sample_search
from nmt_cli.ids import EOS_ID


def _texts(model, tok, cfg, lines):
    return [t.text for t in translate_lines(model, tok, lines, cfg)]


def test_sampling_is_reproducible_with_a_seed_and_batch_invariant(sample_model):
    model, tok, recipe = sample_model
    lines = source_lines(16)
    cfg = replace(recipe.decode, sample=True, seed=3, temperature=1.5)
    first = _texts(model, tok, cfg, lines)
    assert _texts(model, tok, cfg, lines) == first
    assert _texts(model, tok, replace(cfg, batch_size=1), lines) == first
    assert _texts(model, tok, replace(cfg, seed=4), lines) != first


def test_top_k_one_is_greedy(sample_model):
    model, tok, _ = sample_model
    src, lengths = pad_sequences(tok.encode_src(source_lines(16)), suffix=EOS_ID)
    sampled = sample_search(model, src, lengths, seeds=range(16), temperature=2.0, top_k=1)
    assert sampled.best() == greedy_search(model, src, lengths).best()


def test_tiny_top_p_is_greedy(sample_model):
    model, tok, _ = sample_model
    src, lengths = pad_sequences(tok.encode_src(source_lines(16)), suffix=EOS_ID)
    sampled = sample_search(model, src, lengths, seeds=range(16), top_p=1e-6)
    assert sampled.best() == greedy_search(model, src, lengths).best()


def test_n_best_samples_are_sorted_and_reproducible(sample_model):
    model, tok, recipe = sample_model
    cfg = replace(recipe.decode, sample=True, seed=5, temperature=2.0)
    first = translate_lines(model, tok, source_lines(6), cfg, n_best=4)
    again = translate_lines(model, tok, source_lines(6), replace(cfg, batch_size=1), n_best=4)
    for a, b in zip(first, again):
        assert len(a.hypotheses) == 4 and a.texts == b.texts
        scores = [h.score for h in a.hypotheses]
        assert scores == sorted(scores, reverse=True)
