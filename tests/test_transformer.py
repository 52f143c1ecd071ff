"""The Transformer beside the RNN: exact incremental decoding, batch independence, recipe checks.

Model tests run on small random models of both architectures (``arch``), in fp32, and compare
against the teacher-forced forward pass, which shares no decoding code with ``step``.
"""

from __future__ import annotations

import math
import typing

import pytest
import torch

from conftest import assert_one_line_error, run_cli, tiny_recipe_text
from nmt_cli.config import ModelConfig, TransformerConfig
from nmt_cli.errors import ConfigError
from nmt_cli.model import Seq2Seq, build_model
from nmt_cli.model.transformer import Transformer, sinusoidal_table
from nmt_cli.recipes import recipe_from_dict

VOCAB = 40
TRANSFORMERS = {
    "pre-sinusoidal-relu": {"norm": "pre", "positions": "sinusoidal", "activation": "relu"},
    "post-learned-gelu": {"norm": "post", "positions": "learned", "activation": "gelu"},
}


def _model(arch: str, seed: int = 0, **tcfg):
    torch.manual_seed(seed)
    if arch == "rnn":
        raw = {"emb_size": 16, "encoder": {"hidden_size": 16}, "decoder": {"hidden_size": 16}}
    else:
        raw = {"arch": "transformer", "share_embeddings": True, "tie_embeddings": True,
               "transformer": {"d_model": 16, "ff_size": 32, "heads": 4, "encoder_layers": 2,
                               "decoder_layers": 2, **tcfg}}
    cfg = recipe_from_dict({"model": raw}).model
    model = build_model(cfg, VOCAB, VOCAB, joint_vocab=True)
    with torch.no_grad():  # random, not trained: make the distributions far from uniform
        model.output_layer.weight.mul_(4.0)
    return model.eval()


ARCH_MODELS = [("rnn", {})] + [("transformer", v) for v in TRANSFORMERS.values()]
IDS = ["rnn"] + [f"transformer-{k}" for k in TRANSFORMERS]


def _padded_batch():
    """Three sources of lengths 7, 4, 2 and targets of lengths 6, 3, 5 (BOS first), padded."""
    g = torch.Generator().manual_seed(1)
    src = torch.randint(4, VOCAB, (3, 7), generator=g)
    src_lengths = torch.tensor([7, 4, 2])
    for b, n in enumerate(src_lengths.tolist()):
        src[b, n - 1] = 3  # EOS
        src[b, n:] = 0  # PAD
    tgt = torch.randint(4, VOCAB, (3, 6), generator=g)
    tgt[:, 0] = 2  # BOS
    tgt[1, 3:] = 0
    tgt[2, 5:] = 0
    return src, src_lengths, tgt, torch.tensor([6, 3, 5])


def _incremental(model, src, src_lengths, tgt):
    memory, state = model.encode(src, src_lengths)
    out = []
    for t in range(tgt.size(1)):
        prev = tgt[:, t].masked_fill(tgt[:, t] == 0, 3)  # as forced decoding feeds padding
        lp, state, _ = model.step(prev, state, memory)
        out.append(lp)
    return torch.stack(out, dim=1)  # (B, T, V)


@pytest.mark.parametrize("arch,tcfg", ARCH_MODELS, ids=IDS)
def test_cached_steps_equal_the_teacher_forced_pass_on_a_padded_batch(arch, tcfg):
    model = _model(arch, **tcfg)
    src, src_lengths, tgt, tgt_lengths = _padded_batch()
    with torch.no_grad():
        forced = torch.log_softmax(model(src, src_lengths, tgt).float(), dim=-1)
        stepped = _incremental(model, src, src_lengths, tgt)
    for b, n in enumerate(tgt_lengths.tolist()):  # real target positions only
        assert torch.allclose(stepped[b, :n], forced[b, :n], atol=1e-5, rtol=0), b
    assert forced.std() > 0.1  # the comparison is not between near-uniform distributions


