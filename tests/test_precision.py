"""``precision`` for training and for decoding: what ``auto`` picks on CPUs with and without native
bf16 (and with ``NMT_CPU_BF16`` overriding the flags), what training records, and the decoding
policy: fp32 on the CPU, bf16 or fp16 refused there with a pointer to ``nmt export``, and on a GPU
the whole model (every ensemble member) cast to the chosen type."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import nmt_cli.runtime as runtime
from _decode_fixtures import (sample_checkpoint, source_lines,  # noqa: F401
                              trained_checkpoint)
from _train_fixtures import new_run, prepared  # noqa: F401
from conftest import assert_one_line_error, run_cli
from nmt_cli.cli import app
from nmt_cli.config import DecodeConfig
from nmt_cli.decoding.engine import EngineSettings, TorchEngine, decoding_precision
from nmt_cli.decoding.translate import translate_file
from nmt_cli.errors import ConfigError
from nmt_cli.recipes import load_recipe, recipe_from_dict

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # a device object only: nothing here runs on a GPU
X86_FLAGS = "fpu vme de pse tsc msr pae mce cx8 apic sse sse2 avx avx2 fma avx512f avx512bw"
BF16_FLAGS = X86_FLAGS + " avx512_bf16 amx_bf16"


def _cpuinfo(tmp_path: Path, flags: str, key: str = "flags") -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text("".join(f"processor\t: {i}\nvendor_id\t: GenuineIntel\n{key}\t\t: {flags}\n\n"
                            for i in range(2)), encoding="utf-8")
    return path


@pytest.fixture()
def without_bf16(monkeypatch, tmp_path):
    """A CPU whose flags lack avx512_bf16 and amx_bf16 (and no NMT_CPU_BF16 to override them)."""
    monkeypatch.delenv(runtime.NATIVE_BF16_ENV, raising=False)
    monkeypatch.setattr(runtime, "CPUINFO", _cpuinfo(tmp_path, X86_FLAGS))


@pytest.fixture()
def with_bf16(monkeypatch, tmp_path):
    monkeypatch.delenv(runtime.NATIVE_BF16_ENV, raising=False)
    monkeypatch.setattr(runtime, "CPUINFO", _cpuinfo(tmp_path, BF16_FLAGS))


@pytest.fixture()
def gpu_bf16(monkeypatch):
    """``gpu_bf16(True)``: torch says the GPU supports bf16; ``gpu_bf16(False)``: it does not."""
    def supported(answer: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: answer)

    return supported


# -- what auto means for training -----------------------------------------------------------------


def test_auto_is_fp32_on_a_cpu_without_bf16(without_bf16):
    assert runtime.cpu_has_bf16() is False
    assert runtime.resolve_precision("auto", CPU, "train.precision") == "fp32"


def test_auto_is_bf16_on_a_cpu_with_native_bf16(with_bf16):
    assert runtime.resolve_precision("auto", CPU, "train.precision") == "bf16"


@pytest.mark.parametrize("key, flag", [("flags", "avx512_bf16"), ("flags", "amx_bf16"),
                                       ("Features", "bf16")], ids=["avx512", "amx", "arm"])
def test_either_flag_alone_means_native_bf16(monkeypatch, tmp_path, key, flag):
    monkeypatch.delenv(runtime.NATIVE_BF16_ENV, raising=False)
    monkeypatch.setattr(runtime, "CPUINFO", _cpuinfo(tmp_path, f"{X86_FLAGS} {flag}", key))
    assert runtime.resolve_precision("auto", CPU, "train.precision") == "bf16"


def test_without_cpuinfo_torch_probes_the_instruction_set(monkeypatch, tmp_path):
    monkeypatch.delenv(runtime.NATIVE_BF16_ENV, raising=False)
    monkeypatch.setattr(runtime, "CPUINFO", tmp_path / "absent")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert runtime.resolve_precision("auto", CPU, "train.precision") == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert runtime.resolve_precision("auto", CPU, "train.precision") == "bf16"


@pytest.mark.parametrize("forced, flags, expected", [
    ("0", BF16_FLAGS, "fp32"),  # off whatever the CPU has
    ("1", X86_FLAGS, "bf16"),  # on whatever the CPU lacks
    (None, BF16_FLAGS, "bf16"),  # unset: the flags decide
    (None, X86_FLAGS, "fp32"),
], ids=["0-with-flags", "1-without-flags", "unset-with-flags", "unset-without-flags"])
def test_nmt_cpu_bf16_decides_what_training_auto_resolves_to(monkeypatch, tmp_path, forced,
                                                             flags, expected):
    monkeypatch.setattr(runtime, "CPUINFO", _cpuinfo(tmp_path, flags))
    if forced is None:
        monkeypatch.delenv(runtime.NATIVE_BF16_ENV, raising=False)
    else:
        monkeypatch.setenv(runtime.NATIVE_BF16_ENV, forced)
    assert runtime.resolve_precision("auto", CPU, "train.precision") == expected
    # decoding on the CPU is fp32 whichever it is
    assert decoding_precision(DecodeConfig(precision="auto"), CPU) == "fp32"


def test_explicit_training_choices_are_kept_and_fp16_on_cpu_names_the_key(without_bf16):
    assert runtime.resolve_precision("bf16", CPU, "train.precision") == "bf16"
    assert runtime.resolve_precision("fp32", CPU, "train.precision") == "fp32"
    with pytest.raises(ConfigError, match="train.precision: fp16 needs a CUDA device"):
        runtime.resolve_precision("fp16", CPU, "train.precision")


def test_a_recipe_without_precision_trains_at_auto_and_decodes_at_auto(with_bf16, gpu_bf16):
    """A recipe that names no precision trains in bf16 on a CPU with native bf16 and decodes in
    fp32 there, and decodes in bf16 on a GPU that has it."""
    recipe = recipe_from_dict({})
    assert runtime.resolve_precision(recipe.train.precision, CPU, "train.precision") == "bf16"
    assert decoding_precision(recipe.decode, CPU) == "fp32"
    gpu_bf16(True)
    assert decoding_precision(recipe.decode, CUDA) == "bf16"


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


# -- decoding: fp32 on the CPU ------------------------------------------------------------------


def test_auto_decodes_in_fp32_on_a_cpu_even_with_native_bf16(with_bf16):
    assert runtime.cpu_has_bf16() is True
    assert decoding_precision(DecodeConfig(precision="auto"), CPU) == "fp32"
    assert decoding_precision(DecodeConfig(precision="fp32"), CPU) == "fp32"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_bf16_or_fp16_decoding_on_the_cpu_is_refused_with_a_pointer_to_nmt_export(with_bf16,
                                                                                  precision):
    with pytest.raises(ConfigError) as err:
        decoding_precision(DecodeConfig(precision=precision), CPU)
    assert err.value.key == "decode.precision"
    message = str(err.value)
    assert message.startswith(f"decode.precision: {precision} ") and "\n" not in message
    assert "nmt export --quantization int8" in message


def test_an_old_checkpoint_without_decode_precision_still_decodes_in_fp32(
        sample_checkpoint, tmp_path, with_bf16, gpu_bf16):  # noqa: F811
    """A checkpoint saved before decode.precision existed keeps fp32, on a GPU too; one saved with
    auto decodes in bf16 on a GPU that has it, and in fp32 on any CPU."""
    from nmt_cli.checkpoint import load_checkpoint

    payload = torch.load(sample_checkpoint, weights_only=True)
    payload["recipe"]["decode"].pop("precision")
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    new = tmp_path / "new.pt"
    payload["recipe"]["decode"]["precision"] = "auto"
    torch.save(payload, new)
    gpu_bf16(True)
    on_gpu = {name: decoding_precision(recipe_from_dict(load_checkpoint(path)["recipe"]).decode,
                                       CUDA) for name, path in (("old", old), ("new", new))}
    assert on_gpu == {"old": "fp32", "new": "bf16"}
    src = tmp_path / "in.src"
    src.write_text("".join(line + "\n" for line in source_lines(5)), encoding="utf-8")
    for path in (old, new):
        stats = translate_file(path, src, tmp_path / f"{path.stem}.hyp", device="cpu")
        assert stats.precision == "fp32" and stats.sentences == 5


def test_translate_precision_bf16_on_the_cpu_is_one_error_line_and_no_output(
        sample_checkpoint, tmp_path):  # noqa: F811
    src = tmp_path / "in.src"
    src.write_text("ein satz\n", encoding="utf-8")
    out = tmp_path / "out" / "hyp.txt"
    proc = run_cli("translate", "-m", sample_checkpoint, "-i", src, "-o", out, "--device", "cpu",
                   "--precision", "bf16")
    line = assert_one_line_error(proc, "decode.precision", "nmt export --quantization int8")
    assert line.startswith("error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.src"]  # no output, no folder


def test_cli_precision_option_is_checked_like_the_key(sample_checkpoint, tmp_path):  # noqa: F811
    src = tmp_path / "in.src"
    src.write_text("ein satz\n", encoding="utf-8")
    runner = CliRunner()
    base = ["translate", "-m", str(sample_checkpoint), "-i", str(src), "--device", "cpu"]
    result = runner.invoke(app, [*base, "--precision", "fp16"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "decode.precision: fp16 decoding runs on a GPU only" in result.output
    result = runner.invoke(app, [*base, "--precision", "bf17"])
    assert result.exit_code != 0 and "did you mean 'bf16'" in result.output
    result = runner.invoke(app, [*base, "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith("fp32")  # the choice is logged with the statistics


# -- decoding on a GPU (a faked CUDA device: the choice only) -------------------------------------


def test_auto_on_a_gpu_is_bf16_where_it_is_supported_and_fp32_where_not(gpu_bf16):
    auto = DecodeConfig(precision="auto")
    gpu_bf16(True)
    assert decoding_precision(auto, CUDA) == "bf16"
    gpu_bf16(False)
    assert decoding_precision(auto, CUDA) == "fp32"


def test_explicit_choices_on_a_gpu_are_kept_or_refused_naming_the_key(gpu_bf16):
    gpu_bf16(True)
    for precision in ("fp32", "bf16", "fp16"):
        assert decoding_precision(DecodeConfig(precision=precision), CUDA) == precision
    gpu_bf16(False)
    assert decoding_precision(DecodeConfig(precision="fp16"), CUDA) == "fp16"
    with pytest.raises(ConfigError, match="^decode.precision: this GPU does not support bf16"):
        decoding_precision(DecodeConfig(precision="bf16"), CUDA)


@pytest.fixture()
def engine_picks_bf16(monkeypatch):
    """The engine's choice made bf16, as on a GPU that has it: the cast path, run on the CPU."""
    import nmt_cli.decoding.engine as engine

    monkeypatch.setattr(engine, "decoding_precision", lambda cfg, device: "bf16")


