"""The attentional encoder-decoder: teacher forcing agrees with step-by-step decoding, padding never
changes a sentence's result, attention is a distribution over real tokens, and it learns."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from nmt_cli.config import DecoderConfig, EncoderConfig, ModelConfig
from nmt_cli.errors import ConfigError
from nmt_cli.model import build_model, count_parameters
from nmt_cli.ids import BOS_ID, EOS_ID, PAD_ID
from nmt_cli.training.loss import sequence_loss

VOCAB = 23
CELLS = ("gru", "lstm")
ATTENTIONS = ("bahdanau", "luong_dot", "luong_general")
COMBOS = list(itertools.product(CELLS, ATTENTIONS, (True, False)))
IDS = [f"{c}-{a}-{'feed' if f else 'nofeed'}" for c, a, f in COMBOS]


def make_cfg(cell="gru", attention="bahdanau", feeding=True, *, enc_layers=2, dec_layers=2,
             bidirectional=True, init="bridge", enc_hidden=12, dec_hidden=16, emb=16,
             dropout=0.1, **model_kw) -> ModelConfig:
    """A tiny model; encoder and decoder sizes differ so Luong-dot has to project its keys."""
    return ModelConfig(
        emb_size=emb, emb_dropout=dropout, **model_kw,
        encoder=EncoderConfig(cell=cell, hidden_size=enc_hidden, layers=enc_layers,
                              bidirectional=bidirectional, dropout=dropout),
        decoder=DecoderConfig(cell=cell, hidden_size=dec_hidden, layers=dec_layers,
                              attention=attention, input_feeding=feeding, init=init,
                              dropout=dropout))


def make_model(cfg: ModelConfig, seed: int = 0, vocab: int = VOCAB):
    torch.manual_seed(seed)
    return build_model(cfg, vocab, vocab).eval()


def toy_batch(seed: int = 0, src_lens=(3, 7, 5), tgt_lens=(4, 6, 2)):
    """Padded src (with EOS), lengths, tgt_in (BOS + ids), tgt_out (ids + EOS)."""
    g = torch.Generator().manual_seed(seed)
    srcs = [torch.randint(4, VOCAB, (n,), generator=g).tolist() + [EOS_ID] for n in src_lens]
    tgts = [torch.randint(4, VOCAB, (n,), generator=g).tolist() for n in tgt_lens]
    S, T = max(map(len, srcs)), max(tgt_lens) + 1
    src = torch.tensor([s + [PAD_ID] * (S - len(s)) for s in srcs])
    tgt_in = torch.tensor([[BOS_ID] + t + [PAD_ID] * (T - 1 - len(t)) for t in tgts])
    tgt_out = torch.tensor([t + [EOS_ID] + [PAD_ID] * (T - 1 - len(t)) for t in tgts])
    return src, torch.tensor([len(s) for s in srcs]), tgt_in, tgt_out


def step_log_probs(model, src, src_lengths, tgt_in):
    """Decode the given target one token at a time; (B, T, V) log-probs and (B, T, S) weights."""
    memory, state = model.encode(src, src_lengths)
    lps, weights = [], []
    for t in range(tgt_in.size(1)):
        lp, state, w = model.step(tgt_in[:, t], state, memory)
        lps.append(lp)
        weights.append(w)
    return torch.stack(lps, 1), torch.stack(weights, 1)


@pytest.mark.parametrize("cell, attention, feeding", COMBOS, ids=IDS)
def test_teacher_forcing_equals_step_by_step(cell, attention, feeding):
    model = make_model(make_cfg(cell, attention, feeding))
    src, lens, tgt_in, _ = toy_batch()
    with torch.no_grad():
        forced = torch.log_softmax(model(src, lens, tgt_in), dim=-1)
        stepped, _ = step_log_probs(model, src, lens, tgt_in)
    assert forced.shape == stepped.shape == (3, tgt_in.size(1), VOCAB)
    torch.testing.assert_close(forced, stepped, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cell, attention, feeding", COMBOS, ids=IDS)
def test_sentence_alone_equals_sentence_in_batch(cell, attention, feeding):
    model = make_model(make_cfg(cell, attention, feeding), seed=1)
    src, lens, tgt_in, _ = toy_batch(seed=1, src_lens=(3, 9, 6), tgt_lens=(3, 8, 5))
    n_src, n_tgt = int(lens[0]), 4  # BOS + 3 tokens
    alone_src, alone_lens, alone_tgt = src[:1, :n_src], lens[:1], tgt_in[:1, :n_tgt]
    assert src.size(1) > n_src and tgt_in.size(1) > n_tgt  # the batch really pads sentence 0
    with torch.no_grad():
        mem_b, state_b = model.encode(src, lens)
        mem_a, state_a = model.encode(alone_src, alone_lens)
        torch.testing.assert_close(mem_b.values[0, :n_src], mem_a.values[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(state_b.hidden[:, 0], state_a.hidden[:, 0], atol=1e-5, rtol=0)
        forced_b = torch.log_softmax(model(src, lens, tgt_in), -1)[0, :n_tgt]
        forced_a = torch.log_softmax(model(alone_src, alone_lens, alone_tgt), -1)[0]
        torch.testing.assert_close(forced_b, forced_a, atol=1e-5, rtol=0)
        step_b, _ = step_log_probs(model, src, lens, tgt_in)
        step_a, _ = step_log_probs(model, alone_src, alone_lens, alone_tgt)
        torch.testing.assert_close(step_b[0, :n_tgt], step_a[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", [
    dict(bidirectional=False, enc_layers=1, dec_layers=1),
    dict(init="zeros"),
    dict(enc_layers=3, dec_layers=1, enc_hidden=16, dec_hidden=32),
], ids=["unidirectional", "zeros-init", "deep-encoder"])
def test_padding_invariance_other_shapes(variant):
    model = make_model(make_cfg("lstm", "luong_general", True, **variant), seed=2)
    src, lens, tgt_in, _ = toy_batch(seed=2, src_lens=(2, 8), tgt_lens=(2, 6))
    with torch.no_grad():
        batched = torch.log_softmax(model(src, lens, tgt_in), -1)[0, :3]
        alone = torch.log_softmax(model(src[:1, :3], lens[:1], tgt_in[:1, :3]), -1)[0]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cell, attention, feeding", COMBOS, ids=IDS)
def test_attention_is_a_distribution_over_real_tokens(cell, attention, feeding):
    model = make_model(make_cfg(cell, attention, feeding), seed=3)
    src, lens, tgt_in, _ = toy_batch(seed=3, src_lens=(2, 8, 5))
    mask = src != PAD_ID
    assert (~mask).any()
    with torch.no_grad():
        _, step_w = step_log_probs(model, src, lens, tgt_in)  # (B, T, S)
        memory, state = model.encode(src, lens)
        _, forced_w = model.decoder(model.tgt_embed(tgt_in), state, memory)
    for weights in (step_w, forced_w):
        assert weights.shape == (3, tgt_in.size(1), src.size(1))
        pad = (~mask).unsqueeze(1).expand_as(weights)
        assert torch.all(weights[pad] == 0.0)  # exactly zero, not just small
        assert torch.all(weights >= 0)
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:2]), atol=1e-6,
                                   rtol=0)


@pytest.mark.parametrize("cell, attention, feeding", COMBOS, ids=IDS)
def test_a_few_steps_lower_the_loss(cell, attention, feeding):
    model = make_model(make_cfg(cell, attention, feeding), seed=4).train()
    src, lens, tgt_in, tgt_out = toy_batch(seed=4)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss, nll = sequence_loss(model(src, lens, tgt_in), tgt_out, 0.0)
        (loss / int((tgt_out != PAD_ID).sum())).backward()
        opt.step()
        losses.append(float(nll))
    assert losses[-1] < 0.5 * losses[0], losses


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout():
    model = make_model(make_cfg(dropout=0.3))
    src, lens, tgt_in, _ = toy_batch()
    with torch.no_grad():
        a, b = model(src, lens, tgt_in), model(src, lens, tgt_in)
        assert torch.equal(a, b)
        model.train()
        c = model(src, lens, tgt_in)
    assert not torch.allclose(a, c)


# -- embeddings ----------------------------------------------------------------------------------


def test_tie_embeddings_with_mismatched_sizes_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        build_model(make_cfg(emb=16, dec_hidden=32, tie_embeddings=True), VOCAB, VOCAB)
    msg = str(info.value)
    assert msg.startswith("model.tie_embeddings:")
    assert "32" in msg and "16" in msg


def test_tie_embeddings_shares_the_output_matrix():
    untied = build_model(make_cfg(emb=16, dec_hidden=16), VOCAB, VOCAB + 5)
    tied = build_model(make_cfg(emb=16, dec_hidden=16, tie_embeddings=True), VOCAB, VOCAB + 5)
    assert count_parameters(untied) - count_parameters(tied) == (VOCAB + 5) * 16
    assert tied.output_layer.weight is tied.tgt_embed.weight


@pytest.mark.parametrize("joint, src_v, tgt_v", [(False, VOCAB, VOCAB), (True, VOCAB, VOCAB + 1),
                                                 (False, VOCAB, VOCAB + 7)])
def test_share_embeddings_needs_a_joint_vocabulary(joint, src_v, tgt_v):
    with pytest.raises(ConfigError) as info:
        build_model(make_cfg(share_embeddings=True), src_v, tgt_v, joint_vocab=joint)
    assert str(info.value).startswith("model.share_embeddings:")
    assert "tokenizer.joint" in str(info.value)


def test_share_embeddings_with_joint_vocabulary():
    shared = build_model(make_cfg(share_embeddings=True), VOCAB, VOCAB, joint_vocab=True)
    separate = build_model(make_cfg(), VOCAB, VOCAB, joint_vocab=True)
    assert shared.src_embed.weight is shared.tgt_embed.weight
    assert count_parameters(separate) - count_parameters(shared) == VOCAB * 16


def test_padding_embedding_is_zero():
    model = build_model(make_cfg(), VOCAB, VOCAB)
    assert torch.count_nonzero(model.src_embed.weight[PAD_ID]) == 0
    assert torch.count_nonzero(model.tgt_embed.weight[PAD_ID]) == 0


@pytest.mark.parametrize("cell, attention, feeding", COMBOS, ids=IDS)
def test_every_combination_learns_on_the_sample(experiment, cell, attention, feeding):
    """A few updates on real batches of the bundled sample lower the held-out batch loss."""
    import json

    from nmt_cli.data import ParallelData
    from nmt_cli.text.preprocess import data_dir

    manifest = json.loads((data_dir(experiment.recipe) / "manifest.json").read_text())
    data = ParallelData(data_dir(experiment.recipe), "train", manifest["dtype"])
    batches = data.batches(600, np.random.default_rng(0))
    vocab = manifest["src_vocab_size"]
    model = make_model(make_cfg(cell, attention, feeding, enc_layers=1, dec_layers=1), seed=1,
                       vocab=vocab)
    held_out = data.collate(batches[-1])

    def held_out_nll() -> float:
        model.eval()
        with torch.no_grad():
            logits = model(held_out.src, held_out.src_lengths, held_out.tgt_in)
            nll = float(sequence_loss(logits, held_out.tgt_out, 0.0)[1]) / held_out.n_tgt_tokens
        model.train()
        return nll

    before = held_out_nll()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for idx in batches[:12]:
        batch = data.collate(idx)
        opt.zero_grad()
        loss, _ = sequence_loss(model(batch.src, batch.src_lengths, batch.tgt_in), batch.tgt_out,
                                0.1)
        (loss / batch.n_tgt_tokens).backward()
        opt.step()
    after = held_out_nll()
    assert after < before - 0.5, (before, after)
