"""``precision: auto`` and bf16 decoding: what auto picks on CPUs with and without native bf16,
what training records, and that bf16 translation keeps its promises (batch invariance, fp32
scores, old checkpoints unchanged)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
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


def test_training_defaults_to_auto_and_decoding_to_fp32():
    """Training: auto, measured to cost no BLEU over full pipelines (docs/results.md). Decoding:
    fp32, because bf16 beam search is not yet byte-identical across batch sizes."""
    assert TrainConfig().precision == "auto" and DecodeConfig().precision == "fp32"


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
    assert all(p.dtype == torch.float32 for p in bf16.encoder.rnn.parameters())  # encoder: fp32
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
        assert gru.low_weights()[0][0].dtype == torch.bfloat16
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
