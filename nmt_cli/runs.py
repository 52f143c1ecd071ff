"""A run folder's life cycle: start afresh, refuse to overwrite, resume, or start from another
run's weights; and the counters a checkpoint carries to continue exactly."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from nmt_cli import distributed as dist
from nmt_cli.checkpoint import CheckpointStore, load_checkpoint
from nmt_cli.config import ModelConfig, Recipe, build
from nmt_cli.errors import CheckpointError, NmtError
from nmt_cli.tokenizer import Tokenizers


@dataclass
class TrainState:
    """Counters saved in every checkpoint; plain numbers only."""

    step: int = 0
    epoch: int = 0  # epochs completed
    batch: int = 0  # index of the next update (group of batches) within this rank's epoch share
    world_size: int = 1
    seconds: float = 0.0  # training wall time, summed over sessions
    train_seconds: float = 0.0  # time in updates only, for tokens/s
    tgt_tokens: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    since_best: int = 0  # validations since the best one, for early stopping
    nonfinite: int = 0
    nonfinite_in_row: int = 0
    oom: int = 0

    @classmethod
    def restore(cls, saved: dict[str, Any], world_size: int) -> "TrainState":
        """The saved counters; with another process count, the same data seen so far is kept and
        the rest of the epoch is split the new way."""
        state = cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})
        if state.world_size != world_size:
            state.batch = state.batch * state.world_size // world_size
            state.world_size = world_size
        return state


def prepare_run(recipe: Recipe, resume: bool = False, overwrite: bool = False,
                init_from: Path | None = None) -> None:
    """Decide what happens to an existing run folder; never overwrite a run silently."""
    if resume and (overwrite or init_from is not None):
        raise NmtError("--resume continues a run as it was; it cannot be combined with "
                       "--overwrite or --init-from")
    store = CheckpointStore(recipe.workdir / "checkpoints")
    if resume:
        if not store.has_run() and dist.env_info().is_main:  # other nodes may not see the files
            raise NmtError(f"{recipe.workdir} holds no checkpoint to resume; run without --resume")
        return
    if store.has_run() and not overwrite:
        raise NmtError(f"{recipe.workdir} already holds a run ({store.folder}); pass --resume to "
                       "continue it or --overwrite to start afresh, or set workdir to a new folder")
    if overwrite and dist.env_info().is_main:
        store.clear()
        shutil.rmtree(recipe.workdir / "tensorboard", ignore_errors=True)  # metrics.jsonl: Trainer


def _same_tokenizer(payload: dict, tok: Tokenizers) -> bool:
    return payload["tokenizer"] == {"src": tok.src_bytes, "tgt": tok.tgt_bytes}


def check_resumable(payload: dict, path: Path, recipe: Recipe, tok: Tokenizers) -> None:
    """--resume continues the same model with the same tokenizer; training keys may change."""
    # Read back through the config, so a checkpoint written before a key was added compares equal
    if build(ModelConfig, payload["recipe"]["model"], prefix="model") != recipe.model:
        raise CheckpointError(f"{path}: the recipe's model section differs from the run's; "
                              "--resume needs the same model (use --init-from to fine-tune)")
    if not _same_tokenizer(payload, tok):
        raise CheckpointError(f"{path}: the run was trained with another tokenizer")


def load_init_weights(model, tok: Tokenizers, path: Path) -> None:
    """``--init-from``: another run's weights; the optimizer and schedule start afresh."""
    payload = load_checkpoint(path)
    if not _same_tokenizer(payload, tok):
        raise CheckpointError(f"{path}: --init-from needs a checkpoint trained with this "
                              "recipe's tokenizer; copy its tokenizer into the run folder or "
                              "train a new one")
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: its weights do not fit this recipe's model: {first}") \
            from None
