"""Shallow fusion: a translation model (or an ensemble) and a target-language model behind the
single-model decoding contract, so that greedy, beam and n-best search decode it unchanged.
Each step's scores are ``log p_TM + weight * log p_LM``; the LM's state travels beside the
decoder's and is reordered with it by ``select``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from torch import Tensor


@dataclass
class FusedState:
    """The translation model's decoder state and the language model's, row for row."""

    model: Any
    lm: Any

    def select(self, index: Tensor) -> "FusedState":
        return FusedState(self.model.select(index), self.lm.select(index))


class ShallowFusion:
    """``model`` (a DecodingModel) with ``weight`` times ``lm``'s log-probabilities added at each
    step; a weight of 0 leaves the scores as they are (the LM still runs)."""

    def __init__(self, model: Any, lm: Any, weight: float):
        self.model, self.lm, self.weight = model, lm, weight

    def encode(self, src: Tensor, src_lengths: Tensor) -> tuple[Any, FusedState]:
        memory, state = self.model.encode(src, src_lengths)
        return memory, FusedState(state, self.lm.start(src.size(0)))

    def step(self, prev_tokens: Tensor, state: FusedState, memory: Any,
             need_attention: bool = False) -> tuple[Tensor, FusedState, Optional[Tensor]]:
        log_probs, model_state, attention = self.model.step(prev_tokens, state.model, memory,
                                                            need_attention)
        lm_log_probs, lm_state = self.lm.step(prev_tokens, state.lm)  # (N, V) each
        if self.weight:
            log_probs = log_probs + self.weight * lm_log_probs
        return log_probs, FusedState(model_state, lm_state), attention
