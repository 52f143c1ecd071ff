"""The attentional recurrent decoder (Luong-style output layer, optional input feeding): the RNN
reads the previous target embedding (with input feeding, also the previous attentional vector),
attends with its output as the query, and gives ``tanh(W [h; c])`` to the softmax layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from nmt_cli.config import DecoderConfig
from nmt_cli.model.attention import build_attention
from nmt_cli.model.encoder import RNN_CELLS
from nmt_cli.model.dropout import Dropout


@dataclass
class Memory:
    """What the decoder attends to: encoder outputs, their projected keys, and the padding mask."""

    values: Tensor  # (B, S, M)
    keys: Tensor  # (B, S, K)
    mask: Tensor  # (B, S) True on real tokens

    def select(self, index: Tensor) -> "Memory":
        return Memory(self.values.index_select(0, index), self.keys.index_select(0, index),
                      self.mask.index_select(0, index))


@dataclass
class DecoderState:
    hidden: Tensor  # (layers, B, H)
    cell: Optional[Tensor]  # (layers, B, H) for LSTM
    feed: Optional[Tensor]  # (B, H) previous attentional vector, with input feeding

    def select(self, index: Tensor) -> "DecoderState":
        return DecoderState(
            self.hidden.index_select(1, index),
            None if self.cell is None else self.cell.index_select(1, index),
            None if self.feed is None else self.feed.index_select(0, index))


class RecurrentDecoder(nn.Module):
    def __init__(self, cfg: DecoderConfig, emb_size: int, memory_size: int, enc_final_size: int):
        super().__init__()
        self.cfg = cfg
        hidden = cfg.hidden_size
        rnn_input = emb_size + (hidden if cfg.input_feeding else 0)
        self.rnn = RNN_CELLS[cfg.cell](rnn_input, hidden, num_layers=cfg.layers, batch_first=True,
                                       dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.attention = build_attention(cfg.attention, hidden, memory_size)
        self.att_vector = nn.Linear(hidden + memory_size, hidden, bias=True)
        self.bridge = nn.Linear(enc_final_size, hidden) if cfg.init == "bridge" else None
        self.dropout = Dropout(cfg.dropout)
        self.output_size = hidden

    def memory(self, enc_outputs: Tensor, src_mask: Tensor) -> Memory:
        # fp32 values whatever the weights' type (bf16 or fp16 on a GPU): the context sums in fp32
        return Memory(enc_outputs.float(), self.attention.project_keys(enc_outputs), src_mask)

    def init_state(self, enc_final: Tensor) -> DecoderState:
        batch = enc_final.size(0)
        if self.bridge is not None:
            h0 = torch.tanh(self.bridge(enc_final))  # (B, H)
            hidden = h0.unsqueeze(0).repeat(self.cfg.layers, 1, 1).contiguous()
        else:
            hidden = enc_final.new_zeros(self.cfg.layers, batch, self.cfg.hidden_size)
        cell = torch.zeros_like(hidden) if self.cfg.cell == "lstm" else None
        feed = enc_final.new_zeros(batch, self.cfg.hidden_size) if self.cfg.input_feeding else None
        return DecoderState(hidden, cell, feed)

    def _run_rnn(self, rnn_in: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        if state.cell is not None:
            out, (h, c) = self.rnn(rnn_in, (state.hidden, state.cell))
            return out, DecoderState(h, c, state.feed)
        out, h = self.rnn(rnn_in, state.hidden)
        return out, DecoderState(h, None, state.feed)

    def _attend(self, rnn_out: Tensor, memory: Memory) -> tuple[Tensor, Tensor]:
        context, weights = self.attention(rnn_out, memory.keys, memory.values, memory.mask)
        att = torch.tanh(self.att_vector(torch.cat([rnn_out, context.to(rnn_out.dtype)], dim=-1)))
        return self.dropout(att), weights

    def step(self, embedded: Tensor, state: DecoderState,
             memory: Memory) -> tuple[Tensor, DecoderState, Tensor]:
        """One step: embedded (B, E) -> attentional vector (B, H), new state, weights (B, S)."""
        rnn_in = embedded.unsqueeze(1)  # (B, 1, E)
        if state.feed is not None:
            rnn_in = torch.cat([rnn_in, state.feed.unsqueeze(1)], dim=-1)
        rnn_out, state = self._run_rnn(rnn_in, state)
        att, weights = self._attend(rnn_out, memory)
        att = att.squeeze(1)
        if state.feed is not None:
            state = DecoderState(state.hidden, state.cell, att)
        return att, state, weights.squeeze(1)

    def forward(self, embedded: Tensor, state: DecoderState,
                memory: Memory) -> tuple[Tensor, Tensor]:
        """Teacher forcing: embedded (B, T, E) -> vectors (B, T, H), weights; without input feeding
        the RNN runs over the whole sequence at once and attention is one batched product."""
        if state.feed is None:
            rnn_out, _ = self._run_rnn(embedded, state)
            return self._attend(rnn_out, memory)
        outputs, all_weights = [], []
        # unbind, not embedded[:, t]: the backward of T slices would build T full-size gradients
        for emb_t in embedded.unbind(1):
            att, state, weights = self.step(emb_t, state, memory)
            outputs.append(att)
            all_weights.append(weights)
        return torch.stack(outputs, dim=1), torch.stack(all_weights, dim=1)
