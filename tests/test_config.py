"""Recipe validation: every mistake is a ConfigError naming the full key path, never a fallback."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import pytest

from nmt_cli.config import (DecoderConfig, EncoderConfig, ModelConfig, Recipe, TrainConfig, build,
                            field_type, to_dict)
from nmt_cli.errors import ConfigError


def build_recipe(raw: dict) -> Recipe:
    return build(Recipe, raw)


# -- unknown keys --------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, path, suggestion", [
    ({"modle": {}}, "modle", "model"),
    ({"train": {"lerning_rate": 0.1}}, "train.lerning_rate", "train.learning_rate"),
    ({"model": {"encoder": {"cel": "gru"}}}, "model.encoder.cel", "model.encoder.cell"),
    ({"model": {"decoder": {"atention": "bahdanau"}}}, "model.decoder.atention",
     "model.decoder.attention"),
    ({"data": {"train": {"src": "a", "tgt": "b", "tgtt": "c"}}}, "data.train.tgtt",
     "data.train.tgt"),
])
def test_unknown_key_names_full_path_and_suggests(raw, path, suggestion):
    with pytest.raises(ConfigError) as info:
        build_recipe(raw)
    msg = str(info.value)
    assert msg.startswith(f"{path}:"), msg
    assert "did you mean" in msg
    assert f"'{suggestion}'" in msg
    assert info.value.key == path


def test_unknown_key_without_close_match_lists_known_keys():
    with pytest.raises(ConfigError) as info:
        build_recipe({"model": {"zzzzqqq": 1}})
    msg = str(info.value)
    assert "model.zzzzqqq" in msg
    assert "emb_size" in msg and "encoder" in msg  # the keys that do exist there


# -- wrong types ---------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, path", [
    ({"train": {"max_steps": "100"}}, "train.max_steps"),  # string for int
    ({"train": {"max_steps": 1.5}}, "train.max_steps"),  # float for int
    ({"train": {"max_steps": True}}, "train.max_steps"),  # bool for int
    ({"train": {"learning_rate": True}}, "train.learning_rate"),  # bool for float
    ({"train": {"learning_rate": "fast"}}, "train.learning_rate"),  # string for float
    ({"tokenizer": {"joint": "yes please"}}, "tokenizer.joint"),  # string for bool
    ({"tokenizer": {"joint": 1}}, "tokenizer.joint"),  # int for bool
    ({"model": {"encoder": {"hidden_size": [32]}}}, "model.encoder.hidden_size"),
    ({"model": {"encoder": 5}}, "model.encoder"),  # scalar for a section
    ({"train": {"adam_betas": 0.9}}, "train.adam_betas"),  # scalar for a list
    ({"train": {"adam_betas": [0.9, "x"]}}, "train.adam_betas[1]"),
    ({"workdir": 3}, "workdir"),  # int for a path
    ({"data": {"train": {"src": "a.txt"}}}, "data.train.tgt"),  # a required key is missing
])
def test_wrong_type_names_the_key(raw, path):
    with pytest.raises(ConfigError) as info:
        build_recipe(raw)
    assert str(info.value).startswith(f"{path}:"), str(info.value)


def test_int_is_accepted_for_float_and_converted():
    recipe = build_recipe({"train": {"learning_rate": 1}})
    assert recipe.train.learning_rate == 1.0
    assert isinstance(recipe.train.learning_rate, float)


# -- ranges --------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, path", [
    ({"tokenizer": {"vocab_size": 5}}, "tokenizer.vocab_size"),
    ({"train": {"learning_rate": 0.0}}, "train.learning_rate"),
    ({"train": {"label_smoothing": 1.0}}, "train.label_smoothing"),
    ({"train": {"max_steps": -1}}, "train.max_steps"),
    ({"model": {"encoder": {"layers": 9}}}, "model.encoder.layers"),
    ({"model": {"decoder": {"dropout": 1.5}}}, "model.decoder.dropout"),
    ({"decode": {"beam_size": 0}}, "decode.beam_size"),
])
def test_out_of_range_names_the_key(raw, path):
    with pytest.raises(ConfigError) as info:
        build_recipe(raw)
    msg = str(info.value)
    assert msg.startswith(f"{path}:"), msg
    assert "range" in msg


def test_boundary_values_are_accepted():
    recipe = build_recipe({"train": {"label_smoothing": 0.0, "max_steps": 0},
                           "model": {"encoder": {"layers": 4}}, "tokenizer": {"vocab_size": 16}})
    assert recipe.train.max_steps == 0 and recipe.model.encoder.layers == 4


# -- choices -------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, path, suggestion", [
    ({"model": {"encoder": {"cell": "gur"}}}, "model.encoder.cell", "gru"),
    ({"model": {"decoder": {"cell": "lstn"}}}, "model.decoder.cell", "lstm"),
    ({"model": {"decoder": {"attention": "luong_generl"}}}, "model.decoder.attention",
     "luong_general"),
    ({"train": {"optimizer": "adamm"}}, "train.optimizer", "adam"),
    ({"eval": {"metrics": ["bleu", "chrff"]}}, "eval.metrics[1]", "chrf"),
])
def test_bad_choice_is_an_error_with_suggestion(raw, path, suggestion):
    with pytest.raises(ConfigError) as info:
        build_recipe(raw)
    msg = str(info.value)
    assert msg.startswith(f"{path}:"), msg
    assert f"did you mean '{suggestion}'" in msg


def test_bad_choice_is_never_a_silent_fallback():
    # The wrong value must not quietly turn into the default ('gru').
    with pytest.raises(ConfigError):
        build_recipe({"model": {"encoder": {"cell": "GRU"}}})
    assert build_recipe({"model": {"encoder": {"cell": "lstm"}}}).model.encoder.cell == "lstm"


# -- the built objects ---------------------------------------------------------------------------


def test_defaults_fill_missing_sections():
    recipe = build_recipe({})
    assert recipe == Recipe()
    assert recipe.model.decoder == DecoderConfig()
    assert recipe.data.train is None


def test_sections_are_frozen():
    recipe = build_recipe({"train": {"max_steps": 3}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.train.max_steps = 4  # type: ignore[misc]


def test_relative_paths_resolve_against_base_dir(tmp_path):
    recipe = build(Recipe, {"workdir": "w", "data": {"train": {"src": "d/a.src", "tgt": "/abs/b"}}},
                   base_dir=tmp_path)
    assert recipe.workdir == (tmp_path / "w").resolve()
    assert recipe.data.train.src == (tmp_path / "d" / "a.src").resolve()
    assert recipe.data.train.tgt == Path("/abs/b")


def test_to_dict_round_trips_through_build(tmp_path):
    recipe = build(Recipe, {"workdir": str(tmp_path / "w"), "model": {"emb_size": 8,
                            "encoder": {"cell": "lstm"}}, "train": {"adam_betas": [0.8, 0.9]},
                            "data": {"dev": {"src": str(tmp_path / "a"), "tgt": str(tmp_path / "b")}}},
                   base_dir=tmp_path)
    assert build(Recipe, to_dict(recipe)) == recipe


def test_field_type_of_dotted_key_and_errors():
    assert field_type(Recipe, "train.learning_rate") is float
    assert field_type(Recipe, "data.train.src") in (Path, Optional[Path])  # or data.train.tsv
    with pytest.raises(ConfigError) as info:
        field_type(Recipe, "model.encoder.cel")
    assert "model.encoder.cell" in str(info.value)
    with pytest.raises(ConfigError):
        field_type(Recipe, "train.max_steps.x")  # not a section


def test_each_section_builds_alone():
    assert build(TrainConfig, {"max_steps": 3}).max_steps == 3
    assert build(ModelConfig, {"encoder": {"cell": "lstm"}}).encoder == EncoderConfig(cell="lstm")