@pytest.mark.parametrize("archs", [["rnn"], ["transformer"], ["rnn", "transformer"]],
                         ids=["rnn", "transformer", "ensemble-rnn-transformer"])
def test_a_bf16_engine_casts_every_member_and_search_scores_in_fp32(engine_picks_bf16, archs):
    """Every parameter of every ensemble member is bf16 (not only the Ensemble object flagged),
    N lines give N translations, and the log-probabilities search works with are fp32."""
    from nmt_cli.data import pad_sequences
    from nmt_cli.decoding.ensemble import Ensemble
    from nmt_cli.decoding.search import score_targets
    from nmt_cli.ids import BOS_ID, EOS_ID

    engine = TorchEngine([trained_checkpoint(a) for a in archs], EngineSettings("cpu"))
    try:
        assert engine.precision == "bf16"
        members = list(engine.model.members) if len(archs) > 1 else [engine.model]
        assert isinstance(engine.model, Ensemble) == (len(archs) > 1)
        assert len(members) == len(archs)
        for member in members:
            assert {p.dtype for p in member.parameters()} == {torch.bfloat16}
        lines = source_lines(12)
        found = engine.translate_lines(lines, engine.defaults)
        assert [t.index for t in found] == list(range(12))
        assert all(t.text for t in found)
        src, lengths = pad_sequences(engine.tok.encode_src(lines), suffix=EOS_ID)
        tgt, tgt_lengths = pad_sequences([t.hypotheses[0].tokens for t in found], suffix=EOS_ID)
        with torch.inference_mode():
            memory, state = engine.model.encode(src, lengths)
            log_probs, _, _ = engine.model.step(torch.full((12,), BOS_ID), state, memory)
            forced = score_targets(engine.model, src, lengths, tgt, tgt_lengths)
        assert log_probs.dtype == forced.dtype == torch.float32
        if len(archs) == 1:  # a distribution (an ensemble's mean of log-probabilities is not)
            assert torch.allclose(log_probs.exp().sum(-1), torch.ones(12), atol=1e-4)
        for t, score in zip(found, forced.tolist()):
            assert math.isfinite(t.hypotheses[0].log_prob)
            # the same sums as search's, to bf16's accuracy (other rows beside it in the batch)
            assert score == pytest.approx(t.hypotheses[0].log_prob, rel=0.05, abs=0.1)
    finally:
        engine.close()


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


def test_onednn_keeps_more_than_its_default_1024_kernels_after_importing_nmt():
    # 1,100 convolution shapes, twice: the second pass must find every kernel in the cache (with
    # oneDNN's default of 1,024 entries the first ones are evicted and compiled again). fp32
    # convolutions go through oneDNN on every x86 CPU, with or without native bf16, whereas bf16
    # products reach it only where the CPU has bf16 instructions.
    import torch

    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch is built without oneDNN")
    code = ("import torch, nmt_cli\n"
            "w = torch.randn(16, 16, 3, 3)\n"
            "xs = [torch.randn(2, 16, 12, m) for m in range(40, 1140)]\n"
            "for _ in range(2):\n"
            "    for x in xs: torch.nn.functional.conv2d(x, w)\n")
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    env["ONEDNN_VERBOSE"] = "profile_create"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    misses = sum(",create:cache_miss,cpu,convolution," in line for line in out.splitlines())
    hits = sum(",create:cache_hit,cpu,convolution," in line for line in out.splitlines())
    assert misses == 1100 and hits == 1100, (misses, hits)
