"""Recipe validation: every mistake is a ConfigError naming the full key path, never a fallback."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest

from nmt_cli.config import (DecoderConfig, EncoderConfig, ModelConfig, Recipe, TrainConfig,
                            TransformerConfig, build, field_type, to_dict, with_overrides)
from nmt_cli.errors import ConfigError
from nmt_cli.recipes import load_recipe


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


def test_missing_keys_take_their_architectures_defaults():
    rnn = build_recipe({"model": {"encoder": {"cell": "lstm"}}}).model
    assert rnn.encoder == EncoderConfig(cell="lstm") and rnn.decoder == DecoderConfig()
    assert rnn.emb_size == 256 and rnn.transformer is None
    transformer = build_recipe({"model": {"arch": "transformer"}}).model
    assert transformer.transformer == TransformerConfig()
    assert transformer.encoder is None and transformer.emb_size is None
    assert build_recipe({}).data.train is None


def test_a_change_to_a_built_section_is_checked_and_leaves_the_original():
    train = build_recipe({"train": {"max_steps": 3}}).train
    changed = with_overrides(train, {"max_steps": 4}, "train")
    assert (train.max_steps, changed.max_steps) == (3, 4)
    with pytest.raises(ConfigError, match=r"^train\.max_steps: -1 is out of range"):
        with_overrides(train, {"max_steps": -1}, "train")
    with pytest.raises(ConfigError, match=r"^train\.max_stesp: unknown key; did you mean"):
        with_overrides(train, {"max_stesp": 4}, "train")


# -- language codes name tokenizer files ---------------------------------------------------------


@pytest.mark.parametrize("key", ["src_lang", "tgt_lang"])
@pytest.mark.parametrize("code", ["../x", "a/b", "", "1de", "de.x", "x" * 17])
def test_a_language_code_that_is_not_a_plain_name_is_refused(key, code):
    with pytest.raises(ConfigError) as info:
        build_recipe({"data": {key: code}})
    assert str(info.value).startswith(f"data.{key}: {code!r} is not a language code")
    assert info.value.key == f"data.{key}"


def test_plain_language_codes_are_accepted():
    data = build_recipe({"data": {"src_lang": "pt_BR", "tgt_lang": "zh-Hant"}}).data
    assert (data.src_lang, data.tgt_lang) == ("pt_BR", "zh-Hant")


def test_separate_tokenizers_need_two_language_codes(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {src_lang: de, tgt_lang: de}\ntokenizer: {joint: false}\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(recipe)
    msg = str(info.value)
    assert msg.startswith(f"{recipe}: data.tgt_lang: equals data.src_lang ('de')"), msg
    assert "different language codes or tokenizer.joint: true" in msg
    load_recipe(recipe, ["tokenizer.joint=true"])  # one joint model: nothing is overwritten
    assert load_recipe(recipe, ["data.tgt_lang=en"]).data.tgt_lang == "en"


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
