"""``nmt export`` to CTranslate2, and translate / serve on the exported folder: the engine gives
nmt's own outputs and scores (every Transformer option mapped one to one, positions past
``max_positions`` as nmt gives them), keeps N lines in and N out, and every mistake is one line
that leaves nothing half-written."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from _decode_fixtures import SAMPLE, decode_settings, source_lines, trained_checkpoint
from conftest import assert_one_line_error, run_cli
from nmt_cli.checkpoint import load_checkpoint, make_checkpoint, model_from_checkpoint
from nmt_cli.decoding.ct2 import load_exported, score_references as ct2_score
from nmt_cli.decoding.ct2 import translate_lines as ct2_translate
from nmt_cli.decoding.inference import score_references, translate_lines
from nmt_cli.errors import CheckpointError, NmtError
from nmt_cli.export.ct2 import export_ctranslate2
from nmt_cli.model import build_model

@pytest.fixture(scope="module")
def nmt_model():
    ckpt = trained_checkpoint("transformer")
    return (ckpt, *model_from_checkpoint(load_checkpoint(ckpt), ckpt, "cpu"))


@pytest.fixture(scope="module")
def exported(nmt_model, tmp_path_factory):
    ckpt = nmt_model[0]
    folder = export_ctranslate2(ckpt, tmp_path_factory.mktemp("ct2") / "model", "float32")
    return load_exported(folder, "cpu", threads=1)


def both(nmt_model, engine, lines, **changes):
    _, model, tok, recipe = nmt_model
    cfg = decode_settings(recipe, **changes)
    norm = recipe.preprocess.normalize
    return (translate_lines(model, tok, lines, cfg, normalize=norm),
            ct2_translate(engine, lines, cfg, normalize=norm))


def agreeing(ours, theirs, rel: float) -> int:
    """How many lines have the same n-best list on both engines; on those, every hypothesis'
    score and log-probability agree within ``rel``."""
    same = 0
    for a, b in zip(ours, theirs, strict=True):
        if a.texts != b.texts:
            continue
        same += 1
        for h, g in zip(a.hypotheses, b.hypotheses, strict=True):
            assert g.log_prob == pytest.approx(h.log_prob, rel=rel), (a.index, a.texts)
            assert g.score == pytest.approx(h.score, rel=rel), (a.index, a.texts)
    return same


def forced_scores(model, tok, recipe, engine, lines, refs):
    norm = recipe.preprocess.normalize
    want = score_references(model, tok, lines, refs, recipe.decode, normalize=norm)
    got = ct2_score(engine, lines, refs, normalize=norm, max_src_len=recipe.decode.max_src_len)
    return want, got


# -- the exported model is nmt's model -----------------------------------------------------------

# Where the ranking rule is the same on both engines (no GNMT penalty): the lines that may differ
# are those where nmt's search, which goes on until no live hypothesis can win, finds another
# hypothesis than the engine's, which stops once beam_size have finished. Measured on these 60
# lines: 60, 58, 57, 52 and 60 of 60 identical. The engine removes <pad>, <s>, <unk> (and
# repeated n-grams) before its softmax, nmt after, so its log-probabilities are a little higher.
PARITY = [
    pytest.param({"beam_size": 1, "length_norm": "average"}, 60, 0.01, id="greedy"),
    pytest.param({"beam_size": 5, "length_norm": "none"}, 55, 0.01, id="beam5-none"),
    pytest.param({"beam_size": 5, "length_norm": "average"}, 54, 0.01, id="beam5-average"),
    pytest.param({"beam_size": 4, "n_best": 3, "length_norm": "average"}, 48, 0.01,
                 id="beam4-nbest3"),
    pytest.param({"beam_size": 3, "no_repeat_ngram": 2, "length_norm": "none"}, 57, 0.02,
                 id="no-repeat-2"),
]


@pytest.mark.parametrize("changes, at_least, rel", PARITY)
def test_the_export_translates_as_nmt_does(nmt_model, exported, changes, at_least, rel):
    ours, theirs = both(nmt_model, exported, source_lines(60), **changes)
    same = agreeing(ours, theirs, rel)
    assert same >= at_least, f"{same}/60 identical n-best lists with {changes}"
    n_best = changes.get("n_best", 1)
    assert all(len(set(t.texts)) == n_best and t.text == t.texts[0] for t in theirs)


def test_forced_scores_are_nmts(nmt_model, exported):
    """Forced decoding of nmt's own outputs: the engine's summed log-probabilities equal nmt's."""
    _, model, tok, recipe = nmt_model
    lines = source_lines(30)
    refs = [t.text for t in both(nmt_model, exported, lines, beam_size=1)[0]]
    want, got = forced_scores(model, tok, recipe, exported, lines, refs)
    assert got == pytest.approx(want, rel=2e-3)


