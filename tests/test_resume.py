"""Exact resume after a real SIGKILL, run-folder guards, --init-from, and SIGTERM handling."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from _train_fixtures import (env, new_run, prepared, train, train_here, train_losses,  # noqa: F401
                             weights)

STEPS = 24  # 18 batches per epoch: the resumed run crosses an epoch boundary


@pytest.fixture(scope="module")
def reference(prepared):  # noqa: F811
    recipe, workdir = new_run(prepared, "reference", max_steps=STEPS, save_every=5)
    train_here(recipe)
    return workdir


def test_killed_run_resumes_with_identical_losses_and_weights(prepared, reference):  # noqa: F811
    recipe, workdir = new_run(prepared, "killed", max_steps=STEPS, save_every=5)
    killed = train(recipe, fault="kill-after-step:17", check=False)
    assert killed.returncode == -signal.SIGKILL
    assert max(train_losses(workdir)) == 17  # it really ran past its last checkpoint (15)

    resumed = train_here(recipe, resume=True)
    assert resumed.resumed_from == 15
    expected, got = train_losses(reference), train_losses(workdir)
    assert sorted(got) == list(range(1, STEPS + 1))  # steps 16-17 of the killed run not doubled
    assert got == expected
    ref_w, got_w = weights(reference / "checkpoints" / "last.pt"), weights(
        workdir / "checkpoints" / "last.pt")
    assert all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)
    summary = json.loads((workdir / "train_summary.json").read_text())
    assert summary["steps"] == STEPS and summary["resumed_from"] == 15
    env_json = json.loads((workdir / "environment.json").read_text())
    assert [s["resumed_from_step"] for s in env_json["sessions"]] == [None, 15]
    assert {"nmt", "torch", "sentencepiece", "sacrebleu"} <= set(env_json["versions"])
    assert len(env_json["data"]["train"]["sha256"]["src"]) == 64


def test_existing_run_is_not_overwritten_silently(prepared, reference):  # noqa: F811
    from nmt_cli.errors import NmtError
    from nmt_cli.recipes import load_recipe
    from nmt_cli.runs import prepare_run
    from nmt_cli.trainer import Trainer

    recipe = load_recipe(reference.parent / "reference.yaml")
    with pytest.raises(NmtError, match="pass --resume to continue it or --overwrite"):
        prepare_run(recipe)
    # A finished run resumed: max_steps counts across resumes, so nothing more happens.
    summary = Trainer(recipe, resume=True).train()
    assert (summary.steps, summary.stopped_by, summary.resumed_from) == (STEPS, "max_steps", STEPS)
    assert max(train_losses(reference)) == STEPS


def test_init_from_starts_a_fresh_schedule_from_trained_weights(prepared, reference):  # noqa: F811
    recipe, workdir = new_run(prepared, "finetune", max_steps=3, valid_every=3)
    summary = train_here(recipe, init_from=reference / "checkpoints" / "last.pt")
    assert summary.resumed_from is None
    losses = train_losses(workdir)
    assert sorted(losses) == [1, 2, 3]  # steps start from 0 again
    assert losses[1] < train_losses(reference)[1] - 0.3  # but from the trained weights


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(prepared):  # noqa: F811
    recipe, workdir = new_run(prepared, "sigterm", max_steps=100000, valid_every=100000)
    proc = subprocess.Popen([sys.executable, "-m", "nmt_cli", "train", str(recipe)], env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not (metrics.is_file() and metrics.read_text().count(
            '"train"') >= 3):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "interrupted at step" in stderr and "--resume" in stderr
    summary = json.loads((workdir / "train_summary.json").read_text())
    assert summary["stopped_by"] == "interrupted"
    last = torch.load(workdir / "checkpoints" / "last.pt", weights_only=True)
    assert last["train_state"]["step"] == summary["steps"] >= 3
