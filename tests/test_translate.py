"""``nmt translate`` (``translate_file`` and the CLI) on both architectures: every search, line
order, batch invariance, n-best TSV and forced scores, sampling seeds, ensembles (a model with
itself, an RNN with a Transformer), alignments and plots, averaging, streaming, side-by-side
batches; odd input, output through links, settings checked like recipe keys, text cleaned like
the training data, and the options that were removed.

``arch_checkpoint`` is a tiny trained RNN and then a tiny trained Transformer; decoding must work
on each without knowing which one it has.
"""

from __future__ import annotations

import os
import sys
import unicodedata
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from _decode_fixtures import (arch_checkpoint, assert_stdin_streams, sample_checkpoint,  # noqa: F401
                              source_lines, trained_checkpoint)
from conftest import assert_one_line_error, run_cli
from nmt_cli.checkpoint import load_checkpoint, model_from_checkpoint
from nmt_cli.cli import app
from nmt_cli.data import pad_sequences
from nmt_cli.decoding.translate import TranslateOptions, translate_file
from nmt_cli.errors import ConfigError, NmtError
from nmt_cli.ids import BOS_ID, EOS_ID, PAD_ID, UNK_ID

N = 12
UNK_SURFACE = "\u2047"  # how the tokenizer writes <unk> in text


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _read(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


@pytest.fixture()
def source(tmp_path) -> Path:
    """N sample lines, then an empty one."""
    return _write(tmp_path / "in.src", source_lines(N) + [""])


# -- search on both architectures ------------------------------------------------------------------


def test_every_search_decodes_every_architecture_with_the_models_own_scores(arch_checkpoint):
    """Greedy, beam (n-best) and sampling each give every sentence tokens without specials,
    within the length limit, whose log-probability is what forced decoding gives them, and
    attention over the sentence's own source."""
    from nmt_cli.config import with_overrides
    from nmt_cli.decoding.penalties import length_limits
    from nmt_cli.decoding.search import beam_search, greedy_search, sample_search, score_targets

    model, tok, recipe = model_from_checkpoint(load_checkpoint(arch_checkpoint), arch_checkpoint)
    model.eval()
    src, lengths = pad_sequences(tok.encode_src(source_lines(N)), suffix=EOS_ID)
    cfg = with_overrides(recipe.decode, {"beam_size": 4, "n_best": 2, "max_len_a": 1.0,
                                         "max_len_b": 2}, "decode")
    limits = length_limits(lengths, cfg.max_len_a, cfg.max_len_b).tolist()
    sample_cfg = with_overrides(cfg, {"sample": True, "temperature": 1.5}, "decode")
    searches = {
        "greedy": lambda: greedy_search(model, src, lengths, cfg, return_attention=True),
        "beam": lambda: beam_search(model, src, lengths, cfg, return_attention=True),
        "sample": lambda: sample_search(model, src, lengths, range(N), sample_cfg,
                                        return_attention=True),
    }
    for name, search in searches.items():
        with torch.inference_mode():
            found = search()
        assert len(found.hypotheses) == N, name
        hyps = [(i, h) for i, sent in enumerate(found.hypotheses) for h in sent]
        assert len(hyps) == N * (2 if name == "beam" else 1), name
        for i, h in hyps:
            assert h.tokens and not {PAD_ID, BOS_ID, EOS_ID, UNK_ID} & set(h.tokens), (name, h)
            assert len(h.tokens) <= limits[i], (name, h)
            assert h.attention.shape == (len(h.tokens) + 1, int(lengths[i])), name
        rows = torch.tensor([i for i, _ in hyps])
        tgt, tgt_lengths = pad_sequences([h.tokens for _, h in hyps], suffix=EOS_ID)
        with torch.inference_mode():
            forced = score_targets(model, src.index_select(0, rows), lengths.index_select(0, rows),
                                   tgt, tgt_lengths)
        torch.testing.assert_close(forced, torch.tensor([h.log_prob for _, h in hyps]),
                                   atol=1e-4, rtol=0, msg=name)
    assert greedy_search(model, src, lengths, cfg).best() != sample_search(
        model, src, lengths, range(N), sample_cfg).best()  # sampling did sample


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


def test_robust_to_long_empty_and_blank_lines(sample_checkpoint, tmp_path):  # noqa: F811
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


# -- n-best, forced scores, sampling -------------------------------------------------------------


def test_n_best_tsv_is_sorted_per_line_and_its_scores_are_forced_scores(arch_checkpoint, source,
                                                                        tmp_path):
    nbest = tmp_path / "nbest.tsv"
    translate_file(arch_checkpoint, source, nbest, device="cpu", length_norm="none", n_best=3)
    rows = [r.split("\t") for r in _read(nbest)]
    assert [int(r[0]) for r in rows] == [i for i in range(N) for _ in range(3)] + [N]
    assert rows[-1] == [str(N), "0.0000", ""]  # the empty line: one row, score 0
    for i in range(N):
        scores = [float(r[1]) for r in rows if r[0] == str(i)]
        assert scores == sorted(scores, reverse=True) and len(set(scores)) > 1
    # With raw scores, scoring each best hypothesis as a reference gives its score back.
    firsts = rows[:3 * N:3]
    best = _write(tmp_path / "best.txt", [r[2] for r in firsts])
    scored = tmp_path / "scored.txt"
    translate_file(arch_checkpoint, _write(tmp_path / "s.src", source_lines(N)), scored,
                   device="cpu", options=TranslateOptions(score_reference=best))
    assert [float(x) for x in _read(scored)] == pytest.approx([float(r[1]) for r in firsts],
                                                              abs=2e-3)


def test_n_best_from_the_settings_writes_tsv(sample_checkpoint, source, tmp_path):  # noqa: F811
    out = tmp_path / "nbest.tsv"
    translate_file(sample_checkpoint, source, out, device="cpu", n_best=2)
    rows = [r.split("\t") for r in _read(out)]
    assert len(rows) == 2 * N + 1 and all(len(r) == 3 for r in rows)
    one = tmp_path / "one.tsv"  # --n-best 1 still asks for TSV
    translate_file(sample_checkpoint, source, one, device="cpu",
                   options=TranslateOptions(tsv=True))
    assert [r.split("\t")[0] for r in _read(one)] == [str(i) for i in range(N + 1)]


def test_sampling_is_reproducible_and_keeps_lines(arch_checkpoint, source, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 1), (b, 1), (c, 2)):
        translate_file(arch_checkpoint, source, out, device="cpu",
                       sample=True, seed=seed, temperature=1.5)
    assert _read(a) == _read(b) and len(_read(a)) == N + 1
    assert _read(a) != _read(c)


