"""The training loop: token-batched teacher forcing, validation with BLEU, resumable checkpoints.

Steps count optimizer updates; a skipped update (non-finite loss or gradient, CUDA out-of-memory)
is not a step. ``max_steps``, ``max_epochs`` and ``max_time`` end training, whichever comes first,
and all three count across ``--resume``: the step and epoch counters and the accumulated training
wall time (``max_time``, minutes, validation and checkpointing included) are stored in every
checkpoint. Tokens/s counts real target tokens (EOS included, padding excluded) per second of
training, validation time excluded.

The batch order of epoch ``e`` is a pure function of ``(train.seed, e)``, so a checkpoint only needs
the epoch and the index of the next batch to continue exactly where it left off.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nmt_cli import faults
from nmt_cli.checkpoint import (CheckpointStore, library_versions, make_checkpoint, rng_state,
                                set_rng_state)
from nmt_cli.config import Recipe, check_training, with_overrides
from nmt_cli.data import ParallelData
from nmt_cli.decoding.inference import translate_lines
from nmt_cli.errors import CheckpointError, DataError, NmtError
from nmt_cli.files import atomic_write_text
from nmt_cli.model import build_model, count_parameters
from nmt_cli.recipes import write_resolved
from nmt_cli.runtime import (autocast, free_device_memory, grad_scaler, resolve_precision,
                             pick_device, seed_everything)
from nmt_cli.scoring import score_lines
from nmt_cli.text.bitext import read_split
from nmt_cli.text.preprocess import data_dir, load_manifest
from nmt_cli.text.tokenizer import Tokenizers
from nmt_cli.training import distributed as dist
from nmt_cli.training.loss import sequence_loss
from nmt_cli.training.metrics import MetricsLog, write_environment
from nmt_cli.training.optim import LrSchedule, build_optimizer
from nmt_cli.training.runs import TrainState, check_resumable, data_identity, load_init_weights


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
    nonfinite_skipped: int = 0
    oom_skipped: int = 0
    resumed_from: int | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.tgt_tokens / self.seconds if self.seconds else 0.0


def epoch_batches(data: ParallelData, batch_tokens: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The batch order of one epoch, a pure function of (seed, epoch)."""
    return data.batches(batch_tokens, np.random.default_rng([seed, epoch]))