def _encoder_output(model, src, src_lengths):
    memory, _ = model.encode(src, src_lengths)
    if isinstance(model, Transformer):
        return model.encode_states(src)[0]
    return memory.values


@pytest.mark.parametrize("arch,tcfg", ARCH_MODELS, ids=IDS)
def test_a_sentence_alone_and_batched_with_longer_ones_gives_the_same_numbers(arch, tcfg):
    model = _model(arch, **tcfg)
    src, src_lengths, tgt, _ = _padded_batch()
    with torch.no_grad():
        batched_enc = _encoder_output(model, src, src_lengths)
        batched_lp = _incremental(model, src, src_lengths, tgt)
        for b, n in enumerate(src_lengths.tolist()):
            alone_enc = _encoder_output(model, src[b:b + 1, :n], src_lengths[b:b + 1])
            alone_lp = _incremental(model, src[b:b + 1, :n], src_lengths[b:b + 1], tgt[b:b + 1])
            assert torch.allclose(alone_enc[0], batched_enc[b, :n], atol=1e-5, rtol=0)
            assert torch.allclose(alone_lp[0], batched_lp[b], atol=1e-5, rtol=0)


def test_select_reorders_the_cache_like_rebuilding_it():
    model = _model("transformer")
    src, src_lengths, tgt, _ = _padded_batch()
    order = torch.tensor([2, 0, 0, 1])
    with torch.no_grad():
        memory, state = model.encode(src, src_lengths)
        for t in range(3):
            _, state, _ = model.step(tgt[:, t], state, memory)
        lp, _, _ = model.step(tgt[order, 3], state.select(order), memory.select(order))
        memory2, state2 = model.encode(src[order], src_lengths[order])
        for t in range(3):
            _, state2, _ = model.step(tgt[order, t], state2, memory2)
        lp2, _, _ = model.step(tgt[order, 3], state2, memory2)
    assert torch.allclose(lp, lp2, atol=1e-5, rtol=0)
    assert state2.keys[0].shape[2] == 3  # the cache grows by one position per step


def test_attention_is_the_last_layers_cross_attention_only_when_asked():
    model = _model("transformer")
    src, src_lengths, tgt, _ = _padded_batch()
    with torch.no_grad():
        memory, state = model.encode(src, src_lengths)
        lp_plain, _, none = model.step(tgt[:, 0], state, memory)
        lp, _, weights = model.step(tgt[:, 0], state, memory, need_attention=True)
        # the same weights by hand, from the last layer's cross-attention of one step
        layer = model.decoder_layers[-1]
        x = model._embed(model.tgt_embed, tgt[:, :1])
        for first in model.decoder_layers[:-1]:
            x, _, _ = first(x, (state.keys[0], state.values[0]), memory.keys[0], memory.values[0],
                            memory.mask[:, None, None, :])
        q, k, v = layer.self_attn.self_projections(layer.self_block.inputs(x))
        x = layer.self_block.residual(x, layer.self_attn.attend(q, k, v)[0])
        q = layer.cross_attn.cross_query(layer.cross_block.inputs(x))
        scores = q @ memory.keys[-1].transpose(-1, -2) / math.sqrt(q.size(-1))
        scores = scores.masked_fill(~memory.mask[:, None, None, :], float("-inf"))
        expected = scores.softmax(-1).mean(1)[:, 0]
    assert none is None
    assert torch.allclose(lp, lp_plain, atol=1e-5, rtol=0)  # the explicit path agrees
    assert torch.allclose(weights, expected, atol=1e-6)
    assert torch.allclose(weights.sum(-1), torch.ones(3), atol=1e-6)
    assert bool((weights[2, 2:] == 0).all())  # nothing on padding


def test_bf16_autocast_trains_on_the_cpu():
    model = _model("transformer").train()
    src, src_lengths, tgt, _ = _padded_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(src, src_lengths, tgt)
    assert logits.dtype == torch.bfloat16
    logits.float().logsumexp(-1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in model.parameters() if p.requires_grad)