def test_forced_scores_run_in_chunks_in_order(nmt_model, exported, monkeypatch):
    import nmt_cli.decoding.ct2 as ct2

    _, model, tok, recipe = nmt_model
    lines = source_lines(30)
    refs = [t.text for t in both(nmt_model, exported, lines, beam_size=1)[0]]
    whole = forced_scores(model, tok, recipe, exported, lines, refs)[1]
    calls = []
    monkeypatch.setattr(ct2, "SCORE_CHUNK", 7)
    monkeypatch.setattr(exported, "translator", _Spy(exported.translator, calls))
    chunked = forced_scores(model, tok, recipe, exported, lines, refs)[1]
    assert calls == [7, 7, 7, 7, 2] and chunked == pytest.approx(whole, rel=1e-6)


class _Spy:
    """A translator that records how many lines each score_batch call gets."""

    def __init__(self, translator, calls: list):
        self._translator, self._calls = translator, calls

    def score_batch(self, source, target, **options):
        self._calls.append(len(source))
        return self._translator.score_batch(source, target, **options)

    def __getattr__(self, name):
        return getattr(self._translator, name)


def test_length_limits_are_nmts(nmt_model, exported):
    ours, theirs = both(nmt_model, exported, source_lines(20), beam_size=1, max_len_a=0.0,
                        max_len_b=3)
    assert [a.hypotheses[0].tokens for a in ours] == [b.hypotheses[0].tokens for b in theirs]
    assert max(len(b.hypotheses[0].tokens) for b in theirs) == 3
    # stopped at the maximum, an output has no EOS, and its length normalizer counts none
    raw = both(nmt_model, exported, source_lines(20), beam_size=1, max_len_a=0.0, max_len_b=3,
               length_norm="none")[1]
    averaged = both(nmt_model, exported, source_lines(20), beam_size=1, max_len_a=0.0,
                    max_len_b=3, length_norm="average")[1]
    assert [b.hypotheses[0].log_prob for b in averaged] == pytest.approx(
        [b.hypotheses[0].log_prob for b in raw], rel=1e-5)
    _, longer = both(nmt_model, exported, source_lines(20), beam_size=1, min_len_b=30,
                     max_len_b=40)
    assert min(len(b.hypotheses[0].tokens) for b in longer) >= 30


def test_a_gnmt_penalty_warns_once(nmt_model, exported, capsys):
    engine = load_exported(exported.folder, "cpu", threads=1)
    both(nmt_model, engine, source_lines(3), beam_size=2, length_norm="average")
    both(nmt_model, engine, source_lines(3), beam_size=2, length_norm="gnmt", length_penalty=0.0)
    assert capsys.readouterr().err == ""
    for _ in range(2):
        both(nmt_model, engine, source_lines(3), beam_size=2, length_norm="gnmt",
             length_penalty=0.6)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "GNMT" in err[0] and err[0].startswith("warning:"), err


# -- random models under every option: embeddings, vocabularies, layers --------------------------


@pytest.fixture(scope="module")
def separate_tokenizers():
    """Source and target SentencePiece models of different sizes (``tokenizer.joint: false``)."""
    from nmt_cli.config import TokenizerConfig
    from nmt_cli.text.tokenizer import Tokenizers, train_model

    def trained(side, size):
        lines = (SAMPLE / f"train.{side}").read_text("utf-8").splitlines()[:2000]
        return train_model(lines, TokenizerConfig(vocab_size=size, num_threads=1))

    return Tokenizers.from_bytes(trained("src", 150), trained("tgt", 120))


