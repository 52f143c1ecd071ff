"""An exponential moving average of the weights (``train.ema_decay``), kept in fp32 beside the
training weights and updated after every applied update.

The decay warms up with the step: update t (1-based) uses ``min(ema_decay, (1 + t) / (10 + t))``,
so the first updates move the average most (0.18 at step 1, 0.5 at step 8, 0.9 at step 80,
0.99 at step 881) and the average does not stay near the random initialization for thousands of
steps. The average is what validation scores, what ``best.pt`` and every checkpoint's ``model``
hold (so translation, ``nmt average`` and ``--init-from`` take it), while the training weights
travel as ``train_model`` for ``--resume``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


def decay_at(step: int, decay: float) -> float:
    """The decay of update ``step`` (1-based), warmed up as the module docstring says."""
    return min(decay, (1.0 + step) / (10.0 + step))


class Ema:
    """The average of a model's floating-point parameters and buffers; other tensors (integer
    buffers) are taken from the model as they are."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {name: t.detach().float().clone() for name, t in model.state_dict().items()
                       if t.is_floating_point()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        """Fold the weights after update ``step`` into the average."""
        d = decay_at(step, self.decay)
        state = model.state_dict()
        names = list(self.shadow)
        averages = [self.shadow[n] for n in names]
        current = [state[n].detach().float() for n in names]
        torch._foreach_mul_(averages, d)
        torch._foreach_add_(averages, current, alpha=1.0 - d)

    def weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """A state dict of ``model``'s shape and types holding the average (on the CPU)."""
        return {name: (self.shadow[name].to(t.dtype) if name in self.shadow else t).detach().cpu()
                for name, t in model.state_dict().items()}

    def load(self, weights: dict[str, torch.Tensor]) -> None:
        """The average from a checkpoint's ``model`` (as ``weights`` wrote it)."""
        for name in self.shadow:
            self.shadow[name].copy_(weights[name].float())

    @contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[None]:
        """``model`` holds the average inside the block and its own weights again after it."""
        own = {name: t.detach().clone() for name, t in model.state_dict().items()}
        model.load_state_dict(self.weights(model))
        try:
            yield
        finally:
            model.load_state_dict(own)
