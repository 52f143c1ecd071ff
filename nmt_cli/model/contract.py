"""The contract between search and a model: ``encode``, ``step`` and ``select``. Every search
(``nmt_cli.decoding.search``) and the ensemble rely on nothing else.

- ``encode(src (B, S), src_lengths (B,)) -> (memory, state)``, once per batch: ``memory`` is what
  the decoder reads from the source (fixed for a sentence), ``state`` what changes per step.
- ``step(prev_tokens (N,), state, memory, need_attention=False) -> (log_probs (N, V), state,
  attention)``: one target position per row; ``attention`` is (N, S) weights over the real source
  tokens when ``need_attention`` is true, and may be ``None`` otherwise (it can cost extra).
- ``state.select(index)``, ``memory.select(index)``: rows ``index`` (N',) of the flat batch, in
  that order; beam search reorders with it, and finished sentences leave through it.

A row's results never depend on the other rows (batch invariance). Training's teacher-forced
``forward(src, src_lengths, tgt_in) -> logits (B, T, V)`` equals ``step`` run position by position.

A language model (``LanguageModel``, ``nmt_cli.model.lm``) has no source: ``start(batch_size)``
gives its state before BOS, and ``step(prev_tokens, state) -> (log_probs, state)``; its state
is ``Selectable`` too, so shallow fusion reorders it with the beam.
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


@runtime_checkable
class LanguageModel(Protocol):
    """What shallow fusion and scoring need from a language model."""

    def start(self, batch_size: int) -> Any: ...

    def step(self, prev_tokens: Tensor, state: Any) -> tuple[Tensor, Any]: ...
