"""A tiny prepared run (tokenizer + preprocessed data) for training tests, and helpers to run
``nmt train`` in a subprocess. Import the fixture into a test module to use it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fault_launcher import nmt_args

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"

TINY_RECIPE = {
    "name": "tiny",
    "tokenizer": {"model_type": "bpe", "vocab_size": 300, "joint": True},
    "preprocess": {"max_len": 40},
    "model": {"emb_size": 16, "emb_dropout": 0.1,
              "encoder": {"cell": "gru", "hidden_size": 16, "dropout": 0.1},
              "decoder": {"cell": "gru", "hidden_size": 32, "dropout": 0.1}},
    "train": {"seed": 7, "batch_tokens": 300, "max_steps": 20, "learning_rate": 0.003,
              "log_every": 1, "valid_every": 10, "valid_max_sentences": 4, "threads": 1,
              "device": "cpu", "precision": "fp32"},  # the same numbers on every CPU
    "decode": {"beam_size": 1, "max_len_b": 5},
}


def _head(src: Path, dst: Path, n: int) -> None:
    with open(src, encoding="utf-8") as fh:
        dst.write_text("".join(line for _, line in zip(range(n), fh)), encoding="utf-8")


def env() -> dict[str, str]:
    out = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        out.pop(key, None)
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A folder with 200 training / 20 dev pairs, a 300-piece tokenizer and binarized data."""
    from nmt_cli.recipes import load_recipe
    from nmt_cli.text.preprocess import preprocess
    from nmt_cli.text.tokenizer import train_tokenizers

    base = tmp_path_factory.mktemp("prepared")
    for split, n in (("train", 200), ("dev", 20)):
        for side in ("src", "tgt"):
            _head(SAMPLE / f"{split}.{side}", base / f"{split}.{side}", n)
    recipe = load_recipe(make_recipe(base, base / "run"))
    train_tokenizers(recipe)
    preprocess(recipe)
    return base


def make_recipe(base: Path, workdir: Path, **train) -> Path:
    recipe = json.loads(json.dumps(TINY_RECIPE))
    recipe["workdir"] = str(workdir)
    recipe["data"] = {"train": {"src": str(base / "train.src"), "tgt": str(base / "train.tgt")},
                      "dev": {"src": str(base / "dev.src"), "tgt": str(base / "dev.tgt")}}
    recipe["train"].update(train)
    path = workdir.parent / f"{workdir.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def new_run(prepared: Path, name: str, **train) -> tuple[Path, Path]:
    """A fresh run folder sharing the prepared tokenizer and data; returns (recipe, workdir)."""
    workdir = prepared / name
    workdir.mkdir()
    for sub in ("tokenizer", "data"):
        shutil.copytree(prepared / "run" / sub, workdir / sub)
    return make_recipe(prepared, workdir, **train), workdir


def train(recipe: Path, *args: str, fault: str | None = None,
          check: bool = True) -> subprocess.CompletedProcess:
    """``nmt train`` in a subprocess; ``fault`` is a spec of tests/fault_launcher.py."""
    proc = subprocess.run([sys.executable, *nmt_args(fault), "train", str(recipe), *args],
                          env=env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"nmt train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def train_here(recipe: Path, resume: bool = False, init_from: Path | None = None):
    """``nmt train`` in this process (cheaper than a subprocess); returns the TrainSummary."""
    from nmt_cli.recipes import load_recipe
    from nmt_cli.training.runs import prepare_run
    from nmt_cli.training.trainer import Trainer

    rcp = load_recipe(recipe)
    prepare_run(rcp, resume=resume, init_from=init_from)
    return Trainer(rcp, resume=resume, init_from=init_from).train()


def train_losses(workdir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["event"] == "train"}


def logged_train_steps(workdir: Path) -> list[int]:
    """The step of every ``train`` line of the raw metrics log, in file order, duplicates kept
    (a dict keyed by step would hide a step logged twice)."""
    steps = []
    for line in (workdir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["event"] == "train":
            steps.append(record["step"])
    return steps


def weights(checkpoint: Path, key: str = "model") -> dict:
    """A checkpoint's weights: ``model`` (the moving average, with train.ema_decay) or
    ``train_model`` (the training weights, only with an average)."""
    import torch

    return torch.load(checkpoint, map_location="cpu", weights_only=True)[key]