def test_cli_seed_and_allow_unk_reach_the_search(sample_checkpoint, source, tmp_path):  # noqa: F811
    """``--seed``: the same seed draws the same samples, another seed others. ``--allow-unk``:
    <unk> comes through in samples where the default forbids it."""
    runs = iter(range(100))

    def samples(*flags: str) -> list[list[str]]:
        out = tmp_path / f"samples{next(runs)}.tsv"
        result = CliRunner().invoke(app, ["translate", "-m", str(sample_checkpoint), "-i",
                                          str(source), "-o", str(out), "--device", "cpu",
                                          "--sample", "--temperature", "1.5", "--n-best", "7",
                                          "-q", *flags])
        assert result.exit_code == 0, result.output
        rows = [r.split("\t") for r in _read(out)]
        assert len(rows) == 7 * N + 1  # seven samples a line, above the beam size of 5
        return rows

    first = samples("--seed", "1")
    assert samples("--seed", "1") == first
    assert samples("--seed", "2") != first
    allowed = samples("--seed", "1", "--allow-unk")
    assert not any(UNK_SURFACE in r[2] for r in first)
    assert sum(UNK_SURFACE in r[2] for r in allowed) >= 2, "no <unk> sampled with --allow-unk"


# -- ensembles ------------------------------------------------------------------------------------


def test_self_ensemble_matches_the_model(arch_checkpoint, source, tmp_path):
    single, double = tmp_path / "one.hyp", tmp_path / "two.hyp"
    translate_file(arch_checkpoint, source, single, device="cpu")
    translate_file([arch_checkpoint, arch_checkpoint], source, double, device="cpu")
    assert _read(single) == _read(double)


