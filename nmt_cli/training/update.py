"""One optimizer update over a group of batches (gradient accumulation). Under torchrun its
statistics are summed over the ranks, so that every rank takes the same decisions."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from nmt_cli.config import TrainConfig
from nmt_cli.data import ParallelData
from nmt_cli.errors import NmtError
from nmt_cli.runtime import autocast, free_device_memory
from nmt_cli.training import distributed as dist
from nmt_cli.training.loss import sequence_loss


@dataclass(frozen=True)
class UpdateResult:
    """What one update did; the statistics are summed over all ranks."""

    applied: bool  # the optimizer stepped: finite loss and gradient, no out-of-memory
    loss: float  # label-smoothed loss, summed over the update's target tokens
    nll: float  # plain NLL, summed likewise
    tokens: int  # target tokens, EOS included, padding excluded
    lr: float
    signalled: bool  # a rank has had SIGINT or SIGTERM
    time_up: bool  # train.max_time is spent
    oom: bool  # a batch ran CUDA out of memory and the update was skipped
    oom_shape: tuple | None = None  # that batch's (source, target) shapes


class Updater:
    """Updates ``model`` from batches of ``data``. ``seconds`` (the run's training time so far)
    and ``signalled`` (asked to stop) are read in each update and shared with the other ranks."""

    def __init__(self, model: torch.nn.Module, optimizer, schedule, scaler, data: ParallelData,
                 cfg: TrainConfig, device: torch.device, precision: str, info: dist.DistInfo,
                 seconds: Callable[[], float], signalled: Callable[[], bool]):
        self.model, self.optimizer, self.schedule, self.scaler = model, optimizer, schedule, scaler
        self.data, self.cfg, self.device, self.precision = data, cfg, device, precision
        self.dist, self.seconds, self.signalled = info, seconds, signalled
        self.ddp = None
        if info.enabled:  # built once the weights are final: DDP copies rank 0's to the others
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            self.ddp = DistributedDataParallel(model, device_ids=ids)

    def __call__(self, group: list[np.ndarray], step: int) -> UpdateResult:
        """The update after ``step`` over ``group``, this rank's batches. Each loss is scaled by
        ``world_size / total_tokens``, so DDP's average is the gradient per token over all ranks."""
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        local_tokens = sum(int(self.data.tgt.lengths[idx].sum()) + len(idx) for idx in group)
        # the ranks' clocks averaged, so that a schedule that follows max_time is the same on all
        (total_tokens, seconds) = dist.all_reduce_sum([float(local_tokens), self.seconds()],
                                                      self.device)
        lr = self.schedule.step(step + 1, seconds / self.dist.world_size)
        scale = self.dist.world_size / total_tokens
        model = self.ddp if self.ddp is not None else self.model
        loss_sum = nll_sum = 0.0
        for j, idx in enumerate(group):
            batch = self.data.collate(idx)
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
        time_up = bool(cfg.max_time) and self.seconds() >= cfg.max_time * 60
        loss_sum, nll_sum, signalled, out_of_time = dist.all_reduce_sum(
            [loss_sum, nll_sum, float(self.signalled()), float(time_up)], self.device)
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                              cfg.clip_norm if cfg.clip_norm > 0 else math.inf)
        applied = math.isfinite(loss_sum) and bool(torch.isfinite(norm))
        if applied:
            self.scaler.step(self.optimizer)
        self.scaler.update()
        return UpdateResult(applied=applied, loss=loss_sum, nll=nll_sum, tokens=int(total_tokens),
                            lr=lr, signalled=signalled > 0, time_up=out_of_time > 0, oom=False)

    def _skip_oom(self, shape: tuple, lr: float) -> UpdateResult:
        self.optimizer.zero_grad(set_to_none=True)
        free_device_memory(self.device)
        if self.dist.enabled:  # the other ranks are already waiting in the gradient all-reduce
            raise NmtError(f"CUDA out of memory on rank {self.dist.rank} with a batch of source "
                           f"{shape[0]} / target {shape[1]} tokens; a batch cannot be skipped on "
                           "one rank alone, so lower train.batch_tokens (or raise accum_steps)")
        return UpdateResult(applied=False, loss=0.0, nll=0.0, tokens=0, lr=lr,
                            signalled=self.signalled(), time_up=False, oom=True, oom_shape=shape)
