"""Language models over the target language (``model.arch: lm``): a recurrent LM (LSTM or GRU
layers) and a decoder-only Transformer built from the Transformer's own layers. Both predict a
sentence left to right from BOS and satisfy ``nmt_cli.model.contract.LanguageModel``:

- ``start(batch_size) -> state``: the state before BOS;
- ``step(prev_tokens (N,), state) -> (log_probs (N, V), state)``: one position per row;
- ``state.select(index)``: rows ``index`` in that order (beams reorder, finished rows leave);
- ``forward(src, src_lengths, tgt_in (B, T)) -> logits (B, T, V)``: teacher forcing, equal to
  ``step`` run position by position; ``src`` is ignored, so the trainer runs an LM unchanged.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import Tensor, nn

from nmt_cli.config import ModelConfig, TransformerConfig
from nmt_cli.errors import ConfigError
from nmt_cli.ids import PAD_ID
from nmt_cli.model.decoder import DecoderState
from nmt_cli.model.dropout import Dropout
from nmt_cli.model.encoder import RNN_CELLS
from nmt_cli.model.rnn import _cpu_autocast_on
from nmt_cli.model.transformer import (FeedForward, MultiHeadAttention, PositionedEmbedding,
                                       Sublayer)
from nmt_cli.model.transformer_state import TransformerState, extend_cache


def _tie(output: nn.Linear, embed: nn.Embedding, tie: bool, hidden: int, width: int,
         key: str) -> None:
    """Make the output layer reuse the embedding table, when the recipe asks and sizes allow."""
    if not tie:
        return
    if hidden != width:
        raise ConfigError(f"needs {key} ({hidden}) equal to the embedding size ({width})",
                          "model.tie_embeddings")
    output.weight = embed.weight


class RnnLM(nn.Module):
    """Embeddings, dropout, LSTM or GRU layers (dropout between them), dropout, output layer."""

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        rcfg = cfg.lm.rnn  # type: ignore[union-attr]
        self.cfg, self.rcfg, self.vocab_size = cfg, rcfg, vocab_size
        self.embed = nn.Embedding(vocab_size, rcfg.emb_size, padding_idx=PAD_ID)
        self.dropout = Dropout(rcfg.dropout)
        self.rnn = RNN_CELLS[rcfg.cell](rcfg.emb_size, rcfg.hidden_size, num_layers=rcfg.layers,
                                        batch_first=True,
                                        dropout=rcfg.dropout if rcfg.layers > 1 else 0.0)
        self.output_layer = nn.Linear(rcfg.hidden_size, vocab_size, bias=False)
        self.reset_parameters()
        _tie(self.output_layer, self.embed, cfg.tie_embeddings, rcfg.hidden_size, rcfg.emb_size,
             "model.lm.rnn.hidden_size")

    def reset_parameters(self) -> None:
        """As the RNN translation model: N(0, 1/E) embeddings, orthogonal recurrent weights,
        Xavier elsewhere, zero biases but an LSTM forget gate bias of 1."""
        for name, param in self.named_parameters():
            if name.startswith("embed"):
                nn.init.normal_(param, mean=0.0, std=self.rcfg.emb_size ** -0.5)
                with torch.no_grad():
                    param[PAD_ID].zero_()
            elif "weight_hh" in name:
                hidden = param.size(1)
                for i in range(0, param.size(0), hidden):
                    nn.init.orthogonal_(param.data[i:i + hidden])
            elif "bias" in name:
                nn.init.zeros_(param)
                if isinstance(self.rnn, nn.LSTM) and name.startswith("rnn.bias_ih"):
                    h = param.size(0) // 4
                    with torch.no_grad():
                        param[h:2 * h].fill_(1.0)
            elif param.dim() > 1:
                nn.init.xavier_uniform_(param)

    def start(self, batch_size: int) -> DecoderState:
        weight = self.embed.weight
        hidden = weight.new_zeros(self.rcfg.layers, batch_size, self.rcfg.hidden_size)
        return DecoderState(hidden, torch.zeros_like(hidden) if self.rcfg.cell == "lstm" else None,
                            None)

    def _run(self, tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """tokens (B, T) -> the last layer's outputs (B, T, H) and the state after them."""
        x = self.dropout(self.embed(tokens))
        if state.cell is not None:
            out, (h, c) = self.rnn(x, (state.hidden, state.cell))
            return self.dropout(out), DecoderState(h, c, None)
        out, h = self.rnn(x, state.hidden)
        return self.dropout(out), DecoderState(h, None, None)

    def forward(self, src: Optional[Tensor], src_lengths: Optional[Tensor],
                tgt_in: Tensor) -> Tensor:
        """Teacher forcing: logits (B, T, V). As in the RNN translation model, CPU autocast
        runs only the output layer in bf16."""
        recurrent = (torch.autocast("cpu", enabled=False)
                     if tgt_in.device.type == "cpu" and _cpu_autocast_on()
                     else contextlib.nullcontext())
        with recurrent:
            out, _ = self._run(tgt_in, self.start(tgt_in.size(0)))
        return self.output_layer(out)

    def step(self, prev_tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        out, state = self._run(prev_tokens.unsqueeze(1), state)
        logits = self.output_layer(out[:, 0])
        return torch.log_softmax(logits, dim=-1, dtype=torch.float32), state


class LMLayer(nn.Module):
    """A Transformer decoder layer without cross-attention: causal self-attention, feed-forward."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.attention_dropout, False)
        self.ff = FeedForward(cfg)
        self.self_block, self.ff_block = Sublayer(cfg), Sublayer(cfg)

    def forward(self, x: Tensor, cache: Optional[tuple[Tensor, Tensor]] = None,
                cache_order: Optional[Tensor] = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x (B, T, D): a whole sentence (causally masked), or with ``cache`` the new position
        only, attending to the cache too. Returns the output and this layer's keys and values."""
        q, k, v = self.self_attn.self_projections(self.self_block.inputs(x))
        if cache is not None:
            k, v = extend_cache(cache[0], cache_order, k), extend_cache(cache[1], cache_order, v)
        causal = cache is None and x.size(1) > 1
        x = self.self_block.residual(x, self.self_attn.attend(q, k, v, causal=causal)[0])
        return self.ff_block.residual(x, self.ff(self.ff_block.inputs(x))), (k, v)


class TransformerLM(PositionedEmbedding):
    """A decoder-only Transformer: ``transformer.decoder_layers`` of ``LMLayer``."""

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        tcfg: TransformerConfig = cfg.lm.transformer  # type: ignore[union-attr, assignment]
        self.cfg, self.tcfg, self.vocab_size = cfg, tcfg, vocab_size
        d = tcfg.d_model
        self.embed = nn.Embedding(vocab_size, d, padding_idx=PAD_ID)
        self._init_positions(tcfg)
        self.layers = nn.ModuleList(LMLayer(tcfg) for _ in range(tcfg.decoder_layers))
        self.norm = nn.LayerNorm(d) if tcfg.norm == "pre" else nn.Identity()
        self.output_layer = nn.Linear(d, vocab_size, bias=False)
        self.reset_parameters()
        _tie(self.output_layer, self.embed, cfg.tie_embeddings, d, d, "d_model")

    def reset_parameters(self) -> None:
        """As the Transformer translation model."""
        for name, param in self.named_parameters():
            if name.startswith(("embed", "positions")):
                nn.init.normal_(param, mean=0.0, std=self.tcfg.d_model ** -0.5)
                if name.startswith("embed"):
                    with torch.no_grad():
                        param[PAD_ID].zero_()
            elif "norm" in name:
                nn.init.ones_(param) if name.endswith("weight") else nn.init.zeros_(param)
            elif name.endswith("bias"):
                nn.init.zeros_(param)
            elif param.dim() > 1:
                nn.init.xavier_uniform_(param)

    def start(self, batch_size: int) -> TransformerState:
        h = self.tcfg.heads
        empty = self.embed.weight.new_zeros(batch_size, h, 0, self.tcfg.d_model // h)
        n = len(self.layers)
        return TransformerState([empty] * n, [empty] * n, 0)

    def forward(self, src: Optional[Tensor], src_lengths: Optional[Tensor],
                tgt_in: Tensor) -> Tensor:
        """Teacher forcing: logits (B, T, V); padding follows the real tokens, so the causal
        mask alone keeps it out of every real position's view."""
        x = self._embed(self.embed, tgt_in)
        for layer in self.layers:
            x, _ = layer(x)
        return self.output_layer(self.norm(x))

    def step(self, prev_tokens: Tensor, state: TransformerState
             ) -> tuple[Tensor, TransformerState]:
        x = self._embed(self.embed, prev_tokens.unsqueeze(1), state.position)  # (N, 1, D)
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            x, (k, v) = layer(x, (state.keys[i], state.values[i]), state.order)
            keys.append(k)
            values.append(v)
        logits = self.output_layer(self.norm(x[:, 0]))
        return (torch.log_softmax(logits.float(), dim=-1),
                TransformerState(keys, values, state.position + 1))


LM_FAMILIES: dict[str, type[nn.Module]] = {"rnn": RnnLM, "transformer": TransformerLM}


def build_lm(cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int,
             joint_vocab: bool = False) -> nn.Module:
    """The language model of ``cfg.lm.family`` over the target vocabulary (the source one is
    not used: an LM has no source)."""
    return LM_FAMILIES[cfg.lm.family](cfg, tgt_vocab_size)  # type: ignore[union-attr]
