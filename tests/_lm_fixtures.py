"""Tiny language models trained for a few steps on the target side of data/sample, once per test
session. ``trained_lm(family, tokenizer)`` uses the SentencePiece model ``tokenizer`` (a
translation model's, for fusion) or, when it is None, trains its own."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from _decode_fixtures import SAMPLE, _head

FAMILIES = {
    "rnn": {"family": "rnn", "rnn": {"cell": "lstm", "emb_size": 48, "hidden_size": 48,
                                     "layers": 2, "dropout": 0.0}},
    "transformer": {"family": "transformer",
                    "transformer": {"d_model": 32, "ff_size": 64, "heads": 4,
                                    "decoder_layers": 2, "dropout": 0.0}},
}


def lm_recipe_dict(work: Path, family: str, tokenizer: Path | None, max_steps: int = 150,
                   vocab_size: int = 200) -> dict:
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    train = _head(SAMPLE / "train.tgt", data / "train.txt", 3000)
    dev = _head(SAMPLE / "dev.tgt", data / "dev.txt", 100)
    tok = {"model": str(tokenizer)} if tokenizer else {"vocab_size": vocab_size}
    return {
        "name": "lm-tests", "workdir": str(work / "run"),
        "data": {"tgt_lang": "tgt", "train": {"text": str(train)}, "dev": {"text": str(dev)}},
        "tokenizer": {**tok, "num_threads": 1},
        "model": {"arch": "lm", "tie_embeddings": True, "lm": FAMILIES[family]},
        "train": {"seed": 7, "batch_tokens": 1500, "max_steps": max_steps,
                  "learning_rate": 0.01 if family == "rnn" else 0.003, "label_smoothing": 0.0,
                  "valid_every": 50, "log_every": 50, "threads": 1, "device": "cpu",
                  "precision": "fp32"},
    }


@functools.lru_cache(maxsize=4)
def trained_lm(family: str = "rnn", tokenizer: Path | None = None) -> Path:
    """best.pt of a tiny LM of ``family`` (its run folder is removed at exit)."""
    import torch

    from nmt_cli.config import check_training
    from nmt_cli.recipes import recipe_from_dict
    from nmt_cli.text.preprocess import preprocess
    from nmt_cli.text.tokenizer import train_tokenizers
    from nmt_cli.training.trainer import Trainer

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="nmt-lm-tests-"))
    atexit.register(shutil.rmtree, work, True)
    recipe = recipe_from_dict(lm_recipe_dict(work, family, tokenizer))
    check_training(recipe)
    train_tokenizers(recipe)
    preprocess(recipe)
    Trainer(recipe, "cpu").train()
    return work / "run" / "checkpoints" / "best.pt"


def tokenizer_of(checkpoint: Path) -> Path:
    """The joint SentencePiece model of a decode-test run (``_decode_fixtures``)."""
    return checkpoint.parent.parent / "tokenizer" / "joint.model"
