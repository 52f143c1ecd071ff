"""The Transformer encoder-decoder (Vaswani et al., 2017), with an incremental decoder for search.

Options (``model.transformer``): pre- or post-norm, sinusoidal or learned positions, ReLU or
GELU, residual / attention / activation dropout, embeddings scaled by sqrt(d_model), and (in
``model``) source and target embeddings shared over a joint vocabulary and an output layer tied
to the target embeddings. The weights are laid out as CTranslate2's ``TransformerSpec`` holds
them, so an exporter maps each tensor one to one: self-attention has one fused query-key-value
projection, cross-attention a query projection and one fused key-value projection, every linear
layer has a bias except the output layer, and pre-norm stacks end in a final layer norm.

Attention runs through ``torch.nn.functional.scaled_dot_product_attention`` (fused kernels on CPU
and GPU). Incremental decoding keeps each decoder layer's self-attention keys and values in
``TransformerState`` (one new position per step, nothing of the prefix recomputed) and projects
the cross-attention keys and values once per sentence into ``TransformerMemory``; beam search
reorders both through ``select``. Attention weights for ``--alignments`` and
``--plot-attention`` are those of the **last decoder layer's cross-attention, averaged over its
heads**; fused attention does not return weights, so that one layer computes them explicitly, and
only at steps that ask for them (``need_attention``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt_cli.config import ModelConfig, TransformerConfig
from nmt_cli.errors import ConfigError
from nmt_cli.ids import PAD_ID
from nmt_cli.model.dropout import Dropout, dropout
from nmt_cli.runtime import (LOW_PRECISION_WIDTH, LowPrecisionLinear, low_matmul,
                             low_precision_of, low_weighted_sum, pad_source, round_up)


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


# ----------------------------------------------------------------------------------------------
# Decoding state


@dataclass
class TransformerMemory:
    """The encoder side, fixed for a sentence: cross-attention keys and values of every decoder
    layer, each (M, H, S, Dh), and the source padding mask (M, S), True on real tokens.

    The M memory rows serve ``group`` decoding rows each (rows ``r * group`` to
    ``r * group + group - 1`` read memory row ``r``): beam search's k rows of a sentence share
    its keys and values instead of holding k copies, and each step attends with the k queries of
    a sentence at once."""

    keys: list[Tensor]
    values: list[Tensor]
    mask: Tensor
    width: Optional[int] = None  # the source's width before low-precision padding
    group: int = 1

    def select(self, index: Tensor) -> "TransformerMemory":
        """Decoding rows ``index`` (N,) of the current ones. A selection that keeps whole groups
        of rows reading one memory row (beam search's expansion to k rows per sentence, and its
        pruning of finished sentences) regroups: only the memory rows still read are kept, one
        copy per sentence. Any other selection gives each decoding row its own memory row."""
        rows = index // self.group if self.group > 1 else index
        group = _group_size(rows, self.group)
        firsts = rows[::group] if group > 1 else rows
        if firsts.numel() == self.mask.size(0) and bool(
                (firsts == torch.arange(firsts.numel(), device=firsts.device)).all()):
            return TransformerMemory(self.keys, self.values, self.mask, self.width, group)
        return TransformerMemory([k.index_select(0, firsts) for k in self.keys],
                                 [v.index_select(0, firsts) for v in self.values],
                                 self.mask.index_select(0, firsts), self.width, group)


def _group_size(rows: Tensor, current: int) -> int:
    """``current``, else the first run's length, if ``rows`` (the memory row of each new decoding
    row) is made of equal runs of that length; 1 if neither is."""
    n = rows.numel()
    if n == 0:
        return 1
    for size in dict.fromkeys((current, int((rows == rows[0]).sum()))):
        if size > 1 and n % size == 0:
            runs = rows.view(-1, size)
            if bool((runs == runs[:, :1]).all()):
                return size
    return 1


@dataclass
class TransformerState:
    """The decoder's self-attention cache: keys and values of every layer, each (M, H, t, Dh),
    for the t positions decoded so far (in low-precision decoding followed by zero padding to a
    multiple of ``runtime.LOW_PRECISION_WIDTH``; ``position`` is t).

    ``select`` does not copy the cache: it records which stored row each new row reads
    (``order``, (N,) indices into the M stored rows; None is every row in place), and the next
    step gathers those rows straight into the cache one position longer. A beam step thus copies
    the cache once instead of twice (a reorder, then an append), and selections in a row (the
    reorder, then the pruning of finished sentences) compose into one index."""

    keys: list[Tensor]
    values: list[Tensor]
    position: int = 0
    order: Optional[Tensor] = None

    def select(self, index: Tensor) -> "TransformerState":
        order = index if self.order is None else self.order.index_select(0, index)
        return TransformerState(self.keys, self.values, self.position, order)


def extend_cache(cached: Tensor, order: Optional[Tensor], new: Tensor,
                 length: Optional[int] = None) -> Tensor:
    """``cached`` (M, H, t, Dh) with its rows picked by ``order`` (N,), then ``new`` (N, H, 1, Dh)
    appended along the positions: (N, H, t + 1, Dh), the kept rows gathered straight into the
    longer cache (one copy, where a reorder and then an append made two).

    With ``length`` (low-precision decoding) ``cached`` holds ``length`` real positions followed
    by zeros, and so does the result: its t + 1 positions are padded with zeros to a multiple of
    ``LOW_PRECISION_WIDTH``. The attention products then change shape once every that many
    steps instead of at every step, and the CPU's bf16 library compiles a kernel per shape."""
    if length is not None:
        return _extend_padded(cached, order, new, length)
    if order is None:
        return torch.cat([cached, new], dim=2)
    if torch.is_grad_enabled() and (cached.requires_grad or new.requires_grad):
        return torch.cat([cached.index_select(0, order), new], dim=2)  # out= has no gradient
    t = cached.size(2)
    out = new.new_empty(new.size(0), new.size(1), t + 1, new.size(3))
    torch.index_select(cached, 0, order, out=out[:, :, :t])
    out[:, :, t:] = new
    return out


