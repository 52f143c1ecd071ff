"""What training leaves behind, and checkpoints that load safely or fail with a clear error."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest
import torch

from nmt_cli.checkpoint import (FORMAT, load_checkpoint, make_checkpoint, model_from_checkpoint,
                                save_checkpoint)
from nmt_cli.config import TokenizerConfig
from nmt_cli.errors import CheckpointError
from nmt_cli.recipes import RESOLVED_NAME, load_recipe, recipe_from_dict
from nmt_cli.text.tokenizer import Tokenizers, train_model

from conftest import sample_lines


# -- what training wrote -------------------------------------------------------------------------


def test_training_writes_checkpoints_logs_and_resolved_recipe(experiment):
    wd = experiment.workdir
    assert experiment.checkpoint.is_file() and experiment.last_checkpoint.is_file()
    assert experiment.summary.steps == experiment.recipe.train.max_steps
    assert experiment.summary.stopped_by == "max_steps"
    assert load_recipe(wd / RESOLVED_NAME) == experiment.recipe
    events = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end"
    valid = [e for e in events if e["event"] == "valid"]
    assert [e["step"] for e in valid] == [40, 80]  # valid_every 40, max_steps 80
    assert all("dev_bleu" in e and "dev_loss" in e for e in valid)
    train = [e for e in events if e["event"] == "train"]
    assert [e["step"] for e in train] == [20, 40, 60, 80]
    assert train[-1]["loss"] < train[0]["loss"]  # it learned something
    summary = json.loads((wd / "train_summary.json").read_text())
    assert summary["steps"] == 80 and summary["stopped_by"] == "max_steps"


def test_checkpoint_files_have_normal_permissions(experiment, tmp_path):
    """Checkpoints are shared with colleagues and copied around: they must get the same permission
    bits as any other file the user creates (umask), not a private 0600 temp-file mode."""
    probe = tmp_path / "probe"
    probe.write_bytes(b"x")
    normal = stat.S_IMODE(probe.stat().st_mode)
    for path in (experiment.checkpoint, experiment.last_checkpoint,
                 experiment.workdir / RESOLVED_NAME, experiment.workdir / "tokenizer" / "joint.model"):
        assert stat.S_IMODE(path.stat().st_mode) == normal, (path, oct(path.stat().st_mode))


# -- loading -------------------------------------------------------------------------------------


def test_checkpoint_loads_with_weights_only(experiment):
    payload = torch.load(experiment.checkpoint, map_location="cpu", weights_only=True)
    assert payload["format"] == FORMAT
    assert set(payload["tokenizer"]) == {"src", "tgt"}
    assert payload["step"] == 80


def test_checkpoint_round_trip_gives_the_trained_model(experiment, trained_model, tokenizers):
    payload = load_checkpoint(experiment.checkpoint)
    model, tok, recipe = model_from_checkpoint(payload, experiment.checkpoint)
    assert recipe == experiment.recipe
    assert tok.sha256() == tokenizers.sha256()
    assert not model.training
    src = torch.tensor([[10, 20, 30, 3], [40, 50, 3, 0]])
    lens = torch.tensor([4, 3])
    tgt = torch.tensor([[2, 7, 8], [2, 9, 0]])
    with torch.no_grad():
        assert torch.equal(model(src, lens, tgt), trained_model(src, lens, tgt))


def test_in_memory_payload_round_trip(experiment, trained_model, tokenizers):
    payload = make_checkpoint(trained_model, experiment.recipe, tokenizers, step=3)
    model, tok, recipe = model_from_checkpoint(payload)
    assert recipe == experiment.recipe and tok.joint
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), trained_model.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


def test_truncated_checkpoint(experiment, tmp_path):
    data = experiment.checkpoint.read_bytes()
    for cut in (len(data) // 2, 100, 0):
        bad = tmp_path / f"cut{cut}.pt"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(bad)
        assert str(bad) in str(info.value)
        assert "truncated" in str(info.value)


@pytest.mark.parametrize("error", [
    PermissionError(errno.EACCES, "Permission denied"),
    FileNotFoundError(errno.ENOENT, "No such file or directory"),
    IsADirectoryError(errno.EISDIR, "Is a directory"),
    OSError(errno.EIO, "Input/output error"),
], ids=lambda e: type(e).__name__ if type(e) is not OSError else "EIO")
@pytest.mark.parametrize("mmap", [False, True])
def test_an_unreadable_checkpoint_is_reported_as_its_cause(tmp_path, monkeypatch, error, mmap):
    path = tmp_path / "whole.pt"
    save_checkpoint(path, {"format": FORMAT, "w": torch.ones(3)})

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(torch, "load", refuse)  # as open() fails inside torch.load
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, mmap=mmap)
    msg = str(info.value)
    assert msg.startswith(f"{path}: cannot read the checkpoint: {error.strerror} "
                          f"({type(error).__name__})"), msg
    assert "truncated" not in msg and "corrupt" not in msg


def test_not_a_checkpoint(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(other)
    assert "not an nmt checkpoint" in str(info.value)
    text = tmp_path / "text.pt"
    text.write_text("hello\n")
    with pytest.raises(CheckpointError):
        load_checkpoint(text)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "nope.pt")
    assert "nope.pt" in str(info.value) and "not found" in str(info.value)


def test_checkpoint_never_runs_code(tmp_path):
    """weights_only loading: a pickle that would run code on load is refused, not executed."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "x": Evil()}, evil)
    with pytest.raises(CheckpointError):
        load_checkpoint(evil)
    assert not marker.exists()


