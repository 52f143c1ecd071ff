"""The contract between search and a model, written down: ``encode``, ``step`` and ``select``.

Greedy, beam search, sampling, forced scoring, n-best and alignments
(``nmt_cli.decoding.search``) and the ensemble (``nmt_cli.decoding.ensemble``) rely on nothing
else, so every architecture that satisfies ``DecodingModel`` decodes with all of them unchanged.

- ``encode(src (B, S), src_lengths (B,)) -> (memory, state)``: once per batch. ``memory`` is what
  the decoder reads from the source (fixed for a sentence); ``state`` is what changes per step
  (an RNN's hidden state, a Transformer's per-layer key/value cache).
- ``step(prev_tokens (N,), state, memory, need_attention=False) -> (log_probs (N, V), state,
  attention)``: one target position for every row. ``attention`` is (N, S) weights over the
  source, summing to one over the real tokens, when ``need_attention`` is true; a model may leave
  it ``None`` otherwise (computing it can cost extra, as with the Transformer's fused attention).
- ``state.select(index)`` and ``memory.select(index)``: rows ``index`` (N',) of the flattened
  batch, in that order; beam search reorders with it, and finished sentences leave through it.

A row's results never depend on the other rows of the batch, which keeps output independent of
the batch size. Training uses ``forward(src, src_lengths, tgt_in) -> logits (B, T, V)``, teacher
forcing over a whole target, which equals running ``step`` position by position.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, TypeVar, runtime_checkable

from torch import Tensor

S = TypeVar("S", bound="Selectable")


@runtime_checkable
class Selectable(Protocol):
    """Per-row decoding data that can be reordered and pruned along the batch."""

    def select(self: S, index: Tensor) -> S: ...


@runtime_checkable
class DecodingModel(Protocol):
    """What search needs from a model (or an ensemble of models)."""

    def encode(self, src: Tensor, src_lengths: Tensor) -> tuple[Any, Any]: ...

    def step(self, prev_tokens: Tensor, state: Any, memory: Any,
             need_attention: bool = False) -> tuple[Tensor, Any, Optional[Tensor]]: ...


@runtime_checkable
class TrainableModel(DecodingModel, Protocol):
    """A decoding model that training can also run with teacher forcing."""

    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> Tensor: ...