def random_variant(nmt_model, tok, tmp_path, model=None, transformer=None):
    """A randomly initialised Transformer with the recipe's model section changed, saved as a
    checkpoint and exported: (torch model, recipe, engine)."""
    _, _, _, recipe = nmt_model
    tcfg = dataclasses.replace(recipe.model.transformer, **(transformer or {}))
    recipe = dataclasses.replace(
        recipe, tokenizer=dataclasses.replace(recipe.tokenizer, joint=tok.joint),
        model=dataclasses.replace(recipe.model, transformer=tcfg, **{
            "share_embeddings": False, "tie_embeddings": False, **(model or {})}))
    torch.manual_seed(0)
    variant = build_model(recipe.model, tok.src_vocab_size, tok.tgt_vocab_size, tok.joint).eval()
    with torch.no_grad():  # layer norms away from 1/0, so a norm left out would show
        for name, p in variant.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    ckpt = tmp_path / "variant.pt"
    torch.save(make_checkpoint(variant, recipe, tok), ckpt)
    engine = load_exported(export_ctranslate2(ckpt, tmp_path / "variant"), "cpu", threads=1)
    return variant, recipe, engine


@pytest.mark.parametrize("joint, model, transformer", [
    (True, {"share_embeddings": True}, None),
    (True, {"tie_embeddings": True}, None),
    (True, {"share_embeddings": True, "tie_embeddings": True}, None),
    (False, None, None),
    (False, {"tie_embeddings": True}, None),
    (True, None, {"norm": "post", "positions": "learned", "activation": "gelu",
                  "scale_embeddings": False}),
    (True, None, {"norm": "pre", "positions": "sinusoidal", "activation": "gelu",
                  "scale_embeddings": True}),
], ids=["shared", "tied", "shared-tied", "separate-vocabularies", "separate-tied",
        "post-learned-gelu", "pre-sinusoidal-gelu"])
def test_every_model_option_maps_to_the_engine(nmt_model, separate_tokenizers, tmp_path, joint,
                                               model, transformer):
    """Random weights under each option: the engine's forced-decoding log-probabilities and
    greedy outputs are nmt's, so each tensor and option reached the engine one to one."""
    tok = nmt_model[2] if joint else separate_tokenizers
    variant, recipe, engine = random_variant(nmt_model, tok, tmp_path, model, transformer)
    assert engine.tok.joint == joint and engine.tok.tgt_vocab_size == tok.tgt_vocab_size
    lines, refs = source_lines(8), [line.lower() for line in source_lines(16)[8:]]
    want, got = forced_scores(variant, tok, recipe, engine, lines, refs)
    assert got == pytest.approx(want, rel=1e-4)
    ours, theirs = both((None, variant, tok, recipe), engine, lines, beam_size=1,
                        length_norm="none", max_len_a=0.0, max_len_b=20)
    assert [a.texts for a in ours] == [b.texts for b in theirs]


# -- positions past max_positions ----------------------------------------------------------------


def short_table(nmt_model, tmp_path, positions, rows=None, monkeypatch=None, **decode):
    """The trained model (sinusoidal positions) or a random one (learned positions) with
    ``max_positions`` 16, and its export; ``rows`` makes the export's least table that long."""
    _, trained, tok, recipe = nmt_model
    recipe = dataclasses.replace(recipe, decode=dataclasses.replace(recipe.decode, **decode))
    tcfg = dataclasses.replace(recipe.model.transformer, max_positions=16, positions=positions)
    recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, transformer=tcfg))
    torch.manual_seed(0)
    model = build_model(recipe.model, tok.src_vocab_size, tok.tgt_vocab_size, tok.joint).eval()
    if positions == "sinusoidal":  # the same weights; only the clamping position changes
        model.load_state_dict(trained.state_dict())
    ckpt = tmp_path / "short.pt"
    torch.save(make_checkpoint(model, recipe, tok), ckpt)
    if rows is not None:
        monkeypatch.setattr("nmt_cli.export.ct2.MIN_POSITION_ROWS", rows)
    engine = load_exported(export_ctranslate2(ckpt, tmp_path / "short"), "cpu", threads=1)
    return (ckpt, model, tok, recipe), engine


def long_lines(n: int) -> list[str]:
    """Sentences of about 30 to 100 subwords, several test lines each."""
    lines = source_lines(3 * n)
    return [" ".join(lines[3 * i: 3 * i + 3 + i % 4]) for i in range(n)]


