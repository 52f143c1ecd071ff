"""Optimizers and learning-rate schedules named in ``train``: Adam/AdamW; constant, plateau,
inverse-sqrt and cosine, each with optional linear warmup."""

from __future__ import annotations

import math

import torch

from nmt_cli.config import TrainConfig


def build_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    params = list(params)
    kwargs = dict(lr=cfg.learning_rate, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay)
    try:  # the fused kernel is several times faster, on the CPU too (torch >= 2.4)
        return cls(params, fused=True, **kwargs)  # type: ignore[arg-type]
    except (RuntimeError, TypeError, ValueError):
        return cls(params, **kwargs)  # type: ignore[arg-type]


class LrSchedule:
    """Sets the optimizer's learning rate before each update; after warmup, ``inverse_sqrt`` is
    base * sqrt(warmup / step), ``plateau`` multiplies by ``plateau_factor`` after
    ``plateau_patience`` validations without a better metric, and ``cosine`` falls along half a
    cosine to ``min_learning_rate`` by the end of ``max_steps`` or of ``max_time`` (whichever comes
    first), so a time-limited run ends at the floor however fast the machine is."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig):
        self.optimizer, self.cfg = optimizer, cfg
        self.scale = 1.0  # plateau reductions so far
        self.best: float | None = None
        self.bad_validations = 0
        self.lr = cfg.learning_rate
        self.warm_seconds: float | None = None  # training time when warmup ended (max_time)

    def rate(self, step: int, seconds: float = 0.0) -> float:
        """The rate for update ``step`` (1-based), ``seconds`` into training (for ``max_time``)."""
        cfg, step = self.cfg, max(1, step)
        warm = min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        if cfg.schedule == "inverse_sqrt":
            lr = cfg.learning_rate * (warm if step < cfg.warmup_steps
                                      else math.sqrt(max(1, cfg.warmup_steps) / step))
        elif cfg.schedule == "cosine" and step >= cfg.warmup_steps:
            done = ((step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
                    if cfg.max_steps else 0.0)
            if cfg.max_time:
                start = self.warm_seconds if self.warm_seconds is not None else seconds
                budget = max(1e-9, cfg.max_time * 60 - start)
                done = max(done, (seconds - start) / budget)
            done = min(1.0, max(0.0, done))
            low = min(cfg.min_learning_rate, cfg.learning_rate)
            lr = low + (cfg.learning_rate - low) * 0.5 * (1.0 + math.cos(math.pi * done))
        else:
            lr = cfg.learning_rate * warm * self.scale
        return max(lr, cfg.min_learning_rate) if cfg.schedule == "plateau" else lr

    def step(self, step: int, seconds: float = 0.0) -> float:
        if self.warm_seconds is None and step >= self.cfg.warmup_steps:
            self.warm_seconds = seconds
        self.lr = self.rate(step, seconds)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        return self.lr

    def on_validation(self, metric: float) -> None:
        """Record a dev metric where higher is better (used by ``plateau``)."""
        if self.best is None or metric > self.best:
            self.best, self.bad_validations = metric, 0
            return
        self.bad_validations += 1
        if self.cfg.schedule == "plateau" and self.bad_validations > self.cfg.plateau_patience:
            self.scale *= self.cfg.plateau_factor
            self.bad_validations = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "best": self.best, "bad_validations": self.bad_validations,
                "warm_seconds": self.warm_seconds}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.best = float(state["scale"]), state["best"]
        self.bad_validations = int(state["bad_validations"])
        warm = state.get("warm_seconds")  # absent from checkpoints written before it existed
        self.warm_seconds = None if warm is None else float(warm)
