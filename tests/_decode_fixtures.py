"""A tiny model trained for a few steps on data/sample, made once per test session.

Decoding tests import ``sample_model`` (a pytest fixture) from here; the training runs once per
process through the plain functions (tokenizer, preprocess, Trainer), in a temporary folder.
``trained_checkpoint("transformer")`` is the same for a tiny Transformer, so that decoding tests
can run over both architectures (``arch_checkpoint``).
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"


def _head(src: Path, dst: Path, n: int) -> Path:
    with open(src, encoding="utf-8") as fh:
        lines = [next(fh) for _ in range(n)]
    dst.write_text("".join(lines), encoding="utf-8")
    return dst


MODELS = {
    "rnn": {"emb_size": 32, "emb_dropout": 0.0, "encoder": {"hidden_size": 32, "dropout": 0.0},
            "decoder": {"hidden_size": 64, "dropout": 0.0}},
    "transformer": {"arch": "transformer", "share_embeddings": True, "tie_embeddings": True,
                    "transformer": {"d_model": 32, "ff_size": 64, "heads": 4, "encoder_layers": 2,
                                    "decoder_layers": 2, "dropout": 0.0}},
}
TRAIN = {"rnn": {"max_steps": 60, "learning_rate": 0.01},
         "transformer": {"max_steps": 80, "learning_rate": 0.01, "schedule": "inverse_sqrt",
                         "warmup_steps": 20, "save_every": 30, "keep_last": 2, "average_last": 2}}


@functools.lru_cache(maxsize=2)
def trained_checkpoint(arch: str = "rnn") -> Path:
    import torch

    from nmt_cli.recipes import recipe_from_dict
    from nmt_cli.text.preprocess import preprocess
    from nmt_cli.text.tokenizer import train_tokenizers
    from nmt_cli.training.trainer import Trainer

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="nmt-decode-tests-"))
    data = work / "data"
    data.mkdir()
    files = {}
    for split, n in (("train", 3000), ("dev", 20)):
        for side in ("src", "tgt"):
            path = _head(SAMPLE / f"{split}.{side}", data / f"{split}.{side}", n)
            files[(split, side)] = str(path)
    raw = {
        "name": "decode-tests", "workdir": str(work / "run"),
        "data": {"train": {"src": files[("train", "src")], "tgt": files[("train", "tgt")]},
                 "dev": {"src": files[("dev", "src")], "tgt": files[("dev", "tgt")]}},
        "tokenizer": {"vocab_size": 200, "num_threads": 1},
        "model": MODELS[arch],
        "train": {"seed": 7, "batch_tokens": 1500, **TRAIN[arch],
                  "valid_every": 1000, "log_every": 1000, "valid_max_sentences": 5,
                  "threads": 1, "device": "cpu", "precision": "fp32"},
        "decode": {"beam_size": 5, "batch_size": 64},
    }
    recipe = recipe_from_dict(raw)
    train_tokenizers(recipe)
    preprocess(recipe)
    Trainer(recipe, "cpu").train()
    ckpt = work / "run" / "checkpoints" / "last.pt"
    import atexit

    atexit.register(shutil.rmtree, work, True)
    return ckpt


@pytest.fixture(scope="session")
def sample_checkpoint() -> Path:
    return trained_checkpoint()


@pytest.fixture(scope="session", params=["rnn", "transformer"])
def arch_checkpoint(request) -> Path:
    """The tiny trained checkpoint of each architecture in turn."""
    return trained_checkpoint(request.param)


@pytest.fixture(scope="session")
def sample_model(sample_checkpoint):
    """(model, tokenizers, recipe) of the tiny trained model, on the CPU, in eval mode."""
    from nmt_cli.checkpoint import load_checkpoint, model_from_checkpoint

    return model_from_checkpoint(load_checkpoint(sample_checkpoint), sample_checkpoint, "cpu")


def decode_settings(recipe, **changes):
    """The recipe's decode settings with ``changes``, checked as a user's would be."""
    from nmt_cli.config import with_overrides

    return with_overrides(recipe.decode, changes, "decode")


def translate(sample_model, lines: list[str], **changes):
    """``translate_lines`` with the model's own recipe (decode settings changed by ``changes``)."""
    from nmt_cli.decoding.inference import translate_lines

    model, tok, recipe = sample_model
    return translate_lines(model, tok, lines, decode_settings(recipe, **changes),
                           normalize=recipe.preprocess.normalize)


def source_lines(n: int = 40) -> list[str]:
    with open(SAMPLE / "test.src", encoding="utf-8") as fh:
        return [next(fh).rstrip("\n") for _ in range(n)]


def assert_stdin_streams(checkpoint) -> None:
    """``nmt translate`` on a pipe writes the first translation before its input has ended, and
    gives one line per input line once it has."""
    import os
    import subprocess
    import sys
    import threading

    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "nmt_cli", "translate", "-m", str(checkpoint),
                             "--device", "cpu", "--beam-size", "2", "-q"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=ROOT)
    first: list[bytes] = []
    reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)
    try:
        lines = source_lines(3)
        proc.stdin.write((lines[0] + "\n").encode())
        proc.stdin.flush()
        reader.start()
        reader.join(timeout=60)
        assert first and first[0].strip(), "no translation before the input was closed"
        assert proc.poll() is None  # still waiting for more input
        proc.stdin.write(("\n".join(lines[1:]) + "\n").encode())
        proc.stdin.close()
        rest = proc.stdout.read().decode().split("\n")[:-1]
        assert proc.wait(timeout=60) == 0
        assert len(rest) == 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
