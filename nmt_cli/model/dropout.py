"""Dropout with cheap CPU masks: each element is one 16-bit lane of a 64-bit random integer against
a threshold, not ``F.dropout``'s per-element Bernoulli draw (docs/results.md). The rate is ``p``
rounded to a multiple of 2**-16; draws come from torch's seeded default generator. CUDA keeps the
fused kernel."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LANES = 4  # 16-bit lanes in one 64-bit draw
_INT16_MIN = -(1 << 15)


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> Tensor:
    """A bool tensor of ``shape``, each element independently False with probability ``p``."""
    numel = torch.Size(shape).numel()
    words = torch.empty((numel + _LANES - 1) // _LANES, dtype=torch.int64, device=device)
    # the whole signed range: random_() without bounds leaves the top bit at 0, which would
    # make every fourth lane non-negative
    words.random_(-(1 << 63), (1 << 63) - 1)
    lanes = words.view(torch.int16)[:numel].view(shape)
    return lanes >= _INT16_MIN + round(p * 65536)


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """``F.dropout(x, p, training)``, with the CPU's masks drawn as described above."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, True)
    scaled = keep_mask(x.shape, p, x.device).to(x.dtype).mul_(1.0 / (1.0 - p))
    return x * scaled


class Dropout(nn.Module):
    """``nn.Dropout`` with the mask drawing of ``dropout``."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
