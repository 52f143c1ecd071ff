"""``precision: auto`` and bf16 decoding: what auto picks on CPUs with and without native bf16,
what training records, and that bf16 translation keeps its promises (batch invariance, fp32
scores, old checkpoints unchanged)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor
from typer.testing import CliRunner

import nmt_cli.runtime as runtime
from _decode_fixtures import (arch_checkpoint, sample_checkpoint, sample_model,  # noqa: F401
                              source_lines)
from _train_fixtures import new_run, prepared  # noqa: F401
from nmt_cli.cli import app
from nmt_cli.config import DecodeConfig, TrainConfig, with_overrides
from nmt_cli.decoding.inference import translate_lines
from nmt_cli.decoding.translate import TranslateOptions, translate_file
from nmt_cli.errors import ConfigError, NmtError
from nmt_cli.recipes import load_recipe

CPU = torch.device("cpu")
X86_FLAGS = "fpu vme de pse tsc msr pae mce cx8 apic sse sse2 avx avx2 fma avx512f avx512bw"


def _cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text("".join(f"processor\t: {i}\nvendor_id\t: GenuineIntel\nflags\t\t: {flags}\n\n"
                            for i in range(2)), encoding="utf-8")
    return path


@pytest.fixture()
def without_bf16(monkeypatch, tmp_path):
    """A CPU whose flags lack avx512_bf16 and amx_bf16."""
    monkeypatch.setattr(runtime, "CPUINFO", _cpuinfo(tmp_path, X86_FLAGS))


@pytest.fixture()
def with_bf16(monkeypatch, tmp_path):
    monkeypatch.setattr(runtime, "CPUINFO", _cpuinfo(tmp_path, X86_FLAGS + " avx512_bf16 amx_bf16"))


def test_auto_is_fp32_on_a_cpu_without_bf16(without_bf16):
    assert runtime.cpu_has_bf16() is False
    assert runtime.resolve_precision("auto", CPU, "decode.precision") == "fp32"


def test_auto_is_bf16_on_a_cpu_with_native_bf16(with_bf16):
    assert runtime.resolve_precision("auto", CPU, "train.precision") == "bf16"


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_either_flag_alone_means_native_bf16(monkeypatch, tmp_path, flag):
    monkeypatch.setattr(runtime, "CPUINFO", _cpuinfo(tmp_path, f"{X86_FLAGS} {flag}"))
    assert runtime.resolve_precision("auto", CPU, "decode.precision") == "bf16"


def test_without_cpuinfo_torch_probes_the_instruction_set(monkeypatch, tmp_path):
    monkeypatch.setattr(runtime, "CPUINFO", tmp_path / "absent")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert runtime.resolve_precision("auto", CPU, "decode.precision") == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert runtime.resolve_precision("auto", CPU, "decode.precision") == "bf16"


def test_explicit_choices_are_kept_and_fp16_on_cpu_names_the_key(without_bf16):
    assert runtime.resolve_precision("bf16", CPU, "decode.precision") == "bf16"
    assert runtime.resolve_precision("fp32", CPU, "decode.precision") == "fp32"
    with pytest.raises(ConfigError, match="decode.precision: fp16 needs a CUDA device"):
        runtime.resolve_precision("fp16", CPU, "decode.precision")


def test_training_and_decoding_default_to_auto():
    """Training: auto, measured to cost no BLEU over full pipelines (docs/results.md). Decoding:
    auto too, now that bf16 beam search gives the same lines at every batch size."""
    assert TrainConfig().precision == "auto" and DecodeConfig().precision == "auto"


# -- training -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cpu, expected", [("with_bf16", "bf16"), ("without_bf16", "fp32")])
def test_training_records_what_auto_chose(prepared, request, cpu, expected):  # noqa: F811
    from nmt_cli.training.trainer import Trainer

    request.getfixturevalue(cpu)
    recipe, workdir = new_run(prepared, f"auto_{cpu}", precision="auto", max_steps=2,
                              valid_every=2)
    trainer = Trainer(load_recipe(recipe))
    assert trainer.precision == expected
    trainer.train()
    session = json.loads((workdir / "environment.json").read_text())["sessions"][-1]
    assert (session["precision"], session["precision_setting"]) == (expected, "auto")
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # master weights
    saved = torch.load(workdir / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(t.dtype == torch.float32 for t in saved.values())


# -- decoding -----------------------------------------------------------------------------------


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def test_bf16_translation_is_the_same_at_batch_1_and_64(arch_checkpoint, tmp_path):  # noqa: F811
    """Both architectures decode at bf16 (the Transformer's output layer takes the cast weight)
    and give the same lines alone and batched."""
    src = tmp_path / "in.src"
    src.write_text("".join(line + "\n" for line in source_lines(40)), encoding="utf-8")
    outputs = {}
    for batch in (1, 64):
        for beam in (5, 1):
            out = tmp_path / f"b{batch}-k{beam}.hyp"
            stats = translate_file(arch_checkpoint, src, out, device="cpu", precision="bf16",
                                   batch_size=batch, beam_size=beam)
            assert stats.precision == "bf16"
            outputs[batch, beam] = _lines(out)
    for beam in (5, 1):
        assert len(outputs[1, beam]) == 40
        assert outputs[1, beam] == outputs[64, beam]


def test_bf16_model_scores_in_fp32_and_translates_close_to_fp32(sample_model):  # noqa: F811
    model, tok, recipe = sample_model
    bf16 = runtime.for_decoding(type(model)(recipe.model, tok.src_vocab_size, tok.tgt_vocab_size,
                                            tok.joint).eval(), "bf16")
    bf16.load_state_dict(model.state_dict())
    assert bf16.output_layer.weight.dtype == torch.bfloat16  # the vocabulary projection
    att = bf16.decoder.att_vector  # a layer with a bias: bf16 product, fp32 bias
    assert att.weight.dtype == torch.bfloat16 and att.bias.dtype == torch.float32
    assert isinstance(bf16.decoder.rnn, runtime.LowPrecisionGRU)  # the decoder's GRU: bf16
    assert isinstance(bf16.encoder.rnn, runtime.LowPrecisionGRU)  # the encoder's too
    assert all(p.dtype == torch.float32 for p in bf16.encoder.rnn.parameters())  # fp32 kept
    assert bf16.src_embed.weight.dtype == torch.float32
    cfg = with_overrides(recipe.decode, {"beam_size": 5, "n_best": 1}, "decode")
    norm, lines = recipe.preprocess.normalize, source_lines(40)
    with torch.inference_mode():
        ref = translate_lines(model, tok, lines, cfg, normalize=norm)
        low = translate_lines(bf16, tok, lines, cfg, normalize=norm)
        memory, state = bf16.encode(*_batch(tok, lines[:3]))
        log_probs, _, _ = bf16.step(torch.full((3,), 1), state, memory)
    assert log_probs.dtype == torch.float32  # the log-softmax over the vocabulary stays fp32
    same = sum(a.text == b.text for a, b in zip(ref, low))
    assert same >= 0.8 * len(lines)


def test_low_precision_linear_adds_its_bias_in_fp32_after_the_product():
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.Linear(24, 8, bias=False))
    x = torch.randn(5, 16)
    with torch.no_grad():
        expected = plain(x)
        first_w, first_b = plain[0].weight.clone(), plain[0].bias.clone()
        low = runtime.for_decoding(plain, "bf16")
        assert all(isinstance(m, runtime.LowPrecisionLinear) for m in low)
        assert low[0].weight.dtype == torch.bfloat16 and low[0].bias.dtype == torch.float32
        hidden = low[0](x)
        assert hidden.dtype == torch.float32
        by_hand = torch.nn.functional.linear(x.bfloat16(), first_w.bfloat16()).float() + first_b
        assert torch.equal(hidden, by_hand)
        out = low(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=0.05, rtol=0.05)
    assert not torch.equal(out, expected)  # it did compute in bf16
    assert runtime.for_decoding(low, "bf16") is low and low[0].weight.dtype == torch.bfloat16


@pytest.mark.parametrize("layers", [1, 2])
def test_low_precision_gru_follows_torch_gru_and_leaves_packed_runs_in_fp32(layers):
    from torch.nn.utils.rnn import pack_padded_sequence

    torch.manual_seed(0)
    gru = torch.nn.GRU(24, 32, num_layers=layers, batch_first=True).eval()
    x, h0 = torch.randn(5, 4, 24), torch.randn(layers, 5, 32)
    with torch.no_grad():
        expected, expected_h = gru(x, h0)
        packed = pack_padded_sequence(x, torch.tensor([4, 4, 3, 2, 1]), batch_first=True)
        expected_packed = gru(packed)[1]
        runtime.for_decoding(gru, "bf16")
        assert isinstance(gru, runtime.LowPrecisionGRU)
        assert gru.weight_ih_l0.dtype == torch.float32
        assert gru.low_weights()[0][0][0].dtype == torch.bfloat16  # layer 0's input blocks
        out, h = gru(x, h0)
        assert out.dtype == h.dtype == torch.float32
        torch.testing.assert_close(out, expected, atol=0.03, rtol=0.03)
        torch.testing.assert_close(h, expected_h, atol=0.03, rtol=0.03)
        assert torch.equal(out[:, -1], h[-1])
        assert not torch.equal(out, expected)  # computed in bf16
        one = gru(x[2:3], h0[:, 2:3])[0]  # a row alone: the same bits as inside the batch
        assert torch.equal(one, out[2:3])
        assert torch.equal(gru(packed)[1], expected_packed)  # the fp32 path, untouched


def _batch(tok, lines):
    from nmt_cli.data import pad_sequences
    from nmt_cli.ids import EOS_ID

    return pad_sequences(tok.encode_src(lines), suffix=EOS_ID)


def test_an_old_checkpoint_without_decode_precision_still_decodes_in_fp32(
        sample_checkpoint, tmp_path, with_bf16):  # noqa: F811
    payload = torch.load(sample_checkpoint, weights_only=True)
    payload["recipe"]["decode"].pop("precision")
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    new = tmp_path / "new.pt"
    payload["recipe"]["decode"]["precision"] = "auto"
    torch.save(payload, new)
    src = tmp_path / "in.src"
    src.write_text("".join(line + "\n" for line in source_lines(5)), encoding="utf-8")
    assert translate_file(old, src, tmp_path / "old.hyp", device="cpu").precision == "fp32"
    assert translate_file(new, src, tmp_path / "new.hyp", device="cpu").precision == "bf16"


def test_cli_precision_option_is_checked_like_the_key(sample_checkpoint, tmp_path):  # noqa: F811
    src = tmp_path / "in.src"
    src.write_text("ein satz\n", encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(app, ["translate", "-m", str(sample_checkpoint), "-i", str(src),
                                 "--device", "cpu", "--precision", "fp16"])
    assert result.exit_code != 0
    assert "decode.precision: fp16 needs a CUDA device" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["translate", "-m", str(sample_checkpoint), "-i", str(src),
                                 "--device", "cpu", "--precision", "bf17"])
    assert result.exit_code != 0 and "did you mean 'bf16'" in result.output
    result = runner.invoke(app, ["translate", "-m", str(sample_checkpoint), "-i", str(src),
                                 "--device", "cpu", "--precision", "bf16"])
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith("bf16")  # the choice is logged with the statistics


def test_int8_with_bf16_is_refused(sample_checkpoint, tmp_path):  # noqa: F811
    src = tmp_path / "in.src"
    src.write_text("ein satz\n", encoding="utf-8")
    with pytest.raises(NmtError, match="--quantize int8 cannot be combined with --precision bf16"):
        translate_file(sample_checkpoint, src, tmp_path / "out", device="cpu", precision="bf16",
                       options=TranslateOptions(quantize="int8"))


# -- bf16 batch invariance at the shipped CPU recipes' sizes --------------------------------------

ROOT = Path(__file__).resolve().parents[1]
CPU_RECIPES = {"rnn": "recipes/multi30k-de-en-cpu.yaml",
               "transformer": "recipes/multi30k-de-en-transformer-cpu.yaml"}
NATIVE_BF16 = pytest.mark.skipif(not runtime.cpu_has_bf16(),
                                 reason="bf16 is emulated on this CPU; auto decodes in fp32 here")


def _perturbed_model(arch: str, vocab: int = 700, precision: str = "bf16") -> torch.nn.Module:
    """The architecture and sizes of the shipped CPU recipe (a 1,024-wide feed-forward, a
    768-wide attentional vector: products wider than one low-precision block), random weights
    with non-trivial biases and norms, cast for bf16 decoding."""
    from nmt_cli.model import build_model

    torch.manual_seed(0)
    model = build_model(load_recipe(ROOT / CPU_RECIPES[arch]).model, vocab, vocab, True).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return runtime.for_decoding(model, precision)


@NATIVE_BF16
@pytest.mark.parametrize("beam", [1, 5])
@pytest.mark.parametrize("arch", ["rnn", "transformer"])
def test_bf16_steps_give_a_sentence_the_same_bits_alone_and_in_a_longer_batch(arch, beam):
    """What batch 1 = batch 64 rests on at bf16: a sentence's beam rows get bit-identical
    log-probabilities and attention alone and in a batch padded to a longer sentence, step after
    step. (Without the fixed-width products and the padded source width, some rows differ in
    their last bits, and bf16 rounding carries that into different beams.)"""
    model = _perturbed_model(arch)
    assert model.low_precision == torch.bfloat16
    torch.manual_seed(1)
    batch, steps = 14, 6
    lengths = torch.randint(2, 38, (batch,))
    lengths[0] = 37
    src = torch.zeros(batch, 37, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        src[i, :n] = torch.randint(4, 700, (n,))
    forced = torch.randint(4, 700, (batch, steps))

    def run(rows: list[int]) -> tuple[Tensor, Tensor]:
        width = int(lengths[rows].max())
        with torch.inference_mode():
            memory, state = model.encode(src[rows, :width], lengths[rows])
            expand = torch.arange(len(rows)).repeat_interleave(beam)
            memory, state = memory.select(expand), state.select(expand)
            prev, out, attn = torch.full((len(expand),), 2), [], []
            for t in range(steps):
                lp, state, weights = model.step(prev, state, memory, need_attention=True)
                assert weights.shape == (len(expand), width)  # the caller's width, not padded
                out.append(lp)
                attn.append(weights)
                prev = forced[rows][expand, t]
        return torch.stack(out, 1), torch.stack(attn, 1)

    together, together_attn = run(list(range(batch)))
    differing = []
    for i in range(1, batch):
        alone, alone_attn = run([i])
        rows = slice(i * beam, (i + 1) * beam)
        if not (torch.equal(alone, together[rows])
                and torch.equal(alone_attn, together_attn[rows, :, :alone_attn.size(-1)])):
            differing.append(i)
    assert differing == []


def test_wide_low_precision_products_are_summed_in_fixed_blocks():
    """A product over more than LOW_PRECISION_BLOCK inputs is the in-order fp32 sum of the bias
    and its blocks' bf16 products, so a row gets the same bits whichever rows surround it."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(1024, 256)
    x = torch.randn(700, 1024)
    with torch.no_grad():
        runtime.for_decoding(layer, "bf16")
        blocks = layer.blocks()
        assert [b.shape for b in blocks] == [(256, 256)] * 4
        xb = x.bfloat16()
        by_hand = torch.nn.functional.linear(xb[:, :256], blocks[0]).float() + layer.bias
        for i in range(1, 4):
            by_hand += torch.nn.functional.linear(xb[:, 256 * i:256 * (i + 1)], blocks[i])
        full = layer(x)
        assert torch.equal(full, by_hand)
        for start, size in [(0, 1), (39, 13), (300, 64), (650, 50)]:
            assert torch.equal(layer(x[start:start + size]), full[start:start + size])


def test_padded_low_precision_gru_matches_the_packed_fp32_one():
    """``forward_padded`` (the encoder's bf16 path): both directions, two layers, each sentence's
    outputs and final states as a packed fp32 run gives them (to bf16 accuracy), zeros on
    padding, and a sentence alone gets the bits it gets in the batch."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(0)
    gru = torch.nn.GRU(24, 32, num_layers=2, batch_first=True, bidirectional=True).eval()
    x, lengths = torch.randn(4, 6, 24), torch.tensor([6, 3, 1, 4])
    with torch.no_grad():
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out_packed, h_packed = gru(packed)
        expected, _ = pad_packed_sequence(out_packed, batch_first=True, total_length=6)
        runtime.for_decoding(gru, "bf16")
        out, h = gru.forward_padded(x, lengths)
        assert out.dtype == h.dtype == torch.float32 and h.shape == h_packed.shape
        torch.testing.assert_close(out, expected, atol=0.03, rtol=0.03)
        torch.testing.assert_close(h, h_packed, atol=0.03, rtol=0.03)
        assert not torch.equal(out, expected)  # computed in bf16
        assert torch.equal(out[1, 3:], torch.zeros(3, 64))  # padding
        alone_out, alone_h = gru.forward_padded(x[1:2, :3], lengths[1:2])
        assert torch.equal(alone_out, out[1:2, :3]) and torch.equal(alone_h, h[:, 1:2])
        assert torch.equal(gru(packed)[1], h_packed)  # the fp32 packed path, untouched


class _ProductSizes(torch.overrides.TorchFunctionMode):
    """Records the size (rows x inner x columns, batch included) of every bf16 product."""

    def __init__(self):
        super().__init__()
        self.sizes: list[int] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.matmul, torch.nn.functional.linear, torch.bmm, torch.mm):
            a, b = args[0], args[1]
            if a.dtype == torch.bfloat16:
                columns = b.size(0) if func is torch.nn.functional.linear else b.size(-1)
                self.sizes.append(a.numel() * columns)
        return func(*args, **kwargs)


@NATIVE_BF16
@pytest.mark.parametrize("arch", ["rnn", "transformer"])
def test_every_bf16_product_of_a_lone_short_sentence_runs_in_one_kernel(arch):
    """torch runs bf16 products of at most 16^3 multiply-adds in a kernel other than oneDNN's,
    which rounds differently: a short sentence decoded alone, one row, would get other bits than
    in a batch. Every product is padded past that size (runtime.SMALL_PRODUCT)."""
    model = _perturbed_model(arch)
    src = torch.tensor([[5, 6, 7]])
    with torch.inference_mode(), _ProductSizes() as seen:
        memory, state = model.encode(src, torch.tensor([3]))
        prev = torch.tensor([2])
        for _ in range(3):
            _, state, _ = model.step(prev, state, memory, need_attention=True)
    assert seen.sizes and min(seen.sizes) > 16 ** 3


@NATIVE_BF16
def test_attention_sums_over_a_padded_source_add_only_exact_zeros():
    """The weighted sum over a source padded further (a sentence in a batch of longer ones) is
    bit for bit the sum over its own width: the kernels split one long product by its length,
    so the sum runs block by block (runtime.low_weighted_sum)."""
    torch.manual_seed(0)
    differing = 0
    for wide, narrow in [(48, 32), (64, 48), (64, 32), (48, 16)]:
        probs = torch.rand(64, 4, 5, wide)  # 64 sentences, 4 heads, 5 beam rows
        probs[..., narrow:] = 0
        values = torch.randn(64, 4, wide, 64).bfloat16()
        together = runtime.low_weighted_sum(probs, values)
        for i in range(64):
            alone = runtime.low_weighted_sum(probs[i:i + 1, ..., :narrow],
                                             values[i:i + 1, :, :narrow])
            differing += not torch.equal(alone, together[i:i + 1])
    assert differing == 0


# -- oneDNN's kernel cache ------------------------------------------------------------------------


def _import_nmt_and_print_capacity(env: dict) -> str:
    code = "import os, nmt_cli; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True)
    return done.stdout.strip()


def test_importing_nmt_sizes_onednn_kernel_cache_unless_the_user_did():
    import nmt_cli

    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    assert _import_nmt_and_print_capacity(env) == str(nmt_cli.ONEDNN_CACHE_CAPACITY)
    assert nmt_cli.ONEDNN_CACHE_CAPACITY > 1024  # oneDNN's own default, too small for training
    assert _import_nmt_and_print_capacity({**env, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "77"}) == "77"


@NATIVE_BF16
def test_onednn_keeps_more_than_its_default_1024_kernels_after_importing_nmt():
    # 1,100 product shapes, twice: the second pass must find every kernel in the cache (with
    # oneDNN's default of 1,024 entries the first ones are evicted and compiled again)
    code = ("import torch, nmt_cli\n"
            "w = torch.randn(32, 32, dtype=torch.bfloat16)\n"
            "xs = [torch.randn(m, 32, dtype=torch.bfloat16) for m in range(40, 1140)]\n"
            "for _ in range(2):\n"
            "    for x in xs: torch.nn.functional.linear(x, w)\n")
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    env["ONEDNN_VERBOSE"] = "profile_create"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    misses = sum(",create:cache_miss," in line for line in out.splitlines())
    hits = sum(",create:cache_hit," in line for line in out.splitlines())
    if misses == 0:
        pytest.skip("this torch's bf16 products do not go through oneDNN's primitive cache")
    assert misses == 1100 and hits == 1100, (misses, hits)


@NATIVE_BF16
def test_bf16_transformer_steps_follow_fp32_across_the_padded_cache():
    """bf16 decoding keeps the self-attention cache padded with zeros to a multiple of
    LOW_PRECISION_WIDTH, masked out: over 20 steps (past one padding block) its log-probabilities
    stay as close to fp32's as bf16 allows (0.04 on a Xeon with AMX). Attending to one padding
    position too moved them by 1.7; masking the newest position gave NaN."""
    fp32 = _perturbed_model("transformer", precision="fp32")
    bf16 = _perturbed_model("transformer")
    torch.manual_seed(2)
    src, lengths = torch.randint(4, 700, (3, 11)), torch.full((3,), 11)
    forced = torch.randint(4, 700, (3, 20))

    def run(model):
        with torch.inference_mode():
            memory, state = model.encode(src, lengths)
            prev, out = torch.full((3,), 2), []
            for t in range(20):
                log_probs, state, _ = model.step(prev, state, memory)
                out.append(log_probs)
                prev = forced[:, t]
        return torch.stack(out, 1)

    gap = (run(fp32) - run(bf16)).abs().max().item()
    assert gap < 0.25, gap


def test_low_precision_products_take_rows_in_multiples_and_each_row_keeps_its_result(
        monkeypatch):
    """Rows are padded to a multiple of LOW_PRECISION_ROWS (the CPU's bf16 library compiles a
    kernel per product shape, and decoding's batches shrink a row at a time); the padding rows
    are dropped and every real row gets what it gets alone."""
    torch.manual_seed(0)
    weight, bias = torch.randn(96, 300), torch.randn(96)
    blocks = runtime.column_blocks(weight, torch.bfloat16)
    x = torch.randn(61, 300)
    seen = []
    real_linear = torch.nn.functional.linear

    def recording(inp, w, b=None):
        seen.append(inp.size(0))
        return real_linear(inp, w, b)

    monkeypatch.setattr(torch.nn.functional, "linear", recording)
    out = runtime.low_product(x, blocks, bias)
    assert out.shape == (61, 96)
    assert set(seen) == {64}, seen  # 61 rows in multiples of 8, one product per block
    for i in (0, 30, 60):
        assert torch.equal(runtime.low_product(x[i:i + 1], blocks, bias)[0], out[i])


def test_equal_input_blocks_run_as_one_batched_product(monkeypatch):
    """A layer whose inputs split into equal blocks (the Transformer's 1,024-wide feed-forward
    output) runs one batched low-precision product instead of one per block (the next test:
    with the same bits as the fp32 bias plus each block's product, added in order, and each
    row's result what it gets alone)."""
    torch.manual_seed(1)
    weight, bias = torch.randn(48, 4 * runtime.LOW_PRECISION_BLOCK), torch.randn(48)
    blocks = runtime.column_blocks(weight, torch.bfloat16)
    assert isinstance(blocks, torch.Tensor) and blocks.shape == (4, 48, 256)
    x = torch.randn(3, 11, weight.size(1))
    calls = []
    real_bmm = torch.bmm

    def recording(a, b):
        calls.append(tuple(a.shape))
        return real_bmm(a, b)

    monkeypatch.setattr(torch, "bmm", recording)
    out = runtime.low_product(x, blocks, bias)
    assert calls == [(4, 40, 256)]  # 33 rows in multiples of 8, all four blocks in one call
    assert out.shape == (3, 11, 48)


@NATIVE_BF16
def test_the_batched_product_gives_the_blockwise_sum_bit_for_bit():
    torch.manual_seed(1)
    weight, bias = torch.randn(48, 4 * runtime.LOW_PRECISION_BLOCK), torch.randn(48)
    blocks = runtime.column_blocks(weight, torch.bfloat16)
    x = torch.randn(3, 11, weight.size(1))
    out = runtime.low_product(x, blocks, bias)
    xs, w = x.reshape(33, -1).bfloat16(), weight.bfloat16()
    expected = None
    for c in range(4):
        part = torch.nn.functional.linear(runtime._pad_rows(xs[:, 256 * c:256 * (c + 1)], 40),
                                          w[:, 256 * c:256 * (c + 1)].contiguous())[:33]
        expected = part.float() + bias if expected is None else expected + part
    assert torch.equal(out.reshape(33, -1), expected)
    for i, j in ((0, 0), (1, 5), (2, 10)):
        assert torch.equal(runtime.low_product(x[i:i + 1, j:j + 1], blocks, bias)[0, 0], out[i, j])
