"""The ``nmt`` command line as a user runs it (subprocesses): help, one-line errors, translate, eval."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest

from conftest import (CLI_ENV, SAMPLE, assert_one_line_error, run_cli, sample_lines,
                      tiny_recipe_text)

COMMANDS = ("tokenizer", "preprocess", "train", "translate", "eval", "score", "rerank", "tune")


# -- help and imports ----------------------------------------------------------------------------


def test_help_lists_every_stage():
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    for command in COMMANDS:
        assert command in proc.stdout
    for command in COMMANDS:
        sub = run_cli(command, "--help")
        assert sub.returncode == 0 and "Usage" in sub.stdout, sub.stderr


def test_no_arguments_shows_help():
    proc = run_cli()
    assert "Usage" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_importing_the_cli_does_not_import_torch():
    code = ("import sys, nmt_cli.cli; "
            "heavy = [m for m in ('torch', 'sentencepiece', 'sacrebleu') if m in sys.modules]; "
            "print(','.join(heavy))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=CLI_ENV, check=True)
    assert proc.stdout.strip() == ""


def test_help_does_not_import_torch():
    code = ("import sys\nfrom nmt_cli.cli import app\n"
            "try:\n    app(['--help'], prog_name='nmt')\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'LIGHT')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=CLI_ENV)
    assert proc.stdout.strip().splitlines()[-1] == "LIGHT"


# -- recipe errors are one line ------------------------------------------------------------------


@pytest.fixture
def recipe_copy(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(tiny_recipe_text(), encoding="utf-8")
    return path


def test_misspelt_override_is_one_line_with_suggestion(recipe_copy):
    proc = run_cli("train", recipe_copy, "--set", "train.lerning_rate=0.1")
    line = assert_one_line_error(proc, "train.lerning_rate", "train.learning_rate")
    assert "did you mean" in line
    assert proc.stdout == ""
    assert not (recipe_copy.parent / "work").exists()  # nothing was started


@pytest.mark.parametrize("command", ["tokenizer", "preprocess", "train"])
def test_missing_recipe_is_one_line(tmp_path, command):
    proc = run_cli(command, tmp_path / "missing.yaml")
    assert_one_line_error(proc, "missing.yaml")


def test_invalid_yaml_is_one_line_with_line_number(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {emb_size: 32\ntrain: {}\n", encoding="utf-8")
    assert_one_line_error(run_cli("tokenizer", bad), "bad.yaml", "line 3")


def test_bad_choice_in_recipe_is_one_line(recipe_copy):
    proc = run_cli("preprocess", recipe_copy, "--set", "model.encoder.cell=gur")
    assert_one_line_error(proc, "model.encoder.cell", "'gru'")


def test_preprocess_before_tokenizer_is_one_line(recipe_copy):
    assert_one_line_error(run_cli("preprocess", recipe_copy), "nmt tokenizer")


def test_train_refuses_to_overwrite_a_run(experiment):
    before = experiment.last_checkpoint.stat().st_mtime_ns
    proc = run_cli("train", experiment.recipe_path)
    assert_one_line_error(proc, "--overwrite")
    assert experiment.last_checkpoint.stat().st_mtime_ns == before


# -- translate -----------------------------------------------------------------------------------


def translate(ckpt, *args, input=None):
    return run_cli("translate", "-m", ckpt, "--quiet", *args, input=input)


@pytest.fixture(scope="module")
def expected(experiment, trained_model, tokenizers):
    """In-process translations with the same weights and the recipe's decode settings."""
    from nmt_cli.config import with_overrides
    from nmt_cli.decoding.inference import translate_lines

    recipe = experiment.recipe

    def run(lines, **decode):
        cfg = with_overrides(recipe.decode, decode, "decode")  # fp32, as the CPU decodes
        return [t.text for t in translate_lines(trained_model, tokenizers, lines, cfg,
                                                normalize=recipe.preprocess.normalize)]

    return run


def test_empty_lines_stay_in_place(experiment):
    proc = run_cli("translate", "-m", experiment.checkpoint, input="a\n\nb\n")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")
    assert len(lines) == 4 and lines[3] == ""  # exactly three lines, each ending in a newline
    assert lines[0] != "" and lines[1] == "" and lines[2] != ""
    assert "translated 3 sentences" in proc.stderr  # statistics go to stderr, not stdout


