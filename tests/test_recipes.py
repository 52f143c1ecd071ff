"""Recipes on disk: YAML errors, --set overrides, path resolution, and the resolved copy."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from nmt_cli.config import Recipe
from nmt_cli.errors import ConfigError
from nmt_cli.recipes import (RESOLVED_NAME, apply_overrides, dump_recipe, load_recipe,
                             parse_override, write_resolved)

from conftest import ROOT, SAMPLE, tiny_recipe_text


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# -- file-level errors ---------------------------------------------------------------------------


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_recipe(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value) and "not found" in str(info.value)


@pytest.mark.parametrize("text, line", [
    ("name: x\nmodel: {emb_size: 32\ntrain: {}\n", 3),  # unclosed flow mapping
    ("name: x\ntrain:\n  max_steps: 3\n   lr: 2\n", 4),  # bad indentation
    ("name: x\nname2: 'unterminated\n", 3),
])
def test_invalid_yaml_reports_line(tmp_path, text, line):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "invalid YAML" in msg
    assert f"line {line}" in msg, msg


def test_recipe_must_be_a_mapping(tmp_path):
    path = write(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert "mapping" in str(info.value)


@pytest.mark.parametrize("text", ["", "\n\n", "# a recipe, some day\n# name: x\n", "{}\n"])
def test_a_recipe_that_says_nothing_is_an_error_naming_the_file(tmp_path, text):
    path = write(tmp_path / "empty.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert str(info.value).startswith(f"{path}: the recipe is empty")
    assert "tokenizer" not in str(info.value)


def test_a_folder_given_as_recipe_is_named_as_a_folder(tmp_path):
    with pytest.raises(ConfigError, match="is a folder; give a recipe file"):
        load_recipe(tmp_path)


def test_a_section_only_recipe_fills_defaults(tmp_path):
    path = write(tmp_path / "short.yaml", "name: short\n")
    recipe = load_recipe(path)
    assert recipe.train == Recipe().train
    assert recipe.model == Recipe().model


def test_not_utf8_recipe(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert "UTF-8" in str(info.value) and str(path) in str(info.value)


def test_errors_in_file_name_the_file_and_key(tmp_path):
    path = write(tmp_path / "r.yaml", "model:\n  encoder:\n    cel: gru\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: model.encoder.cel:"), msg
    assert "did you mean 'model.encoder.cell'" in msg


def test_bad_choice_in_file_is_an_error(tmp_path):
    path = write(tmp_path / "r.yaml", "model:\n  encoder:\n    cell: gur\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert "model.encoder.cell" in str(info.value) and "'gru'" in str(info.value)


# -- overrides -----------------------------------------------------------------------------------


def test_set_overrides_values_with_yaml_types(tmp_path):
    path = write(tmp_path / "r.yaml", "train:\n  max_steps: 10\n")
    recipe = load_recipe(path, ["train.max_steps=25", "train.learning_rate=0.1",
                                "model.encoder.cell=lstm", "train.adam_betas=[0.8, 0.95]",
                                "tokenizer.joint=false"])
    assert recipe.train.max_steps == 25
    assert recipe.train.learning_rate == pytest.approx(0.1)
    assert recipe.model.encoder.cell == "lstm"
    assert recipe.train.adam_betas == [0.8, 0.95]
    assert recipe.tokenizer.joint is False


def test_scientific_notation_is_a_number(tmp_path):
    """`learning_rate: 5e-4` is how everyone writes a learning rate. PyYAML (YAML 1.1) reads such
    plain scalars as strings, so the recipe loader must still take them as numbers."""
    path = write(tmp_path / "r.yaml", "train:\n  learning_rate: 5e-4\n  min_learning_rate: 1E-6\n")
    recipe = load_recipe(path, ["train.weight_decay=1e-2"])
    assert recipe.train.learning_rate == pytest.approx(5e-4)
    assert recipe.train.min_learning_rate == pytest.approx(1e-6)
    assert recipe.train.weight_decay == pytest.approx(1e-2)


def test_later_override_wins(tmp_path):
    path = write(tmp_path / "r.yaml", "")
    recipe = load_recipe(path, ["train.max_steps=1", "train.max_steps=2"])
    assert recipe.train.max_steps == 2


@pytest.mark.parametrize("override, path, needle", [
    ("train.lerning_rate=0.1", "train.lerning_rate", "did you mean 'train.learning_rate'"),
    ("model.encoder.cel=gru", "model.encoder.cel", "did you mean 'model.encoder.cell'"),
    ("trian.max_steps=1", "trian.max_steps", "did you mean 'train'"),
    ("train.max_steps=abc", "train.max_steps", "integer"),
    ("train.learning_rate=true", "train.learning_rate", "number"),
    ("train.max_steps=-5", "train.max_steps", "range"),
    ("model.encoder.cell=gur", "model.encoder.cell", "did you mean 'gru'"),
    ("train.max_steps.deep=1", "train.max_steps", "section"),
])
def test_bad_override_is_checked_like_the_file(tmp_path, override, path, needle):
    recipe_path = write(tmp_path / "r.yaml", "train:\n  max_steps: 10\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(recipe_path, [override])
    msg = str(info.value)
    assert path in msg, msg
    assert needle in msg, msg


@pytest.mark.parametrize("text", ["train.max_steps", "=5"])
def test_malformed_override(text):
    with pytest.raises(ConfigError):
        parse_override(text)


def test_override_value_may_contain_equals():
    assert parse_override("name=a=b") == ("name", "a=b")


def test_override_creates_missing_sections(tmp_path):
    raw = apply_overrides({}, ["model.decoder.hidden_size=12"], tmp_path)
    assert raw == {"model": {"decoder": {"hidden_size": 12}}}


def test_override_does_not_mutate_input(tmp_path):
    raw = {"train": {"max_steps": 1}}
    apply_overrides(raw, ["train.max_steps=2"], tmp_path)
    assert raw == {"train": {"max_steps": 1}}


# -- paths ---------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_recipe_folder(tmp_path, monkeypatch):
    folder = tmp_path / "recipes"
    path = write(folder / "r.yaml", """\
        workdir: ../runs/x
        data:
          train: {src: ../data/a.src, tgt: ../data/a.tgt}
        """)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the current directory must not matter
    recipe = load_recipe(path)
    assert recipe.workdir == (tmp_path / "runs" / "x").resolve()
    assert recipe.data.train.src == (tmp_path / "data" / "a.src").resolve()
    assert recipe.data.train.tgt == (tmp_path / "data" / "a.tgt").resolve()


def test_set_relative_paths_resolve_against_cwd(tmp_path, monkeypatch):
    path = write(tmp_path / "recipes" / "r.yaml", """\
        workdir: ../runs/x
        data:
          train: {src: ../data/a.src, tgt: ../data/a.tgt}
        """)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    recipe = load_recipe(path, ["workdir=out/run", "data.train.src=mine.src"])
    assert recipe.workdir == (cwd / "out" / "run").resolve()
    assert recipe.data.train.src == (cwd / "mine.src").resolve()
    assert recipe.data.train.tgt == (tmp_path / "data" / "a.tgt").resolve()  # untouched


def test_explicit_cwd_argument_for_overrides(tmp_path):
    path = write(tmp_path / "r.yaml", "")
    recipe = load_recipe(path, ["workdir=w"], cwd=tmp_path / "base")
    assert recipe.workdir == (tmp_path / "base" / "w").resolve()


def test_bundled_sample_recipe_points_at_sample_data():
    recipe = load_recipe(ROOT / "recipes" / "sample.yaml")
    assert recipe.data.train.src == (SAMPLE / "train.src").resolve()
    assert recipe.data.test.tgt == (SAMPLE / "test.tgt").resolve()
    assert recipe.workdir == (ROOT / "runs" / "sample").resolve()
    for split in (recipe.data.train, recipe.data.dev, recipe.data.test):
        assert split.src.is_file() and split.tgt.is_file()


# -- the resolved recipe -------------------------------------------------------------------------


def test_write_resolved_reloads_to_equal_recipe(tmp_path):
    src_path = write(tmp_path / "r" / "tiny.yaml", tiny_recipe_text("../work"))
    recipe = load_recipe(src_path, ["model.encoder.cell=lstm", "train.adam_betas=[0.8, 0.9]",
                                    "tokenizer.user_defined_symbols=[<x>]"])
    out_dir = tmp_path / "resolved"
    target = write_resolved(recipe, out_dir)
    assert target == out_dir / RESOLVED_NAME and target.is_file()
    again = load_recipe(target)
    assert again == recipe
    # Every path in it is absolute, so the copy works from any folder.
    assert again.workdir.is_absolute() and again.data.train.src.is_absolute()
    assert dump_recipe(again) == target.read_text(encoding="utf-8")


def test_resolved_sample_recipe_reloads_equal(tmp_path):
    recipe = load_recipe(ROOT / "recipes" / "sample.yaml")
    assert load_recipe(write_resolved(recipe, tmp_path)) == recipe


def test_resolved_recipe_with_default_workdir_reloads_equal(tmp_path, monkeypatch):
    """A recipe that leaves workdir at its default: the resolved copy must still say where the run
    is ("paths absolute"), so reloading it from the run folder gives the same experiment."""
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "r.yaml", "name: defaults\n")
    recipe = load_recipe(path)
    target = write_resolved(recipe, tmp_path / "out")
    again = load_recipe(target)
    assert again.workdir.resolve() == recipe.workdir.resolve()
    assert again == recipe
