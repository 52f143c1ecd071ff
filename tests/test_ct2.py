"""``nmt export`` to CTranslate2, and translate / serve on the exported folder: the engine gives
nmt's own outputs and scores (every Transformer option mapped one to one), keeps N lines in and
N out, and every mistake is one line that leaves nothing half-written."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from _decode_fixtures import decode_settings, source_lines, trained_checkpoint
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


def test_greedy_output_equals_nmts_own(nmt_model, exported):
    ours, theirs = both(nmt_model, exported, source_lines(100), beam_size=1)
    same = sum(a.text == b.text for a, b in zip(ours, theirs))
    assert same >= 99, f"{same}/100 identical greedy lines"


def test_beam_search_agrees_and_scores_match(nmt_model, exported):
    # "average" divides by the length (EOS counted) on both sides: the same ranking rule.
    ours, theirs = both(nmt_model, exported, source_lines(60), beam_size=5,
                        length_norm="average")
    same = [(a, b) for a, b in zip(ours, theirs) if a.text == b.text]
    assert len(same) >= 54, f"{len(same)}/60 identical beam-5 lines"
    # The engine removes <pad>, <s> and <unk> before its softmax, nmt after, so the engine's
    # log-probabilities are a little higher; the ranking rule is the same.
    for a, b in same:
        assert b.hypotheses[0].score == pytest.approx(a.hypotheses[0].score, rel=0.01)


def test_n_best_gives_k_distinct_hypotheses_best_first(nmt_model, exported):
    _, theirs = both(nmt_model, exported, source_lines(5), beam_size=4, n_best=3)
    for t in theirs:
        scores = [h.score for h in t.hypotheses]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
        assert len(set(t.texts)) == 3 and t.text == t.texts[0]


def test_length_limits_are_nmts(nmt_model, exported):
    ours, theirs = both(nmt_model, exported, source_lines(20), beam_size=1, max_len_a=0.0,
                        max_len_b=3)
    assert [a.hypotheses[0].tokens for a in ours] == [b.hypotheses[0].tokens for b in theirs]
    assert max(len(b.hypotheses[0].tokens) for b in theirs) == 3
    _, longer = both(nmt_model, exported, source_lines(20), beam_size=1, min_len_b=30,
                     max_len_b=40)
    assert min(len(b.hypotheses[0].tokens) for b in longer) >= 30


def test_sampling_is_reproducible_with_a_seed(nmt_model, exported):
    lines = source_lines(10)
    runs = [both(nmt_model, exported, lines, sample=True, seed=s, temperature=2.0)[1]
            for s in (3, 3, 4)]
    first, again, other = ([t.text for t in run] for run in runs)
    assert first == again and first != other


@pytest.mark.parametrize("options", [
    {"norm": "post", "positions": "learned", "activation": "gelu", "scale_embeddings": False},
    {"norm": "pre", "positions": "sinusoidal", "activation": "gelu", "scale_embeddings": True},
])
def test_every_transformer_option_maps_to_the_engine(nmt_model, tmp_path, options):
    """Random weights under other options: the engine's forced-decoding log-probabilities equal
    nmt's, so each option reached the engine one to one."""
    _, _, tok, recipe = nmt_model
    tcfg = dataclasses.replace(recipe.model.transformer, **options)
    recipe = dataclasses.replace(recipe, model=dataclasses.replace(
        recipe.model, transformer=tcfg, share_embeddings=False, tie_embeddings=False))
    torch.manual_seed(0)
    model = build_model(recipe.model, tok.src_vocab_size, tok.tgt_vocab_size, tok.joint).eval()
    with torch.no_grad():  # layer norms away from 1/0, so a norm left out would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    ckpt = tmp_path / "variant.pt"
    torch.save(make_checkpoint(model, recipe, tok), ckpt)
    engine = load_exported(export_ctranslate2(ckpt, tmp_path / "variant"), "cpu", threads=1)
    lines, refs = source_lines(8), [line.lower() for line in source_lines(16)[8:]]
    norm = recipe.preprocess.normalize
    want = score_references(model, tok, lines, refs, recipe.decode, normalize=norm)
    got = ct2_score(engine, lines, refs, normalize=norm, max_src_len=recipe.decode.max_src_len)
    assert got == pytest.approx(want, rel=1e-3, abs=1e-2)


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
    if damage == "truncate model.bin":  # and through the command, with nothing written
        out = tmp_path / "hyp.txt"
        proc = run_cli("translate", "-m", folder, "-o", out, input="the dog\n")
        assert_one_line_error(proc, str(folder), "export it again")
        assert not out.exists()


@pytest.mark.parametrize("option, needle", [
    ({"alignments": "a.txt"}, "--alignments"), ({"quantize": "int8"}, "--quantization"),
    ({"plot_attention": "plots"}, "--plot-attention"), ({"ensemble": True}, "ensemble")])
def test_what_the_engine_cannot_do_is_one_line(exported, tmp_path, option, needle):
    from nmt_cli.decoding.translate import TranslateOptions, translate_file

    src, out = tmp_path / "in.txt", tmp_path / "hyp.txt"
    src.write_text("the dog\n", encoding="utf-8")
    models = [exported.folder] * (2 if option.pop("ensemble", False) else 1)
    opts = TranslateOptions(**{k: tmp_path / v if k != "quantize" else v
                               for k, v in option.items()})
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


def test_serve_answers_from_the_exported_model(exported, tmp_path):
    from _serve_helpers import Server

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
    assert info["parameters"] > 0
