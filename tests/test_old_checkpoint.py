"""Files written before the Transformer arrived still load and give exactly what they gave then.

``tests/fixtures/rnn-v1.pt.xz`` is a tiny RNN checkpoint written by the code of its day, together
with its beam-5 and greedy translations, beam-5 alignments and reference scores
(``tests/fixtures/make_rnn_v1.py``). Today's code must reproduce every file byte for byte.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import lzma
from pathlib import Path

import pytest

from nmt_cli.errors import CheckpointError

from conftest import ROOT

FIXTURES = Path(__file__).resolve().parent / "fixtures"
OUTPUTS = ("rnn-v1.beam5.hyp", "rnn-v1.beam5.align", "rnn-v1.greedy.hyp", "rnn-v1.scores")


def _maker():
    spec = importlib.util.spec_from_file_location("make_rnn_v1", FIXTURES / "make_rnn_v1.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def old_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("old") / "rnn-v1.pt"
    path.write_bytes(lzma.decompress((FIXTURES / "rnn-v1.pt.xz").read_bytes()))
    return path


def test_old_rnn_checkpoint_translates_byte_for_byte(old_checkpoint, tmp_path):
    _maker().write_outputs(old_checkpoint, tmp_path)
    for name in OUTPUTS:
        got, want = (tmp_path / name).read_bytes(), (FIXTURES / name).read_bytes()
        if name.endswith(".scores"):  # summed log-probabilities: equal up to summation order
            assert [float(x) for x in got.split()] == pytest.approx(
                [float(x) for x in want.split()], abs=1e-3), name
        else:  # translations and alignments: byte for byte
            assert got == want, name


def test_old_checkpoint_recipe_reads_as_an_rnn(old_checkpoint):
    from nmt_cli.checkpoint import load_checkpoint, model_from_checkpoint

    model, _, recipe = model_from_checkpoint(load_checkpoint(old_checkpoint), old_checkpoint)
    assert recipe.model.arch == "rnn"
    assert recipe.model.encoder.hidden_size == 16


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")) + [
    FIXTURES / "rnn-v1.yaml"], ids=lambda p: p.name)
def test_every_bundled_recipe_loads_with_every_key_it_sets(path):
    """Each value the file writes is the recipe's (paths against the file's folder): no key is
    dropped, renamed away or overridden by a default."""
    from nmt_cli.config import to_dict
    from nmt_cli.recipes import _yaml_load, load_recipe

    def leaves(node, key=""):
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for name, value in items:
            sub = f"{key}.{name}" if isinstance(node, dict) else f"{key}[{name}]"
            if isinstance(value, dict) or (isinstance(value, list) and value
                                           and isinstance(value[0], dict)):
                yield from leaves(value, sub.lstrip("."))
            else:
                yield sub.lstrip("."), value

    def at(node, key):
        for part in key.replace("[", ".[").split("."):
            node = node[int(part[1:-1])] if part.startswith("[") else node[part]
        return node

    written = list(leaves(_yaml_load(path.read_text(encoding="utf-8"))))
    loaded = to_dict(load_recipe(path))
    assert len(written) > 5, path
    for key, value in written:
        got = at(loaded, key)
        if isinstance(value, str) and got != value:  # a path, resolved against the recipe
            assert Path(got) == (path.parent / Path(value).expanduser()).resolve(), key
        else:
            assert got == value, key


def test_an_old_run_can_still_be_resumed(old_checkpoint):
    from nmt_cli.checkpoint import load_checkpoint, model_from_checkpoint
    from nmt_cli.training.runs import check_resumable

    payload = load_checkpoint(old_checkpoint)
    assert "transformer" not in payload["recipe"]["model"]  # written before the key existed
    _, tok, recipe = model_from_checkpoint(payload, old_checkpoint)
    assert "data" not in payload  # written before checkpoints recorded their data
    check_resumable(payload, old_checkpoint, recipe, tok, {"splits": {}})  # the same run: no error
    changed = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, seed=99))
    with pytest.raises(CheckpointError, match=r"train\.seed"):
        check_resumable(payload, old_checkpoint, changed, tok, {"splits": {}})