def test_options_change_the_model_and_tying_shares_one_table():
    model = _model("transformer")
    assert model.output_layer.weight is model.tgt_embed.weight is model.src_embed.weight
    assert "positions.weight" in dict(_model("transformer", positions="learned").named_parameters())
    table = sinusoidal_table(10, 8)
    assert torch.allclose(table[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    names = {n for n, _ in _model("transformer", norm="post").named_parameters()}
    assert "encoder_norm.weight" not in names and "encoder_layers.0.attn_block.norm.weight" in names


def test_every_arch_a_recipe_may_name_builds_its_model_and_decodes_a_step():
    """Each choice of model.arch builds a model of its own class that takes one decoding step;
    an arch the config does not list is a recipe error, not a silent default."""
    choices = typing.get_args(typing.get_type_hints(ModelConfig)["arch"])
    assert set(choices) == {"rnn", "transformer", "lm"}  # lm: tests/test_lm.py
    built = {}
    for arch in ("rnn", "transformer"):
        torch.manual_seed(0)
        model = build_model(recipe_from_dict({"model": {"arch": arch}}).model, VOCAB, VOCAB,
                            joint_vocab=True).eval()
        with torch.no_grad():
            memory, state = model.encode(torch.tensor([[5, 6, 3]]), torch.tensor([3]))
            log_probs, _, _ = model.step(torch.tensor([2]), state, memory)
        assert log_probs.shape == (1, VOCAB)
        built[arch] = type(model)
    assert built == {"rnn": Seq2Seq, "transformer": Transformer}
    with pytest.raises(ConfigError, match="^model.arch: "):
        recipe_from_dict({"model": {"arch": "lstm"}})


# ----------------------------------------------------------------------------------------------
# Training


def test_cosine_schedule_warms_up_then_falls_to_the_floor_at_max_steps():
    from nmt_cli.config import TrainConfig
    from nmt_cli.training.optim import LrSchedule

    cfg = TrainConfig(schedule="cosine", learning_rate=1e-3, warmup_steps=10, max_steps=110,
                      min_learning_rate=1e-5)
    schedule = LrSchedule(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), cfg)
    rates = [schedule.rate(s) for s in range(1, 131)]
    assert rates[4] == pytest.approx(5e-4) and rates[9] == pytest.approx(1e-3)
    assert rates[59] == pytest.approx((1e-3 + 1e-5) / 2)  # half-way down at half the decay
    assert all(a >= b for a, b in zip(rates[9:], rates[10:]))
    assert rates[109] == pytest.approx(1e-5) and rates[-1] == pytest.approx(1e-5)
    with pytest.raises(ConfigError, match="^train.schedule: .*train.max_steps"):
        TrainConfig(schedule="cosine", max_steps=0)
    with pytest.raises(ConfigError, match="^train.average_last: .*train.keep_last >= 3"):
        TrainConfig(average_last=3, keep_last=2)


def test_cosine_with_max_time_ends_at_the_floor_when_the_time_runs_out():
    """A time-limited run decays over its time budget (from the end of warmup), so that the rate
    is at the floor when max_time stops training, whatever the speed of the machine; with
    max_steps as well, whichever budget runs out first sets the pace."""
    from nmt_cli.config import TrainConfig
    from nmt_cli.training.optim import LrSchedule

    def fresh(max_steps=0):
        cfg = TrainConfig(schedule="cosine", learning_rate=1e-3, warmup_steps=10,
                          max_steps=max_steps, max_time=10.0, min_learning_rate=1e-5)
        return LrSchedule(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), cfg)

    schedule = fresh()
    assert schedule.step(5, 30.0) == pytest.approx(5e-4)  # warmup is counted in steps
    assert schedule.step(10, 60.0) == pytest.approx(1e-3)  # warmup ends at 60 s of 600
    assert schedule.warm_seconds == 60.0
    assert schedule.step(11, 330.0) == pytest.approx((1e-3 + 1e-5) / 2)  # half of 540 s
    assert schedule.step(12, 599.0) == pytest.approx(1e-5, abs=1e-7)
    assert schedule.step(13, 700.0) == pytest.approx(1e-5)
    # a resumed run keeps the time at which warmup ended
    resumed = fresh()
    resumed.load_state_dict(schedule.state_dict())
    assert resumed.rate(11, 330.0) == pytest.approx((1e-3 + 1e-5) / 2)
    old = {k: v for k, v in schedule.state_dict().items() if k != "warm_seconds"}
    resumed.load_state_dict(old)  # a checkpoint from before: warmup taken to end now
    assert resumed.warm_seconds is None
    # steps run out first: the step budget sets the rate
    both = fresh(max_steps=110)
    both.step(10, 60.0)
    assert both.step(60, 100.0) == pytest.approx((1e-3 + 1e-5) / 2)
    # time runs out first: the time budget does
    assert both.step(20, 330.0) == pytest.approx((1e-3 + 1e-5) / 2)
    assert TrainConfig(schedule="cosine", max_steps=0, max_time=5.0).max_time == 5.0


