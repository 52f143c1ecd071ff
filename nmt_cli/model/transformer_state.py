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
    """The encoder side, fixed for a sentence: cross-attention keys and values of every decoder
    layer, each (M, H, S, Dh), and the source padding mask (M, S), True on real tokens.

    The M memory rows serve ``group`` decoding rows each (rows ``r * group`` to
    ``r * group + group - 1`` read memory row ``r``): beam search's k rows of a sentence share
    its keys and values instead of holding k copies, and each step attends with the k queries of
    a sentence at once."""

    keys: list[Tensor]
    values: list[Tensor]
    mask: Tensor
    group: int = 1

    def select(self, index: Tensor) -> "TransformerMemory":
        """Decoding rows ``index`` (N,) of the current ones. A selection that keeps whole groups
        of rows reading one memory row (beam search's expansion to k rows per sentence, and its
        pruning of finished sentences) regroups: only the memory rows still read are kept, one
        copy per sentence. Any other selection gives each decoding row its own memory row."""
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
    """The decoder's self-attention cache: keys and values of every layer, each (M, H, t, Dh),
    for the t positions decoded so far (``position`` is t).

    ``select`` does not copy the cache: it records which stored row each new row reads
    (``order``, (N,) indices into the M stored rows; None is every row in place), and the next
    step gathers those rows straight into the cache one position longer. A beam step thus copies
    the cache once instead of twice (a reorder, then an append), and selections in a row (the
    reorder, then the pruning of finished sentences) compose into one index."""

    keys: list[Tensor]
    values: list[Tensor]
    position: int = 0
    order: Optional[Tensor] = None

    def select(self, index: Tensor) -> "TransformerState":
        order = index if self.order is None else self.order.index_select(0, index)
        return TransformerState(self.keys, self.values, self.position, order)


def extend_cache(cached: Tensor, order: Optional[Tensor], new: Tensor) -> Tensor:
    """``cached`` (M, H, t, Dh) with its rows picked by ``order`` (N,), then ``new`` (N, H, 1, Dh)
    appended along the positions: (N, H, t + 1, Dh), the kept rows gathered straight into the
    longer cache (one copy, where a reorder and then an append would make two)."""
    if order is None:
        return torch.cat([cached, new], dim=2)
    if torch.is_grad_enabled() and (cached.requires_grad or new.requires_grad):
        return torch.cat([cached.index_select(0, order), new], dim=2)  # out= has no gradient
    t = cached.size(2)
    out = new.new_empty(new.size(0), new.size(1), t + 1, new.size(3))
    torch.index_select(cached, 0, order, out=out[:, :, :t])
    out[:, :, t:] = new
    return out
