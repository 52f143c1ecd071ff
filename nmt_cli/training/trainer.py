"""The training loop: when to log, validate, save and stop. Steps count applied updates; the limits
(``max_time``: wall minutes, validation included) count across ``--resume``, since checkpoints hold
the counters and next batch and an epoch's batch order depends on ``(seed, epoch)`` only."""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nmt_cli import faults
from nmt_cli.checkpoint import (CheckpointStore, library_versions, make_checkpoint, rng_state,
                                set_rng_state, step_files)
from nmt_cli.config import Recipe, check_training
from nmt_cli.data import ParallelData
from nmt_cli.errors import CheckpointError, DataError, NmtError
from nmt_cli.files import atomic_write_text
from nmt_cli.model import build_model, count_parameters
from nmt_cli.recipes import write_resolved
from nmt_cli.runtime import grad_scaler, pick_device, resolve_precision, seed_everything
from nmt_cli.text.preprocess import data_dir, load_manifest
from nmt_cli.text.tokenizer import Tokenizers
from nmt_cli.training import distributed as dist
from nmt_cli.training.ema import Ema
from nmt_cli.training.metrics import MetricsLog, TrainWindow, write_environment
from nmt_cli.training.optim import LrSchedule, build_optimizer
from nmt_cli.training.runs import (TrainState, TrainSummary, check_encoded_by, check_resumable,
                                  data_identity, load_init_weights)
