"""The ensemble wrapper keeps the model contract and averages its members' log-probabilities."""

from __future__ import annotations

import torch

from nmt_cli.config import DecoderConfig, EncoderConfig, ModelConfig
from nmt_cli.ensemble import Ensemble
from nmt_cli.model import build_model
from nmt_cli.search import beam_search


def _tiny(seed: int):
    torch.manual_seed(seed)
    cfg = ModelConfig(emb_size=8, encoder=EncoderConfig(hidden_size=8),
                      decoder=DecoderConfig(hidden_size=8))
    return build_model(cfg, 20, 20).eval()


def test_step_is_the_mean_of_the_members():
    a, b = _tiny(1), _tiny(2)
    ens = Ensemble([a, b])
    src, lengths = torch.tensor([[5, 6, 3], [7, 3, 0]]), torch.tensor([3, 2])
    prev = torch.tensor([2, 2])
    with torch.no_grad():
        lp, state, att = ens.step(prev, *reversed(ens.encode(src, lengths)), need_attention=True)
        lp_a, _, att_a = a.step(prev, *reversed(a.encode(src, lengths)))
        lp_b, _, att_b = b.step(prev, *reversed(b.encode(src, lengths)))
    assert torch.allclose(lp, (lp_a + lp_b) / 2)
    assert torch.allclose(att, (att_a + att_b) / 2)
    assert len(state.select(torch.tensor([1, 1, 0])).parts) == 2


def test_beam_search_runs_on_an_ensemble_and_a_self_ensemble_matches():
    a = _tiny(3)
    src, lengths = torch.tensor([[5, 6, 3], [7, 3, 0]]), torch.tensor([3, 2])
    alone = beam_search(a, src, lengths, beam_size=3, n_best=2)
    twice = beam_search(Ensemble([a, a]), src, lengths, beam_size=3, n_best=2)
    assert [[h.tokens for h in hs] for hs in alone.hypotheses] == \
        [[h.tokens for h in hs] for hs in twice.hypotheses]
