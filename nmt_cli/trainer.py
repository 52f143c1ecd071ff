"""The training loop: token-batched teacher forcing, validation with BLEU, best/last checkpoints.

Steps count optimizer updates. ``max_steps``, ``max_epochs`` and ``max_time`` (minutes of wall
clock) each end training, whichever comes first. Tokens/s counts real target tokens (EOS included,
padding excluded) per second of training, validation time excluded.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nmt_cli.bitext import read_bitext
from nmt_cli.checkpoint import make_checkpoint, save_checkpoint
from nmt_cli.config import Recipe
from nmt_cli.data import ParallelData
from nmt_cli.errors import DataError, NmtError
from nmt_cli.files import atomic_write_text
from nmt_cli.inference import translate_lines
from nmt_cli.model import build_model, count_parameters
from nmt_cli.optim import LrSchedule, build_optimizer
from nmt_cli.preprocess import data_dir, load_manifest
from nmt_cli.recipes import write_resolved
from nmt_cli.runtime import pick_device, seed_everything
from nmt_cli.scoring import score_lines
from nmt_cli.tokenizer import PAD_ID, Tokenizers


def sequence_loss(logits: torch.Tensor, target: torch.Tensor,
                  label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed label-smoothed cross-entropy and summed plain NLL over non-padding positions.

    Same value as ``F.cross_entropy(..., label_smoothing=eps, ignore_index=PAD)`` summed, but with
    one log-softmax shared by both sums: ``(1 - eps) * nll + eps * mean_v(-log p_v)``.
    """
    flat_target = target.reshape(-1)
    keep = (flat_target != PAD_ID).to(logits.dtype if logits.is_floating_point() else torch.float)
    log_probs = torch.log_softmax(logits.reshape(-1, logits.size(-1)).float(), dim=-1)
    nll = -log_probs.gather(1, flat_target.unsqueeze(1)).squeeze(1) * keep
    if label_smoothing > 0:
        smooth = -log_probs.mean(dim=-1) * keep
        loss = ((1.0 - label_smoothing) * nll + label_smoothing * smooth).sum()
    else:
        loss = nll.sum()
    return loss, nll.detach().sum()


@dataclass
class TrainSummary:
    steps: int = 0
    epochs: int = 0
    seconds: float = 0.0
    tgt_tokens: int = 0
    best_bleu: float | None = None
    best_step: int | None = None
    stopped_by: str = ""
    last_dev: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.tgt_tokens / self.seconds if self.seconds else 0.0


