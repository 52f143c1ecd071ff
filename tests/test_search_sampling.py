"""Sampling: reproducible with a seed, independent of the batch, and cut by top-k / top-p."""

from __future__ import annotations

from _decode_fixtures import (decode_settings, sample_checkpoint, sample_model,  # noqa: F401
                              source_lines, translate)
from nmt_cli.data import pad_sequences
from nmt_cli.decoding.search import greedy_search, sample_search
from nmt_cli.ids import EOS_ID


def _texts(sample_model, lines, **changes):
    return [t.text for t in translate(sample_model, lines, **changes)]


def test_sampling_is_reproducible_with_a_seed_and_batch_invariant(sample_model):
    lines = source_lines(16)
    cfg = {"sample": True, "seed": 3, "temperature": 1.5}
    first = _texts(sample_model, lines, **cfg)
    assert _texts(sample_model, lines, **cfg) == first
    assert _texts(sample_model, lines, **cfg, batch_size=1) == first
    assert _texts(sample_model, lines, **{**cfg, "seed": 4}) != first


def test_top_k_one_is_greedy(sample_model):
    model, tok, recipe = sample_model
    src, lengths = pad_sequences(tok.encode_src(source_lines(16)), suffix=EOS_ID)
    cfg = decode_settings(recipe, sample=True, temperature=2.0, top_k=1)
    sampled = sample_search(model, src, lengths, range(16), cfg)
    assert sampled.best() == greedy_search(model, src, lengths, cfg).best()


def test_tiny_top_p_is_greedy(sample_model):
    model, tok, recipe = sample_model
    src, lengths = pad_sequences(tok.encode_src(source_lines(16)), suffix=EOS_ID)
    cfg = decode_settings(recipe, sample=True, top_p=1e-6)
    sampled = sample_search(model, src, lengths, range(16), cfg)
    assert sampled.best() == greedy_search(model, src, lengths, cfg).best()


def test_n_best_samples_are_sorted_and_reproducible(sample_model):
    cfg = {"sample": True, "seed": 5, "temperature": 2.0, "n_best": 4}
    first = translate(sample_model, source_lines(6), **cfg)
    again = translate(sample_model, source_lines(6), **cfg, batch_size=1)
    for a, b in zip(first, again):
        assert len(a.hypotheses) == 4 and a.texts == b.texts
        scores = [h.score for h in a.hypotheses]
        assert scores == sorted(scores, reverse=True)
