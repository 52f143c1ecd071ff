"""nmt translate end to end: output forms, ensembles, alignments, robustness, streaming."""

from __future__ import annotations

import os
import sys
import unicodedata
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _decode_fixtures import ROOT, assert_stdin_streams, sample_checkpoint, source_lines  # noqa: F401
from nmt_cli.cli import app
from nmt_cli.decoding.translate import TranslateOptions, translate_file
from nmt_cli.errors import ConfigError, NmtError


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _read(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


@pytest.fixture()
def source(tmp_path) -> Path:
    return _write(tmp_path / "in.src", source_lines(12))


def test_robust_to_long_empty_and_blank_lines(sample_checkpoint, tmp_path):
    lines = [source_lines(1)[0], " ".join(["word"] * 5000), "", "   \t  ", source_lines(2)[1]]
    src = _write(tmp_path / "odd.src", lines)
    out, align = tmp_path / "odd.hyp", tmp_path / "odd.align"
    stats = translate_file(sample_checkpoint, src, out, device="cpu", max_src_len=100,
                           beam_size=2, options=TranslateOptions(alignments=align))
    hyps = _read(out)
    assert len(hyps) == len(lines) and hyps[2] == "" and hyps[3] == ""
    assert hyps[0] and hyps[4]
    assert len(_read(align)) == len(lines)
    assert stats.sentences == len(lines) and stats.truncated == 1


def test_alignments_are_pharaoh_within_the_sentence(sample_checkpoint, source, tmp_path):
    out, align = tmp_path / "out.hyp", tmp_path / "out.align"
    translate_file(sample_checkpoint, source, out, device="cpu",
                   options=TranslateOptions(alignments=align))
    rows = _read(align)
    assert len(rows) == len(_read(source))
    for row in rows:
        pairs = [tuple(map(int, p.split("-"))) for p in row.split()]
        assert [j for _, j in pairs] == list(range(len(pairs)))  # one link per target subword
        assert all(i >= 0 for i, _ in pairs)


def test_n_best_tsv_sorted_and_scores_match_forced_decoding(sample_checkpoint, source, tmp_path):
    nbest = tmp_path / "nbest.tsv"
    translate_file(sample_checkpoint, source, nbest, device="cpu", length_norm="none", n_best=3)
    rows = [r.split("\t") for r in _read(nbest)]
    assert len(rows) == 3 * len(_read(source))
    for i in range(len(_read(source))):
        scores = [float(r[1]) for r in rows if r[0] == str(i)]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    # With raw scores, scoring each best hypothesis as a reference gives its score back.
    best = _write(tmp_path / "best.txt", [r[2] for r in rows if True][::3])
    scored = tmp_path / "scored.txt"
    translate_file(sample_checkpoint, source, scored, device="cpu",
                   options=TranslateOptions(score_reference=best))
    forced = [float(x) for x in _read(scored)]
    assert forced == pytest.approx([float(r[1]) for r in rows][::3], abs=2e-3)


def test_ensemble_of_a_model_with_itself_matches_the_model(sample_checkpoint, source, tmp_path):
    single, double = tmp_path / "one.hyp", tmp_path / "two.hyp"
    translate_file(sample_checkpoint, source, single, device="cpu")
    translate_file([sample_checkpoint, sample_checkpoint], source, double, device="cpu")
    assert _read(single) == _read(double)


def test_int8_quantizes_every_linear_layer(sample_checkpoint):
    import torch
    from torch.ao.nn.quantized import dynamic as qdynamic

    from nmt_cli.decoding.translate import load_models

    fp32, _, _ = load_models([sample_checkpoint], torch.device("cpu"))
    int8, _, _ = load_models([sample_checkpoint], torch.device("cpu"), quantize="int8")
    linear = {n for n, m in fp32.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linear  # attention, bridge, output layer
    kinds = {n: type(m) for n, m in int8.named_modules()}
    assert {n for n, k in kinds.items() if k is qdynamic.Linear} == linear
    assert all(kinds[n] is qdynamic.Linear for n in linear)
    assert int8.get_submodule("output_layer").weight().dtype == torch.qint8


def test_int8_output_stays_close_to_fp32(sample_checkpoint, tmp_path):
    """Most lines come out the same, and the int8 model's log-probability of the fp32
    translations is within 2% of the fp32 model's own, line by line."""
    src = _write(tmp_path / "in.src", source_lines(40))
    fp32, int8 = tmp_path / "fp32.hyp", tmp_path / "int8.hyp"
    translate_file(sample_checkpoint, src, fp32, device="cpu")
    translate_file(sample_checkpoint, src, int8, device="cpu",
                   options=TranslateOptions(quantize="int8"))
    same = sum(a == b for a, b in zip(_read(fp32), _read(int8)))
    assert len(_read(int8)) == 40 and same >= 30, same  # 35 of 40 on the tiny sample model
    scores = {}
    for name, quantize in (("fp32", None), ("int8", "int8")):
        out = tmp_path / f"{name}.scores"
        translate_file(sample_checkpoint, src, out, device="cpu",
                       options=TranslateOptions(score_reference=fp32, quantize=quantize))
        scores[name] = [float(x) for x in _read(out)]
    assert len(scores["int8"]) == 40
    assert scores["int8"] != scores["fp32"]  # quantized for real
    for exact, approx in zip(scores["fp32"], scores["int8"]):
        assert approx == pytest.approx(exact, rel=0.02)


def test_plot_attention_without_matplotlib_says_how_to_install(sample_checkpoint, source,
                                                               tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(NmtError, match="pip install matplotlib"):
        translate_file(sample_checkpoint, source, tmp_path / "x.hyp", device="cpu",
                       options=TranslateOptions(plot_attention=tmp_path / "plots"))


def test_plot_attention_writes_one_png_per_sentence(sample_checkpoint, tmp_path):
    pytest.importorskip("matplotlib")
    src = _write(tmp_path / "in.src", source_lines(2) + [""])
    plots = tmp_path / "plots"
    translate_file(sample_checkpoint, src, tmp_path / "out.hyp", device="cpu",
                   options=TranslateOptions(plot_attention=plots))
    assert sorted(p.name for p in plots.iterdir()) == ["000000.png", "000001.png"]


def test_cli_average_and_n_best_errors(sample_checkpoint, source, tmp_path):
    runner = CliRunner()
    out = tmp_path / "avg.pt"
    result = runner.invoke(app, ["average", "-o", str(out), str(sample_checkpoint),
                                 str(sample_checkpoint)])
    assert result.exit_code == 0, result.output
    assert out.is_file()
    result = runner.invoke(app, ["translate", "-m", str(out), "-i", str(source), "--beam-size",
                                 "2", "--n-best", "3", "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "decode.n_best: 3 is more than decode.beam_size (2)" in result.output


def test_stdin_streams_first_translation_before_input_ends(sample_checkpoint):  # noqa: F811
    assert_stdin_streams(sample_checkpoint)


def test_output_to_a_link_to_a_device_writes_through_it(sample_checkpoint, source, tmp_path):
    link = tmp_path / "sink"
    link.symlink_to(os.devnull)  # like --alignments /dev/stdout: must not be renamed over
    translate_file(sample_checkpoint, source, link, device="cpu",
                   options=TranslateOptions(alignments=link))
    assert link.is_symlink() and not link.is_file()
    target = tmp_path / "real.hyp"
    target.write_text("old\n", encoding="utf-8")
    to_file = tmp_path / "to_file"
    to_file.symlink_to(target)  # like /dev/stderr when stderr is redirected to a file
    translate_file(sample_checkpoint, source, to_file, device="cpu")
    assert to_file.is_symlink() and len(_read(target)) == len(_read(source))


def test_python_api_settings_are_checked_like_recipe_keys(sample_checkpoint, source, tmp_path):
    out = tmp_path / "out.hyp"
    with pytest.raises(ConfigError, match="decode.beam_size: 0 is out of range"):
        translate_file(sample_checkpoint, source, out, device="cpu", beam_size=0)
    with pytest.raises(ConfigError, match="did you mean 'decode.beam_size'"):
        translate_file(sample_checkpoint, source, out, device="cpu", beam_sise=3)
    with pytest.raises(ConfigError, match="decode.length_norm"):
        translate_file(sample_checkpoint, source, out, device="cpu", length_norm="gnm")
    assert not out.exists()


def test_n_best_from_the_settings_writes_tsv(sample_checkpoint, source, tmp_path):
    out = tmp_path / "nbest.tsv"
    translate_file(sample_checkpoint, source, out, device="cpu", n_best=2)
    rows = [r.split("\t") for r in _read(out)]
    assert len(rows) == 2 * len(_read(source)) and all(len(r) == 3 for r in rows)
    one = tmp_path / "one.tsv"  # --n-best 1 still asks for TSV
    translate_file(sample_checkpoint, source, one, device="cpu",
                   options=TranslateOptions(tsv=True))
    assert [r.split("\t")[0] for r in _read(one)] == [str(i) for i in range(len(_read(source)))]


def test_int8_without_quantize_dynamic_is_one_clear_error(sample_checkpoint, source, tmp_path,
                                                           monkeypatch):
    import torch.ao.quantization

    monkeypatch.delattr(torch.ao.quantization, "quantize_dynamic")
    out = tmp_path / "q.hyp"
    with pytest.raises(NmtError, match="needs torch.ao.quantization.quantize_dynamic") as err:
        translate_file(sample_checkpoint, source, out, device="cpu",
                       options=TranslateOptions(quantize="int8"))
    assert "\n" not in str(err.value) and "without --quantize" in str(err.value)
    assert not out.exists()


def _dirty(line: str) -> str:
    """``line`` as a careless editor might save it: decomposed (NFD) accents, a zero-width space
    inside a word and a control character."""
    words = line.split(" ")
    words[1] = words[1][:2] + "\u200b" + words[1][2:]
    return unicodedata.normalize("NFD", " ".join(words) + "\x07")


def test_translation_cleans_text_like_the_training_data(sample_checkpoint, tmp_path):
    clean = [line.replace("birds", "cafés").replace("child", "naïve child")
             for line in source_lines(8)]
    dirty = [_dirty(line) for line in clean]
    assert all(d != c for d, c in zip(dirty, clean))
    paths = {}
    for name, lines in (("clean", clean), ("dirty", dirty)):
        src = _write(tmp_path / f"{name}.src", lines)
        paths[name] = tmp_path / f"{name}.hyp"
        translate_file(sample_checkpoint, src, paths[name], device="cpu", beam_size=2)
    assert _read(paths["dirty"]) == _read(paths["clean"])
    # Forced scoring cleans sources and references alike.
    refs = ["x " + line for line in _read(paths["clean"])]  # two words at least
    scores = {}
    for name, lines in (("clean", refs), ("dirty", [_dirty(r) for r in refs])):
        scores[name] = tmp_path / f"{name}.scores"
        translate_file(sample_checkpoint, tmp_path / f"{name}.src", scores[name], device="cpu",
                       options=TranslateOptions(score_reference=_write(tmp_path / name, lines)))
    assert _read(scores["dirty"]) == _read(scores["clean"])


def test_cli_flags_reach_the_decode_settings(sample_checkpoint, source, tmp_path):
    out = tmp_path / "samples.tsv"
    result = CliRunner().invoke(app, ["translate", "-m", str(sample_checkpoint), "-i", str(source),
                                      "-o", str(out), "--device", "cpu", "--sample", "--seed",
                                      "1", "--n-best", "7", "--allow-unk", "-q"])
    assert result.exit_code == 0, result.output
    rows = [r.split("\t") for r in _read(out)]
    assert len(rows) == 7 * len(_read(source))  # seven samples, above the beam size of 5
