"""Exact resume after real SIGKILLs from outside at random moments, run-folder guards, --init-from, and SIGTERM handling."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from _train_fixtures import (env, logged_train_steps, make_recipe, new_run, prepared,  # noqa: F401
                             train_here, train_losses, weights)

STEPS = 24  # 18 batches per epoch: the resumed run crosses an epoch boundary
KILL_STEPS = 120  # long enough that three kills from outside land before the run ends
KILLS = 3


@pytest.fixture(scope="module")
def reference(prepared):  # noqa: F811
    recipe, workdir = new_run(prepared, "reference", max_steps=STEPS, save_every=5)
    train_here(recipe)
    return workdir


def _logged_steps_so_far(metrics) -> list[int]:
    """Train steps in a log another process is writing: a line being written is left out."""
    steps = []
    try:
        text = metrics.read_text(encoding="utf-8")
    except FileNotFoundError:
        return steps
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == "train":
            steps.append(record["step"])
    return steps


def _kill_at_a_random_moment(recipe, workdir, rng: random.Random) -> tuple[int, int]:
    """Start ``nmt train`` (``--resume`` once a checkpoint exists), wait until it has made one new
    update, let it run on for a random time and SIGKILL it from outside. Returns the last step it
    logged and the step of the checkpoint it left."""
    from nmt_cli.checkpoint import CheckpointStore

    store = CheckpointStore(workdir / "checkpoints")
    found = store.latest()
    start_step = found[1]["train_state"]["step"] if found else 0
    args = ["--resume"] if store.has_run() else []
    proc = subprocess.Popen([sys.executable, "-m", "nmt_cli", "train", str(recipe), *args],
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True)
    reader.start()
    metrics = workdir / "metrics.jsonl"
    try:
        # "training on ..." comes after the log was cut back, so stale lines of the last session
        # are gone by then; a train line past the checkpoint is this session's own progress.
        deadline = time.time() + 120
        while not (any("training on" in line for line in stderr)
                   and any(s > start_step for s in _logged_steps_so_far(metrics))):
            assert proc.poll() is None, "".join(stderr)[-2000:]
            assert time.time() < deadline, "no training step within 120 s"
            time.sleep(0.01)
        # A random moment (mid-update, mid-log, mid-save), up to ~30 updates on; never near the end.
        until = time.time() + rng.uniform(0.0, 1.5)
        while time.time() < until and max(_logged_steps_so_far(metrics)) < KILL_STEPS - 20:
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
    assert proc.returncode == -signal.SIGKILL, "".join(stderr)[-2000:]  # killed, not finished
    found = store.latest()
    return max(_logged_steps_so_far(metrics)), found[1]["train_state"]["step"] if found else 0


def test_run_killed_from_outside_at_random_moments_resumes_bit_identically(prepared):  # noqa: F811
    """Three SIGKILLs from another process at random moments, a resume after each: the same
    training weights and the same moving average of them (train.ema_decay), bit for bit, and the
    same per-step losses as a run never stopped, each step logged once (CPU, one thread)."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    ref_recipe, ref_dir = new_run(prepared, "outside_ref", max_steps=KILL_STEPS, save_every=5,
                                  valid_every=50, log_every=1, ema_decay=0.95)
    train_here(ref_recipe)
    recipe, workdir = new_run(prepared, "outside_killed", max_steps=KILL_STEPS, save_every=5,
                              valid_every=50, log_every=1, ema_decay=0.95)
    kills = [_kill_at_a_random_moment(recipe, workdir, rng) for _ in range(KILLS)]
    resume_step = kills[-1][1] or None  # all three killed before the first save: a fresh start
    summary = train_here(recipe, resume=resume_step is not None)
    where = f"kill seed {seed}; (last logged step, checkpoint step) per kill: {kills}"
    assert summary.steps == KILL_STEPS, where
    assert summary.resumed_from == resume_step, where
    assert logged_train_steps(workdir) == list(range(1, KILL_STEPS + 1)), where
    assert train_losses(workdir) == train_losses(ref_dir), where
    for key in ("model", "train_model"):  # the average, and the weights training goes on from
        ref_w = weights(ref_dir / "checkpoints" / "last.pt", key)
        got_w = weights(workdir / "checkpoints" / "last.pt", key)
        assert ref_w.keys() == got_w.keys()
        assert all(torch.equal(ref_w[k], got_w[k]) for k in ref_w), (key, where)
    assert not all(torch.equal(ref_w[k], weights(ref_dir / "checkpoints" / "last.pt")[k])
                   for k in ref_w)  # the average is not the training weights
    sessions = json.loads((workdir / "environment.json").read_text())["sessions"]
    assert sessions[-1]["resumed_from_step"] == resume_step, where


def test_resumed_run_records_its_sessions_and_environment(prepared, reference):  # noqa: F811
    """A run whose session died after logging steps 16-17 past its checkpoint at 15, resumed:
    those lines are cut, so each step is logged once, and summary and sessions say so."""
    recipe, workdir = new_run(prepared, "stopped", max_steps=15, save_every=5)
    train_here(recipe)
    with open(workdir / "metrics.jsonl", "a", encoding="utf-8") as fh:  # the lost session's lines
        for step in (16, 17):
            fh.write(json.dumps({"event": "train", "step": step, "loss": 9.0}) + "\n")
    recipe = make_recipe(prepared, workdir, max_steps=STEPS, save_every=5)  # raise the budget
    resumed = train_here(recipe, resume=True)
    assert resumed.resumed_from == 15
    assert logged_train_steps(workdir) == list(range(1, STEPS + 1))
    assert train_losses(workdir) == train_losses(reference)
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
    from nmt_cli.training.runs import prepare_run
    from nmt_cli.training.trainer import Trainer

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