def _forced_log_probs(model, src, lengths, tgt: list[list[int]]) -> torch.Tensor:
    """Each step's log-probabilities (B, T, V) from ``model.step``, fed the target tokens."""
    steps, prev = [], torch.full((len(tgt),), BOS_ID)
    with torch.inference_mode():
        memory, state = model.encode(src, lengths)
        for t in range(max(map(len, tgt))):
            log_probs, state, _ = model.step(prev, state, memory)
            steps.append(log_probs)
            prev = torch.tensor([row[t] if t < len(row) else EOS_ID for row in tgt])
    return torch.stack(steps, 1)


def test_an_rnn_and_transformer_ensemble_scores_the_mean_of_its_members_log_probs(source,
                                                                                  tmp_path):
    """Forced scoring with ``-m RNN -m TRANSFORMER`` is, for every reference, the sum over its
    tokens (EOS included) of the mean of the two members' log-probabilities, each computed here
    with that member's own step; and it is neither member's score alone."""
    from nmt_cli.decoding.hypotheses import clean_lines

    paths = [trained_checkpoint("rnn"), trained_checkpoint("transformer")]
    out, align = tmp_path / "mixed.hyp", tmp_path / "mixed.align"
    translate_file(paths, source, out, device="cpu", options=TranslateOptions(alignments=align))
    hyps = _read(out)
    assert len(hyps) == N + 1 and all(hyps[:N]) and len(_read(align)) == N + 1
    ref = _write(tmp_path / "ref.txt", hyps)
    scores = {}
    for name, models in (("rnn", paths[:1]), ("transformer", paths[1:]), ("ensemble", paths)):
        dest = tmp_path / f"{name}.scores"
        translate_file(models, source, dest, device="cpu",
                       options=TranslateOptions(score_reference=ref))
        scores[name] = [float(x) for x in _read(dest)][:N]

    members = [model_from_checkpoint(load_checkpoint(p), p, "cpu") for p in paths]
    tok, recipe = members[0][1], members[0][2]
    assert {type(m[0]).__name__ for m in members} == {"Seq2Seq", "Transformer"}
    lines = clean_lines(source_lines(N), recipe.preprocess.normalize)
    src, lengths = pad_sequences(tok.encode_src(lines), suffix=EOS_ID)
    tgt = [ids + [EOS_ID] for ids in tok.encode_tgt(hyps[:N])]
    mean = torch.stack([_forced_log_probs(m.eval(), src, lengths, tgt)
                        for m, _, _ in members]).mean(0)
    by_hand = [sum(float(mean[i, t, token]) for t, token in enumerate(row))
               for i, row in enumerate(tgt)]
    assert scores["ensemble"] == pytest.approx(by_hand, abs=2e-4)  # four decimals printed
    for e, r, t in zip(scores["ensemble"], scores["rnn"], scores["transformer"]):
        assert abs(e - r) > 1e-3 and abs(e - t) > 1e-3


# -- alignments and plots ---------------------------------------------------------------------------


def test_alignments_link_each_target_subword_to_the_source_subword_it_attends_to_most(
        arch_checkpoint, source, tmp_path):
    """Pharaoh ``i-j``: for target subword j, the source subword i (EOS left out) with the
    largest attention weight, checked against the attention the engine returns."""
    from nmt_cli.decoding.engine import EngineSettings, open_engine

    out, align = tmp_path / "out.hyp", tmp_path / "out.align"
    translate_file(arch_checkpoint, source, out, device="cpu",
                   options=TranslateOptions(alignments=align))
    rows = _read(align)
    assert len(rows) == N + 1 and rows[-1] == ""
    engine = open_engine([arch_checkpoint], EngineSettings("cpu"))
    try:
        found = engine.translate_lines(source_lines(N), engine.defaults, return_attention=True)
    finally:
        engine.close()
    assert [t.text for t in found] == _read(out)[:N]
    linked_past_the_first = 0
    for row, t in zip(rows, found):
        hyp = t.hypotheses[0]
        weights = hyp.attention  # (target subwords + EOS, source subwords + EOS)
        expected = [(int(weights[j, :t.src_pieces].argmax()), j) for j in range(len(hyp.tokens))]
        pairs = [tuple(map(int, p.split("-"))) for p in row.split()]
        assert pairs == expected, (row, expected)
        assert all(0 <= i < t.src_pieces for i, _ in pairs)
        linked_past_the_first += any(i > 0 for i, _ in pairs)
    assert linked_past_the_first > 0
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


