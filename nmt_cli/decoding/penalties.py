"""Scoring rules and constraints shared by every search: length normalization, length limits,
special tokens and repeated n-grams. Tensors in, tensors out.

A score is the summed log-probability (EOS included) divided by a normalizer of the length ``len``
(EOS counted): GNMT's ``((5 + len) / 6) ** alpha`` ("gnmt"), ``len`` ("average") or 1 ("none").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nmt_cli.config import DecodeConfig
from nmt_cli.ids import BOS_ID, EOS_ID, PAD_ID, UNK_ID

NEG_INF = float("-inf")


def _gnmt(length: Tensor | int, alpha: float) -> Tensor | float:
    return ((5.0 + length) / 6.0) ** alpha


def _average(length: Tensor | int, alpha: float) -> Tensor | float:
    return length.float() if isinstance(length, Tensor) else float(length)


def _none(length: Tensor | int, alpha: float) -> Tensor | float:
    return torch.ones_like(length, dtype=torch.float) if isinstance(length, Tensor) else 1.0


# One normalizer per choice of ``decode.length_norm``; the keys are that setting's Literal.
DIVISORS = {"gnmt": _gnmt, "average": _average, "none": _none}


@dataclass(frozen=True)
class LengthNorm:
    """Divides a summed log-probability by a non-decreasing function of the output length."""

    kind: str  # a key of DIVISORS (decode.length_norm)
    alpha: float  # GNMT's exponent (decode.length_penalty); unused by the other kinds

    @classmethod
    def of(cls, cfg: DecodeConfig) -> "LengthNorm":
        return cls(cfg.length_norm, cfg.length_penalty)

    def divisor(self, length: Tensor | int) -> Tensor | float:
        kind = "none" if self.kind == "gnmt" and self.alpha == 0.0 else self.kind
        return DIVISORS[kind](length, self.alpha)

    def score(self, log_prob: float, length: int) -> float:
        return log_prob / float(self.divisor(length))


def length_limits(src_lengths: Tensor, a: float, b: int) -> Tensor:
    """Per sentence ``floor(a * source_length + b)``, never below 0 (EOS not counted)."""
    return ((src_lengths.float() * a).floor().long() + b).clamp(min=0)


def output_lengths(cfg: DecodeConfig, src_lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Shortest and longest output allowed per sentence (EOS not counted), from
    ``decode.min_len_a/b`` and ``decode.max_len_a/b``; the minimum never exceeds the maximum."""
    max_len = length_limits(src_lengths, cfg.max_len_a, cfg.max_len_b)
    min_len = torch.minimum(length_limits(src_lengths, cfg.min_len_a, cfg.min_len_b), max_len)
    return min_len, max_len


def forbid_specials(log_probs: Tensor, allow_unk: bool) -> None:
    """Padding and BOS are never generated, nor ``<unk>`` unless ``allow_unk``."""
    log_probs[:, PAD_ID] = NEG_INF
    log_probs[:, BOS_ID] = NEG_INF
    if not allow_unk:
        log_probs[:, UNK_ID] = NEG_INF


def constrain_length(log_probs: Tensor, step: int, min_len: Tensor, max_len: Tensor) -> None:
    """EOS is forbidden before ``min_len`` and the only choice at ``max_len`` (both (N,)); it keeps
    its own log-probability, so every score stays a true model score."""
    eos = log_probs[:, EOS_ID].masked_fill(step < min_len, NEG_INF)
    at_limit = step >= max_len
    if log_probs.device.type != "cpu" or bool(at_limit.any()):  # no host sync on a GPU
        log_probs.masked_fill_(at_limit.unsqueeze(1), NEG_INF)
    log_probs[:, EOS_ID] = eos


def block_repeated_ngrams(log_probs: Tensor, generated: Tensor, n: int) -> None:
    """Forbid every token that would repeat an n-gram of its row in ``generated`` (N, L), BOS
    excluded: the tokens that followed an earlier match of the last ``n - 1`` are banned."""
    length = generated.size(1)
    if n < 1 or length < n - 1 or length == 0:
        return
    if n == 1:  # no token twice
        log_probs.scatter_(1, generated, NEG_INF)
        return
    contexts = generated.unfold(1, n - 1, 1)[:, : length - n + 1]  # (N, L-n+1, n-1)
    if contexts.size(1) == 0:
        return
    last = generated[:, length - n + 1:].unsqueeze(1)  # (N, 1, n-1)
    match = (contexts == last).all(dim=-1)  # (N, L-n+1)
    followers = generated[:, n - 1:]  # (N, L-n+1): the token after each context
    penalty = torch.zeros_like(followers, dtype=log_probs.dtype).masked_fill(match, NEG_INF)
    log_probs.scatter_add_(1, followers, penalty)