@pytest.fixture(scope="module")
def other_tokenizer():
    lines = sample_lines("train", "src", 2000) + sample_lines("train", "tgt", 2000)
    model = train_model(lines, TokenizerConfig(vocab_size=200, num_threads=1))
    tok = Tokenizers.from_bytes(model, model)
    assert tok.src_vocab_size == 200
    return tok


def test_vocabulary_mismatch_is_a_checkpoint_error(experiment, trained_model, other_tokenizer):
    payload = make_checkpoint(trained_model, experiment.recipe, other_tokenizer)
    with pytest.raises(CheckpointError) as info:
        model_from_checkpoint(payload, "mixed.pt")
    msg = str(info.value)
    assert "vocabulary/model mismatch" in msg
    assert "300" in msg and "200" in msg and "mixed.pt" in msg


def test_vocabulary_mismatch_from_file(experiment, trained_model, other_tokenizer, tmp_path):
    path = tmp_path / "mixed.pt"
    save_checkpoint(path, make_checkpoint(trained_model, experiment.recipe, other_tokenizer))
    with pytest.raises(CheckpointError) as info:
        model_from_checkpoint(load_checkpoint(path), path)
    assert "vocabulary/model mismatch" in str(info.value)


def test_weights_that_do_not_fit_the_recipe(experiment, trained_model, tokenizers):
    payload = make_checkpoint(trained_model, experiment.recipe, tokenizers)
    payload["recipe"]["model"]["decoder"]["hidden_size"] = 48
    with pytest.raises(CheckpointError) as info:
        model_from_checkpoint(payload, "odd.pt")
    assert "odd.pt" in str(info.value)
    broken = make_checkpoint(trained_model, experiment.recipe, tokenizers)
    broken["recipe"]["model"]["encoder"]["cell"] = "gur"
    with pytest.raises(CheckpointError):
        model_from_checkpoint(broken)


def test_save_is_atomic_on_failure(tmp_path, experiment, trained_model, tokenizers):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, make_checkpoint(trained_model, experiment.recipe, tokenizers, step=1))
    before = path.read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        save_checkpoint(path, {"format": FORMAT, "bad": Unpicklable()})
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ck.pt"]  # no temporary file left behind


def test_recipe_inside_checkpoint_is_plain_data(experiment, trained_model, tokenizers):
    payload = make_checkpoint(trained_model, experiment.recipe, tokenizers)
    assert recipe_from_dict(payload["recipe"]) == experiment.recipe
    json.dumps(payload["recipe"])  # plain, JSON-friendly
