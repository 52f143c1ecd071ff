"""An ensemble behind the single-model decoding contract, so every search decodes it unchanged.
Each step averages the members' log-probabilities (a product of experts, as Marian does) and
attention; members share the target vocabulary (the caller checks their tokenizers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from nmt_cli.errors import NmtError


@dataclass
class EnsembleParts:
    parts: list[Any]  # one Memory (or one DecoderState) per member

    def select(self, index: Tensor) -> "EnsembleParts":
        return EnsembleParts([p.select(index) for p in self.parts])


class Ensemble(nn.Module):
    def __init__(self, models: list[nn.Module]):
        super().__init__()
        if not models:
            raise NmtError("an ensemble needs at least one model; give -m CHECKPOINT")
        self.members = nn.ModuleList(models)

    def encode(self, src: Tensor, src_lengths: Tensor) -> tuple[EnsembleParts, EnsembleParts]:
        encoded = [m.encode(src, src_lengths) for m in self.members]
        return EnsembleParts([e[0] for e in encoded]), EnsembleParts([e[1] for e in encoded])

    def step(self, prev_tokens: Tensor, state: EnsembleParts, memory: EnsembleParts,
             need_attention: bool = False) -> tuple[Tensor, EnsembleParts, Tensor | None]:
        """Mean log-probabilities (N, V) and, when asked, attention (N, S) of any mix of members."""
        outs = [m.step(prev_tokens, s, mem, need_attention)
                for m, s, mem in zip(self.members, state.parts, memory.parts)]
        if len(outs) == 1:
            lp, st, att = outs[0]
            return lp, EnsembleParts([st]), att
        log_probs = torch.stack([o[0] for o in outs]).mean(dim=0)
        attention = torch.stack([o[2].float() for o in outs]).mean(dim=0) \
            if need_attention else None
        return log_probs, EnsembleParts([o[1] for o in outs]), attention
