"""DDP on CPU with gloo: two ranks on one batch each equal one process on both batches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.distributed

from _train_fixtures import env, new_run, prepared, train_here, weights  # noqa: F401

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch built without torch.distributed")

NO_DROPOUT = ["--set", "model.emb_dropout=0", "--set", "model.encoder.dropout=0",
              "--set", "model.decoder.dropout=0"]


def test_two_ranks_match_one_process_on_the_combined_batch(prepared):  # noqa: F811
    # valid_every=1: validation inside the loop, then none at the end, on every rank alike
    recipe, workdir = new_run(prepared, "ddp", max_steps=1, valid_every=1, valid_max_sentences=2)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "nmt_cli", "train", str(recipe), *NO_DROPOUT]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    assert stderr.count("done: 1 steps") == 1  # only rank 0 reports

    # One process, two batches accumulated into one update: the same batches the ranks read.
    single_recipe, single = new_run(prepared, "single", max_steps=1, valid_max_sentences=2,
                                    accum_steps=2)
    from nmt_cli.recipes import load_recipe
    from nmt_cli.trainer import Trainer

    rcp = load_recipe(single_recipe, NO_DROPOUT[1::2])
    Trainer(rcp).train()

    ddp_w = weights(workdir / "checkpoints" / "last.pt")
    one_w = weights(single / "checkpoints" / "last.pt")
    for key in one_w:
        torch.testing.assert_close(ddp_w[key], one_w[key], atol=1e-5, rtol=0)
    # and the update moved the weights well beyond that tolerance
    init = Trainer(rcp).model.state_dict()
    assert max((one_w[k] - init[k]).abs().max().item() for k in init) > 1e-3

    # One checkpoint set and one log, written by rank 0 alone.
    names = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    assert names == ["best.pt", "ckpt-00000001.pt", "index.json", "last.pt"]
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records] == ["start", "train", "valid", "end"]
    assert records[0]["world_size"] == 2
    ddp_loss, one_loss = records[1]["loss"], json.loads(
        (single / "metrics.jsonl").read_text().splitlines()[1])["loss"]
    assert ddp_loss == pytest.approx(one_loss, rel=1e-6)