def test_n_lines_in_n_lines_out_for_odd_input(experiment, expected):
    # CRLF, whitespace-only lines, a BOM and no final newline.
    raw = b"\xef\xbb\xbfThe boy runs.\r\n   \r\nThe dog sleeps.\r\n\r\nThe cat eats"
    proc = translate(experiment.checkpoint, input=raw)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.split("\n")
    assert len(out) == 6 and out[5] == ""
    assert out[:5] == expected(["The boy runs.", "", "The dog sleeps.", "", "The cat eats"])
    assert out[1] == "" and out[3] == "" and all(out[i] for i in (0, 2, 4))


def test_translation_does_not_depend_on_batch_size(experiment, tmp_path):
    test_src = SAMPLE / "test.src"
    outs = {}
    for batch in (1, 64):
        out = tmp_path / f"b{batch}.txt"
        proc = translate(experiment.checkpoint, "-i", test_src, "-o", out, "--beam-size", "5",
                         "--batch-size", str(batch))
        assert proc.returncode == 0, proc.stderr
        outs[batch] = out.read_text(encoding="utf-8").split("\n")
    assert len(outs[1]) == len(sample_lines("test", "src")) + 1
    assert len(set(outs[64])) > 10  # real, varied translations, not one repeated string
    assert outs[1] == outs[64]


def test_translate_ends_without_teardown_and_failures_keep_it(experiment, tmp_path):
    """The console script leaves a translate that succeeded with ``os._exit`` once its output is
    flushed and closed (torch's teardown costs about a second), so an atexit hook never runs,
    while every line has arrived; a failed translate, other commands and ``NMT_QUICK_EXIT=0`` end
    the ordinary way."""
    script = ("import atexit, sys\n"
              "atexit.register(lambda: print('teardown ran', file=sys.stderr))\n"
              "from nmt_cli.cli import run\nrun()\n")

    def console(*args, input=None, env=None):
        return subprocess.run([sys.executable, "-c", script, *map(str, args)], input=input,
                              capture_output=True, text=True, env=dict(CLI_ENV, **(env or {})),
                              timeout=300)

    lines = sample_lines("test", "src", 25)
    piped = console("translate", "-m", experiment.checkpoint, "-q", input="\n".join(lines) + "\n")
    assert piped.returncode == 0, piped.stderr
    assert len(piped.stdout.splitlines()) == 25 and all(piped.stdout.splitlines())
    assert "teardown ran" not in piped.stderr
    out = tmp_path / "out.txt"
    to_file = console("translate", "-m", experiment.checkpoint, "-i", SAMPLE / "test.src",
                      "-o", out, "--beam-size", "2")
    assert to_file.returncode == 0 and "teardown ran" not in to_file.stderr, to_file.stderr
    assert len(out.read_text(encoding="utf-8").splitlines()) == len(sample_lines("test", "src"))
    failed = console("translate", "-m", experiment.checkpoint, "-i", tmp_path / "missing.txt")
    assert failed.returncode != 0 and "teardown ran" in failed.stderr
    other = console("tokenizer", "--help")
    assert other.returncode == 0 and "teardown ran" in other.stderr
    opted_out = console("translate", "-m", experiment.checkpoint, "-q", input="a\n",
                        env={"NMT_QUICK_EXIT": "0"})
    assert opted_out.returncode == 0 and "teardown ran" in opted_out.stderr


def test_piped_input_is_translated_as_it_arrives(experiment):
    """With a pipe, a line's translation comes out before the writer has closed its end."""
    import select

    proc = subprocess.Popen([sys.executable, "-m", "nmt_cli", "translate", "-m",
                             str(experiment.checkpoint), "--quiet"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=CLI_ENV)
    try:
        answers = []
        for line in (b"The boy runs.\n", b"The dog sleeps.\n"):
            proc.stdin.write(line)
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], 120)
            assert ready, "no translation while the input was still open"
            answers.append(proc.stdout.readline())
        proc.stdin.close()
        assert proc.stdout.read() == b""
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()
    assert all(a.endswith(b"\n") and a.strip() for a in answers)


def test_compressed_file_input_and_decode_options(experiment, expected, tmp_path):
    lines = sample_lines("dev", "src", 25)
    src = tmp_path / "in.txt.gz"
    src.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    out = tmp_path / "deep" / "out.txt"
    proc = translate(experiment.checkpoint, "-i", src, "-o", out, "--beam-size", "3",
                     "--max-len-a", "0", "--max-len-b", "4")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert out.read_text(encoding="utf-8").splitlines() == expected(
        lines, beam_size=3, max_len_a=0.0, max_len_b=4)