@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_positions_past_max_positions_are_nmts(nmt_model, tmp_path, positions):
    """Sources and outputs past ``max_positions`` (16): nmt gives them the last position, and
    so does the export's padded table; the engine neither fails nor differs."""
    short, engine = short_table(nmt_model, tmp_path, positions)
    assert engine.positions == 1024
    lines = long_lines(8)
    assert min(len(ids) for ids in short[2].encode_src(lines)) > 16
    ours, theirs = both(short, engine, lines, beam_size=1, length_norm="none", min_len_b=20,
                        max_len_b=40)
    assert [a.texts for a in ours] == [b.texts for b in theirs]
    assert min(len(b.hypotheses[0].tokens) for b in theirs) >= 20
    refs = [" ".join([t.text] * 3) for t in ours]  # past 16 target positions too
    want, got = forced_scores(short[1], short[2], short[3], engine, lines, refs)
    assert got == pytest.approx(want, rel=1e-3)


def test_past_the_exported_table_sources_and_outputs_are_cut(nmt_model, tmp_path, monkeypatch):
    """Asked for longer sources and outputs than the export's table holds (here: 16 rows), the
    engine cuts each source to 15 subwords, marked truncated, and stops each output at 16:
    nmt's own output under those limits, no error."""
    short, engine = short_table(nmt_model, tmp_path, "sinusoidal", rows=16, monkeypatch=monkeypatch,
                                max_src_len=10, max_len_a=0.0, max_len_b=12)
    assert engine.positions == 16
    lines = long_lines(6)
    _, model, tok, recipe = short
    norm = recipe.preprocess.normalize
    theirs = ct2_translate(engine, lines, decode_settings(
        recipe, beam_size=1, max_src_len=200, max_len_b=40, min_len_b=30), normalize=norm)
    ours = translate_lines(model, tok, lines, decode_settings(
        recipe, beam_size=1, max_src_len=15, max_len_b=16, min_len_b=16), normalize=norm)
    assert all(t.truncated and t.src_pieces == 15 for t in theirs)
    assert [len(t.hypotheses[0].tokens) for t in theirs] == [16] * 6
    assert [a.text for a in ours] == [b.text for b in theirs]
    # forced decoding: a reference is scored on its first 15 subwords, then EOS
    refs = [" ".join([t.text] * 3) for t in ours]
    cut = tok.decode_tgt([ids[:15] for ids in tok.encode_tgt(refs)])
    assert [len(ids) for ids in tok.encode_tgt(cut)] == [15] * 6
    want = score_references(model, tok, lines, cut, decode_settings(recipe, max_src_len=15),
                            normalize=norm)
    got = ct2_score(engine, lines, refs, normalize=norm, max_src_len=200)
    assert got == pytest.approx(want, rel=1e-3)


# -- sampling --------------------------------------------------------------------------------------


def sampled(nmt_model, engine, seed):
    recipe = nmt_model[3]
    cfg = decode_settings(recipe, sample=True, seed=seed, temperature=2.0)
    lines = source_lines(10)
    return [t.text for t in ct2_translate(engine, lines, cfg, normalize=recipe.preprocess.normalize)]


def test_sampling_runs_on_the_loaded_translator_and_repeats_with_a_seed(exported, nmt_model):
    """The first sampled call seeds the engine with its seed; later calls draw on from there.
    The same calls on a freshly loaded model give the same samples; another seed others."""
    runs = []
    for seed in (3, 3, 4):
        engine = load_exported(exported.folder, "cpu", threads=1)
        translator = engine.translator
        runs.append([sampled(nmt_model, engine, seed) for _ in range(2)])
        assert engine.translator is translator  # nothing rebuilt
    (first, second), again, other = runs
    assert again == [first, second] and first != second
    assert other[0] != first


def test_sampling_on_several_workers_moves_to_one_worker_once(exported, nmt_model):
    """Draws must not depend on which worker takes which group: a translator with several
    workers is replaced, once, by one worker on the same threads, and kept."""
    engine = load_exported(exported.folder, "cpu", threads=2, inter_threads=2)
    first = sampled(nmt_model, engine, 5)
    translator = engine.translator
    assert engine.options["inter_threads"] == 1 and engine.options["intra_threads"] == 2
    sampled(nmt_model, engine, 5)
    assert engine.translator is translator
    one = load_exported(exported.folder, "cpu", threads=2, inter_threads=1)
    assert sampled(nmt_model, one, 5) == first


