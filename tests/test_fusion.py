"""Shallow fusion (``--lm``, ``decode.lm``): weight 0 is plain decoding, byte for byte, in every
search and for ensembles; a fused hypothesis's score is its tokens' TM + weight * LM score, which
holds only if the LM's state follows the beam; results do not depend on the batch; mistakes are
one line each."""

from __future__ import annotations

import pytest
import torch

from _decode_fixtures import decode_settings, source_lines, trained_checkpoint
from _lm_fixtures import tokenizer_of, trained_lm
from conftest import assert_one_line_error, run_cli
from nmt_cli.decoding.engine import EngineSettings, open_engine

SEARCHES = {"greedy": {"beam_size": 1}, "beam": {"beam_size": 5},
            "n_best": {"beam_size": 5, "n_best": 3}}


def _fusion_lm(checkpoint, family: str = "rnn"):
    return trained_lm(family, tokenizer_of(checkpoint))


def _translations(paths, lines, **decode):
    engine = open_engine(paths, EngineSettings(device="cpu", decode=decode))
    try:
        found = engine.translate_lines(lines, engine.defaults)
    finally:
        engine.close()
    return [[(h.tokens, h.score, h.log_prob) for h in t.hypotheses] for t in found]


@pytest.mark.parametrize("search", sorted(SEARCHES))
@pytest.mark.parametrize("arch,family", [("rnn", "rnn"), ("transformer", "transformer"),
                                         ("transformer", "rnn")])
def test_weight_zero_is_plain_decoding(arch, family, search):
    checkpoint = trained_checkpoint(arch)
    lines = source_lines(25)
    plain = _translations([checkpoint], lines, **SEARCHES[search])
    fused = _translations([checkpoint], lines, lm=str(_fusion_lm(checkpoint, family)),
                          lm_weight=0.0, **SEARCHES[search])
    assert fused == plain
    weighted = _translations([checkpoint], lines, lm=str(_fusion_lm(checkpoint, family)),
                             lm_weight=0.5, **SEARCHES[search])
    assert weighted != plain  # a control: the LM does reach the scores


def test_weight_zero_is_plain_decoding_for_an_ensemble():
    checkpoint = trained_checkpoint("transformer")
    lines = source_lines(20)
    plain = _translations([checkpoint, checkpoint], lines, beam_size=4, n_best=2)
    fused = _translations([checkpoint, checkpoint], lines, beam_size=4, n_best=2,
                          lm=str(_fusion_lm(checkpoint, "transformer")), lm_weight=0.0)
    assert fused == plain


@pytest.mark.parametrize("arch,family", [("rnn", "transformer"), ("transformer", "rnn")])
def test_a_fused_beam_scores_each_hypothesis_as_tm_plus_weighted_lm(arch, family):
    """Forced decoding of each n-best hypothesis through the fused model, and the TM and LM
    scored apart, give back the beam's score: the LM's cache was reordered with the beam."""
    from nmt_cli.checkpoint import load_checkpoint, model_from_checkpoint
    from nmt_cli.data import pad_sequences
    from nmt_cli.decoding.fusion import ShallowFusion
    from nmt_cli.decoding.lm import open_lm
    from nmt_cli.decoding.search import beam_search, score_targets

    checkpoint = trained_checkpoint(arch)
    model, tok, recipe = model_from_checkpoint(load_checkpoint(checkpoint), checkpoint)
    lm = open_lm(_fusion_lm(checkpoint, family))[0]
    weight = 0.7
    fused = ShallowFusion(model, lm, weight)
    src, src_lengths = pad_sequences(tok.encode_src(source_lines(8)), suffix=3)
    cfg = decode_settings(recipe, beam_size=5, n_best=5)
    with torch.no_grad():
        result = beam_search(fused, src, src_lengths, cfg)
    checked = 0
    for i, hyps in enumerate(result.hypotheses):
        for hyp in hyps:
            tgt, tgt_len = pad_sequences([hyp.tokens], suffix=3)
            one_src, one_len = src[i:i + 1, : int(src_lengths[i])], src_lengths[i:i + 1]
            both = float(score_targets(fused, one_src, one_len, tgt, tgt_len)[0])
            tm = float(score_targets(model, one_src, one_len, tgt, tgt_len)[0])
            lm_alone = float(score_targets(ShallowFusion(_Silent(model), lm, 1.0), one_src,
                                           one_len, tgt, tgt_len)[0])
            assert hyp.log_prob == pytest.approx(both, abs=1e-3)
            assert both == pytest.approx(tm + weight * lm_alone, abs=1e-3)
            checked += 1
    assert checked == 40


