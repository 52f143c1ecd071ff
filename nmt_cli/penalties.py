"""Scoring rules and constraints shared by every search: length normalization, length limits,
special tokens and repeated n-grams. Tensors in, tensors out; no I/O.

A hypothesis' score is its summed log-probability (EOS included) divided by a normalizer of its
length ``len`` (EOS counted): GNMT's ``((5 + len) / 6) ** alpha`` ("gnmt", alpha 0 is no
penalty), the length itself ("average", a mean log-probability per token), or 1 ("none").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nmt_cli.tokenizer import BOS_ID, EOS_ID, PAD_ID

NEG_INF = float("-inf")


@dataclass(frozen=True)
class LengthNorm:
    """Divides a summed log-probability by a non-decreasing function of the output length."""

    kind: str = "gnmt"  # "gnmt", "average" or "none"
    alpha: float = 1.0  # GNMT's exponent; unused by the other kinds

    def __post_init__(self) -> None:
        if self.kind not in ("gnmt", "average", "none"):
            raise ValueError(f"unknown length normalization {self.kind!r}")

    def divisor(self, length: Tensor | int) -> Tensor | float:
        if self.kind == "none" or (self.kind == "gnmt" and self.alpha == 0.0):
            return torch.ones_like(length, dtype=torch.float) if isinstance(length, Tensor) else 1.0
        if self.kind == "average":
            return length.float() if isinstance(length, Tensor) else float(length)
        return ((5.0 + length) / 6.0) ** self.alpha

    def score(self, log_prob: float, length: int) -> float:
        return log_prob / float(self.divisor(length))


def gnmt_length_penalty(length: Tensor | int, alpha: float) -> Tensor | float:
    """Wu et al. (2016): ((5 + length) / 6) ** alpha."""
    return LengthNorm("gnmt", alpha).divisor(length)


def length_limits(src_lengths: Tensor, a: float, b: int) -> Tensor:
    """Per sentence ``floor(a * source_length + b)``, never below 0 (EOS not counted)."""
    return ((src_lengths.float() * a).floor().long() + b).clamp(min=0)


def forbid_specials(log_probs: Tensor) -> None:
    """Padding and BOS are never generated."""
    log_probs[:, PAD_ID] = NEG_INF
    log_probs[:, BOS_ID] = NEG_INF


def constrain_length(log_probs: Tensor, step: int, min_len: Tensor, max_len: Tensor) -> None:
    """EOS is forbidden before ``min_len`` tokens; at ``max_len`` it is the only choice.

    At the limit EOS keeps its own log-probability, so every score stays a true model score.
    ``min_len`` and ``max_len`` are per row of ``log_probs`` (N,).
    """
    eos = log_probs[:, EOS_ID].masked_fill(step < min_len, NEG_INF)
    at_limit = step >= max_len
    if log_probs.device.type != "cpu" or bool(at_limit.any()):  # no host sync on a GPU
        log_probs.masked_fill_(at_limit.unsqueeze(1), NEG_INF)
    log_probs[:, EOS_ID] = eos


def block_repeated_ngrams(log_probs: Tensor, generated: Tensor, n: int) -> None:
    """Forbid every token that would repeat an n-gram already in that row's output.

    generated (N, L) holds each row's tokens so far (BOS excluded). The last ``n - 1`` tokens are
    compared with every earlier (n-1)-gram at once; the tokens that followed a match are banned.
    """
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
