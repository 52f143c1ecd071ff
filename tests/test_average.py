"""nmt average: the mean of checkpoints' weights, from a list of files or a run folder."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from _decode_fixtures import sample_checkpoint  # noqa: F401
from nmt_cli.checkpoint import load_checkpoint, save_checkpoint
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


def test_run_folder_takes_the_newest_distinct_steps(sample_checkpoint, tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    payload = load_checkpoint(sample_checkpoint)
    for i, name in enumerate(["step100.pt", "step200.pt", "step300.pt"]):
        save_checkpoint(folder / name, dict(payload, step=(i + 1) * 100))
        os.utime(folder / name, (1000 + i, 1000 + i))
    shutil.copyfile(folder / "step300.pt", folder / "best.pt")  # same step as step300.pt
    os.utime(folder / "best.pt", (999, 999))
    assert [p.name for p in run_checkpoints(tmp_path / "run", 2)] == ["step200.pt", "step300.pt"]


def test_mismatched_checkpoints_are_refused(sample_checkpoint, tmp_path):
    payload = load_checkpoint(sample_checkpoint)
    other = tmp_path / "other.pt"
    name = next(iter(payload["model"]))
    save_checkpoint(other, dict(payload, model={**payload["model"], name: torch.zeros(3)}))
    with pytest.raises(CheckpointError, match="shape"):
        average_checkpoints([sample_checkpoint, other])
