"""Attention over encoder states: additive (Bahdanau) and multiplicative (Luong dot, general).
Keys are projected once per batch (``project_keys``); padding positions get weight 0."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Attention(nn.Module):
    """Base: softmax over masked scores, and the context vector they weight."""

    def project_keys(self, memory: Tensor) -> Tensor:  # (B, S, M) -> (B, S, K)
        raise NotImplementedError

    def score(self, query: Tensor, keys: Tensor) -> Tensor:  # (B, T, Q), (B, S, K) -> (B, T, S)
        raise NotImplementedError

    def forward(self, query: Tensor, keys: Tensor, values: Tensor,
                src_mask: Tensor) -> tuple[Tensor, Tensor]:
        """query (B, T, Q), keys (B, S, K), values (B, S, M), src_mask (B, S) True on real tokens
        -> context (B, T, M), weights (B, T, S)."""
        scores = self.score(query, keys)
        scores = scores.masked_fill(~src_mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        if self.training:
            return torch.bmm(weights.to(values.dtype), values), weights
        # decoding: a weighted sum over S in order, where padding adds exact zeros at the end, so
        # the context does not depend on how far the batch is padded (bmm's rounding does)
        context = (weights.unsqueeze(-1).to(values.dtype) * values.unsqueeze(1)).sum(dim=2)
        return context, weights


class BahdanauAttention(Attention):
    """score(q, k) = v . tanh(W_q q + W_k k)"""

    def __init__(self, query_size: int, memory_size: int, attn_size: int):
        super().__init__()
        self.key_layer = nn.Linear(memory_size, attn_size, bias=False)
        self.query_layer = nn.Linear(query_size, attn_size, bias=False)
        self.energy_layer = nn.Linear(attn_size, 1, bias=False)

    def project_keys(self, memory: Tensor) -> Tensor:
        # fp32 keys whatever the weights' type: the tanh below, a step's largest, runs in fp32
        return self.key_layer(memory).float()

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        q = self.query_layer(query).float()  # (B, T, A)
        # (B, 1, S, A) + (B, T, 1, A) -> (B, T, S, A), tanh in place (no second buffer) -> (B, T, S)
        energy = (keys.unsqueeze(1) + q.unsqueeze(2)).tanh_()
        layer = self.energy_layer
        if not self.training:
            # a product and a sum over A, not a GEMV over B*T*S rows, whose rounding depends on
            # the row count: scores must not change with the batch's padding (batch invariance)
            return (energy * layer.weight.view(-1).to(energy.dtype)).sum(-1)
        return layer(energy).squeeze(-1)


class LuongDotAttention(Attention):
    """score(q, k) = q . k; the encoder states are projected to the query size when they differ."""

    def __init__(self, query_size: int, memory_size: int):
        super().__init__()
        self.key_layer = (nn.Linear(memory_size, query_size, bias=False)
                          if memory_size != query_size else nn.Identity())

    def project_keys(self, memory: Tensor) -> Tensor:
        return self.key_layer(memory).float()

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        return torch.bmm(query, keys.transpose(1, 2))


class LuongGeneralAttention(LuongDotAttention):
    """score(q, k) = q . W k, with W folded into the keys once per batch."""

    def __init__(self, query_size: int, memory_size: int):
        nn.Module.__init__(self)
        self.key_layer = nn.Linear(memory_size, query_size, bias=False)


def build_attention(kind: str, query_size: int, memory_size: int) -> Attention:
    if kind == "bahdanau":
        return BahdanauAttention(query_size, memory_size, query_size)
    if kind == "luong_dot":
        return LuongDotAttention(query_size, memory_size)
    if kind == "luong_general":
        return LuongGeneralAttention(query_size, memory_size)
    raise ValueError(f"unknown attention {kind!r}")  # config validation makes this unreachable