def _extend_padded(cached: Tensor, order: Optional[Tensor], new: Tensor, length: int) -> Tensor:
    width = round_up(length + 1, LOW_PRECISION_WIDTH)
    out = new.new_empty(new.size(0), new.size(1), width, new.size(3))
    if order is None:
        out[:, :, :length] = cached[:, :, :length]
    else:
        torch.index_select(cached[:, :, :length], 0, order, out=out[:, :, :length])
    out[:, :, length:length + 1] = new
    out[:, :, length + 1:].zero_()
    return out


# ----------------------------------------------------------------------------------------------
# Blocks


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

    def low_precision(self) -> Optional[torch.dtype]:
        """bf16 (or fp16) when ``runtime.for_decoding`` cast this layer, else None."""
        if self.training or not isinstance(self.out, LowPrecisionLinear):
            return None
        return self.out.weight.dtype

    def self_projections(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = self._split(self.qkv(x), 3)
        low = self.low_precision()  # keys and values kept (cached) in the products' dtype
        return (q, k, v) if low is None else (q, k.to(low), v.to(low))

    def cross_keys_values(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self._split(self.key_value(memory), 2)
        low = self.low_precision()
        return (k, v) if low is None else (k.to(low), v.to(low))

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
            return (out.reshape(n, 1, -1),
                    None if weights is None else weights.reshape(n, 1, -1))
        p = self.dropout if self.training else 0.0
        weights = None
        low = self.low_precision()
        if low is not None:
            # low-precision decoding: both products in bf16 over whole keys, the softmax in fp32
            # (with sources padded to runtime.LOW_PRECISION_WIDTH, a sentence gets the same bits
            # alone and in a batch; the fused kernel's blocking follows the batch's shape)
            scores = low_matmul(q.to(low), k.transpose(-1, -2)).float() / math.sqrt(self.head_dim)
            scores = _masked(scores, mask, causal)
            probs = torch.softmax(scores, dim=-1)
            weights = probs.mean(dim=1) if need_weights else None
            # over a padded source, block by block (runtime.low_weighted_sum); over the cache,
            # whose length is the same for every row, in one product
            context = (low_weighted_sum(probs, v) if k.size(-2) % LOW_PRECISION_WIDTH == 0
                       else low_matmul(probs.to(low), v))
            b, _, t, _ = context.shape
            return self.out(context.transpose(1, 2).reshape(b, t, -1)), weights
        # The explicit path computes the same attention and can keep its weights; it is also
        # the faster one for a single query (a decoding step), where fused kernels cost more to
        # set up than the product itself, and for training on the CPU, where the fused kernel's
        # backward pass took 63 ms a call at Multi30k shapes, several times the explicit one's.
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
        self.self_block, self.cross_block = Sublayer(cfg), Sublayer(cfg)
        self.ff_block = Sublayer(cfg)

    def forward(self, x: Tensor, cache: Optional[tuple[Tensor, Tensor]], cross_k: Tensor,
                cross_v: Tensor, mask: Tensor, need_weights: bool = False,
                cache_order: Optional[Tensor] = None, group: int = 1,
                cache_length: Optional[int] = None, cache_mask: Optional[Tensor] = None
                ) -> tuple[Tensor, tuple[Tensor, Tensor], Optional[Tensor]]:
        """x (B, T, D). With ``cache`` (keys, values of earlier positions, their rows picked by
        ``cache_order`` when given), x holds only the new positions and attends to the cache too;
        without it, x is a whole target, causally masked. With ``cache_length`` (one new
        position), the cache holds that many positions and then zero padding
        (``extend_cache``), which attention skips by ``cache_mask`` (1, 1, 1, padded width).
        Returns the output, this layer's keys and values (cache included), cross weights."""
        q, k, v = self.self_attn.self_projections(self.self_block.inputs(x))
        if cache is not None:
            k, v = (extend_cache(cache[0], cache_order, k, cache_length),
                    extend_cache(cache[1], cache_order, v, cache_length))
        causal = cache is None and x.size(1) > 1
        x = self.self_block.residual(x, self.self_attn.attend(q, k, v, cache_mask,
                                                              causal=causal)[0])
        q = self.cross_attn.cross_query(self.cross_block.inputs(x))
        context, weights = self.cross_attn.attend(q, cross_k, cross_v, mask,
                                                  need_weights=need_weights, group=group)
        x = self.cross_block.residual(x, context)
        return self.ff_block.residual(x, self.ff(self.ff_block.inputs(x))), (k, v), weights


# ----------------------------------------------------------------------------------------------
# The model


class Transformer(nn.Module):
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
        if tcfg.positions == "learned":
            self.positions = nn.Embedding(tcfg.max_positions, d)
        else:
            self.register_buffer("sinusoids", sinusoidal_table(tcfg.max_positions, d),
                                 persistent=False)
        self.emb_scale = math.sqrt(d) if tcfg.scale_embeddings else 1.0
        self.emb_dropout = Dropout(tcfg.dropout)
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

    def _embed(self, table: nn.Embedding, tokens: Tensor, start: int = 0) -> Tensor:
        """tokens (B, T) at positions start..start+T-1 -> (B, T, D). Positions past
        ``max_positions`` reuse the last one."""
        index = torch.arange(start, start + tokens.size(1), device=tokens.device)
        index = index.clamp(max=self.tcfg.max_positions - 1)
        pos = self.positions(index) if self.tcfg.positions == "learned" else self.sinusoids[index]
        return self.emb_dropout(table(tokens) * self.emb_scale + pos.to(table.weight.dtype))

    # -- encoder side -----------------------------------------------------------------------

    def encode_states(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """src (B, S) -> encoder output (B, S, D) and the key mask (B, 1, 1, S)."""
        mask = (src != PAD_ID)[:, None, None, :]
        x = self._embed(self.src_embed, src)
        for layer in self.encoder_layers:
            x = layer(x, mask)
        return self.encoder_norm(x), mask

    def encode(self, src: Tensor,
               src_lengths: Tensor) -> tuple[TransformerMemory, TransformerState]:
        """src (B, S) padded ids -> cross-attention keys/values of every layer, an empty cache.
        In low-precision decoding the source is padded further (``runtime.pad_source``)."""
        width = src.size(1)
        src = pad_source(src, low_precision_of(self))
        states, mask = self.encode_states(src)
        # contiguous once here (the fused projection's views are strided): every step reads
        # them, and beam search copies their rows when it expands and prunes the batch
        keys, values = zip(*((k.contiguous(), v.contiguous()) for k, v in
                             (layer.cross_attn.cross_keys_values(states)
                              for layer in self.decoder_layers)))
        h = self.tcfg.heads
        empty = keys[0].new_zeros(src.size(0), h, 0, self.tcfg.d_model // h)  # (its dtype)
        n = len(self.decoder_layers)
        return (TransformerMemory(list(keys), list(values), mask[:, 0, 0, :], width),
                TransformerState([empty] * n, [empty] * n, 0))

    # -- decoder side -----------------------------------------------------------------------

    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: logits (B, T, V) for every target position."""
        states, mask = self.encode_states(src)
        x = self._embed(self.tgt_embed, tgt_in)
        for layer in self.decoder_layers:
            k, v = layer.cross_attn.cross_keys_values(states)
            x, _, _ = layer(x, None, k, v, mask)
        return self._logits(self.decoder_norm(x))

    def _logits(self, h: Tensor) -> Tensor:
        """The output layer (at bf16 decoding a ``runtime.LowPrecisionLinear``, which casts its
        input itself and returns fp32; in training autocast decides)."""
        return self.output_layer(h)

    def step(self, prev_tokens: Tensor, state: TransformerState, memory: TransformerMemory,
             need_attention: bool = False
             ) -> tuple[Tensor, TransformerState, Optional[Tensor]]:
        """One position: prev_tokens (N,) -> log-probabilities (N, V), the cache one longer, and
        with ``need_attention`` the last layer's cross-attention (N, S) averaged over heads."""
        x = self._embed(self.tgt_embed, prev_tokens.unsqueeze(1), state.position)  # (N, 1, D)
        mask = memory.mask[:, None, None, :]
        keys, values, weights = [], [], None
        last = len(self.decoder_layers) - 1
        # low-precision decoding keeps the cache padded (extend_cache), the padding masked
        length = cache_mask = None
        if low_precision_of(self) is not None:
            length = state.position
            positions = torch.arange(round_up(length + 1, LOW_PRECISION_WIDTH), device=x.device)
            cache_mask = (positions <= length)[None, None, None, :]
        for i, layer in enumerate(self.decoder_layers):
            x, (k, v), w = layer(x, (state.keys[i], state.values[i]), memory.keys[i],
                                 memory.values[i], mask, need_weights=need_attention and i == last,
                                 cache_order=state.order, group=memory.group,
                                 cache_length=length, cache_mask=cache_mask)
            keys.append(k)
            values.append(v)
            weights = w if w is not None else weights
        logits = self._logits(self.decoder_norm(x[:, 0]))
        return (torch.log_softmax(logits.float(), dim=-1),
                TransformerState(keys, values, state.position + 1),
                None if weights is None else weights[:, 0, :memory.width])