def test_one_batch_is_spread_over_the_engine_workers(exported, monkeypatch):
    """A server's batch of 8 sentences runs as two batches of 4 on the two CTranslate2 workers
    (one batch runs on one worker), 3 sentences as one; the lines equal one worker's."""
    import nmt_cli.decoding.ct2 as ct2_module
    from nmt_cli.decoding.engine import EngineSettings, open_engine

    lines = source_lines(11)
    one = open_engine([exported.folder], EngineSettings("cpu", 2, 1))
    want = [t.text for t in one.translate_lines(lines, one.defaults)]
    sizes: list[int] = []
    translate = ct2_module.translate_lines

    def recording(model, lines, cfg, **kwargs):
        sizes.append(cfg.batch_size)
        return translate(model, lines, cfg, **kwargs)

    monkeypatch.setattr(ct2_module, "translate_lines", recording)
    two = open_engine([exported.folder], EngineSettings("cpu", 2, 0))
    assert two.model.options["inter_threads"] == 2
    assert [t.text for t in two.translate_lines(lines[:8], two.defaults)] == want[:8]
    assert [t.text for t in two.translate_lines(lines[8:], two.defaults)] == want[8:]
    assert sizes == [4, two.defaults.batch_size]


def test_int8_export_still_translates(nmt_model, tmp_path):
    """An int8 export scores nmt's own greedy outputs within a few percent of the fp32 model.

    Identical lines are no test here: the test model is barely trained, so its distributions are
    flat and int8 rounding flips many argmaxes, by how much depending on the CPU's int8 kernels
    (most lines matched on an AVX-512 CPU, none on an AVX2-only one, with scores 2% apart on
    average on both). A weight exported with a wrong scale or layout is off by far more."""
    _, model, tok, recipe = nmt_model
    engine = load_exported(export_ctranslate2(nmt_model[0], tmp_path / "int8", "int8"), "cpu", 1)
    assert engine.metadata["quantization"] == "int8"
    lines = source_lines(40)
    ours, theirs = both(nmt_model, engine, lines, beam_size=1)
    assert len(theirs) == len(lines) and all(t.text for t in theirs)
    refs, norm = [t.text for t in ours], recipe.preprocess.normalize
    want = score_references(model, tok, lines, refs, recipe.decode, normalize=norm)
    got = ct2_score(engine, lines, refs, normalize=norm, max_src_len=recipe.decode.max_src_len)
    rel = [abs(g - w) / abs(w) for g, w in zip(got, want)]
    assert sum(rel) / len(rel) < 0.05 and max(rel) < 0.15, (sum(rel) / len(rel), max(rel))


def test_the_cli_keeps_line_alignment_with_empty_lines(exported, tmp_path):
    lines = source_lines(6)
    text = "\n".join([lines[0], "", lines[1], "   ", lines[2], ""]) + "\n"
    proc = run_cli("translate", "-m", exported.folder, "--beam-size", "2", "-q", input=text)
    assert proc.returncode == 0, proc.stderr
    # the recipe's GNMT penalty is not the engine's: said once, on stderr
    warned = proc.stderr.splitlines()
    assert len(warned) == 1 and warned[0].startswith("warning:") and "GNMT" in warned[0], warned
    out = proc.stdout.split("\n")[:-1]
    assert len(out) == 6 and out[1] == out[3] == out[5] == "" and all(out[i] for i in (0, 2, 4))
    nbest = run_cli("translate", "-m", exported.folder, "--n-best", "2", "-q", input=text)
    rows = [r.split("\t") for r in nbest.stdout.splitlines()]
    assert [int(r[0]) for r in rows] == [0, 0, 1, 2, 2, 3, 4, 4, 5]


