"""Atomic checkpoints: a process killed while writing one leaves the previous checkpoint in charge;
retention keeps the last N and best K; RNG states load under weights_only=True."""

from __future__ import annotations

import errno
import json
import random
import signal

import numpy as np
import pytest
import torch

from _train_fixtures import (logged_train_steps, new_run, prepared, train, train_here,  # noqa: F401
                             train_losses, weights)
from nmt_cli.checkpoint import (CheckpointStore, load_checkpoint, rng_state, save_checkpoint,
                                set_rng_state)
from nmt_cli.errors import CheckpointError


def test_kill_during_save_resumes_from_the_previous_good_checkpoint(prepared):  # noqa: F811
    ref_recipe, reference = new_run(prepared, "reference", max_steps=20, save_every=5)
    train_here(ref_recipe)
    recipe, workdir = new_run(prepared, "killed", max_steps=20, save_every=5)
    killed = train(recipe, fault="kill-in-save:15", check=False)
    assert killed.returncode == -signal.SIGKILL
    ckpts = workdir / "checkpoints"
    partial = list(ckpts.glob(".ckpt-00000015.pt.*.tmp"))
    assert partial and partial[0].stat().st_size > 0  # it died mid-write...
    assert not (ckpts / "ckpt-00000015.pt").exists()  # ...and the real name never appeared
    with pytest.raises(CheckpointError, match=r"it is truncated, corrupt or not an nmt"):
        load_checkpoint(partial[0])
    assert all(load_checkpoint(p) for p in ckpts.glob("*.pt"))  # no partial file by a real name
    assert load_checkpoint(ckpts / "last.pt")["train_state"]["step"] == 10
    assert logged_train_steps(workdir)[-1] == 15  # steps 11-15 were logged before it died

    summary = train_here(recipe, resume=True)
    assert summary.resumed_from == 10 and summary.steps == 20
    assert not list(ckpts.glob(".*.tmp"))  # leftovers cleaned up
    assert logged_train_steps(workdir) == list(range(1, 21))  # 11-15 once, not twice
    assert train_losses(workdir) == train_losses(reference)
    ref_w, got_w = weights(reference / "checkpoints" / "last.pt"), weights(ckpts / "last.pt")
    assert all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)


def _payload(step: int) -> dict:
    return {"format": "nmt-checkpoint-1", "train_state": {"step": step}, "w": torch.ones(3) * step}


def test_store_keeps_last_n_and_best_k(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=2, keep_best=1)
    metrics = {1: 10.0, 2: 30.0, 3: 20.0, 4: 5.0, 5: None}
    best = None
    for step, metric in metrics.items():
        is_best = metric is not None and (best is None or metric > best)
        best = metric if is_best else best
        store.save(_payload(step), step, metric, is_best)
    names = sorted(p.name for p in tmp_path.glob("ckpt-*.pt"))
    assert names == ["ckpt-00000002.pt", "ckpt-00000004.pt", "ckpt-00000005.pt"]
    assert load_checkpoint(tmp_path / "last.pt")["train_state"]["step"] == 5
    assert load_checkpoint(tmp_path / "best.pt")["train_state"]["step"] == 2


def test_latest_skips_a_truncated_checkpoint(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=3)
    store.save(_payload(1), 1, None, False)
    store.save(_payload(2), 2, None, False)
    data = (tmp_path / "ckpt-00000002.pt").read_bytes()
    (tmp_path / "ckpt-00000002.pt").unlink()  # a truncated file, as an unsafe writer would leave
    (tmp_path / "ckpt-00000002.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "last.pt").unlink()
    path, payload = store.latest()
    assert path.name == "ckpt-00000001.pt" and payload["train_state"]["step"] == 1
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "ckpt-00000002.pt")


def test_latest_refuses_an_unreadable_checkpoint_instead_of_skipping_it(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path, keep_last=3)
    store.save(_payload(1), 1, None, False)
    store.save(_payload(2), 2, None, False)
    real = torch.load

    def load(path, *args, **kwargs):
        if path.name == "ckpt-00000002.pt":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    with pytest.raises(CheckpointError, match=r"ckpt-00000002\.pt: cannot read the checkpoint: "
                                              r"Permission denied \(PermissionError\)"):
        store.latest()  # resuming from step 1 would silently lose step 2


BAD_ENTRIES = [
    ({"file": "../victim.pt", "step": 1, "metric": 1.0}, "has no 'file' named like"),
    ({"file": "ckpt-00000002.pt", "metric": None}, "has no 'step' that matches its file (2)"),
    ({"file": "ckpt-00000003.pt", "step": 4, "metric": None}, "has no 'step' that matches"),
    ({"file": "ckpt-00000004.pt", "step": 4, "metric": "high"}, "has a 'metric' that is not"),
    ("ckpt-00000005.pt", "is not a mapping"),
]


def test_a_malformed_index_entry_is_skipped_and_its_file_left_alone(tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (tmp_path / "victim.pt").write_bytes(b"keep me")
    for step in (2, 3, 4, 5):
        save_checkpoint(folder / f"ckpt-{step:08d}.pt", _payload(step))
    (folder / "index.json").write_text(json.dumps({"checkpoints": [e for e, _ in BAD_ENTRIES]}))
    store = CheckpointStore(folder, keep_last=1, keep_best=0)
    store.save(_payload(6), 6, None, False)
    store.save(_payload(7), 7, None, False)
    assert (tmp_path / "victim.pt").read_bytes() == b"keep me"
    assert sorted(p.name for p in folder.glob("ckpt-*.pt")) == [f"ckpt-{s:08d}.pt"
                                                              for s in (2, 3, 4, 5, 7)]
    index = json.loads((folder / "index.json").read_text())["checkpoints"]
    assert index == [{"file": "ckpt-00000007.pt", "step": 7, "metric": None}]
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == len(BAD_ENTRIES)  # once each: the rewritten index drops them
    for i, (line, (_, problem)) in enumerate(zip(warnings, BAD_ENTRIES)):
        assert line.startswith(f"warning: {folder / 'index.json'}: checkpoints[{i}] "), line
        assert problem in line and line.endswith("skipped, its file is left alone"), line


@pytest.mark.parametrize("text", ["[]", "{not json", '{"checkpoints": 3}'])
def test_an_unusable_index_is_replaced_with_a_warning(tmp_path, capsys, text):
    (tmp_path / "index.json").write_text(text)
    CheckpointStore(tmp_path).save(_payload(1), 1, 2.0, True)
    assert json.loads((tmp_path / "index.json").read_text())["checkpoints"] == [
        {"file": "ckpt-00000001.pt", "step": 1, "metric": 2.0}]
    err = capsys.readouterr().err
    assert err.startswith(f"warning: {tmp_path / 'index.json'}: ") and err.count("\n") == 1, err


def test_rng_states_round_trip_under_weights_only(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_checkpoint(tmp_path / "rng.pt", {"format": "nmt-checkpoint-1", "rng": rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