class _Silent:
    """A translation model whose every step scores 0, to read the LM's part of a fused score."""

    def __init__(self, model):
        self.model = model

    def encode(self, src, src_lengths):
        return self.model.encode(src, src_lengths)

    def step(self, prev, state, memory, need_attention=False):
        log_probs, state, att = self.model.step(prev, state, memory, need_attention)
        return torch.zeros_like(log_probs), state, att


def test_fused_translations_do_not_depend_on_the_batch():
    checkpoint = trained_checkpoint("transformer")
    lm = str(_fusion_lm(checkpoint, "transformer"))
    lines = source_lines(12)
    alone = [_translations([checkpoint], [line], lm=lm, lm_weight=0.4, beam_size=4)[0]
             for line in lines]
    together = _translations([checkpoint], lines, lm=lm, lm_weight=0.4, beam_size=4,
                             batch_size=5)
    assert [[h[0] for h in t] for t in together] == [[h[0] for h in t] for t in alone]


def test_the_cli_with_weight_zero_writes_the_same_bytes(tmp_path):
    checkpoint = trained_checkpoint("rnn")
    text = tmp_path / "in.txt"
    text.write_text("\n".join(source_lines(15) + [""]) + "\n", encoding="utf-8")
    common = ["translate", "-m", checkpoint, "-i", text, "--device", "cpu", "-q", "--n-best", "3"]
    plain = run_cli(*common)
    fused = run_cli(*common, "--lm", _fusion_lm(checkpoint), "--lm-weight", "0")
    assert plain.returncode == 0 and fused.returncode == 0, fused.stderr
    assert fused.stdout == plain.stdout and len(plain.stdout.splitlines()) == 15 * 3 + 1
    weighted = run_cli(*common, "--lm", _fusion_lm(checkpoint), "--lm-weight", "0.8")
    assert weighted.returncode == 0 and weighted.stdout != plain.stdout


def test_fusion_mistakes_are_one_line_each(tmp_path):
    checkpoint = trained_checkpoint("transformer")
    text = tmp_path / "in.txt"
    text.write_text("\n".join(source_lines(2)) + "\n", encoding="utf-8")
    base = ["translate", "-m", checkpoint, "-i", text, "--device", "cpu", "-o", tmp_path / "o"]
    own_tokenizer = trained_lm("rnn")  # trained with a tokenizer of its own
    line = assert_one_line_error(run_cli(*base, "--lm", own_tokenizer),
                                 "is not the translation model's target tokenizer")
    assert str(tokenizer_of(checkpoint)) in line  # both tokenizer files are named
    assert str(own_tokenizer.parent.parent / "tokenizer" / "joint.model") in line
    assert_one_line_error(run_cli(*base, "--lm", checkpoint), "a translation model",
                          "model.arch: lm")
    assert_one_line_error(run_cli(*base, "--lm", tmp_path / "none.pt"), "none.pt", "not found")
    assert_one_line_error(run_cli(*base, "--lm", _fusion_lm(checkpoint), "--lm-weight", "-1"),
                          "decode.lm_weight")
    assert_one_line_error(run_cli(*base, "--lm-weight", "0.3"), "--lm-weight", "--lm CKPT")
    assert not (tmp_path / "o").exists()  # no half-written output


def test_an_exported_model_with_an_lm_is_one_error(tmp_path):
    pytest.importorskip("ctranslate2")
    checkpoint = trained_checkpoint("transformer")
    exported = tmp_path / "ct2"
    assert run_cli("export", checkpoint, "-o", exported).returncode == 0
    proc = run_cli("translate", "-m", exported, "--lm", _fusion_lm(checkpoint), input="a b\n")
    assert_one_line_error(proc, "exported CTranslate2 model", "--lm")