def test_translating_an_exported_model_never_imports_torch(exported):
    """The engine path starts without torch (the start-up of a CTranslate2 translate is the
    engine's, not torch's): run the real CLI and look at what it loaded."""
    import subprocess
    import sys

    code = ("import sys\nfrom nmt_cli.cli import main\n"
            f"sys.argv = ['nmt', 'translate', '-m', {str(exported.folder)!r}, '-q', "
            "'--threads', '2']\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print('torch loaded' if 'torch' in sys.modules else 'no torch', file=sys.stderr)\n")
    lines = source_lines(3)
    proc = subprocess.run([sys.executable, "-c", code], input="\n".join(lines) + "\n",
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 3 and all(proc.stdout.splitlines())
    assert proc.stderr.strip().splitlines()[-1] == "no torch", proc.stderr


def test_the_engine_threads_split_between_and_within_batches(monkeypatch):
    import os

    from nmt_cli.decoding.ct2 import thread_split

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert thread_split("cpu", 0, 0) == (1, 4)  # by default one batch per core
    assert thread_split("cpu", 2, 0) == (1, 2)
    assert thread_split("cpu", 4, 2) == (2, 2)
    assert thread_split("cpu", 0, 1) == (4, 1)  # one batch at a time, on every core (serve)
    assert thread_split("cpu", 2, 8) == (1, 2)  # never more workers than threads
    assert thread_split("cuda", 0, 0) == (0, 1)


def test_batches_side_by_side_keep_every_line_in_place(exported, tmp_path):
    """Groups of sentences run on several engine workers at once; the output is the same, line
    for line, as one worker's."""
    lines = source_lines(40)
    text = "\n".join(lines[:20] + [""] + lines[20:]) + "\n"
    one = run_cli("translate", "-m", exported.folder, "--threads", "2", "--inter-threads", "1",
                  "-q", input=text)
    two = run_cli("translate", "-m", exported.folder, "--threads", "2", "--inter-threads", "2",
                  "-q", input=text)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert len(two.stdout.split("\n")[:-1]) == 41 and two.stdout.split("\n")[20] == ""
    assert two.stdout == one.stdout


def test_score_reference_runs_on_the_engine(nmt_model, exported, tmp_path):
    _, model, tok, recipe = nmt_model
    lines = source_lines(4)
    ref = tmp_path / "ref.txt"
    ref.write_text("".join(f"{t.text}\n" for t in both(nmt_model, exported, lines)[0]), "utf-8")
    proc = run_cli("translate", "-m", exported.folder, "--score-reference", ref, "-q",
                   input="\n".join(lines) + "\n")
    want = score_references(model, tok, lines, ref.read_text("utf-8").splitlines(),
                            recipe.decode, normalize=recipe.preprocess.normalize)
    assert [float(x) for x in proc.stdout.split()] == pytest.approx(want, abs=1e-2)


# -- mistakes ------------------------------------------------------------------------------------


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_an_rnn_checkpoint_is_one_line(tmp_path):
    proc = run_cli("export", trained_checkpoint("rnn"), "-o", tmp_path / "out")
    assert_one_line_error(proc, "CTranslate2 runs Transformer models only")
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


def test_an_rnn_checkpoint_is_refused_by_its_recipe_before_its_weights(tmp_path):
    """The architecture is read from the recipe before any weight is used: an RNN checkpoint
    whose weights would not even load is still refused as an RNN."""
    payload = load_checkpoint(trained_checkpoint("rnn"))
    payload["model"] = {"encoder.weight": torch.zeros(1)}
    ckpt = tmp_path / "rnn.pt"
    torch.save(payload, ckpt)
    with pytest.raises(CheckpointError, match="an RNN checkpoint; CTranslate2 runs Transformer"):
        export_ctranslate2(ckpt, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rnn.pt"]


def test_a_non_empty_output_needs_overwrite(nmt_model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me", encoding="utf-8")
    assert_one_line_error(run_cli("export", nmt_model[0], "-o", out), str(out), "--overwrite")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    proc = run_cli("export", nmt_model[0], "-o", out, "--overwrite", "--quantization", "int8")
    assert proc.returncode == 0, proc.stderr
    assert not (out / "notes.txt").exists() and (out / "model.bin").is_file()
    assert not _leftovers(tmp_path)


def test_an_engine_failure_leaves_nothing_behind(nmt_model, tmp_path, monkeypatch):
    import ctranslate2.specs.model_spec as model_spec

    def broken_save(self, output_dir):
        (Path(output_dir) / "model.bin").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model_spec.ModelSpec, "save", broken_save)
    with pytest.raises(OSError):
        export_ctranslate2(nmt_model[0], tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_a_recipe_with_a_fusion_lm_exports_a_model_that_translates(nmt_model, tmp_path):
    payload = load_checkpoint(nmt_model[0])
    payload["recipe"]["decode"]["lm"] = str(tmp_path / "en-lm.pt")
    ckpt = tmp_path / "with-lm.pt"
    torch.save(payload, ckpt)
    folder = export_ctranslate2(ckpt, tmp_path / "model", "float32")
    meta = json.loads((folder / "nmt-export.json").read_text())
    assert meta["decode"]["lm"] is None and meta["recipe"]["decode"]["lm"] is None
    proc = run_cli("translate", "-m", folder, "-q", input="the dog\n")
    assert proc.returncode == 0 and len(proc.stdout.split("\n")) == 2, proc.stderr


@pytest.mark.parametrize("damage", ["truncate model.bin", "remove nmt-export.json",
                                    "remove source.spm.model", "garble nmt-export.json",
                                    "garble target.spm.model"])
def test_a_corrupt_or_partial_model_directory_is_one_line(exported, tmp_path, damage):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(exported.folder, folder)
    action, name = damage.split()
    if action == "truncate":
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
    elif action == "remove":
        (folder / name).unlink()
    else:
        (folder / name).write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError) as caught:
        load_exported(folder, "cpu")
    assert str(folder) in str(caught.value) and "\n" not in str(caught.value)
    if action != "truncate":
        assert name in str(caught.value)
    if damage == "truncate model.bin":  # and through the command, with nothing written
        out = tmp_path / "hyp.txt"
        proc = run_cli("translate", "-m", folder, "-o", out, input="the dog\n")
        assert_one_line_error(proc, str(folder), "export it again")
        assert not out.exists()


@pytest.mark.parametrize("name", ["source.spm.model", "target.spm.model"])
def test_a_corrupt_tokenizer_is_named_by_its_side(exported, tmp_path, name):
    """A tokenizer that matches its SHA-256 but is no SentencePiece model (written so by a
    broken export): the error names the file that is wrong."""
    import hashlib
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(exported.folder, folder)
    garbage = b"not a sentencepiece model"
    (folder / name).write_bytes(garbage)
    meta = json.loads((folder / "nmt-export.json").read_text("utf-8"))
    meta["tokenizer"]["sha256"]["src" if name.startswith("source") else "tgt"] = \
        hashlib.sha256(garbage).hexdigest()
    (folder / "nmt-export.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(CheckpointError) as caught:
        load_exported(folder, "cpu")
    assert f"{name} is not a SentencePiece model" in str(caught.value)


@pytest.mark.parametrize("option, needle", [
    ({"alignments": "a.txt"}, "--alignments"),
    ({"plot_attention": "plots"}, "--plot-attention"), ({"ensemble": True}, "ensemble")])
def test_what_the_engine_cannot_do_is_one_line(exported, tmp_path, option, needle):
    from nmt_cli.decoding.translate import TranslateOptions, translate_file

    src, out = tmp_path / "in.txt", tmp_path / "hyp.txt"
    src.write_text("the dog\n", encoding="utf-8")
    models = [exported.folder] * (2 if option.pop("ensemble", False) else 1)
    opts = TranslateOptions(**{k: tmp_path / v for k, v in option.items()})
    with pytest.raises(NmtError, match=needle):
        translate_file(models, src, out, device="cpu", options=opts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_the_cli_refuses_alignments_on_an_exported_model(exported, tmp_path):
    proc = run_cli("translate", "-m", exported.folder, "--alignments", tmp_path / "a.txt",
                   input="the dog\n")
    assert_one_line_error(proc, "--alignments", "exported CTranslate2 model")
    assert not (tmp_path / "a.txt").exists()


def test_the_python_api_refuses_an_unknown_quantization(nmt_model, tmp_path):
    with pytest.raises(NmtError, match="int3"):
        export_ctranslate2(nmt_model[0], tmp_path / "out", "int3")
    assert list(tmp_path.iterdir()) == []


def test_serve_answers_from_the_exported_model(nmt_model, exported, tmp_path):
    from _serve_helpers import Server

    from nmt_cli.model import count_parameters

    lines = source_lines(3)
    texts = [lines[0], "", lines[1], lines[2]]
    want = run_cli("translate", "-m", exported.folder, "-q", "--beam-size", "3",
                   input="\n".join(texts) + "\n").stdout.split("\n")[:-1]
    srv = Server(exported.folder, tmp_path / "serve.log", "--threads", "1")
    try:
        with srv.client() as client:
            got = client.post("/translate", json={"texts": texts, "beam_size": 3})
            refused = client.post("/translate", json={"text": lines[0],
                                                      "return_alignments": True})
            info = client.get("/model").json()
    finally:
        srv.stop()
    assert [t["text"] for t in got.json()["translations"]] == want and want[1] == ""
    assert refused.status_code == 400 and refused.json()["field"] == "return_alignments"
    assert info["parameters"] == count_parameters(nmt_model[1])  # shared tables counted once
