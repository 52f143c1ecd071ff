"""Rules around a training run: no dev set, what --resume accepts, the warmup of inverse_sqrt and
the step key of every metrics record."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from _train_fixtures import SAMPLE, _head, new_run, prepared, train, train_here  # noqa: F401
from nmt_cli.config import to_dict
from nmt_cli.errors import CheckpointError, ConfigError
from nmt_cli.recipes import load_recipe

from conftest import tiny_recipe_text


def edit(recipe: Path, change) -> Path:
    raw = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    change(raw)
    recipe.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return recipe


def raw_records(workdir: Path) -> list[dict]:
    """Every line of metrics.jsonl, duplicates and all."""
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def checkpoint_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["train_state"]["step"]


# -- recipe rules --------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, key", [
    ("  schedule: inverse_sqrt\n", "train.warmup_steps"),
    ("  schedule: inverse_sqrt\n  warmup_steps: 0\n", "train.warmup_steps"),
])
def test_inverse_sqrt_without_warmup_is_a_recipe_error(tmp_path, extra, key):
    path = tmp_path / "r.yaml"
    path.write_text(tiny_recipe_text().replace("  device: cpu\n", "  device: cpu\n" + extra),
                    encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert str(info.value).startswith(f"{path}: {key}: schedule 'inverse_sqrt' needs a warmup")
    assert load_recipe(path, ["train.warmup_steps=100"]).train.warmup_steps == 100


def _no_dev(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True)
                   if not line.lstrip().startswith("dev:"))


@pytest.mark.parametrize("override, key", [
    ("train.early_stopping_patience=3", "train.early_stopping_patience"),
    ("train.schedule=plateau", "train.schedule"),
])
def test_dev_only_settings_without_a_dev_set_are_recipe_errors(tmp_path, override, key):
    path = tmp_path / "r.yaml"
    path.write_text(_no_dev(tiny_recipe_text()), encoding="utf-8")
    assert load_recipe(path).data.dev is None
    with pytest.raises(ConfigError) as info:
        load_recipe(path, [override])
    assert str(info.value).startswith(f"{path}: {key}: ")
    assert "needs a dev set" in str(info.value) and "data.dev" in str(info.value)
    with_dev = tmp_path / "with_dev.yaml"
    with_dev.write_text(tiny_recipe_text(), encoding="utf-8")
    load_recipe(with_dev, [override])  # fine with a dev set


# -- no dev set ----------------------------------------------------------------------------------


def test_without_a_dev_set_there_is_no_validation_and_best_is_the_last(prepared):  # noqa: F811
    recipe, workdir = new_run(prepared, "nodev", max_steps=12, valid_every=5, keep_last=5)
    edit(recipe, lambda raw: raw["data"].pop("dev"))
    proc = train(recipe)
    notices = [line for line in proc.stderr.splitlines() if "(data.dev)" in line]
    assert notices == ["no dev set (data.dev): no validation; best.pt is always the newest "
                       "checkpoint"], proc.stderr
    records = raw_records(workdir)
    assert not [r for r in records if r["event"] == "valid"]
    ckpts = workdir / "checkpoints"
    assert checkpoint_step(ckpts / "best.pt") == checkpoint_step(ckpts / "last.pt") == 12
    assert (ckpts / "best.pt").read_bytes() == (ckpts / "last.pt").read_bytes()
    index = json.loads((ckpts / "index.json").read_text())["checkpoints"]
    assert [e["step"] for e in index] == [5, 10, 12]  # still saved every valid_every steps
    assert json.loads((workdir / "train_summary.json").read_text())["stopped_by"] == "max_steps"

    # A resumed run keeps best.pt in step with last.pt.
    edit(recipe, lambda raw: raw["train"].update(max_steps=15))
    summary = train_here(recipe, resume=True)
    assert summary.steps == 15 and summary.resumed_from == 12
    assert checkpoint_step(ckpts / "best.pt") == checkpoint_step(ckpts / "last.pt") == 15


# -- what --resume accepts -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(prepared):  # noqa: F811
    """A run of 6 steps with a checkpoint at 3 and 6; each test works on a copy."""
    recipe, workdir = new_run(prepared, "finished", max_steps=6, valid_every=3, keep_last=2)
    train_here(recipe)
    return recipe, workdir


@pytest.fixture
def run_copy(finished, tmp_path):
    recipe, workdir = finished
    target = tmp_path / "run"
    shutil.copytree(workdir, target)
    raw = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    raw["workdir"] = str(target)
    copy = tmp_path / "run.yaml"
    copy.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return copy, target


@pytest.mark.parametrize("change, named", [
    (lambda raw: raw["train"].update(batch_tokens=400), ["train.batch_tokens (300 -> 400)"]),
    (lambda raw: raw["train"].update(seed=8, accum_steps=2),
     ["train.seed (7 -> 8)", "train.accum_steps (1 -> 2)"]),
    (lambda raw: raw["model"].update(emb_size=24), ["model.emb_size (16 -> 24)"]),
    (lambda raw: raw["train"].update(learning_rate=0.01), ["train.learning_rate"]),
    (lambda raw: raw.setdefault("preprocess", {}).update(max_len=30),
     ["preprocess.max_len (40 -> 30)"]),
])
def test_resume_refuses_a_changed_setting_and_names_it(run_copy, change, named):
    recipe, workdir = run_copy
    before = (workdir / "metrics.jsonl").read_bytes()
    edit(recipe, change)
    with pytest.raises(CheckpointError) as info:
        train_here(recipe, resume=True)
    message = str(info.value)
    assert "\n" not in message and "--resume continues the run as it was saved" in message
    for part in named:
        assert part in message, message
    assert (workdir / "metrics.jsonl").read_bytes() == before  # nothing was touched


def test_resume_refuses_other_training_data(run_copy, prepared):  # noqa: F811
    from nmt_cli.text.preprocess import preprocess

    recipe, workdir = run_copy
    for side in ("src", "tgt"):
        _head(SAMPLE / f"train.{side}", prepared / f"fewer.{side}", 150)
    edit(recipe, lambda raw: raw["data"]["train"].update(src=str(prepared / "fewer.src"),
                                                         tgt=str(prepared / "fewer.tgt")))
    preprocess(load_recipe(recipe))
    with pytest.raises(CheckpointError, match=r"data\.train \(other contents\)"):
        train_here(recipe, resume=True)


def test_resume_accepts_budgets_intervals_and_moved_files(run_copy, prepared, tmp_path):  # noqa: F811
    from nmt_cli.text.preprocess import preprocess

    recipe, workdir = run_copy
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("train.src", "train.tgt", "dev.src", "dev.tgt"):
        shutil.copy(prepared / name, moved / name)

    def change(raw):
        raw["train"].update(max_steps=9, log_every=2, valid_every=4, keep_last=3, keep_best=2,
                            save_every=1, valid_max_sentences=2, max_time=30.0)
        raw["decode"]["beam_size"] = 2
        for split in ("train", "dev"):
            raw["data"][split] = {"src": str(moved / f"{split}.src"),
                                  "tgt": str(moved / f"{split}.tgt")}

    edit(recipe, change)
    preprocess(load_recipe(recipe))  # the same contents from the new place
    summary = train_here(recipe, resume=True)
    assert (summary.resumed_from, summary.steps) == (6, 9)


def test_resume_changes_lists_only_what_may_not_change():
    from nmt_cli.config import Recipe
    from nmt_cli.training.runs import resume_changes

    saved = to_dict(Recipe())
    data = {"train": {"sha256": {"src": "a", "tgt": "b"}, "written": 10}}
    same = Recipe()
    assert resume_changes(saved, same, data, data) == []
    assert resume_changes(saved, same, None, data) == []  # an older checkpoint: no data record
    other = {"train": {"sha256": {"src": "a", "tgt": "c"}, "written": 10}}
    assert resume_changes(saved, same, data, other) == ["data.train (other contents)"]
    with_dev = {**data, "dev": {"sha256": {"src": "d", "tgt": "e"}, "written": 5}}
    assert resume_changes(saved, same, data, with_dev) == ["data.dev (added)"]
    older = json.loads(json.dumps(saved))
    del older["train"]["batch_tokens"]  # a key the schema did not have yet
    assert resume_changes(older, same, data, data) == []


# -- the metrics log -----------------------------------------------------------------------------


def test_every_record_has_a_step_and_resuming_cuts_the_end_record(finished):
    from nmt_cli.training.metrics import MetricsLog

    _, workdir = finished
    records = raw_records(workdir)
    assert {r["event"] for r in records} >= {"start", "train", "valid", "end"}
    assert all(isinstance(r.get("step"), int) for r in records), records
    assert records[-1]["event"] == "end" and records[-1]["step"] == 6
    copy = workdir.parent / "metrics-copy"
    copy.mkdir()
    shutil.copy(workdir / "metrics.jsonl", copy / "metrics.jsonl")
    MetricsLog(copy).start(resume_step=3)
    kept = raw_records(copy)
    assert max(r["step"] for r in kept) == 3
    assert not [r for r in kept if r["event"] == "end"]
    assert [r["step"] for r in kept if r["event"] == "train"] == [1, 2, 3]