def test_plot_attention_without_matplotlib_says_how_to_install(sample_checkpoint, source,
                                                               tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(NmtError, match="pip install matplotlib"):
        translate_file(sample_checkpoint, source, tmp_path / "x.hyp", device="cpu",
                       options=TranslateOptions(plot_attention=tmp_path / "plots"))


# -- averaging, streaming, batches side by side --------------------------------------------------


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


def test_cli_average_and_n_best_errors(sample_checkpoint, source, tmp_path):  # noqa: F811
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


def test_one_batch_is_spread_over_the_workers_when_each_gets_enough_sentences(arch_checkpoint,
                                                                               monkeypatch):
    """A call that fits one batch (a server's batch): 8 sentences on 2 workers become two
    searches of 4 side by side, one thread each; 3 sentences stay one search, on this thread.
    The lines are the same as one worker's."""
    import threading

    import nmt_cli.decoding.inference as inference
    from nmt_cli.decoding.engine import EngineSettings, open_engine

    seen: list[tuple[str, int, int]] = []
    search = inference.beam_search

    def recording_search(model, src, *args, **kwargs):
        seen.append((threading.current_thread().name, src.shape[0], torch.get_num_threads()))
        return search(model, src, *args, **kwargs)

    lines = source_lines(11)
    alone = open_engine([arch_checkpoint], EngineSettings("cpu", 2, 1))
    want = [t.text for t in alone.translate_lines(lines, alone.defaults)]
    alone.close()
    monkeypatch.setattr(inference, "beam_search", recording_search)
    engine = open_engine([arch_checkpoint], EngineSettings("cpu", 2, 2))
    try:
        cfg = engine.defaults
        assert [t.text for t in engine.translate_lines(lines[:8], cfg)] == want[:8]
        assert sorted(n for _, n, _ in seen) == [4, 4] and {t for *_, t in seen} == {1}
        assert all(name.startswith("nmt-search") for name, *_ in seen)
        seen.clear()
        assert [t.text for t in engine.translate_lines(lines[8:], cfg)] == want[8:]
        assert seen == [(threading.current_thread().name, 3, 1)]
    finally:
        engine.close()


# -- outputs, settings, input text ---------------------------------------------------------------


def test_output_to_a_link_to_a_device_writes_through_it(sample_checkpoint, source,
                                                        tmp_path):  # noqa: F811
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


def test_python_api_settings_are_checked_like_recipe_keys(sample_checkpoint, source,
                                                          tmp_path):  # noqa: F811
    out = tmp_path / "out.hyp"
    with pytest.raises(ConfigError, match="decode.beam_size: 0 is out of range"):
        translate_file(sample_checkpoint, source, out, device="cpu", beam_size=0)
    with pytest.raises(ConfigError, match="did you mean 'decode.beam_size'"):
        translate_file(sample_checkpoint, source, out, device="cpu", beam_sise=3)
    with pytest.raises(ConfigError, match="decode.length_norm"):
        translate_file(sample_checkpoint, source, out, device="cpu", length_norm="gnm")
    assert not out.exists()


@pytest.mark.parametrize("command", ["translate", "serve"])
def test_quantize_was_removed_and_says_where_fast_cpu_decoding_went(sample_checkpoint, source,
                                                                   tmp_path, command):  # noqa: F811
    out = tmp_path / "q.hyp"
    args = ["-i", source, "-o", out] if command == "translate" else ["--port", "0"]
    proc = run_cli(command, "-m", sample_checkpoint, "--device", "cpu", "--quantize", "int8", *args,
                   timeout=60)
    assert_one_line_error(proc, "--quantize", "nmt export --quantization int8")
    assert not out.exists()


def _dirty(line: str) -> str:
    """``line`` as a careless editor might save it: decomposed (NFD) accents, a zero-width space
    inside a word and a control character."""
    words = line.split(" ")
    words[1] = words[1][:2] + "\u200b" + words[1][2:]
    return unicodedata.normalize("NFD", " ".join(words) + "\x07")


def test_translation_cleans_text_like_the_training_data(sample_checkpoint, tmp_path):  # noqa: F811
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