class Trainer:
    def __init__(self, recipe: Recipe, device: str | None = None, console=None,
                 resume: bool = False, init_from: Path | None = None):
        check_training(recipe)
        self.recipe, self.cfg = recipe, recipe.train
        self.console = console
        self.workdir = recipe.workdir
        self.ckpt_dir = self.workdir / "checkpoints"
        self.device = pick_device(device or self.cfg.device)
        self.dist, self.device = dist.setup(self.device)
        # train.precision as run here: auto becomes bf16 or fp32 for this device (and is logged)
        self.precision = resolve_precision(self.cfg.precision, self.device, "train.precision")
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
        self.manifest = manifest
        self.train_data = ParallelData(data_dir(recipe), "train", manifest["dtype"])
        if len(self.train_data) == 0:
            raise DataError("no training pairs survived preprocessing; check the filters",
                            data_dir(recipe) / "manifest.json")
        # Without data.dev there is no validation, and best.pt is always the newest checkpoint.
        self.has_dev = recipe.data.dev is not None
        self.dev_data = (ParallelData(data_dir(recipe), "dev", manifest["dtype"])
                         if self.has_dev and "dev" in manifest["splits"] else None)
        self.dev_lines = self._dev_lines()
        if self.has_dev and not self.dev_lines[0]:
            raise DataError("the dev set is empty; give it lines, or leave data.dev out to train "
                            "without validation", recipe.data.dev.sources()[0].files()[0])
        self.model = build_model(recipe.model, self.tok.src_vocab_size, self.tok.tgt_vocab_size,
                                 self.tok.joint).to(self.device)
        self.init_from = init_from
        if init_from is not None and self.dist.is_main:  # DDP copies rank 0's weights to all
            load_init_weights(self.model, self.tok, init_from)
        self.optimizer = build_optimizer(self.model.parameters(), self.cfg)
        self.schedule = LrSchedule(self.optimizer, self.cfg)
        self.scaler = grad_scaler(self.device, self.precision)
        self.state = TrainState(world_size=self.dist.world_size)
        self.store = CheckpointStore(self.ckpt_dir, self.cfg.keep_last, self.cfg.keep_best)
        self.metrics = MetricsLog(self.workdir, self.dist.is_main, self.cfg.tensorboard)
        self.summary = TrainSummary()
        self.last_dev: dict[str, Any] = {}
        self._saved_step: int | None = None
        self._signal: int | None = None
        if self.dist.enabled:
            torch.manual_seed(self.cfg.seed + self.dist.rank)  # own dropout masks per rank
        if resume:
            self._resume()
        self.ddp = None
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)

    def _dev_lines(self) -> tuple[list[str], list[str]]:
        dev = self.recipe.data.dev
        if dev is None:
            return [], []
        pairs = list(read_split(dev))  # files or TSV, one corpus or several
        if self.cfg.valid_max_sentences:
            pairs = pairs[: self.cfg.valid_max_sentences]
        return [s for s, _ in pairs], [t for _, t in pairs]

    # -- starting points --------------------------------------------------------------------

    def _resume(self) -> None:
        # Rank 0 reads the checkpoint and sends it to the others, whose nodes may not share its disk.
        found = self.store.latest() if self.dist.is_main else None
        if self.dist.is_main and found is None:
            raise CheckpointError(f"{self.ckpt_dir}: no checkpoint to resume from; start the run "
                                  "without --resume")
        path, payload = dist.broadcast_object(found)
        check_resumable(payload, path, self.recipe, self.tok, self.manifest)
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.schedule.load_state_dict(payload["schedule"])
        if payload.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(payload["scaler"])
        self.state = TrainState.restore(payload["train_state"], self.dist.world_size)
        rngs = payload["rng"]
        set_rng_state(rngs[self.dist.rank] if len(rngs) == self.dist.world_size else rngs[0])
        self.last_dev = dict(payload.get("dev") or {})
        self._saved_step = self.summary.resumed_from = self.state.step
        self._say(f"resuming from {path.name}: step {self.state.step}, epoch "
                  f"{self.state.epoch}, batch {self.state.batch}")

    # -- logging ---------------------------------------------------------------------------

    def _log(self, record: dict[str, Any]) -> None:
        self.metrics.write(record)

    def _say(self, text: str) -> None:
        if self.console is not None and self.dist.is_main:
            self.console.print(text)

    def _on_signal(self, signum, frame) -> None:
        if self._signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._signal = signum

    # -- validation and checkpoints --------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        self.model.eval()
        result: dict[str, Any] = {"step": self.state.step}
        if self.dev_data is not None and len(self.dev_data):
            nll = tokens = 0.0
            for idx in self.dev_data.batches(self.cfg.batch_tokens):
                batch = self.dev_data.collate(idx).to(self.device)
                with autocast(self.device, self.precision):
                    logits = self.model(batch.src, batch.src_lengths, batch.tgt_in)
                nll += float(sequence_loss(logits, batch.tgt_out, 0.0)[1])
                tokens += batch.n_tgt_tokens
            result["dev_loss"] = nll / tokens
            result["dev_ppl"] = math.exp(min(result["dev_loss"], 50.0))
        src, ref = self.dev_lines
        if src:
            dec = with_overrides(self.recipe.decode, {"beam_size": self.cfg.valid_beam_size,
                                                      "n_best": 1}, "decode")
            hyps = [t.text for t in translate_lines(self.model, self.tok, src, dec,
                                                    normalize=self.recipe.preprocess.normalize,
                                                    device=self.device)]
            result["dev_bleu"] = score_lines(hyps, [ref], ["bleu"],
                                             self.recipe.eval.tokenize)[0].score
        self.model.train()
        return result

    def save(self, dev: dict[str, Any] | None = None, is_best: bool = False) -> None:
        """Every rank calls this (RNG states are gathered); only rank 0 writes. Without a dev set
        every checkpoint is also best.pt."""
        is_best = is_best or not self.has_dev
        rngs = dist.all_gather_objects(rng_state())
        if self.dist.is_main:
            st = self.state
            metric = None if dev is None else dev.get("dev_bleu", -dev.get("dev_loss", 0.0))
            payload = make_checkpoint(self.model, self.recipe, self.tok, step=st.step,
                                      epoch=st.epoch, dev=dev or self.last_dev,
                                      optimizer=self.optimizer.state_dict(),
                                      schedule=self.schedule.state_dict(),
                                      scaler=self.scaler.state_dict(),
                                      train_state=asdict(st), rng=rngs,
                                      data=data_identity(self.manifest, self.recipe))
            self.store.save(payload, st.step, metric, is_best)
        self._saved_step = self.state.step
        dist.barrier()

    def _validate_and_save(self) -> bool:
        """Validate on rank 0, save, and return True (on every rank) when early stopping says stop.
        Without a dev set it only saves."""
        if not self.has_dev:
            self.save()
            return False
        st, stop, dev = self.state, False, None
        improved = False
        if self.dist.is_main:
            dev = self.validate()
            self.last_dev = dev
            self._log({"event": "valid", **dev, "lr": self.schedule.lr})
            metric = dev.get("dev_bleu", -dev.get("dev_loss", 0.0))
            self.schedule.on_validation(metric)
            improved = st.best_metric is None or metric > st.best_metric
            if improved:
                st.best_metric, st.best_step = metric, st.step
            st.since_best = 0 if improved else st.since_best + 1
            patience = self.cfg.early_stopping_patience
            stop = bool(patience) and st.since_best >= patience
            parts = [f"step {st.step}"]
            if "dev_loss" in dev:
                parts.append(f"dev loss {dev['dev_loss']:.3f} ppl {dev['dev_ppl']:.2f}")
            if "dev_bleu" in dev:
                parts.append(f"BLEU {dev['dev_bleu']:.2f}")
            self._say("[bold]valid[/] " + ", ".join(parts) + (" [green](best)[/]" if improved else ""))
        if self.dist.enabled:  # every rank follows rank 0's result, schedule and decisions
            dev, improved, stop, sched = dist.broadcast_object(
                (dev, improved, stop, self.schedule.state_dict()))
            self.last_dev = dev
            self.schedule.load_state_dict(sched)
        self.save(dev, improved)
        return stop

    # -- one update -------------------------------------------------------------------------

    def _update(self, group: list[np.ndarray]) -> dict[str, Any]:
        """Forward/backward over ``group`` (gradient accumulation), then one optimizer step.

        Each rank's loss is scaled by ``world_size / total_tokens`` so that DDP's gradient average
        equals the single-process gradient of the loss summed over all ranks' tokens divided by
        their total. Returns the all-reduced statistics and whether the update was applied.
        """
        cfg, st = self.cfg, self.state
        self.optimizer.zero_grad(set_to_none=True)
        local_tokens = sum(int(self.train_data.tgt.lengths[idx].sum()) + len(idx) for idx in group)
        # the ranks' clocks averaged, so that a schedule that follows max_time is the same on all
        (total_tokens, seconds) = dist.all_reduce_sum(
            [float(local_tokens), self._base_seconds + self._session_seconds()], self.device)
        lr = self.schedule.step(st.step + 1, seconds / self.dist.world_size)
        scale = self.dist.world_size / total_tokens
        model = self.ddp if self.ddp is not None else self.model
        loss_sum = nll_sum = 0.0
        for j, idx in enumerate(group):
            batch = self.train_data.collate(idx)
            shape = (tuple(batch.src.shape), tuple(batch.tgt_in.shape))
            sync = (self.ddp.no_sync() if self.ddp is not None and j < len(group) - 1
                    else nullcontext())
            try:
                batch = batch.to(self.device)
                with sync:
                    with autocast(self.device, self.precision):
                        logits = model(batch.src, batch.src_lengths, batch.tgt_in)
                    loss, nll = sequence_loss(logits, batch.tgt_out, cfg.label_smoothing)
                    self.scaler.scale(loss * scale).backward()
            except torch.cuda.OutOfMemoryError:
                logits = loss = nll = batch = None  # noqa: F841 - drop the graph before freeing
                return self._skip_oom(shape, lr)
            loss_sum += loss.item()
            nll_sum += nll.item()
        # st.seconds is brought up to date after every update; count it once, plus this update
        time_up = bool(cfg.max_time) and self._base_seconds + self._session_seconds() \
            >= cfg.max_time * 60
        loss_sum, nll_sum, signalled, out_of_time = dist.all_reduce_sum(
            [loss_sum, nll_sum, float(self._signal is not None), float(time_up)], self.device)
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                              cfg.clip_norm if cfg.clip_norm > 0 else math.inf)
        applied = math.isfinite(loss_sum) and bool(torch.isfinite(norm))
        if applied:
            self.scaler.step(self.optimizer)
        self.scaler.update()
        return {"applied": applied, "loss": loss_sum, "nll": nll_sum, "tokens": int(total_tokens),
                "lr": lr, "signalled": signalled > 0, "time_up": out_of_time > 0}

    def _skip_oom(self, shape: tuple, lr: float) -> dict[str, Any]:
        self.optimizer.zero_grad(set_to_none=True)
        free_device_memory(self.device)
        if self.dist.enabled:  # the other ranks are already waiting in the gradient all-reduce
            raise NmtError(f"CUDA out of memory on rank {self.dist.rank} with a batch of source "
                           f"{shape[0]} / target {shape[1]} tokens; a batch cannot be skipped on "
                           "one rank alone, so lower train.batch_tokens (or raise accum_steps)")
        self.state.oom += 1
        self._log({"event": "oom", "step": self.state.step, "src_shape": list(shape[0]),
                   "tgt_shape": list(shape[1])})
        self._say(f"[yellow]CUDA out of memory[/] on a batch of source {shape[0]} / target "
                  f"{shape[1]}; skipped it ({self.state.oom} so far)")
        return {"applied": False, "oom": True, "loss": 0.0, "nll": 0.0, "tokens": 0, "lr": lr,
                "signalled": self._signal is not None, "time_up": False}

    def _session_seconds(self) -> float:
        return time.time() - self._session_start

    # -- the loop ---------------------------------------------------------------------------

    def _prepare_run_dir(self) -> None:
        resumed = self.summary.resumed_from
        if self.dist.is_main:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            write_resolved(self.recipe, self.workdir)
            session = {"resumed_from_step": resumed,
                       "init_from": str(self.init_from) if self.init_from else None,
                       "device": str(self.device), "world_size": self.dist.world_size,
                       "precision": self.precision, "precision_setting": self.cfg.precision,
                       "seed": self.cfg.seed}
            write_environment(self.workdir, library_versions(), self.manifest, session)
            self.metrics.start(resumed)
            if resumed is not None:
                self._log({"event": "resume", "step": resumed, "epoch": self.state.epoch,
                           "batch": self.state.batch})
        dist.barrier()

    def train(self, progress=None) -> TrainSummary:
        self._prepare_run_dir()
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            return self._train(progress)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.metrics.close()

    def _train(self, progress) -> TrainSummary:
        cfg, st = self.cfg, self.state
        self._say(f"training on {self.device}"
                  + (f" x {self.dist.world_size} ranks" if self.dist.enabled else "")
                  + f": {count_parameters(self.model):,} parameters, "
                  f"{len(self.train_data):,} pairs, precision {self.precision}"
                  + (" (auto)" if cfg.precision == "auto" else ""))
        if not self.has_dev:
            self._say("[yellow]no dev set[/] (data.dev): no validation; best.pt is always the "
                      "newest checkpoint")
        self.model.train()
        self._session_start = time.time()
        base_seconds = self._base_seconds = st.seconds
        window = {"tokens": 0, "loss": 0.0, "nll": 0.0, "start": time.time()}
        stop = ""
        if st.step >= cfg.max_steps > 0:
            stop = "max_steps"
        elif st.epoch >= cfg.max_epochs:
            stop = "max_epochs"
        if progress is not None and self.dist.is_main:
            progress.start(cfg.max_steps)
            progress.update(st.step, None)
        while not stop:
            every = epoch_batches(self.train_data, cfg.batch_tokens, cfg.seed, st.epoch)
            if st.epoch == 0 and st.batch == 0 and self.dist.is_main:
                self._log({"event": "start", "step": st.step, "pairs": len(self.train_data),
                           "batches_per_epoch": len(every), "world_size": self.dist.world_size,
                           "padding_fraction": self.train_data.padding_fraction(every)})
            batches = dist.rank_share(every, self.dist)
            groups = [batches[i:i + cfg.accum_steps] for i in range(0, len(batches), cfg.accum_steps)]
            while st.batch < len(groups) and not stop:
                t0 = time.time()
                out = self._update(groups[st.batch])
                st.batch += 1
                st.train_seconds += time.time() - t0
                st.seconds = base_seconds + self._session_seconds()
                if out["applied"]:
                    st.step += 1
                    st.nonfinite_in_row = 0
                    st.tgt_tokens += out["tokens"]
                    window["tokens"] += out["tokens"]
                    window["loss"] += out["loss"]
                    window["nll"] += out["nll"]
                elif not out.get("oom"):
                    self._nonfinite(out)
                if out["applied"] and st.step % cfg.log_every == 0:
                    self._log_window(window, out["lr"], progress)
                elif progress is not None and self.dist.is_main:
                    progress.update(st.step, None)
                faults.point("train-update", step=st.step)
                if out["applied"] and st.step % cfg.valid_every == 0:
                    if self._validate_and_save():
                        stop = "early stopping"
                    window["start"] = time.time()
                elif out["applied"] and cfg.save_every and st.step % cfg.save_every == 0:
                    self.save()
                if not stop and cfg.max_steps and st.step >= cfg.max_steps:
                    stop = "max_steps"
                if not stop and out["time_up"]:
                    stop = "max_time"
                if not stop and out["signalled"]:
                    stop = "interrupted"
            if st.batch >= len(groups):
                st.epoch, st.batch = st.epoch + 1, 0
                if not stop and st.epoch >= cfg.max_epochs:
                    stop = "max_epochs"
        if progress is not None and self.dist.is_main:
            progress.stop()
        st.seconds = base_seconds + self._session_seconds()
        if stop == "interrupted":
            self.save()
            self._say(f"interrupted at step {st.step}: checkpoint saved; continue with "
                      "'nmt train RECIPE --resume' (same --set options)")
        elif st.step != (self.last_dev.get("step") if self.has_dev else self._saved_step):
            self._validate_and_save()
        if cfg.average_last and stop != "interrupted" and self.dist.is_main:
            self._average_last(cfg.average_last)
        return self._finish(stop)

    def _average_last(self, n: int) -> None:
        """Average the newest ``n`` step checkpoints into ``checkpoints/averaged.pt``, validate
        it, and log its dev scores (the model is left as training ended)."""
        from nmt_cli.training.average import average_to_file

        paths = sorted(self.ckpt_dir.glob("ckpt-*.pt"))[-n:]  # zero-padded step numbers
        payload = average_to_file(paths, self.ckpt_dir / "averaged.pt")
        trained = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(payload["model"])
        dev = self.validate()
        self.model.load_state_dict(trained)
        self._log({"event": "averaged", "checkpoints": [p.name for p in paths], **dev})
        scores = ", ".join(f"{k} {v:.3f}" for k, v in dev.items() if k.startswith("dev_"))
        self._say(f"averaged the last {len(paths)} checkpoints into averaged.pt: {scores}")

    def _nonfinite(self, out: dict[str, Any]) -> None:
        st = self.state
        st.nonfinite += 1
        st.nonfinite_in_row += 1
        self._log({"event": "nonfinite", "step": st.step, "loss": out["loss"]
                   if math.isfinite(out["loss"]) else str(out["loss"])})
        if st.nonfinite_in_row >= self.cfg.max_nonfinite:
            raise NmtError(f"training stopped at step {st.step}: {st.nonfinite_in_row} updates in a "
                           "row had a non-finite loss or gradient (train.max_nonfinite); lower "
                           "train.learning_rate, keep train.clip_norm on, or use bf16 instead of "
                           "fp16. The last good checkpoint is in " + str(self.ckpt_dir))

    def _log_window(self, window: dict[str, Any], lr: float, progress) -> None:
        elapsed = max(1e-9, time.time() - window["start"])
        tokens = max(1, window["tokens"])
        record = {"event": "train", "step": self.state.step, "epoch": self.state.epoch,
                  "loss": window["loss"] / tokens, "nll": window["nll"] / tokens,
                  "tok_per_s": window["tokens"] / elapsed, "lr": lr}
        self._log(record)
        if progress is not None and self.dist.is_main:
            progress.update(self.state.step, record)
        window.update(tokens=0, loss=0.0, nll=0.0, start=time.time())

    def _finish(self, stop: str) -> TrainSummary:
        st, s = self.state, self.summary
        s.steps, s.epochs, s.seconds = st.step, st.epoch, st.train_seconds
        s.tgt_tokens, s.best_bleu, s.best_step = st.tgt_tokens, st.best_metric, st.best_step
        s.stopped_by, s.last_dev = stop, self.last_dev
        s.nonfinite_skipped, s.oom_skipped = st.nonfinite, st.oom
        record = {"event": "end", "step": st.step, "epochs": st.epoch,
                  "train_seconds": round(st.train_seconds, 2), "wall_seconds": round(st.seconds, 2),
                  "tgt_tokens": st.tgt_tokens, "tok_per_s": round(s.tokens_per_second, 1),
                  "best_dev_bleu": st.best_metric, "best_step": st.best_step,
                  "nonfinite_skipped": st.nonfinite, "oom_skipped": st.oom,
                  "resumed_from": s.resumed_from, "world_size": self.dist.world_size,
                  "stopped_by": stop}
        if self.dist.is_main:
            self._log(record)
            summary = {("steps" if k == "step" else k): v for k, v in record.items()}
            atomic_write_text(self.workdir / "train_summary.json",
                              json.dumps(summary, indent=2) + "\n")
        return s

