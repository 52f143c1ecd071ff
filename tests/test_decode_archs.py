"""Every decoding feature on both architectures, through ``translate_file`` and the CLI.

``arch_checkpoint`` is a tiny trained RNN and then a tiny trained Transformer; search, ensembles,
forced scoring, n-best, sampling, alignments, plots, int8, averaging and streaming must all work
on each without knowing which one they have.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _decode_fixtures import assert_stdin_streams, arch_checkpoint, source_lines  # noqa: F401
from nmt_cli.checkpoint import load_checkpoint, model_from_checkpoint
from nmt_cli.decoding.translate import TranslateOptions, translate_file
from nmt_cli.model import DecodingModel

N = 12


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _read(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


@pytest.fixture()
def source(tmp_path) -> Path:
    return _write(tmp_path / "in.src", source_lines(N) + [""])


def test_the_model_satisfies_the_search_contract(arch_checkpoint):
    model, _, _ = model_from_checkpoint(load_checkpoint(arch_checkpoint), arch_checkpoint)
    assert isinstance(model, DecodingModel)


def test_greedy_and_beam_keep_every_line_in_place(arch_checkpoint, source, tmp_path):
    greedy, beam = tmp_path / "g.hyp", tmp_path / "b.hyp"
    translate_file(arch_checkpoint, source, greedy, beam_size=1, device="cpu")
    translate_file(arch_checkpoint, source, beam, beam_size=5, device="cpu")
    g, b = _read(greedy), _read(beam)
    assert len(g) == len(b) == N + 1 and g[-1] == b[-1] == ""
    assert all(g[:N]) and all(b[:N])


def test_beam_5_gives_the_same_lines_at_batch_1_and_64(arch_checkpoint, tmp_path):
    src = _write(tmp_path / "in.src", source_lines(40))
    one, many = tmp_path / "one.hyp", tmp_path / "many.hyp"
    translate_file(arch_checkpoint, src, one, beam_size=5, batch_size=1, device="cpu")
    translate_file(arch_checkpoint, src, many, beam_size=5, batch_size=64, device="cpu")
    assert _read(one) == _read(many)


def test_n_best_scores_match_forced_decoding(arch_checkpoint, source, tmp_path):
    nbest = tmp_path / "nbest.tsv"
    translate_file(arch_checkpoint, source, nbest, device="cpu", length_norm="none", n_best=3)

    rows = [r.split("\t") for r in _read(nbest)]
    firsts = [r for i, r in enumerate(rows) if i == 0 or rows[i - 1][0] != r[0]]
    assert [int(r[0]) for r in firsts] == list(range(N + 1))
    best = _write(tmp_path / "best.txt", [r[2] for r in firsts[:N]])
    scored = tmp_path / "scored.txt"
    translate_file(arch_checkpoint, _write(tmp_path / "s.src", source_lines(N)), scored,
                   device="cpu", options=TranslateOptions(score_reference=best))
    assert [float(x) for x in _read(scored)] == pytest.approx([float(r[1]) for r in firsts[:N]],
                                                              abs=2e-3)


def test_sampling_is_reproducible_and_keeps_lines(arch_checkpoint, source, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 1), (b, 1), (c, 2)):
        translate_file(arch_checkpoint, source, out, device="cpu",
                       sample=True, seed=seed, temperature=1.5)
    assert _read(a) == _read(b) and len(_read(a)) == N + 1
    assert _read(a) != _read(c)


def test_self_ensemble_matches_the_model(arch_checkpoint, source, tmp_path):
    single, double = tmp_path / "one.hyp", tmp_path / "two.hyp"
    translate_file(arch_checkpoint, source, single, device="cpu")
    translate_file([arch_checkpoint, arch_checkpoint], source, double, device="cpu")
    assert _read(single) == _read(double)


def test_ensemble_of_an_rnn_and_a_transformer_runs(source, tmp_path):
    from _decode_fixtures import trained_checkpoint

    out = tmp_path / "mixed.hyp"
    translate_file([trained_checkpoint("rnn"), trained_checkpoint("transformer")], source, out,
                   device="cpu", options=TranslateOptions(alignments=tmp_path / "mixed.align"))
    assert len(_read(out)) == N + 1 and len(_read(tmp_path / "mixed.align")) == N + 1


def test_alignments_link_every_target_subword_once(arch_checkpoint, source, tmp_path):
    out, align = tmp_path / "out.hyp", tmp_path / "out.align"
    translate_file(arch_checkpoint, source, out, device="cpu",
                   options=TranslateOptions(alignments=align))
    rows = _read(align)
    assert len(rows) == N + 1 and rows[-1] == ""
    for row in rows[:N]:
        pairs = [tuple(map(int, p.split("-"))) for p in row.split()]
        assert pairs and [j for _, j in pairs] == list(range(len(pairs)))
    # Asking for attention does not change the translations.
    plain = tmp_path / "plain.hyp"
    translate_file(arch_checkpoint, source, plain, device="cpu")
    assert _read(plain) == _read(out)


def test_plot_attention_writes_one_png_per_sentence(arch_checkpoint, tmp_path):
    pytest.importorskip("matplotlib")
    src = _write(tmp_path / "in.src", source_lines(2) + [""])
    plots = tmp_path / "plots"
    translate_file(arch_checkpoint, src, tmp_path / "out.hyp", device="cpu",
                   options=TranslateOptions(plot_attention=plots))
    assert sorted(p.name for p in plots.iterdir()) == ["000000.png", "000001.png"]


def test_int8_keeps_one_line_per_line(arch_checkpoint, source, tmp_path):
    out = tmp_path / "q.hyp"
    translate_file(arch_checkpoint, source, out, device="cpu",
                   options=TranslateOptions(quantize="int8"))
    hyps = _read(out)
    assert len(hyps) == N + 1 and all(hyps[:N]) and hyps[-1] == ""


def test_average_of_two_checkpoints_translates(arch_checkpoint, source, tmp_path):
    from nmt_cli.training.average import average_to_file

    payload = load_checkpoint(arch_checkpoint)
    noisy = dict(payload, model={k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
                                 for k, v in payload["model"].items()}, step=-1)
    torch.save(noisy, tmp_path / "noisy.pt")
    averaged = average_to_file([arch_checkpoint, tmp_path / "noisy.pt"], tmp_path / "avg.pt")
    name = next(k for k in payload["model"] if k.endswith("weight"))
    expected = (payload["model"][name] + noisy["model"][name]) / 2
    assert torch.allclose(averaged["model"][name], expected, atol=1e-6)
    out = tmp_path / "avg.hyp"
    translate_file(tmp_path / "avg.pt", source, out, device="cpu")
    assert len(_read(out)) == N + 1


def test_stdin_streams_the_first_translation_before_input_ends(arch_checkpoint):  # noqa: F811
    assert_stdin_streams(arch_checkpoint)


@pytest.mark.parametrize("beam_size", [1, 5])
def test_batches_searched_side_by_side_give_the_same_lines(arch_checkpoint, tmp_path,
                                                          monkeypatch, beam_size):
    import threading

    import nmt_cli.decoding.inference as inference

    threads_seen: set[str] = set()
    search = inference.beam_search

    def recording_search(*args, **kwargs):
        threads_seen.add(threading.current_thread().name)
        return search(*args, **kwargs)

    monkeypatch.setattr(inference, "beam_search", recording_search)
    src = _write(tmp_path / "in.src", source_lines(40) + [""] + source_lines(7))
    one, two = tmp_path / "one.hyp", tmp_path / "two.hyp"
    translate_file(arch_checkpoint, src, one, beam_size=beam_size, batch_size=4, device="cpu",
                   options=TranslateOptions(threads=2, inter_threads=1))
    assert threads_seen == {threading.current_thread().name}
    before = torch.get_num_threads()
    translate_file(arch_checkpoint, src, two, beam_size=beam_size, batch_size=4, device="cpu",
                   options=TranslateOptions(threads=2, inter_threads=2))
    assert torch.get_num_threads() == before  # the caller's setting comes back
    assert len({name for name in threads_seen if name.startswith("nmt-search")}) == 2
    assert _read(two) == _read(one) and len(_read(one)) == 48 and _read(one)[40] == ""