def test_missing_input_leaves_no_output(experiment, tmp_path):
    out = tmp_path / "out" / "hyp.txt"
    proc = translate(experiment.checkpoint, "-i", tmp_path / "missing.src", "-o", out)
    assert_one_line_error(proc, "missing.src")
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_strict_invalid_utf8_names_the_line_and_leaves_no_output(experiment, tmp_path):
    src = tmp_path / "bad.src"
    src.write_bytes(b"The boy runs.\nThe \xff dog.\n")
    out = tmp_path / "hyp.txt"
    proc = translate(experiment.checkpoint, "-i", src, "-o", out, "--invalid-utf8", "error")
    assert_one_line_error(proc, f"{src}:2", "UTF-8")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.src"]  # no temp file either
    piped = translate(experiment.checkpoint, "--invalid-utf8", "error", input=b"ok\n\xc3(\n")
    assert_one_line_error(piped, "<stdin>:2")


def test_invalid_utf8_is_replaced_with_one_warning_and_n_lines_out(experiment, expected,
                                                                   tmp_path):
    raw = [b"The boy runs.", b"The \xff dog.", b"A man.", b"\xc3( two \xfe bad", b"Ok."]
    src = tmp_path / "bad.src"
    src.write_bytes(b"\n".join(raw) + b"\n")
    out = tmp_path / "hyp.txt"
    proc = translate(experiment.checkpoint, "-i", src, "-o", out)
    assert proc.returncode == 0, proc.stderr
    warning = proc.stderr.strip().splitlines()
    assert len(warning) == 1 and str(src) in warning[0], proc.stderr  # once, not once per line
    assert "2 line(s) with invalid UTF-8 (line 2, 4)" in warning[0]
    text = [line.decode("utf-8", errors="replace") for line in raw]
    assert out.read_text(encoding="utf-8").splitlines() == expected(text)
    # Forced scoring reads both files under the same policy: one warning for each file.
    ref = tmp_path / "bad.ref"
    ref.write_bytes(b"\n".join(raw[::-1]) + b"\n")
    scored = translate(experiment.checkpoint, "-i", src, "--score-reference", ref)
    assert scored.returncode == 0, scored.stderr
    assert len(scored.stdout.splitlines()) == len(raw)
    warnings = scored.stderr.strip().splitlines()
    assert len(warnings) == 2 and str(src) in warnings[0] and str(ref) in warnings[1], warnings
    assert "(line 2, 4)" in warnings[1]
    strict = translate(experiment.checkpoint, "-i", src, "--score-reference", ref,
                       "--invalid-utf8", "error")
    assert_one_line_error(strict, f"{src}:2", "invalid UTF-8")


def test_a_wrong_invalid_utf8_policy_is_one_line(experiment):
    proc = translate(experiment.checkpoint, "--invalid-utf8", "drop", input="a\n")
    assert_one_line_error(proc, "decode.invalid_utf8", "'replace', 'error'")


def test_unwritable_output_is_one_line(experiment, tmp_path):
    """-o inside something that is not a folder is a user mistake: one line, no traceback."""
    blocker = tmp_path / "afile"
    blocker.write_text("I am a file\n")
    proc = translate(experiment.checkpoint, "-o", blocker / "out.txt", input="The boy runs.\n")
    assert_one_line_error(proc, "afile")
    assert blocker.read_text() == "I am a file\n"


