"""``DecodeConfig``, the one path of decode settings: built and changed through config's checks,
with one default per setting in config.py, taken by search as it is; what those defaults do."""

from __future__ import annotations

import dataclasses
import inspect
import typing

import pytest

from nmt_cli.config import DecodeConfig, Recipe, build, with_overrides
from nmt_cli.decoding import penalties, search
from _decode_fixtures import sample_checkpoint, sample_model, source_lines  # noqa: F401
from nmt_cli.errors import ConfigError
from nmt_cli.ids import UNK_ID


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


class _PrefersUnk:
    """The trained model, except that every step gives <unk> a probability of one."""

    def __init__(self, model):
        self.model = model

    def encode(self, src, src_lengths):
        return self.model.encode(src, src_lengths)

    def step(self, prev_tokens, state, memory, need_attention=False):
        log_probs, state, weights = self.model.step(prev_tokens, state, memory, need_attention)
        log_probs = log_probs.clone()
        log_probs[:, UNK_ID] = 0.0
        return log_probs, state, weights


def test_the_defaults_keep_unk_out_and_one_hypothesis_a_line(sample_model):  # noqa: F811
    """With every decode setting at its default, search never emits <unk>, even from a model
    that wants nothing else, and gives one hypothesis per line; ``allow_unk`` lets it through."""
    from nmt_cli.decoding.inference import translate_lines

    model, tok, recipe = sample_model
    lines, norm = source_lines(10), recipe.preprocess.normalize
    found = translate_lines(_PrefersUnk(model), tok, lines, DecodeConfig(), normalize=norm)
    assert [len(t.hypotheses) for t in found] == [1] * 10
    assert all(t.hypotheses[0].tokens and UNK_ID not in t.hypotheses[0].tokens for t in found)
    allowed = translate_lines(_PrefersUnk(model), tok, lines, DecodeConfig(allow_unk=True),
                              normalize=norm)
    assert all(UNK_ID in t.hypotheses[0].tokens for t in allowed)


def test_a_recipe_without_decode_keys_translates_bad_bytes_with_one_warning(sample_checkpoint,
                                                                            tmp_path):  # noqa: F811
    """The sample recipe names no invalid_utf8 nor n_best: a file with invalid UTF-8 gives one
    plain line per input line (not TSV) and one warning naming the bad lines."""
    from nmt_cli.decoding.translate import translate_file

    src = tmp_path / "bad.src"
    src.write_bytes(b"The boy runs.\nThe \xff dog.\nA man.\n")
    out = tmp_path / "out.hyp"
    stats = translate_file(sample_checkpoint, src, out, device="cpu")
    lines = out.read_text(encoding="utf-8").split("\n")[:-1]
    assert len(lines) == 3 and all(line and "\t" not in line for line in lines)
    assert len(stats.warnings) == 1 and "(line 2)" in stats.warnings[0]
