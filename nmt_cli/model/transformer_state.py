"""The Transformer's incremental-decoding state: the encoder side fixed for a sentence
(``TransformerMemory``) and the decoder's self-attention cache (``TransformerState``), both
reordered by search through ``select`` (``nmt_cli.model.contract``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor


@dataclass
class TransformerMemory:
    """The encoder side: each decoder layer's cross-attention keys and values (M, H, S, Dh) and the
    source mask (M, S), True on real tokens. Memory row r serves the ``group`` decoding rows
    ``r * group`` to ``r * group + group - 1``: a sentence's k beams share one copy and attend
    with their k queries at once."""

    keys: list[Tensor]
    values: list[Tensor]
    mask: Tensor
    group: int = 1

    def select(self, index: Tensor) -> "TransformerMemory":
        """Decoding rows ``index`` (N,). A selection keeping whole groups on one memory row (beam
        search's expansion and pruning) regroups, one copy per sentence; any other gives each
        decoding row its own memory row."""
        rows = index // self.group if self.group > 1 else index
        group = _group_size(rows, self.group)
        firsts = rows[::group] if group > 1 else rows
        if firsts.numel() == self.mask.size(0) and bool(
                (firsts == torch.arange(firsts.numel(), device=firsts.device)).all()):
            return TransformerMemory(self.keys, self.values, self.mask, group)
        return TransformerMemory([k.index_select(0, firsts) for k in self.keys],
                                 [v.index_select(0, firsts) for v in self.values],
                                 self.mask.index_select(0, firsts), group)


def _group_size(rows: Tensor, current: int) -> int:
    """``current``, else the first run's length, if ``rows`` (the memory row of each new decoding
    row) is made of equal runs of that length; 1 if neither is."""
    n = rows.numel()
    if n == 0:
        return 1
    for size in dict.fromkeys((current, int((rows == rows[0]).sum()))):
        if size > 1 and n % size == 0:
            runs = rows.view(-1, size)
            if bool((runs == runs[:, :1]).all()):
                return size
    return 1


@dataclass
class TransformerState:
    """The self-attention cache: each layer's keys and values (M, H, t, Dh), ``position`` = t.
    ``select`` copies nothing: ``order`` (N,) records which stored row each new row reads (None:
    all in place), and the next step gathers them straight into the longer cache, so a beam step
    copies once and selections in a row compose into one index."""

    keys: list[Tensor]
    values: list[Tensor]
    position: int = 0
    order: Optional[Tensor] = None

    def select(self, index: Tensor) -> "TransformerState":
        order = index if self.order is None else self.order.index_select(0, index)
        return TransformerState(self.keys, self.values, self.position, order)


def extend_cache(cached: Tensor, order: Optional[Tensor], new: Tensor) -> Tensor:
    """``cached`` (M, H, t, Dh) rows ``order`` (N,), then ``new`` (N, H, 1, Dh): (N, H, t + 1, Dh),
    gathered straight into the longer cache (one copy, not a reorder then an append)."""
    if order is None:
        return torch.cat([cached, new], dim=2)
    if torch.is_grad_enabled() and (cached.requires_grad or new.requires_grad):
        return torch.cat([cached.index_select(0, order), new], dim=2)  # out= has no gradient
    t = cached.size(2)
    out = new.new_empty(new.size(0), new.size(1), t + 1, new.size(3))
    torch.index_select(cached, 0, order, out=out[:, :, :t])
    out[:, :, t:] = new
    return out
