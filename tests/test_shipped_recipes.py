"""Every recipe in recipes/ loads through the recipe checks, and its data paths resolve: the
sample's always, Multi30k's when the data is there (the default place beside the repository, or
``$NMT_MULTI30K``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ROOT, require_multi30k
from nmt_cli.recipes import load_recipe

RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
DEFAULT_MULTI30K = (ROOT.parent / "shared" / "data" / "multi30k").resolve()


def _data_files(recipe) -> dict[str, list[Path]]:
    """Each split's files, by ``data.SPLIT`` key."""
    return {f"data.{name}": [f for corpus in split.sources() for f in corpus.files()]
            for name, split in recipe.data.splits().items()}


def _uses_multi30k(recipe) -> bool:
    return any(f.parent == DEFAULT_MULTI30K for files in _data_files(recipe).values()
               for f in files)


def test_recipes_folder_holds_the_documented_recipes():
    assert {p.name for p in RECIPES} >= {"sample.yaml", "multi30k-de-en.yaml",
                                         "multi30k-en-de.yaml", "multi30k-de-en-cpu.yaml"}


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_loads_and_names_its_languages_in_its_files(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    splits = _data_files(recipe)
    assert {"data.train", "data.dev", "data.test"} <= set(splits), path
    for key, files in splits.items():  # a swapped or mistyped side shows in the file name
        if recipe.model.arch == "lm":  # one text file per split, in the target language
            assert [f".{recipe.data.tgt_lang}" in f.name for f in files] == [True], (key, files)
            continue
        src, tgt = files
        assert f".{recipe.data.src_lang}" in src.name, (key, src)
        assert f".{recipe.data.tgt_lang}" in tgt.name, (key, tgt)
    if not _uses_multi30k(recipe):  # the bundled sample: always there
        assert all(f.is_file() for files in splits.values() for f in files), splits


MULTI30K_RECIPES = [p for p in RECIPES if _uses_multi30k(load_recipe(p))]


def test_the_multi30k_recipes_are_found():
    assert {p.name for p in MULTI30K_RECIPES} == {
        "multi30k-de-en.yaml", "multi30k-en-de.yaml", "multi30k-de-en-cpu.yaml",
        "multi30k-de-en-transformer.yaml", "multi30k-de-en-transformer-cpu.yaml",
        "multi30k-en-lm-rnn-cpu.yaml", "multi30k-en-lm-transformer-cpu.yaml",
        "multi30k-en-de-transformer-cpu.yaml"}


@pytest.mark.parametrize("path", MULTI30K_RECIPES, ids=[p.stem for p in MULTI30K_RECIPES])
def test_multi30k_recipe_data_resolves(path):
    """With Multi30k at its default place the recipe's own paths are files; with the data
    elsewhere (``$NMT_MULTI30K``), the same file names are there."""
    folder = require_multi30k().resolve()
    recipe = load_recipe(path)
    for key, files in _data_files(recipe).items():
        for f in files:
            assert f.parent == DEFAULT_MULTI30K, (key, f)  # README: ../shared/data/multi30k
            assert (folder / f.name).is_file(), (key, folder / f.name)
            if folder == DEFAULT_MULTI30K:
                assert f.is_file(), (key, f)

