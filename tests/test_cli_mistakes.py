"""Mistakes a new user makes with tokenizer, preprocess, train and plot: each ends with one
``error:`` line that names the file or key and the fix, a non-zero exit, and nothing written."""

from __future__ import annotations

import pytest

from conftest import assert_one_line_error, run_cli, tiny_recipe_text


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(tiny_recipe_text(str(tmp_path / "work")), encoding="utf-8")
    return path


def only_error_line(proc) -> str:
    """The whole of stderr is one error line: no blank line, no traceback."""
    assert proc.returncode != 0
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, repr(proc.stderr)
    return proc.stderr.strip()


@pytest.mark.parametrize("command", ["tokenizer", "preprocess", "train"])
def test_a_folder_given_as_the_recipe(tmp_path, command):
    line = assert_one_line_error(run_cli(command, tmp_path), str(tmp_path), "is a folder")
    assert "recipe file" in line


@pytest.mark.parametrize("text", ["", "# name: mine\n# workdir: runs/mine\n"])
def test_a_recipe_that_says_nothing_names_the_file(tmp_path, text):
    path = tmp_path / "mine.yaml"
    path.write_text(text, encoding="utf-8")
    line = assert_one_line_error(run_cli("tokenizer", path), f"{path}: the recipe is empty")
    assert "tokenizer" not in line.replace("nmt tokenizer", "")  # no path the user never wrote


def test_a_list_at_the_top_level(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- train\n- model\n", encoding="utf-8")
    assert_one_line_error(run_cli("tokenizer", path), str(path), "mapping of sections", "a list")


@pytest.mark.parametrize("override, needle", [("train.max_steps", "has no '='"),
                                              ("=5", "no key before '='")])
def test_set_without_key_or_equals(recipe, override, needle):
    line = assert_one_line_error(run_cli("train", recipe, "--set", override), "--set", needle)
    assert "KEY.PATH=VALUE" in line


def test_inverse_sqrt_without_warmup(recipe):
    proc = run_cli("tokenizer", recipe, "--set", "train.schedule=inverse_sqrt")
    assert_one_line_error(proc, str(recipe), "train.warmup_steps", "above 0")
    assert not (recipe.parent / "work").exists()


@pytest.mark.parametrize("overrides, needles", [
    (["data.src_lang=../../x"], ["data.src_lang: '../../x' is not a language code"]),
    (["tokenizer.joint=false", "data.tgt_lang=src"],
     ["data.tgt_lang: equals data.src_lang", "tokenizer.joint: true"]),
], ids=["path-in-a-code", "one-code-for-two-tokenizers"])
def test_a_language_code_that_would_misplace_a_tokenizer(recipe, overrides, needles):
    sets = [a for o in overrides for a in ("--set", o)]
    assert_one_line_error(run_cli("tokenizer", recipe, *sets), str(recipe), *needles)
    assert not (recipe.parent / "work").exists() and not (recipe.parent / "x.model").exists()


@pytest.mark.parametrize("override, key", [("train.early_stopping_patience=3",
                                            "train.early_stopping_patience"),
                                           ("train.schedule=plateau", "train.schedule")])
def test_dev_only_settings_without_a_dev_set(recipe, override, key):
    proc = run_cli("tokenizer", recipe, "--set", "data.dev=null", "--set", override)
    assert_one_line_error(proc, str(recipe), key, "needs a dev set", "data.dev")


def test_preprocess_before_tokenizer_is_only_the_error_line(recipe):
    line = only_error_line(run_cli("preprocess", recipe))
    assert "nmt tokenizer" in line


def test_init_from_a_missing_checkpoint(recipe, tmp_path):
    proc = run_cli("train", recipe, "--init-from", tmp_path / "nothere.pt")
    assert_one_line_error(proc, "nothere.pt", "checkpoint not found", "--init-from")


def test_plot_of_a_folder_that_does_not_exist(tmp_path):
    proc = run_cli("plot", tmp_path / "nowhere")
    assert_one_line_error(proc, "nowhere", "no such folder", "workdir")


def test_plot_of_a_run_that_never_trained(tmp_path):
    assert_one_line_error(run_cli("plot", tmp_path), "metrics.jsonl", "nmt train")


def test_resume_with_a_changed_layout_is_refused_and_names_the_keys(experiment):
    before = (experiment.workdir / "metrics.jsonl").read_bytes()
    proc = run_cli("train", experiment.recipe_path, "--resume", "--set", "train.batch_tokens=999",
                   "--set", "train.seed=8")
    line = assert_one_line_error(proc, "--resume continues the run as it was saved",
                                 "train.batch_tokens (1500 -> 999)", "train.seed (7 -> 8)")
    assert "--init-from" in line
    assert (experiment.workdir / "metrics.jsonl").read_bytes() == before


@pytest.mark.parametrize("args, needles", [
    (("translate", "-m", "x.pt", "--beam-size", "abc"), ("nmt translate", "--beam-size",
                                                         "nmt translate --help")),
    (("trian", "recipe.yaml"), ("No such command 'trian'", "did you mean 'train'?")),
    (("train", "recipe.yaml", "--bogus"), ("nmt train", "--bogus")),
    (("eval", "-r", "ref.txt"), ("nmt eval", "--input")),
])
def test_a_mistyped_command_option_or_value_is_one_line(args, needles):
    """Typer's own usage errors (a bad integer, an unknown command or option, a missing one) end
    in one error line too, exit status 2, never a three-line usage block."""
    proc = run_cli(*args)
    line = assert_one_line_error(proc, *needles[:1])
    assert proc.returncode == 2
    for needle in needles[1:]:
        assert needle.lower() in line.lower(), line


@pytest.mark.parametrize("command, key", [("tokenizer", "data.train.tgt"),
                                          ("preprocess", "data.dev.src")])
def test_a_missing_data_file_names_its_recipe_key(recipe, tmp_path, command, key):
    missing = tmp_path / "nothere.txt"
    if command == "preprocess":
        assert run_cli("tokenizer", recipe).returncode == 0
    line = only_error_line(run_cli(command, recipe, "--set", f"{key}={missing}"))
    assert str(missing) in line and "file not found" in line and f"check {key} " in line
    assert not (tmp_path / "work" / "data").exists()