def test_average_last_writes_the_mean_of_the_newest_checkpoints():
    import json

    from _decode_fixtures import trained_checkpoint

    folder = trained_checkpoint("transformer").parent  # trained with average_last: 2
    steps = sorted(folder.glob("ckpt-*.pt"))
    assert [p.name for p in steps] == ["ckpt-00000060.pt", "ckpt-00000080.pt"]
    loaded = [torch.load(p, weights_only=True)["model"] for p in steps]
    averaged = torch.load(folder / "averaged.pt", weights_only=True)
    for name, value in averaged["model"].items():
        assert torch.allclose(value, (loaded[0][name] + loaded[1][name]) / 2, atol=1e-7), name
    events = [json.loads(line) for line in
              (folder.parent / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    done = [e for e in events if e["event"] == "averaged"]
    assert len(done) == 1 and done[0]["checkpoints"] == [p.name for p in steps]
    assert "dev_loss" in done[0]


# ----------------------------------------------------------------------------------------------
# The recipe


def test_arch_keys_of_the_other_architecture_are_errors_naming_them():
    with pytest.raises(ConfigError, match=r"^model\.encoder: belongs to model\.arch 'rnn'"):
        recipe_from_dict({"model": {"arch": "transformer", "encoder": {"hidden_size": 8}}})
    with pytest.raises(ConfigError, match=r"^model\.emb_size: belongs"):
        recipe_from_dict({"model": {"arch": "transformer", "emb_size": 8}})
    with pytest.raises(ConfigError, match=r"^model\.transformer: belongs to model\.arch "
                                          r"'transformer', not 'rnn'"):
        recipe_from_dict({"model": {"transformer": {"d_model": 8}}})
    with pytest.raises(ConfigError, match=r"model\.transformer\.heads: .*model\.transformer\."
                                          r"d_model"):
        TransformerConfig(d_model=100, heads=8)
    with pytest.raises(ConfigError, match="did you mean 'model.transformer.ff_size'"):
        recipe_from_dict({"model": {"arch": "transformer", "transformer": {"ff_sise": 8}}})


def test_a_resolved_transformer_recipe_reads_back_the_same():
    from nmt_cli.config import to_dict

    recipe = recipe_from_dict({"model": {"arch": "transformer", "transformer": {"d_model": 64}}})
    assert recipe.model.encoder is None and recipe.model.transformer.d_model == 64
    assert recipe_from_dict(to_dict(recipe)) == recipe
    rnn = recipe_from_dict({})
    assert rnn.model.emb_size == 256 and rnn.model.transformer is None
    assert recipe_from_dict(to_dict(rnn)) == rnn


@pytest.mark.parametrize("model_yaml,needles", [
    ("  arch: transformer\n  encoder: {hidden_size: 8}\n", ["model.encoder", "'rnn'"]),
    ("  arch: transformer\n  transformer: {d_model: 100, heads: 8}\n",
     ["model.transformer.heads", "model.transformer.d_model"]),
    ("  arch: transformr\n", ["model.arch", "did you mean 'transformer'"]),
], ids=["rnn-key", "heads", "unknown-arch"])
def test_recipe_errors_are_one_line_naming_the_key(tmp_path, model_yaml, needles):
    text = tiny_recipe_text(str(tmp_path / "work"))
    head, tail = text.split("model:\n", 1)
    tail = tail[tail.index("train:"):]
    path = tmp_path / "bad.yaml"
    path.write_text(head + "model:\n" + model_yaml + tail, encoding="utf-8")
    assert_one_line_error(run_cli("tokenizer", str(path)), *needles)


def test_the_cache_is_reordered_once_per_step_and_selections_compose():
    """``select`` only records the new row order; the next step gathers the stored rows into
    the longer cache. Two selections in a row read the same rows as applying them one by one."""
    from nmt_cli.model.transformer import extend_cache

    torch.manual_seed(0)
    cached, new = torch.randn(6, 2, 3, 4), torch.randn(4, 2, 1, 4)
    order = torch.tensor([5, 0, 0, 2])
    expected = torch.cat([cached.index_select(0, order), new], dim=2)
    assert torch.equal(extend_cache(cached, order, new), expected)
    assert torch.equal(extend_cache(cached[:4], None, new), torch.cat([cached[:4], new], dim=2))
    model = _model("transformer")
    src, src_lengths, tgt, _ = _padded_batch()
    first, second = torch.tensor([2, 0, 1, 1]), torch.tensor([3, 3, 0])
    with torch.no_grad():
        memory, state = model.encode(src, src_lengths)
        for t in range(2):
            _, state, _ = model.step(tgt[:, t], state, memory)
        both = state.select(first).select(second)
        assert both.keys is state.keys  # nothing copied yet
        rows = first.index_select(0, second)
        lp, after, _ = model.step(tgt[rows, 2], both, memory.select(rows))
        eager = [k.index_select(0, rows) for k in state.keys]
        assert after.order is None and after.keys[0].shape[:3] == (3, eager[0].size(1), 3)
        for mine, theirs in zip(after.keys, eager):
            assert torch.equal(mine[:, :, :2], theirs)


def test_beam_rows_share_their_sentences_memory_and_step_as_with_copies():
    """Expanding each sentence to k rows and pruning whole sentences regroup the memory (one
    copy per sentence, never per beam); any other selection gives each row its own copy. Either
    way a step gives what a memory of one row per decoding row gives."""
    from nmt_cli.model.transformer import TransformerMemory

    model = _model("transformer")
    src, src_lengths, tgt, _ = _padded_batch()
    k = 3
    expand = torch.arange(3).repeat_interleave(k)
    with torch.no_grad():
        memory, state = model.encode(src, src_lengths)
        grouped = memory.select(expand)
        assert grouped.group == k and grouped.keys[0] is memory.keys[0]  # nothing copied
        copies = TransformerMemory([t.index_select(0, expand) for t in memory.keys],
                                   [t.index_select(0, expand) for t in memory.values],
                                   memory.mask.index_select(0, expand))
        state = state.select(expand)
        prev = tgt[:, 0].repeat_interleave(k)
        lp, _, w = model.step(prev, state, grouped, need_attention=True)
        lp_copies, _, w_copies = model.step(prev, state, copies, need_attention=True)
        assert torch.allclose(lp, lp_copies, atol=1e-5, rtol=0)
        assert torch.allclose(w, w_copies, atol=1e-6, rtol=0) and w.shape == (9, 7)
        kept = grouped.select(torch.tensor([6, 7, 8, 0, 1, 2]))  # sentences 2 and 0 go on
        assert kept.group == k and kept.keys[0].size(0) == 2
        assert torch.equal(kept.keys[0][0], memory.keys[0][2])
        mixed = grouped.select(torch.tensor([4, 0, 8]))  # one row of each: a copy per row
        assert mixed.group == 1 and torch.equal(mixed.mask, memory.mask[[1, 0, 2]])
