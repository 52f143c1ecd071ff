"""A run folder's life cycle, the counters a checkpoint carries to resume, a session's summary."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from nmt_cli.checkpoint import CheckpointStore, load_checkpoint
from nmt_cli.config import ModelConfig, Recipe, build, to_dict
from nmt_cli.errors import CheckpointError, DataError, NmtError
from nmt_cli.text.preprocess import data_dir
from nmt_cli.text.tokenizer import Tokenizers
from nmt_cli.training import distributed as dist


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
        """The saved counters; under another process count the epoch's rest is split anew."""
        state = cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})
        if state.world_size != world_size:
            state.batch = state.batch * state.world_size // world_size
            state.world_size = world_size
        return state

    def record_validation(self, metric: float, patience: int) -> tuple[bool, bool]:
        """Count a validation (``metric``: higher is better); returns (best so far, early stopping
        ends training: ``patience`` validations without a new best, 0 for never)."""
        improved = self.best_metric is None or metric > self.best_metric
        if improved:
            self.best_metric, self.best_step = metric, self.step
        self.since_best = 0 if improved else self.since_best + 1
        return improved, bool(patience) and self.since_best >= patience


@dataclass
class TrainSummary:
    """What a training session ends with: the run's counters, and what stopped it."""

    steps: int = 0
    epochs: int = 0
    seconds: float = 0.0
    tgt_tokens: int = 0
    best_bleu: float | None = None
    best_step: int | None = None
    stopped_by: str = ""
    last_dev: dict[str, Any] = field(default_factory=dict)
    nonfinite_skipped: int = 0
    oom_skipped: int = 0
    resumed_from: int | None = None

    @classmethod
    def of(cls, state: TrainState, stopped_by: str, last_dev: dict[str, Any],
           resumed_from: int | None) -> "TrainSummary":
        return cls(steps=state.step, epochs=state.epoch, seconds=state.train_seconds,
                   tgt_tokens=state.tgt_tokens, best_bleu=state.best_metric,
                   best_step=state.best_step, stopped_by=stopped_by, last_dev=last_dev,
                   nonfinite_skipped=state.nonfinite, oom_skipped=state.oom,
                   resumed_from=resumed_from)

    @property
    def tokens_per_second(self) -> float:
        return self.tgt_tokens / self.seconds if self.seconds else 0.0


def prepare_run(recipe: Recipe, resume: bool = False, overwrite: bool = False,
                init_from: Path | None = None) -> None:
    """Decide what happens to an existing run folder; never overwrite a run silently."""
    if resume and (overwrite or init_from is not None):
        raise NmtError("--resume continues a run as it was; it cannot be combined with "
                       "--overwrite or --init-from")
    if init_from is not None and not Path(init_from).is_file():
        raise CheckpointError(f"{init_from}: checkpoint not found (--init-from takes a .pt file "
                              "written by nmt train, such as WORKDIR/checkpoints/best.pt)")
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


def check_encoded_by(manifest: dict[str, Any], tok: Tokenizers, recipe: Recipe) -> None:
    """The preprocessed data must have been encoded by the recipe's tokenizer."""
    data_sha, recipe_sha = manifest["tokenizer_sha256"], tok.sha256()
    if data_sha != recipe_sha:
        raise DataError(
            f"the preprocessed data was encoded with tokenizer sha256 src={data_sha['src']} "
            f"tgt={data_sha['tgt']} but the recipe's tokenizer has sha256 "
            f"src={recipe_sha['src']} tgt={recipe_sha['tgt']}; run 'nmt preprocess' again",
            data_dir(recipe) / "manifest.json")


def _same_tokenizer(payload: dict, tok: Tokenizers) -> bool:
    return payload["tokenizer"] == {"src": tok.src_bytes, "tgt": tok.tgt_bytes}


# Keys a resumed run may change: budgets, what observes it (logging, validation, checkpoints) and
# where it runs. The others define the model, tokenizer, epoch layout or optimisation, under which
# alone a saved batch position is valid. data is compared by content (data_identity).
RESUMABLE_CHANGES = (
    "name", "workdir", "data", "decode", "eval",
    "train.max_steps", "train.max_epochs", "train.max_time", "train.log_every",
    "train.valid_every", "train.valid_beam_size", "train.valid_max_sentences",
    "train.early_stopping_patience", "train.keep_last", "train.keep_best", "train.save_every",
    "train.tensorboard", "train.max_nonfinite", "train.threads", "train.device",
    "train.precision", "train.average_last",
)


def data_identity(manifest: dict[str, Any], recipe: Recipe) -> dict[str, Any]:
    """The input files' SHA-256 and pairs written, per split the run trains or validates on."""
    used = ("train", "dev") if recipe.data.dev is not None else ("train",)
    return {name: {"sha256": info["sha256"], "written": info["written"]}
            for name, info in manifest["splits"].items() if name in used}


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _may_change(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUMABLE_CHANGES)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def resume_changes(saved_recipe: dict[str, Any], recipe: Recipe,
                   saved_data: dict[str, Any] | None, data: dict[str, Any]) -> list[str]:
    """The settings that differ from the saved run and may not change on --resume, as ``key (old
    -> new)``; keys only one side knows, and data a checkpoint does not record, are not compared."""
    old, new = _flatten(saved_recipe), _flatten(to_dict(recipe))
    changed = [f"{key} ({_short(old[key])} -> {_short(new[key])})" for key in new
               if key in old and old[key] != new[key] and not _may_change(key)]
    if saved_data is not None:
        for split in sorted(set(saved_data) | set(data)):
            if saved_data.get(split) != data.get(split):
                what = ("other contents" if split in data and split in saved_data
                        else "added" if split in data else "removed")
                changed.append(f"data.{split} ({what})")
    return changed


def check_resumable(payload: dict, path: Path, recipe: Recipe, tok: Tokenizers,
                    manifest: dict[str, Any]) -> None:
    """--resume continues the same run: same tokenizer and data; only RESUMABLE_CHANGES differ."""
    # read through today's schema, so that a model key added since compares equal
    saved_model = to_dict(build(ModelConfig, payload["recipe"]["model"], prefix="model"))
    payload = {**payload, "recipe": {**payload["recipe"], "model": saved_model}}
    if not _same_tokenizer(payload, tok):
        raise CheckpointError(f"{path}: the run was trained with another tokenizer; --resume "
                              "needs the tokenizer it was trained with")
    changed = resume_changes(payload["recipe"], recipe, payload.get("data"),
                             data_identity(manifest, recipe))
    if changed:
        raise CheckpointError(f"{path}: --resume continues the run as it was saved, but these "
                              f"settings differ from it: {', '.join(changed)}; put them back, or "
                              "start a new run in another workdir (--init-from CKPT keeps the "
                              "weights)")


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