from nmt_cli.training.update import Updater, UpdateResult
from nmt_cli.training.validation import DevSet, describe, dev_metric


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
        self._set_up_device(device)
        self._load_data()
        self._build_model(init_from)
        self.state = TrainState(world_size=self.dist.world_size)
        self.store = CheckpointStore(self.ckpt_dir, self.cfg.keep_last, self.cfg.keep_best)
        self.metrics = MetricsLog(self.workdir, self.dist.is_main, self.cfg.tensorboard)
        self.resumed_from: int | None = None
        self.last_dev: dict[str, Any] = {}
        self._saved_step: int | None = None
        self._signal: int | None = None
        if self.dist.enabled:
            torch.manual_seed(self.cfg.seed + self.dist.rank)  # own dropout masks per rank
        if resume:
            self._resume()
        self.update = Updater(self.model, self.optimizer, self.schedule, self.scaler,
                              self.train_data, self.cfg, self.device, self.precision, self.dist,
                              seconds=self._seconds, signalled=lambda: self._signal is not None)

    def _set_up_device(self, device: str | None) -> None:
        """The device (this rank's under torchrun), precision, threads and seeds."""
        self.device = pick_device(device or self.cfg.device)
        self.dist, self.device = dist.setup(self.device)
        self.precision = resolve_precision(self.cfg.precision, self.device, "train.precision")
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        seed_everything(self.cfg.seed)

    def _load_data(self) -> None:
        """The tokenizers, the preprocessed data they must have encoded, and the dev set."""
        recipe = self.recipe
        self.tok = Tokenizers.load(recipe)
        self.manifest = load_manifest(recipe)
        check_encoded_by(self.manifest, self.tok, recipe)
        self.train_data = ParallelData(data_dir(recipe), "train", self.manifest["dtype"])
        if len(self.train_data) == 0:
            raise DataError("no training pairs survived preprocessing; check the filters",
                            data_dir(recipe) / "manifest.json")
        self.dev = DevSet(recipe, self.manifest, self.device, self.precision)

    def _build_model(self, init_from: Path | None) -> None:
        """The model (``init_from``'s weights when given), optimizer, schedule and grad scaler."""
        self.model = build_model(self.recipe.model, self.tok.src_vocab_size,
                                 self.tok.tgt_vocab_size, self.tok.joint).to(self.device)
        self.init_from = init_from
        if init_from is not None and self.dist.is_main:  # DDP copies rank 0's weights to all
            load_init_weights(self.model, self.tok, init_from)
        # the average starts from the initial (or --init-from) weights
        self.ema = Ema(self.model, self.cfg.ema_decay) if self.cfg.ema_decay > 0 else None
        self.optimizer = build_optimizer(self.model.parameters(), self.cfg)
        self.schedule = LrSchedule(self.optimizer, self.cfg)
        self.scaler = grad_scaler(self.device, self.precision)

    def _resume(self) -> None:
        # Rank 0 reads the checkpoint and sends it on: other nodes may not share its disk.
        found = self.store.latest() if self.dist.is_main else None
        if self.dist.is_main and found is None:
            raise CheckpointError(f"{self.ckpt_dir}: no checkpoint to resume from; start the run "
                                  "without --resume")
        path, payload = dist.broadcast_object(found)
        check_resumable(payload, path, self.recipe, self.tok, self.manifest)
        # with an average, "model" holds it and "train_model" the training weights
        self.model.load_state_dict(payload.get("train_model", payload["model"]))
        if self.ema is not None:
            self.ema.load(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.schedule.load_state_dict(payload["schedule"])
        if payload.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(payload["scaler"])
        self.state = TrainState.restore(payload["train_state"], self.dist.world_size)
        rngs = payload["rng"]
        set_rng_state(rngs[self.dist.rank] if len(rngs) == self.dist.world_size else rngs[0])
        self.last_dev = dict(payload.get("dev") or {})
        self._saved_step = self.resumed_from = self.state.step
        self._say(f"resuming from {path.name}: step {self.state.step}, epoch "
                  f"{self.state.epoch}, batch {self.state.batch}")

    def _log(self, record: dict[str, Any]) -> None:
        self.metrics.write(record)

    def _say(self, text: str) -> None:
        if self.console is not None and self.dist.is_main:
            self.console.print(text)

    def _on_signal(self, signum, frame) -> None:
        if self._signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._signal = signum

    def validate(self, average: bool = True) -> dict[str, Any]:
        """The dev scores (``DevSet.score``) of the weights' moving average when there is one and
        ``average``, else of the model as it stands."""
        self.model.eval()
        if self.ema is not None and average:
            with self.ema.applied(self.model):
                result = self.dev.score(self.model, self.tok, self.state.step)
        else:
            result = self.dev.score(self.model, self.tok, self.state.step)
        self.model.train()
        return result

    def save(self, dev: dict[str, Any] | None = None, is_best: bool = False) -> None:
        """Every rank calls this (their RNG states are gathered); only rank 0 writes."""
        is_best = is_best or not self.dev.enabled
        rngs = dist.all_gather_objects(rng_state())
        if self.dist.is_main:
            st = self.state
            metric = None if dev is None else dev_metric(dev)
            extra = {} if self.ema is None else {
                "weights": self.ema.weights(self.model),
                "train_model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()}}
            payload = make_checkpoint(self.model, self.recipe, self.tok, **extra, step=st.step,
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
        """Validate on rank 0 and save; True on every rank when early stopping says stop."""
        if not self.dev.enabled:
            self.save()
            return False
        dev, improved, stop = None, False, False
        if self.dist.is_main:
            dev = self.last_dev = self.validate()
            self._log({"event": "valid", **dev, "lr": self.schedule.lr})
            metric = dev_metric(dev)
            self.schedule.on_validation(metric)
            improved, stop = self.state.record_validation(metric, self.cfg.early_stopping_patience)
            self._say(describe(dev, improved))
        if self.dist.enabled:  # every rank follows rank 0's result, schedule and decisions
            dev, improved, stop, sched = dist.broadcast_object(
                (dev, improved, stop, self.schedule.state_dict()))
            self.last_dev = dev
            self.schedule.load_state_dict(sched)
        self.save(dev, improved)
        return stop

    def _average_last(self, n: int) -> None:
        """Average the newest ``n`` step checkpoints into ``averaged.pt`` and log its dev scores."""
        from nmt_cli.training.average import average_to_file

        paths = step_files(self.ckpt_dir)[-n:]
        payload = average_to_file(paths, self.ckpt_dir / "averaged.pt")
        trained = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(payload["model"])
        dev = self.validate(average=False)
        self.model.load_state_dict(trained)
        self._log({"event": "averaged", "checkpoints": [p.name for p in paths], **dev})
        scores = ", ".join(f"{k} {v:.3f}" for k, v in dev.items() if k.startswith("dev_"))
        self._say(f"averaged the last {len(paths)} checkpoints into averaged.pt: {scores}")

    def _seconds(self) -> float:
        """Training wall time of the whole run so far, resumed sessions included."""
        return self._base_seconds + (time.time() - self._session_start)

    def _count_oom(self, shape: tuple) -> None:
        self.state.oom += 1
        self._log({"event": "oom", "step": self.state.step, "src_shape": list(shape[0]),
                   "tgt_shape": list(shape[1])})
        self._say(f"[yellow]CUDA out of memory[/] on a batch of source {shape[0]} / target "
                  f"{shape[1]}; skipped it ({self.state.oom} so far)")

    def _nonfinite(self, out: UpdateResult) -> None:
        st = self.state
        st.nonfinite += 1
        st.nonfinite_in_row += 1
        self._log({"event": "nonfinite", "step": st.step, "loss": out.loss
                   if math.isfinite(out.loss) else str(out.loss)})
        if st.nonfinite_in_row >= self.cfg.max_nonfinite:
            raise NmtError(f"training stopped at step {st.step}: {st.nonfinite_in_row} updates in a "
                           "row had a non-finite loss or gradient (train.max_nonfinite); lower "
                           "train.learning_rate, keep train.clip_norm on, or use bf16 instead of "
                           "fp16. The last good checkpoint is in " + str(self.ckpt_dir))

    def _prepare_run_dir(self) -> None:
        resumed = self.resumed_from
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
            return self._train(progress if self.dist.is_main else None)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.metrics.close()

    def _train(self, progress) -> TrainSummary:
        """Epochs of updates until a limit, early stopping or a signal; ``progress``: rank 0's."""
        cfg, st = self.cfg, self.state
        self._announce()
        self.model.train()
        self._session_start = time.time()
        self._base_seconds = st.seconds
        window = TrainWindow()
        stop = ("max_steps" if st.step >= cfg.max_steps > 0
                else "max_epochs" if st.epoch >= cfg.max_epochs else "")
        if progress is not None:
            progress.start(cfg.max_steps)
            progress.update(st.step, None)
        while not stop:
            updates = self._epoch_updates()
            while st.batch < len(updates) and not stop:
                stop = self._step(updates[st.batch], window, progress)
            if st.batch >= len(updates):
                st.epoch, st.batch = st.epoch + 1, 0
                if not stop and st.epoch >= cfg.max_epochs:
                    stop = "max_epochs"
        if progress is not None:
            progress.stop()
        st.seconds = self._seconds()
        self._end_session(stop)
        return self._finish(stop)

    def _announce(self) -> None:
        self._say(f"training on {self.device}"
                  + (f" x {self.dist.world_size} ranks" if self.dist.enabled else "")
                  + f": {count_parameters(self.model):,} parameters, "
                  f"{len(self.train_data):,} pairs, precision {self.precision}"
                  + (" (auto)" if self.cfg.precision == "auto" else ""))
        if not self.dev.enabled:
            self._say("[yellow]no dev set[/] (data.dev): no validation; best.pt is always the "
                      "newest checkpoint")

    def _epoch_updates(self) -> list[list[np.ndarray]]:
        """This rank's updates of the current epoch, each a group of ``accum_steps`` batches."""
        cfg, st = self.cfg, self.state
        every = epoch_batches(self.train_data, cfg.batch_tokens, cfg.seed, st.epoch)
        if st.epoch == 0 and st.batch == 0 and self.dist.is_main:
            self._log({"event": "start", "step": st.step, "pairs": len(self.train_data),
                       "batches_per_epoch": len(every), "world_size": self.dist.world_size,
                       "padding_fraction": self.train_data.padding_fraction(every)})
        batches = dist.rank_share(every, self.dist)
        return [batches[i:i + cfg.accum_steps] for i in range(0, len(batches), cfg.accum_steps)]

    def _step(self, group: list[np.ndarray], window: TrainWindow, progress) -> str:
        """One update and its bookkeeping; returns why training stops here, or ''."""
        cfg, st = self.cfg, self.state
        t0 = time.time()
        out = self.update(group, st.step)
        st.batch += 1
        st.train_seconds += time.time() - t0
        st.seconds = self._seconds()
        if out.applied:
            st.step += 1
            if self.ema is not None:
                self.ema.update(self.model, st.step)
            st.nonfinite_in_row = 0
            st.tgt_tokens += out.tokens
            window.add(out.tokens, out.loss, out.nll)
        elif out.oom:
            self._count_oom(out.oom_shape)
        else:
            self._nonfinite(out)
        if out.applied and st.step % cfg.log_every == 0:
            record = window.record(st.step, st.epoch, out.lr)
            self._log(record)
            if progress is not None:
                progress.update(st.step, record)
        elif progress is not None:
            progress.update(st.step, None)
        faults.point("train-update", step=st.step)
        if out.applied and st.step % cfg.valid_every == 0:
            early_stop = self._validate_and_save()
            window.start = time.time()  # tok/s counts training time only
            if early_stop:
                return "early stopping"
        elif out.applied and cfg.save_every and st.step % cfg.save_every == 0:
            self.save()
        if cfg.max_steps and st.step >= cfg.max_steps:
            return "max_steps"
        return "max_time" if out.time_up else "interrupted" if out.signalled else ""

    def _end_session(self, stop: str) -> None:
        """Save if interrupted; else validate and save the last step unless done, then average."""
        st = self.state
        if stop == "interrupted":
            self.save()
            self._say(f"interrupted at step {st.step}: checkpoint saved; continue with "
                      "'nmt train RECIPE --resume' (same --set options)")
        elif st.step != (self.last_dev.get("step") if self.dev.enabled else self._saved_step):
            self._validate_and_save()
        if self.cfg.average_last and stop != "interrupted" and self.dist.is_main:
            self._average_last(self.cfg.average_last)

    def _finish(self, stop: str) -> TrainSummary:
        st = self.state
        summary = TrainSummary.of(st, stop, self.last_dev, self.resumed_from)
        record = {"event": "end", "step": st.step, "epochs": st.epoch,
                  "train_seconds": round(st.train_seconds, 2), "wall_seconds": round(st.seconds, 2),
                  "tgt_tokens": st.tgt_tokens, "tok_per_s": round(summary.tokens_per_second, 1),
                  "best_dev_bleu": st.best_metric, "best_step": st.best_step,
                  "nonfinite_skipped": st.nonfinite, "oom_skipped": st.oom,
                  "resumed_from": self.resumed_from, "world_size": self.dist.world_size,
                  "stopped_by": stop}
        if self.dist.is_main:
            self._log(record)
            written = {("steps" if k == "step" else k): v for k, v in record.items()}
            atomic_write_text(self.workdir / "train_summary.json",
                              json.dumps(written, indent=2) + "\n")
        return summary
