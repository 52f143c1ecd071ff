"""The Transformer encoder-decoder (Vaswani et al., 2017), with an incremental decoder for search.

Weights are laid out as CTranslate2's ``TransformerSpec`` holds them, so export maps each tensor
one to one: a fused query-key-value self-attention projection, a cross-attention query and fused
key-value projection, a bias on every linear layer but the output one, a final layer norm in
pre-norm stacks. Decoding keeps a self-attention cache and the cross-attention keys and values
(``transformer_state``). Alignments use the last decoder layer's cross-attention averaged over
heads, computed explicitly (fused attention returns no weights) and only when asked.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt_cli.config import ModelConfig, TransformerConfig
from nmt_cli.errors import ConfigError
from nmt_cli.ids import PAD_ID
from nmt_cli.model.dropout import Dropout, dropout
from nmt_cli.model.transformer_state import TransformerMemory, TransformerState, extend_cache


ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


def sinusoidal_table(positions: int, size: int) -> Tensor:
    """(positions, size): sines in the first half of each row, cosines in the second half, as
    tensor2tensor, fairseq and CTranslate2 lay them out."""
    half = size // 2
    step = math.log(10000.0) / max(1, half - 1)
    rates = torch.exp(torch.arange(half, dtype=torch.float64) * -step)
    angles = torch.arange(positions, dtype=torch.float64).unsqueeze(1) * rates.unsqueeze(0)
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if size % 2:
        table = torch.cat([table, torch.zeros(positions, 1, dtype=torch.float64)], dim=1)
    return table.float()


class MultiHeadAttention(nn.Module):
    """Self-attention (one fused ``qkv`` projection) or cross-attention (``query`` and a fused
    ``key_value`` projection), then the output projection ``out``."""

    def __init__(self, d_model: int, heads: int, dropout: float, cross: bool):
        super().__init__()
        self.heads, self.head_dim, self.dropout = heads, d_model // heads, dropout
        if cross:
            self.query = nn.Linear(d_model, d_model)
            self.key_value = nn.Linear(d_model, 2 * d_model)
        else:
            self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def _split(self, x: Tensor, parts: int) -> list[Tensor]:
        """(B, T, parts * D) -> parts tensors of (B, H, T, Dh)."""
        b, t, _ = x.shape
        return list(x.view(b, t, parts, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0))

    def self_projections(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = self._split(self.qkv(x), 3)
        return q, k, v

    def cross_keys_values(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self._split(self.key_value(memory), 2)
        return k, v

    def cross_query(self, x: Tensor) -> Tensor:
        return self._split(self.query(x), 1)[0]

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None,
               causal: bool = False, need_weights: bool = False, group: int = 1
               ) -> tuple[Tensor, Optional[Tensor]]:
        """q (B, H, T, Dh), k and v (B, H, S, Dh), mask (B, 1, 1, S) True where attending is
        allowed -> output (B, T, D) after ``out``, and with ``need_weights`` the weights
        (B, T, S) averaged over heads. With ``group`` > 1 (one query each, T = 1), q has
        ``group`` rows per row of k and v (``TransformerMemory.group``)."""
        if group > 1:  # a sentence's rows become the queries of its one memory row
            n, heads, _, dh = q.shape
            grouped = q.reshape(n // group, group, heads, dh).transpose(1, 2)
            out, weights = self.attend(grouped, k, v, mask, need_weights=need_weights)
            return out.reshape(n, 1, -1), None if weights is None else weights.reshape(n, 1, -1)
        p = self.dropout if self.training else 0.0
        weights = None
        # The explicit path can keep its weights, and is faster for one query (a decoding step)
        # and in CPU training, whose fused backward is slow (docs/results.md).
        if need_weights or q.size(-2) == 1 or (q.device.type == "cpu"
                                               and torch.is_grad_enabled() and q.requires_grad):
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
            scores = _masked(scores, mask, causal)
            probs = torch.softmax(scores.float(), dim=-1)
            weights = probs.mean(dim=1) if need_weights else None
            context = torch.matmul(dropout(probs, p, self.training).to(v.dtype), v)
        else:
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                                     is_causal=causal)
        b, _, t, _ = context.shape
        return self.out(context.transpose(1, 2).reshape(b, t, -1)), weights


def _masked(scores: Tensor, mask: Optional[Tensor], causal: bool) -> Tensor:
    """scores (B, H, T, S) with -inf where ``mask`` (B, 1, 1, S) is False and, when ``causal``,
    where a query would see a later position."""
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    if causal:
        t, s = scores.shape[-2:]
        scores = scores.masked_fill(
            torch.ones(t, s, dtype=torch.bool, device=scores.device).triu(1), float("-inf"))
    return scores


class FeedForward(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.inner = nn.Linear(cfg.d_model, cfg.ff_size)
        self.activation = ACTIVATIONS[cfg.activation]()
        self.dropout = Dropout(cfg.activation_dropout)
        self.outer = nn.Linear(cfg.ff_size, cfg.d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.outer(self.dropout(self.activation(self.inner(x))))


class Sublayer(nn.Module):
    """A residual branch with its layer norm, before (pre-norm) or after (post-norm) the sum."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.d_model)
        self.pre = cfg.norm == "pre"
        self.dropout = Dropout(cfg.dropout)

    def inputs(self, x: Tensor) -> Tensor:
        return self.norm(x) if self.pre else x

    def residual(self, x: Tensor, branch: Tensor) -> Tensor:
        y = x + self.dropout(branch)
        return y if self.pre else self.norm(y)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.attention_dropout, False)
        self.ff = FeedForward(cfg)
        self.attn_block, self.ff_block = Sublayer(cfg), Sublayer(cfg)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        q, k, v = self.self_attn.self_projections(self.attn_block.inputs(x))
        x = self.attn_block.residual(x, self.self_attn.attend(q, k, v, mask)[0])
        return self.ff_block.residual(x, self.ff(self.ff_block.inputs(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.attention_dropout, False)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.attention_dropout, True)
        self.ff = FeedForward(cfg)
        self.self_block, self.cross_block, self.ff_block = (Sublayer(cfg) for _ in range(3))

    def forward(self, x: Tensor, cache: Optional[tuple[Tensor, Tensor]], cross_k: Tensor,
                cross_v: Tensor, mask: Tensor, need_weights: bool = False,
                cache_order: Optional[Tensor] = None, group: int = 1
                ) -> tuple[Tensor, tuple[Tensor, Tensor], Optional[Tensor]]:
        """x (B, T, D). With ``cache`` (keys, values of earlier positions, their rows picked by
        ``cache_order`` when given), x holds only the new positions and attends to the cache too;
        without it, x is a whole target, causally masked. Returns the output, this layer's keys
        and values (cache included), cross weights."""
        q, k, v = self.self_attn.self_projections(self.self_block.inputs(x))
        if cache is not None:
            k, v = extend_cache(cache[0], cache_order, k), extend_cache(cache[1], cache_order, v)
        causal = cache is None and x.size(1) > 1
        x = self.self_block.residual(x, self.self_attn.attend(q, k, v, causal=causal)[0])
        q = self.cross_attn.cross_query(self.cross_block.inputs(x))
        context, weights = self.cross_attn.attend(q, cross_k, cross_v, mask,
                                                  need_weights=need_weights, group=group)
        x = self.cross_block.residual(x, context)
        return self.ff_block.residual(x, self.ff(self.ff_block.inputs(x))), (k, v), weights


class PositionedEmbedding(nn.Module):
    """Scaled token embeddings plus positions (learned or sinusoidal), for the Transformer and
    the Transformer LM. The layers sit on the model itself, so checkpoints keep their keys."""

    tcfg: TransformerConfig

    def _init_positions(self, tcfg: TransformerConfig) -> None:
        d = tcfg.d_model
        if tcfg.positions == "learned":
            self.positions = nn.Embedding(tcfg.max_positions, d)
        else:
            self.register_buffer("sinusoids", sinusoidal_table(tcfg.max_positions, d),
                                 persistent=False)
        self.emb_scale = math.sqrt(d) if tcfg.scale_embeddings else 1.0
        self.emb_dropout = Dropout(tcfg.dropout)

    def _embed(self, table: nn.Embedding, tokens: Tensor, start: int = 0) -> Tensor:
        """tokens (B, T) at positions start..start+T-1 -> (B, T, D). Positions past
        ``max_positions`` reuse the last one."""
        index = torch.arange(start, start + tokens.size(1), device=tokens.device)
        index = index.clamp(max=self.tcfg.max_positions - 1)
        pos = self.positions(index) if self.tcfg.positions == "learned" else self.sinusoids[index]
        return self.emb_dropout(table(tokens) * self.emb_scale + pos.to(table.weight.dtype))


class Transformer(PositionedEmbedding):
    def __init__(self, cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int,
                 joint_vocab: bool = False):
        super().__init__()
        tcfg: TransformerConfig = cfg.transformer  # type: ignore[assignment]
        self.cfg, self.tcfg = cfg, tcfg
        self.src_vocab_size, self.tgt_vocab_size = src_vocab_size, tgt_vocab_size
        d = tcfg.d_model
        self.src_embed = nn.Embedding(src_vocab_size, d, padding_idx=PAD_ID)
        if cfg.share_embeddings:
            if not joint_vocab or src_vocab_size != tgt_vocab_size:
                raise ConfigError("needs one joint vocabulary; set tokenizer.joint: true or turn "
                                  "this off", "model.share_embeddings")
            self.tgt_embed = self.src_embed
        else:
            self.tgt_embed = nn.Embedding(tgt_vocab_size, d, padding_idx=PAD_ID)
        self._init_positions(tcfg)
        self.encoder_layers = nn.ModuleList(EncoderLayer(tcfg) for _ in range(tcfg.encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(tcfg) for _ in range(tcfg.decoder_layers))
        pre = tcfg.norm == "pre"
        self.encoder_norm = nn.LayerNorm(d) if pre else nn.Identity()
        self.decoder_norm = nn.LayerNorm(d) if pre else nn.Identity()
        self.output_layer = nn.Linear(d, tgt_vocab_size, bias=False)
        self.reset_parameters()
        if cfg.tie_embeddings:
            self.output_layer.weight = self.tgt_embed.weight

    def reset_parameters(self) -> None:
        """Embeddings ~ N(0, 1/d) with a zero padding row, Xavier-uniform linear weights, zero
        biases, unit layer norms."""
        for name, param in self.named_parameters():
            if "embed" in name or name.startswith("positions"):
                nn.init.normal_(param, mean=0.0, std=self.tcfg.d_model ** -0.5)
                if "embed" in name:
                    with torch.no_grad():
                        param[PAD_ID].zero_()
            elif "norm" in name:
                nn.init.ones_(param) if name.endswith("weight") else nn.init.zeros_(param)
            elif name.endswith("bias"):
                nn.init.zeros_(param)
            elif param.dim() > 1:
                nn.init.xavier_uniform_(param)

    def encode_states(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """src (B, S) -> encoder output (B, S, D) and the key mask (B, 1, 1, S)."""
        mask = (src != PAD_ID)[:, None, None, :]
        x = self._embed(self.src_embed, src)
        for layer in self.encoder_layers:
            x = layer(x, mask)
        return self.encoder_norm(x), mask

    def encode(self, src: Tensor,
               src_lengths: Tensor) -> tuple[TransformerMemory, TransformerState]:
        """src (B, S) padded ids -> cross-attention keys/values of every layer, an empty cache."""
        states, mask = self.encode_states(src)
        # contiguous once (the fused projection's views are strided): every step reads them
        keys, values = zip(*((k.contiguous(), v.contiguous()) for k, v in
                             (layer.cross_attn.cross_keys_values(states)
                              for layer in self.decoder_layers)))
        h = self.tcfg.heads
        empty = keys[0].new_zeros(src.size(0), h, 0, self.tcfg.d_model // h)  # (its dtype)
        n = len(self.decoder_layers)
        return (TransformerMemory(list(keys), list(values), mask[:, 0, 0, :]),
                TransformerState([empty] * n, [empty] * n, 0))

    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: logits (B, T, V) for every target position."""
        states, mask = self.encode_states(src)
        x = self._embed(self.tgt_embed, tgt_in)
        for layer in self.decoder_layers:
            k, v = layer.cross_attn.cross_keys_values(states)
            x, _, _ = layer(x, None, k, v, mask)
        return self.output_layer(self.decoder_norm(x))

    def step(self, prev_tokens: Tensor, state: TransformerState, memory: TransformerMemory,
             need_attention: bool = False
             ) -> tuple[Tensor, TransformerState, Optional[Tensor]]:
        """One position: prev_tokens (N,) -> log-probabilities (N, V), the cache one longer, and
        with ``need_attention`` the last layer's cross-attention (N, S) averaged over heads."""
        x = self._embed(self.tgt_embed, prev_tokens.unsqueeze(1), state.position)  # (N, 1, D)
        mask = memory.mask[:, None, None, :]
        keys, values, weights = [], [], None
        last = len(self.decoder_layers) - 1
        for i, layer in enumerate(self.decoder_layers):
            x, (k, v), w = layer(x, (state.keys[i], state.values[i]), memory.keys[i],
                                 memory.values[i], mask, need_weights=need_attention and i == last,
                                 cache_order=state.order, group=memory.group)
            keys.append(k)
            values.append(v)
            weights = w if w is not None else weights
        logits = self.output_layer(self.decoder_norm(x[:, 0]))
        return (torch.log_softmax(logits.float(), dim=-1),
                TransformerState(keys, values, state.position + 1),
                None if weights is None else weights[:, 0])
