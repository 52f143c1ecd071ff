"""nmt average: the mean of checkpoints' weights, from a list of files or a run folder."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pytest
import torch

from _decode_fixtures import sample_checkpoint  # noqa: F401
from conftest import run_cli
from nmt_cli.checkpoint import CheckpointStore, load_checkpoint, make_checkpoint, save_checkpoint
from nmt_cli.errors import CheckpointError
from nmt_cli.training.average import average_checkpoints, average_to_file, run_checkpoints


def test_average_of_identical_checkpoints_is_the_original(sample_checkpoint, tmp_path):
    copy = tmp_path / "copy.pt"
    shutil.copyfile(sample_checkpoint, copy)
    out = tmp_path / "avg.pt"
    average_to_file([sample_checkpoint, copy], out)
    original, averaged = load_checkpoint(sample_checkpoint), load_checkpoint(out)
    for name, weight in original["model"].items():
        assert torch.allclose(averaged["model"][name], weight, atol=1e-7), name
    assert "optimizer" not in averaged and len(averaged["averaged_from"]) == 2


def test_average_is_the_mean(sample_checkpoint, tmp_path):
    payload = load_checkpoint(sample_checkpoint)
    doubled = dict(payload, model={k: v * 3 if v.is_floating_point() else v
                                   for k, v in payload["model"].items()})
    other = tmp_path / "other.pt"
    save_checkpoint(other, doubled)
    averaged = average_checkpoints([sample_checkpoint, other])
    for name, weight in payload["model"].items():
        assert torch.allclose(averaged["model"][name], weight * 2, atol=1e-6), name


def training_run(payload, folder, steps):
    """A run folder as the trainer leaves it: step files with their training state, last.pt and
    best.pt beside them, and an averaged.pt of an earlier nmt average, the newest file of all."""
    folder.mkdir(parents=True)
    for i, step in enumerate(steps):
        save_checkpoint(folder / f"ckpt-{step:08d}.pt", dict(
            payload, step=step, model={k: v + i if v.is_floating_point() else v
                                       for k, v in payload["model"].items()},
            optimizer={"state": {}}, schedule={"step": step}, scaler={},
            rng={"torch": torch.ones(2)}, train_state={"step": step}, data={"train": "x"}))
    shutil.copyfile(folder / f"ckpt-{steps[-1]:08d}.pt", folder / "last.pt")
    shutil.copyfile(folder / f"ckpt-{steps[0]:08d}.pt", folder / "best.pt")
    save_checkpoint(folder / "averaged.pt", dict(payload, step=steps[-1]))
    newest = [folder / f"ckpt-{steps[-1]:08d}.pt", folder / f"ckpt-{steps[0]:08d}.pt"] + [
        folder / name for name in ("best.pt", "last.pt", "averaged.pt")]
    for age, path in enumerate(newest):  # by modification time the oldest step looks newer
        os.utime(path, (1000 + age, 1000 + age))
    return folder


def test_last_n_takes_only_the_trainers_step_files_by_step(sample_checkpoint, tmp_path):
    run = tmp_path / "run"
    training_run(load_checkpoint(sample_checkpoint), run / "checkpoints", [20, 100, 300])
    assert [p.name for p in run_checkpoints(run, 2)] == ["ckpt-00000100.pt", "ckpt-00000300.pt"]
    assert [p.name for p in run_checkpoints(run, 5)] == [
        "ckpt-00000020.pt", "ckpt-00000100.pt", "ckpt-00000300.pt"]
    with pytest.raises(CheckpointError, match=r"no training checkpoints \(ckpt-STEP\.pt\)"):
        run_checkpoints(tmp_path, 2)


def test_the_averaged_file_holds_no_training_state_and_translates(sample_checkpoint, tmp_path):
    payload = load_checkpoint(sample_checkpoint)
    run = tmp_path / "run"
    folder = training_run(payload, run / "checkpoints", [20, 100])
    out = tmp_path / "avg.pt"
    proc = run_cli("average", run, "--last", "2", "-o", out)
    assert proc.returncode == 0, proc.stderr
    averaged = load_checkpoint(out)
    assert set(averaged) == {"format", "recipe", "tokenizer", "versions", "step", "epoch", "model",
                             "averaged_from"}
    assert averaged["averaged_from"] == [str(folder / "ckpt-00000020.pt"),
                                         str(folder / "ckpt-00000100.pt")]
    for name, weight in payload["model"].items():  # the mean of weight + 0 and weight + 1
        want = weight + 0.5 if weight.is_floating_point() else weight
        assert torch.allclose(averaged["model"][name], want, atol=1e-6), name
    assert CheckpointStore(folder).latest()[0].name == "ckpt-00000100.pt"
    translated = run_cli("translate", "-m", out, "-q", "--beam-size", "2", input="ein hund\n")
    assert translated.returncode == 0 and len(translated.stdout.splitlines()) == 1, \
        translated.stderr


def test_an_averaged_transformer_exports(sample_checkpoint, tmp_path):
    from nmt_cli.config import ModelConfig, build
    from nmt_cli.export.ct2 import export_ctranslate2
    from nmt_cli.model import build_model
    from nmt_cli.recipes import recipe_from_dict
    from nmt_cli.text.tokenizer import Tokenizers

    payload = load_checkpoint(sample_checkpoint)
    tok = Tokenizers.from_bytes(payload["tokenizer"]["src"], payload["tokenizer"]["tgt"])
    recipe = dataclasses.replace(recipe_from_dict(payload["recipe"]), model=build(ModelConfig, {
        "arch": "transformer", "transformer": {"d_model": 16, "ff_size": 32, "heads": 2,
                                               "encoder_layers": 1, "decoder_layers": 1}}))
    model = build_model(recipe.model, tok.src_vocab_size, tok.tgt_vocab_size, tok.joint)
    trained = make_checkpoint(model, recipe, tok, step=1, train_state={"step": 1}, optimizer={})
    training_run(trained, tmp_path / "run", [1, 2])
    out = tmp_path / "avg.pt"
    average_to_file(run_checkpoints(tmp_path / "run", 2), out)
    folder = export_ctranslate2(out, tmp_path / "ct2")
    assert json.loads((folder / "nmt-export.json").read_text())["source"] == str(out)


def test_mismatched_checkpoints_are_refused(sample_checkpoint, tmp_path):
    payload = load_checkpoint(sample_checkpoint)
    other = tmp_path / "other.pt"
    name = next(iter(payload["model"]))
    save_checkpoint(other, dict(payload, model={**payload["model"], name: torch.zeros(3)}))
    with pytest.raises(CheckpointError, match="shape"):
        average_checkpoints([sample_checkpoint, other])
