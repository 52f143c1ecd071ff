"""The ensemble wrapper keeps the model contract and averages its members' log-probabilities;
``nmt translate`` with two different ``-m`` decodes with both; an empty one is a user error."""

from __future__ import annotations

import pytest
import torch

from _decode_fixtures import sample_checkpoint, source_lines  # noqa: F401
from nmt_cli.config import DecodeConfig, DecoderConfig, EncoderConfig, ModelConfig
from nmt_cli.decoding.ensemble import Ensemble
from nmt_cli.decoding.search import beam_search
from nmt_cli.errors import NmtError
from nmt_cli.model import build_model


def _tiny(seed: int):
    torch.manual_seed(seed)
    cfg = ModelConfig(emb_size=8, encoder=EncoderConfig(hidden_size=8),
                      decoder=DecoderConfig(hidden_size=8))
    return build_model(cfg, 20, 20).eval()


def test_an_empty_ensemble_is_a_user_error():
    with pytest.raises(NmtError, match="at least one model"):
        Ensemble([])


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
    cfg = DecodeConfig(beam_size=3, n_best=2)
    alone = beam_search(a, src, lengths, cfg)
    twice = beam_search(Ensemble([a, a]), src, lengths, cfg)
    assert [[h.tokens for h in hs] for hs in alone.hypotheses] == \
        [[h.tokens for h in hs] for hs in twice.hypotheses]


def test_an_ensemble_of_two_different_models_differs_from_each_alone():
    a, b = _tiny(4), _tiny(5)
    src, lengths = torch.tensor([[5, 6, 3], [7, 3, 0]]), torch.tensor([3, 2])
    prev = torch.tensor([2, 2])
    with torch.no_grad():
        lp = Ensemble([a, b]).step(prev, *reversed(Ensemble([a, b]).encode(src, lengths)))[0]
        lp_a = a.step(prev, *reversed(a.encode(src, lengths)))[0]
        lp_b = b.step(prev, *reversed(b.encode(src, lengths)))[0]
    assert not torch.allclose(lp, lp_a) and not torch.allclose(lp, lp_b)
    scores = {name: [[h.score for h in hs] for hs in
                     beam_search(model, src, lengths, DecodeConfig(beam_size=3, n_best=2)).hypotheses]
              for name, model in (("a", a), ("b", b), ("ab", Ensemble([a, b])))}
    assert scores["ab"] != scores["a"] and scores["ab"] != scores["b"]


# -- through `nmt translate -m A -m B` ---------------------------------------------------------


@pytest.fixture(scope="module")
def two_checkpoints(sample_checkpoint, tmp_path_factory):
    """The sample model and a copy with noise on every weight: two different models that share
    one tokenizer, as an ensemble needs."""
    from nmt_cli.checkpoint import load_checkpoint, save_checkpoint

    payload = load_checkpoint(sample_checkpoint)
    gen = torch.Generator().manual_seed(0)
    payload["model"] = {k: v + 0.2 * torch.randn(v.shape, generator=gen) if v.is_floating_point()
                        else v for k, v in payload["model"].items()}
    other = tmp_path_factory.mktemp("ensemble") / "noisy.pt"
    save_checkpoint(other, payload)
    return sample_checkpoint, other


def _translate(tmp_path, name: str, models, *args: str) -> list[str]:
    from typer.testing import CliRunner

    from nmt_cli.cli import app

    out = tmp_path / f"{name}.out"
    argv = ["translate", *[x for m in models for x in ("-m", str(m))], "-o", str(out),
            "--device", "cpu", "-q", *args]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    return out.read_text(encoding="utf-8").splitlines()


def test_cli_ensemble_uses_both_models_and_scores_their_mean(two_checkpoints, tmp_path):
    """Forced scoring sums per-step log-probabilities, so the ensemble's score of a reference is
    the mean of its members' scores: each -m counts, with weight one half."""
    a, b = two_checkpoints
    src = tmp_path / "in.src"
    src.write_text("".join(line + "\n" for line in source_lines(12)), encoding="utf-8")
    hyp = {"a": _translate(tmp_path, "a", [a], "-i", str(src)),
           "b": _translate(tmp_path, "b", [b], "-i", str(src)),
           "ab": _translate(tmp_path, "ab", [a, b], "-i", str(src))}
    assert len(hyp["ab"]) == 12
    assert hyp["ab"] != hyp["a"] and hyp["ab"] != hyp["b"]

    ref = tmp_path / "ref.txt"
    ref.write_text("".join(line + "\n" for line in hyp["a"]), encoding="utf-8")
    score = {name: [float(x) for x in _translate(tmp_path, f"score-{name}", models, "-i", str(src),
                                                 "--score-reference", str(ref))]
             for name, models in (("a", [a]), ("b", [b]), ("ab", [a, b]))}
    assert all(abs(x - y) > 0.01 for x, y in zip(score["a"], score["b"]))
    for s_a, s_b, s_ab in zip(score["a"], score["b"], score["ab"]):
        assert s_ab == pytest.approx((s_a + s_b) / 2, abs=2e-4)  # four decimals printed
