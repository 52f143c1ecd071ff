"""Decode settings have one path: a DecodeConfig built and changed through config's checks, with
its one default per setting in config.py, taken by search as it is."""

from __future__ import annotations

import dataclasses
import inspect
import typing

import pytest

from nmt_cli.config import DecodeConfig, Recipe, build, with_overrides
from nmt_cli.decoding import penalties, search
from nmt_cli.errors import ConfigError, NmtError


def test_the_length_norm_table_matches_the_setting_choices():
    choices = typing.get_args(typing.get_type_hints(DecodeConfig)["length_norm"])
    assert set(penalties.DIVISORS) == set(choices)


def test_every_decode_setting_is_a_translate_option_of_the_same_name():
    from nmt_cli.cli import DECODE_OPTIONS

    assert set(DECODE_OPTIONS) == {f.name for f in dataclasses.fields(DecodeConfig)}


@pytest.mark.parametrize("function", [search.greedy_search, search.beam_search,
                                      search.batched_beam_search, search.sample_search])
def test_search_restates_no_default(function):
    """Search takes a DecodeConfig; only the wish for attention weights may default."""
    defaults = {name for name, p in inspect.signature(function).parameters.items()
                if p.default is not inspect.Parameter.empty}
    assert defaults <= {"return_attention"}, defaults
    assert "cfg" in inspect.signature(function).parameters


def test_length_norm_has_no_defaults_of_its_own():
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(penalties.LengthNorm))
    cfg = DecodeConfig(length_norm="average", length_penalty=0.3)
    assert penalties.LengthNorm.of(cfg) == penalties.LengthNorm("average", 0.3)


@pytest.mark.parametrize("raw, key", [
    ({"beam_size": 2, "n_best": 3}, "decode.n_best"),
    ({"invalid_utf8": "drop"}, "decode.invalid_utf8"),
    ({"allow_unk": "yes"}, "decode.allow_unk"),
    ({"n_best": 0}, "decode.n_best"),
])
def test_new_decode_keys_are_checked_in_a_recipe(raw, key):
    with pytest.raises(ConfigError) as err:
        build(Recipe, {"decode": raw})
    assert str(err.value).startswith(f"{key}: ")


def test_overrides_check_n_best_against_the_beam_they_end_with():
    cfg = DecodeConfig()  # beam 5
    assert with_overrides(cfg, {"n_best": 5}, "decode").n_best == 5
    assert with_overrides(cfg, {"n_best": 8, "beam_size": 8}, "decode").beam_size == 8
    with pytest.raises(ConfigError, match="^decode.n_best: 6 is more than decode.beam_size"):
        with_overrides(cfg, {"n_best": 6}, "decode")


def test_defaults_forbid_unk_and_replace_bad_bytes():
    cfg = DecodeConfig()
    assert cfg.allow_unk is False and cfg.invalid_utf8 == "replace" and cfg.n_best == 1


def test_an_empty_ensemble_is_a_user_error():
    from nmt_cli.decoding.ensemble import Ensemble

    with pytest.raises(NmtError, match="at least one model"):
        Ensemble([])