class Trainer:
    def __init__(self, recipe: Recipe, device: str | None = None, console=None):
        self.recipe, self.cfg = recipe, recipe.train
        self.console = console
        self.workdir = recipe.workdir
        self.ckpt_dir = self.workdir / "checkpoints"
        self.device = pick_device(device or self.cfg.device)
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        seed_everything(self.cfg.seed)
        self.tok = Tokenizers.load(recipe)
        manifest = load_manifest(recipe)
        if manifest["tokenizer_sha256"] != self.tok.sha256():
            data_sha, recipe_sha = manifest["tokenizer_sha256"], self.tok.sha256()
            raise DataError(
                f"the preprocessed data was encoded with tokenizer sha256 src={data_sha['src']} "
                f"tgt={data_sha['tgt']} but the recipe's tokenizer has sha256 "
                f"src={recipe_sha['src']} tgt={recipe_sha['tgt']}; run 'nmt preprocess' again",
                data_dir(recipe) / "manifest.json")
        self.train_data = ParallelData(data_dir(recipe), "train", manifest["dtype"])
        if len(self.train_data) == 0:
            raise DataError("no training pairs survived preprocessing; check the filters",
                            data_dir(recipe) / "manifest.json")
        self.dev_data = (ParallelData(data_dir(recipe), "dev", manifest["dtype"])
                         if "dev" in manifest["splits"] else None)
        self.dev_lines = self._dev_lines()
        self.model = build_model(recipe.model, self.tok.src_vocab_size, self.tok.tgt_vocab_size,
                                 self.tok.joint).to(self.device)
        self.optimizer = build_optimizer(self.model.parameters(), self.cfg)
        self.schedule = LrSchedule(self.optimizer, self.cfg)
        self.rng = np.random.default_rng(self.cfg.seed)
        self.step = 0
        self.since_best = 0  # validations since the best one, for early stopping
        self.summary = TrainSummary()
        self.log_path = self.workdir / "metrics.jsonl"

    def _dev_lines(self) -> tuple[list[str], list[str]]:
        dev = self.recipe.data.dev
        if dev is None:
            return [], []
        pairs = list(read_bitext(dev.src, dev.tgt))
        if self.cfg.valid_max_sentences:
            pairs = pairs[: self.cfg.valid_max_sentences]
        return [s for s, _ in pairs], [t for _, t in pairs]

    # -- logging ---------------------------------------------------------------------------

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def _say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text)

    # -- validation and checkpoints --------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        self.model.eval()
        result: dict[str, Any] = {"step": self.step}
        if self.dev_data is not None and len(self.dev_data):
            nll = tokens = 0.0
            for idx in self.dev_data.batches(self.cfg.batch_tokens):
                batch = self.dev_data.collate(idx).to(self.device)
                logits = self.model(batch.src, batch.src_lengths, batch.tgt_in)
                nll += float(sequence_loss(logits, batch.tgt_out, 0.0)[1])
                tokens += batch.n_tgt_tokens
            result["dev_loss"] = nll / tokens
            result["dev_ppl"] = math.exp(min(result["dev_loss"], 50.0))
        src, ref = self.dev_lines
        if src:
            dec = replace(self.recipe.decode, beam_size=self.cfg.valid_beam_size)
            hyps = [t.text for t in translate_lines(self.model, self.tok, src, dec, self.device)]
            result["dev_bleu"] = score_lines(hyps, [ref], ["bleu"],
                                             self.recipe.eval.tokenize)[0].score
        self.model.train()
        return result

    def save(self, name: str, dev: dict[str, Any]) -> Path:
        path = self.ckpt_dir / name
        payload = make_checkpoint(self.model, self.recipe, self.tok, step=self.step,
                                  epoch=self.summary.epochs, dev=dev,
                                  optimizer=self.optimizer.state_dict(),
                                  schedule=self.schedule.state_dict())
        save_checkpoint(path, payload)
        return path

    def _after_validation(self, dev: dict[str, Any]) -> bool:
        """Save last/best; return True when early stopping says to stop."""
        self.summary.last_dev = dev
        self._log({"event": "valid", **dev, "lr": self.schedule.lr})
        metric = dev.get("dev_bleu", -dev.get("dev_loss", 0.0))
        self.schedule.on_validation(metric)
        self.save("last.pt", dev)
        improved = self.summary.best_bleu is None or metric > self.summary.best_bleu
        if improved:
            self.summary.best_bleu, self.summary.best_step = metric, self.step
            shutil.copyfile(self.ckpt_dir / "last.pt", self.ckpt_dir / "best.pt.tmp")
            (self.ckpt_dir / "best.pt.tmp").replace(self.ckpt_dir / "best.pt")
        parts = [f"step {self.step}"]
        if "dev_loss" in dev:
            parts.append(f"dev loss {dev['dev_loss']:.3f} ppl {dev['dev_ppl']:.2f}")
        if "dev_bleu" in dev:
            parts.append(f"BLEU {dev['dev_bleu']:.2f}")
        self._say("[bold]valid[/] " + ", ".join(parts) + (" [green](best)[/]" if improved else ""))
        self.since_best = 0 if improved else self.since_best + 1
        patience = self.cfg.early_stopping_patience
        return bool(patience) and self.since_best >= patience

    # -- the loop ---------------------------------------------------------------------------

    def train(self, progress=None) -> TrainSummary:
        cfg = self.cfg
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        write_resolved(self.recipe, self.workdir)
        self.log_path.unlink(missing_ok=True)
        self._say(f"training on {self.device}: {count_parameters(self.model):,} parameters, "
                  f"{len(self.train_data):,} pairs")
        self.model.train()
        start = time.time()
        train_seconds = 0.0
        window_tokens, window_loss, window_nll, window_start = 0, 0.0, 0.0, time.time()
        stop = ""
        if progress is not None:
            progress.start(cfg.max_steps)
        while not stop:
            batches = self.train_data.batches(cfg.batch_tokens, self.rng)
            if self.summary.epochs == 0:
                self._log({"event": "start", "pairs": len(self.train_data),
                           "batches_per_epoch": len(batches),
                           "padding_fraction": self.train_data.padding_fraction(batches)})
            for i in range(0, len(batches), cfg.accum_steps):
                t0 = time.time()
                lr = self.schedule.step(self.step + 1)
                self.optimizer.zero_grad(set_to_none=True)
                group = batches[i:i + cfg.accum_steps]
                n_tokens = sum(int(self.train_data.tgt.lengths[idx].sum()) + len(idx)
                               for idx in group)
                for idx in group:
                    batch = self.train_data.collate(idx).to(self.device)
                    logits = self.model(batch.src, batch.src_lengths, batch.tgt_in)
                    loss, nll = sequence_loss(logits, batch.tgt_out, cfg.label_smoothing)
                    (loss / n_tokens).backward()
                    window_loss += loss.item()
                    window_nll += nll.item()
                if cfg.clip_norm > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_norm)
                self.optimizer.step()
                self.step += 1
                window_tokens += n_tokens
                self.summary.tgt_tokens += n_tokens
                train_seconds += time.time() - t0
                if self.step % cfg.log_every == 0:
                    elapsed = max(1e-9, time.time() - window_start)
                    record = {"event": "train", "step": self.step, "epoch": self.summary.epochs,
                              "loss": window_loss / window_tokens,
                              "nll": window_nll / window_tokens,
                              "tok_per_s": window_tokens / elapsed, "lr": lr}
                    self._log(record)
                    if progress is not None:
                        progress.update(self.step, record)
                    window_tokens, window_loss, window_nll = 0, 0.0, 0.0
                    window_start = time.time()
                elif progress is not None:
                    progress.update(self.step, None)
                if self.step % cfg.valid_every == 0:
                    if self._after_validation(self.validate()):
                        stop = "early stopping"
                    window_start = time.time()
                if not stop and cfg.max_steps and self.step >= cfg.max_steps:
                    stop = "max_steps"
                if not stop and cfg.max_time and time.time() - start >= cfg.max_time * 60:
                    stop = "max_time"
                if stop:
                    break
            else:
                self.summary.epochs += 1
                if self.summary.epochs >= cfg.max_epochs:
                    stop = "max_epochs"
        if progress is not None:
            progress.stop()
        if self.step % cfg.valid_every != 0 or self.step == 0:
            self._after_validation(self.validate())
        self.summary.steps = self.step
        self.summary.seconds = train_seconds
        self.summary.stopped_by = stop
        summary = {"event": "end", "steps": self.step, "epochs": self.summary.epochs,
                   "train_seconds": round(train_seconds, 2),
                   "wall_seconds": round(time.time() - start, 2),
                   "tgt_tokens": self.summary.tgt_tokens,
                   "tok_per_s": round(self.summary.tokens_per_second, 1),
                   "best_dev_bleu": self.summary.best_bleu, "best_step": self.summary.best_step,
                   "stopped_by": stop}
        self._log(summary)
        atomic_write_text(self.workdir / "train_summary.json", json.dumps(summary, indent=2) + "\n")
        return self.summary