def test_unwritable_workdir_is_one_line(recipe_copy, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    proc = run_cli("tokenizer", recipe_copy, "--set", f"workdir={blocker / 'run'}")
    assert_one_line_error(proc, "afile")


def test_missing_checkpoint_is_one_line(tmp_path):
    proc = translate(tmp_path / "none.pt", input="a\n")
    assert_one_line_error(proc, "none.pt", "not found")


def test_truncated_checkpoint_is_one_line(experiment, tmp_path):
    bad = tmp_path / "cut.pt"
    bad.write_bytes(experiment.checkpoint.read_bytes()[:5000])
    proc = translate(bad, input="a\n")
    assert_one_line_error(proc, "cut.pt", "truncated")
    assert proc.returncode == 4


def test_vocabulary_mismatch_checkpoint_is_one_line(experiment, trained_model, tmp_path):
    from nmt_cli.checkpoint import make_checkpoint, save_checkpoint
    from nmt_cli.config import TokenizerConfig
    from nmt_cli.text.tokenizer import Tokenizers, train_model

    lines = sample_lines("train", "src", 1000) + sample_lines("train", "tgt", 1000)
    sp = train_model(lines, TokenizerConfig(vocab_size=150, num_threads=1))
    path = tmp_path / "mixed.pt"
    save_checkpoint(path, make_checkpoint(trained_model, experiment.recipe,
                                          Tokenizers.from_bytes(sp, sp)))
    proc = translate(path, input="a\n")
    assert_one_line_error(proc, "vocabulary/model mismatch")


@pytest.mark.parametrize("option, value, needles", [
    ("--beam-size", "0", ("decode.beam_size", ">= 1")),
    ("--length-norm", "gnm", ("decode.length_norm", "did you mean 'gnmt'")),
    ("--temperature", "0", ("decode.temperature", ">= 0.001")),
    ("--batch-type", "lines", ("decode.batch_type", "'sentences', 'tokens'")),
])
def test_bad_translate_option_is_one_line_naming_the_key(experiment, option, value, needles):
    proc = translate(experiment.checkpoint, option, value, input="a\n")
    assert_one_line_error(proc, *needles)
    assert proc.returncode == 2 and proc.stdout == ""


def test_a_folder_as_checkpoint_is_one_line_with_the_file_to_give(experiment, tmp_path):
    proc = translate(experiment.workdir, input="a\n")
    assert_one_line_error(proc, "is a folder", str(experiment.workdir / "checkpoints" / "best.pt"))
    proc = translate(tmp_path, input="a\n")
    assert_one_line_error(proc, "is a folder", "WORKDIR/checkpoints/best.pt")


def test_a_text_file_as_checkpoint_is_one_line(tmp_path):
    text = tmp_path / "model.pt"
    text.write_text("not a checkpoint\n")
    assert_one_line_error(translate(text, input="a\n"), "model.pt", "not an nmt checkpoint")


# -- eval ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eval_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval")
    ref = sample_lines("test", "tgt", 60)
    hyp = [" ".join(line.split()[:-1]) if i % 2 else line for i, line in enumerate(ref)]
    (folder / "ref.txt").write_text("\n".join(ref) + "\n", encoding="utf-8")
    (folder / "hyp.txt").write_text("\n".join(hyp) + "\n", encoding="utf-8")
    (folder / "short.txt").write_text("\n".join(ref[:59]) + "\n", encoding="utf-8")
    return folder


def test_eval_prints_scores_with_signatures(eval_files):
    proc = run_cli("eval", "-i", eval_files / "hyp.txt", "-r", eval_files / "ref.txt")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "BLEU = " in out and "chrF2 = " in out
    sigs = [line.strip() for line in out.splitlines() if "signature:" in line]
    assert len(sigs) == 2
    assert "tok:13a" in sigs[0] and "nrefs:1" in sigs[0]


def test_eval_json_parses_and_matches_library(eval_files):
    from nmt_cli.scoring import score_files

    proc = run_cli("eval", "-i", eval_files / "hyp.txt", "-r", eval_files / "ref.txt", "-r",
                   eval_files / "ref.txt", "--metrics", "bleu,chrf,ter", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [d["metric"] for d in data] == ["bleu", "chrf", "ter"]
    expected = score_files(eval_files / "hyp.txt", [eval_files / "ref.txt"] * 2,
                           ["bleu", "chrf", "ter"])
    for d, e in zip(data, expected):
        assert d["score"] == pytest.approx(e.score, abs=1e-9)
        assert d["signature"] == e.signature and "nrefs:2" in d["signature"]


def test_eval_line_count_mismatch_is_one_line(eval_files):
    proc = run_cli("eval", "-i", eval_files / "hyp.txt", "-r", eval_files / "short.txt")
    assert_one_line_error(proc, "short.txt", "59", "60")
    assert proc.returncode == 3


def test_eval_unknown_metric_is_one_line(eval_files):
    proc = run_cli("eval", "-i", eval_files / "hyp.txt", "-r", eval_files / "ref.txt",
                   "-m", "bleu,meteor")
    assert_one_line_error(proc, "meteor")


def test_eval_unknown_tokenizer_is_one_line_with_suggestion(eval_files):
    proc = run_cli("eval", "-i", eval_files / "hyp.txt", "-r", eval_files / "ref.txt",
                   "--tokenize", "13b")
    assert_one_line_error(proc, "eval.tokenize", "did you mean '13a'")
