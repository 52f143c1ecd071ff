"""DDP on CPU with gloo: two ranks on one batch each equal one process on both batches; one
checkpoint set and one log; a killed two-rank run resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.distributed

from _train_fixtures import env, new_run, prepared, weights  # noqa: F401
from fault_launcher import nmt_args

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch built without torch.distributed")

NO_DROPOUT = ["--set", "model.emb_dropout=0", "--set", "model.encoder.dropout=0",
              "--set", "model.decoder.dropout=0"]
# A checkpoint after every step, all kept; validation at step 2 and at the end.
TRAIN = dict(max_steps=3, save_every=1, keep_last=3, valid_every=2, valid_max_sentences=2)


def torchrun(recipe, *args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    """Two-rank ``nmt train``; ``fault`` is a spec of tests/fault_launcher.py."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           *nmt_args(fault), "train", str(recipe), *NO_DROPOUT, *args]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="module")
def ddp_run(prepared):  # noqa: F811
    recipe, workdir = new_run(prepared, "ddp", **TRAIN)
    proc = torchrun(recipe)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("done: 3 steps") == 1  # only rank 0 reports
    return workdir


def test_two_ranks_match_one_process_on_the_combined_batch(prepared, ddp_run):  # noqa: F811
    # One process, two batches accumulated into one update: the same batches the ranks read.
    single_recipe, single = new_run(prepared, "single", **dict(TRAIN, max_steps=1),
                                    accum_steps=2)
    from nmt_cli.recipes import load_recipe
    from nmt_cli.training.trainer import Trainer

    rcp = load_recipe(single_recipe, NO_DROPOUT[1::2])
    Trainer(rcp).train()

    ddp_w = weights(ddp_run / "checkpoints" / "ckpt-00000001.pt")
    one_w = weights(single / "checkpoints" / "last.pt")
    for key in one_w:
        torch.testing.assert_close(ddp_w[key], one_w[key], atol=1e-5, rtol=0)
    # and the update moved the weights well beyond that tolerance
    init = Trainer(rcp).model.state_dict()
    assert max((one_w[k] - init[k]).abs().max().item() for k in init) > 1e-3

    ddp_log = [json.loads(line) for line in (ddp_run / "metrics.jsonl").read_text().splitlines()]
    one_log = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
    assert ddp_log[1]["loss"] == pytest.approx(one_log[1]["loss"], rel=1e-6)


def test_only_rank_zero_writes_one_checkpoint_set_and_log(ddp_run):
    names = sorted(p.name for p in (ddp_run / "checkpoints").iterdir())
    assert names == ["best.pt", "ckpt-00000001.pt", "ckpt-00000002.pt", "ckpt-00000003.pt",
                     "index.json", "last.pt"]
    records = [json.loads(line) for line in (ddp_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records] == ["start", "train", "train", "valid", "train", "valid",
                                             "end"]
    assert records[0]["world_size"] == 2


def test_killed_two_rank_run_resumes_exactly(prepared, ddp_run):  # noqa: F811
    recipe, workdir = new_run(prepared, "ddp_killed", **TRAIN)
    assert torchrun(recipe, fault="kill-after-step:2").returncode != 0
    resumed = torchrun(recipe, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from ckpt-00000001.pt" in resumed.stderr
    ref_w, got_w = weights(ddp_run / "checkpoints" / "last.pt"), weights(
        workdir / "checkpoints" / "last.pt")
    assert all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)
