"""Greedy, sampling, batched beam search and forced decoding over the model contract of
``nmt_cli.model.contract`` (which an ensemble keeps too). Tensors in, token ids out; no I/O.

Each sentence is searched on its own (finished ones leave the batch), so results never depend on
the batch size. Length limits are ``a * src_lengths + b``; scores follow ``penalties``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from nmt_cli.config import DecodeConfig
from nmt_cli.decoding.hypotheses import Hypothesis
from nmt_cli.decoding.penalties import (NEG_INF, LengthNorm, block_repeated_ngrams,
                                        constrain_length, forbid_specials, output_lengths)
from nmt_cli.ids import BOS_ID, EOS_ID, PAD_ID


@dataclass
class SearchResult:
    """Per sentence, hypotheses best first."""

    hypotheses: list[list[Hypothesis]] = field(default_factory=list)

    def best(self) -> list[list[int]]:
        return [h[0].tokens for h in self.hypotheses]


# A choice rule for single-path decoding: (log_probs (N, V), sentence ids (N,)) -> tokens (N,).
Chooser = Callable[[Tensor, Tensor], Tensor]


def _block_size(vocab: int) -> int | None:
    """A divisor of the vocabulary size giving about 64 blocks, or None if there is none."""
    sizes = [b for b in range(16, 1025) if vocab % b == 0 and vocab // b >= 8]
    return min(sizes, key=lambda b: abs(vocab // b - 64)) if sizes else None


def top_per_row(scores: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """``scores.topk(n, dim=-1)``, faster on CPU: a row's n best values lie in its n vocabulary
    blocks with the largest maxima, so ``topk`` runs over those alone, row by row."""
    rows, vocab = scores.shape
    block = _block_size(vocab)
    if block is None or n * block * 4 > vocab or not scores.is_contiguous():
        return scores.topk(n, dim=-1)
    blocks = scores.view(rows, vocab // block, block)
    best_blocks = blocks.amax(dim=-1).topk(n, dim=-1).indices  # (rows, n)
    within = blocks.gather(1, best_blocks.unsqueeze(-1).expand(rows, n, block))
    values, pos = within.view(rows, n * block).topk(n, dim=-1)
    block_of = torch.div(pos, block, rounding_mode="floor")
    return values, best_blocks.gather(1, block_of) * block + (pos - block_of * block)


def _argmax(log_probs: Tensor, sentences: Tensor) -> Tensor:
    return top_per_row(log_probs, 1)[1].squeeze(1)


@torch.no_grad()
def _single_path(model, src: Tensor, src_lengths: Tensor, choose: Chooser, cfg: DecodeConfig,
                 return_attention: bool) -> SearchResult:
    """One hypothesis per sentence, one token per step; finished sentences leave the batch."""
    batch, device = src.size(0), src.device
    norm = LengthNorm.of(cfg)
    memory, state = model.encode(src, src_lengths)
    min_len, max_len = (t.to(device) for t in output_lengths(cfg, src_lengths))
    steps = int(max_len.max()) + 1
    out = src.new_full((batch, steps), EOS_ID)  # token chosen at each step
    out_len = torch.full((batch,), steps, dtype=torch.long, device=device)
    log_prob = torch.zeros(batch, device=device)
    attn = torch.zeros((batch, steps, src.size(1)), device=device) if return_attention else None
    active = torch.arange(batch, device=device)  # sentence id of each row
    prev = src.new_full((batch,), BOS_ID)
    for t in range(steps):
        lp, state, weights = model.step(prev, state, memory, return_attention)  # (N, V)
        forbid_specials(lp, cfg.allow_unk)
        if cfg.no_repeat_ngram and t:
            block_repeated_ngrams(lp, out.index_select(0, active)[:, :t], cfg.no_repeat_ngram)
        constrain_length(lp, t, min_len, max_len)
        token = choose(lp, active)
        out[active, t] = token
        log_prob.index_add_(0, active, lp.gather(1, token.unsqueeze(1)).squeeze(1))
        if attn is not None:
            attn[active, t] = weights.float()
        ended = token == EOS_ID
        if bool(ended.any()):
            out_len[active[ended]] = t + 1
            keep = (~ended).nonzero().view(-1)
            if keep.numel() == 0:
                break
            active, token = active.index_select(0, keep), token.index_select(0, keep)
            min_len, max_len = min_len.index_select(0, keep), max_len.index_select(0, keep)
            state, memory = state.select(keep), memory.select(keep)
        prev = token
    lengths, sums, rows = out_len.tolist(), log_prob.tolist(), out.tolist()
    n_src = src_lengths.tolist()
    hyps = []
    for i in range(batch):
        n = lengths[i]  # EOS included
        att = attn[i, :n, : n_src[i]].cpu() if attn is not None else None
        hyps.append([Hypothesis(rows[i][: n - 1], norm.score(sums[i], n), sums[i], att)])
    return SearchResult(hyps)


def greedy_search(model, src: Tensor, src_lengths: Tensor, cfg: DecodeConfig,
                  return_attention: bool = False) -> SearchResult:
    """The most likely token at every step, for the whole batch at once."""
    return _single_path(model, src, src_lengths, _argmax, cfg, return_attention)


def sample_search(model, src: Tensor, src_lengths: Tensor, seeds: Sequence[int],
                  cfg: DecodeConfig, return_attention: bool = False) -> SearchResult:
    """Draw each token under ``cfg.temperature``, ``top_k`` and ``top_p``; sentence i has its own
    generator seeded with ``seeds[i]``, so a sample never depends on the batch. Scores are the
    model's own log-probabilities."""
    generators = [torch.Generator(device=src.device).manual_seed(int(s)) for s in seeds]
    temperature, top_k, top_p = cfg.temperature, cfg.top_k, cfg.top_p

    def choose(log_probs: Tensor, sentences: Tensor) -> Tensor:
        logits = log_probs / temperature
        if top_k > 0 and top_k < logits.size(1):
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, NEG_INF)
        if top_p < 1.0:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(dim=-1)
            outside = probs.cumsum(dim=-1) - probs >= top_p  # the mass before it is already top_p
            outside[:, 0] = False
            logits = logits.scatter(1, order, sorted_logits.masked_fill(outside, NEG_INF))
        probs = logits.softmax(dim=-1)
        return torch.cat([torch.multinomial(probs[i], 1, generator=generators[s])
                          for i, s in enumerate(sentences.tolist())])

    return _single_path(model, src, src_lengths, choose, cfg, return_attention)


def beam_search(model, src: Tensor, src_lengths: Tensor, cfg: DecodeConfig,
                return_attention: bool = False) -> SearchResult:
    """``cfg.n_best`` hypotheses per sentence, best first; one beam and one hypothesis take greedy
    search's faster path (same result)."""
    if cfg.beam_size == 1 and cfg.n_best == 1:
        return greedy_search(model, src, src_lengths, cfg, return_attention)
    return batched_beam_search(model, src, src_lengths, cfg, return_attention)


@dataclass
class Beams:
    """The live part of a batched beam search: ``beams`` rows per unfinished sentence, flat."""

    active: Tensor  # (n_act,) sentence id of each group of rows
    scores: Tensor  # (n_act, beams) summed log-probabilities
    prefix: Tensor  # (n_act * beams, t + 1) tokens so far, BOS first
    state: Any  # the model's decoder state, one row per hypothesis
    memory: Any  # the encoder side (``select`` shares a sentence's copy across its rows)
    attention: Tensor | None  # (n_act * beams, t, S) attention history, reordered with prefix
    beams: int = 1  # 1 at the first step (all beams would be the same), then k

    def advance(self, origin: Tensor, tokens: Tensor, scores: Tensor, weights: Tensor | None,
                k: int) -> None:
        """Continue rows ``origin`` (n_act * k,) with ``tokens`` (n_act * k,) and ``scores``
        (n_act, k); the first call turns each sentence's one row into k."""
        self.prefix = torch.cat([self.prefix.index_select(0, origin), tokens.view(-1, 1)], 1)
        self.state = self.state.select(origin)
        if self.beams == 1:
            rows = torch.arange(self.active.numel(), device=origin.device)
            self.memory = self.memory.select(rows.repeat_interleave(k))
            self.beams = k
        if self.attention is not None:
            self.attention = torch.cat([self.attention.index_select(0, origin),
                                        weights.float().index_select(0, origin).unsqueeze(1)], 1)
        self.scores = scores

    def keep(self, keep: Tensor) -> None:
        """Only the sentences ``keep`` (indices into ``active``) go on."""
        offsets = torch.arange(self.beams, device=keep.device)
        rows = (keep.unsqueeze(1) * self.beams + offsets).view(-1)
        self.active, self.scores = self.active.index_select(0, keep), self.scores.index_select(0, keep)
        self.prefix, self.state, self.memory = (self.prefix.index_select(0, rows),
                                                self.state.select(rows), self.memory.select(rows))
        if self.attention is not None:
            self.attention = self.attention.index_select(0, rows)


@dataclass
class Finished:
    """Each sentence's finished hypotheses, best first (at most k), and the score of its
    ``n_best``-th one (NEG_INF while it has fewer)."""

    hypotheses: list[list[Hypothesis]]
    nth_best: Tensor  # (batch,)
    k: int
    n_best: int

    def add(self, sentences: list[int], hyps: list[Hypothesis]) -> None:
        for sent, hyp in zip(sentences, hyps):
            self.hypotheses[sent].append(hyp)
        for sent in set(sentences):
            fin = self.hypotheses[sent]
            fin.sort(key=lambda h: h.score, reverse=True)  # stable: earlier (shorter) first on ties
            del fin[self.k:]
            if len(fin) >= self.n_best:
                self.nth_best[sent] = fin[self.n_best - 1].score


@torch.no_grad()
def batched_beam_search(model, src: Tensor, src_lengths: Tensor, cfg: DecodeConfig,
                        return_attention: bool = False) -> SearchResult:
    """Every sentence's beams advance together in one flat batch.

    Each step takes the top ``2 * beam`` continuations per sentence: EOS among the top ``beam``
    finishes a hypothesis, the best ``beam`` others go on. A sentence is done at its length limit
    or when no live hypothesis can beat its ``n_best``-th finished one (live scores only fall, and
    the normalizer is largest at the limit). A sentence's beams share one encoder memory, which is
    never reordered, only expanded and compacted.
    """
    batch, k, device = src.size(0), cfg.beam_size, src.device
    norm = LengthNorm.of(cfg)
    memory, state = model.encode(src, src_lengths)
    min_len, max_len = (t.to(device) for t in output_lengths(cfg, src_lengths))
    live, finished = start_beams(src, state, memory, k, cfg.n_best, return_attention)
    step = 0
    while live.active.numel() > 0:
        lp, live.state, weights = model.step(live.prefix[:, -1], live.state, live.memory,
                                             return_attention)  # (n_act * beams, V)
        act_min, act_max = min_len.index_select(0, live.active), max_len.index_select(0, live.active)
        _constrain(lp, live, cfg, step, act_min, act_max)
        top_scores, beam_origin, token = _candidates(lp, live.scores, k)
        is_eos = token == EOS_ID
        ends = is_eos[:, :k] & (top_scores[:, :k] > NEG_INF)
        if bool(ends.any()):
            _store_finished(live, ends, top_scores, beam_origin, weights,
                            float(norm.divisor(step + 1)), finished)
        cont, order = top_scores.masked_fill(is_eos, NEG_INF).topk(k, dim=-1)  # (n_act, k)
        n_act = live.active.numel()
        group_start = torch.arange(0, n_act * live.beams, live.beams, device=device).unsqueeze(1)
        origin = (beam_origin.gather(1, order) + group_start).view(-1)  # rows that go on
        live.advance(origin, token.gather(1, order), cont, weights, k)

        best_live = cont[:, 0]
        bound = best_live / norm.divisor(act_max + 1)
        done = (step >= act_max) | (best_live == NEG_INF) | (
            finished.nth_best.index_select(0, live.active) >= bound)
        if bool(done.any()):  # drop done sentences from every tensor
            live.keep((~done).nonzero().view(-1))
        step += 1
    return _beam_result(finished, src_lengths, cfg.n_best)


def start_beams(src: Tensor, state, memory, k: int, n_best: int,
                return_attention: bool) -> tuple[Beams, Finished]:
    """Every sentence's one row (BOS, score 0) and its empty finished list."""
    batch, device = src.size(0), src.device
    live = Beams(torch.arange(batch, device=device), torch.zeros((batch, 1), device=device),
                 torch.full((batch, 1), BOS_ID, dtype=torch.long, device=device), state, memory,
                 torch.zeros((batch, 0, src.size(1)), device=device) if return_attention else None)
    finished = Finished([[] for _ in range(batch)], torch.full((batch,), NEG_INF, device=device),
                        k, n_best)
    return live, finished


def _constrain(lp: Tensor, live: Beams, cfg: DecodeConfig, step: int, act_min: Tensor,
               act_max: Tensor) -> None:
    """Forbidden tokens, repeated n-grams and the length limits, in place on lp (rows, V)."""
    forbid_specials(lp, cfg.allow_unk)
    if cfg.no_repeat_ngram and step:
        block_repeated_ngrams(lp, live.prefix[:, 1:], cfg.no_repeat_ngram)
    constrain_length(lp, step, act_min.repeat_interleave(live.beams),
                     act_max.repeat_interleave(live.beams))


def _candidates(lp: Tensor, scores: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The best ``2k`` continuations per sentence: summed scores (n_act, <= 2k), the beam each
    extends (its place among the sentence's rows), the token. A beam has at most one EOS
    continuation, so all lie within each beam's best k + 1: only k * (k + 1) sums are ranked."""
    n_act, beams = scores.shape
    width = min(k + 1, lp.size(-1))
    row_lp, row_tok = top_per_row(lp, width)  # (n_act * beams, width)
    cand = (scores.view(-1, 1) + row_lp).view(n_act, beams * width)
    top_scores, top_pos = cand.topk(min(2 * k, beams * width), dim=-1)
    beam_origin = torch.div(top_pos, width, rounding_mode="floor")
    return top_scores, beam_origin, row_tok.view(n_act, beams * width).gather(1, top_pos)


def _store_finished(live: Beams, ends: Tensor, top_scores: Tensor, beam_origin: Tensor,
                    weights: Tensor | None, divisor: float, finished: Finished) -> None:
    """Move the hypotheses that just produced EOS (``ends``, (n_act, k)) into their sentences'
    finished lists, scored with the length normalizer's ``divisor``."""
    row, col = ends.nonzero(as_tuple=True)
    origin = row * live.beams + beam_origin[row, col]
    tokens = live.prefix.index_select(0, origin)[:, 1:].tolist()
    raw = top_scores[row, col].tolist()
    atts = None
    if live.attention is not None:
        atts = torch.cat([live.attention.index_select(0, origin),
                          weights.float().index_select(0, origin).unsqueeze(1)], 1).cpu()
    hyps = [Hypothesis(tokens[j], raw[j] / divisor, raw[j], atts[j] if atts is not None else None)
            for j in range(len(raw))]
    finished.add(live.active.index_select(0, row).tolist(), hyps)


def _beam_result(finished: Finished, src_lengths: Tensor, n_best: int) -> SearchResult:
    n_src = src_lengths.tolist()
    result = []
    for sent, found in enumerate(finished.hypotheses):
        hyps = found[:n_best] or [Hypothesis([], NEG_INF, NEG_INF)]
        for h in hyps:
            if h.attention is not None:
                h.attention = h.attention[:, : n_src[sent]]
        result.append(hyps)
    return SearchResult(result)


@torch.no_grad()
def score_targets(model, src: Tensor, src_lengths: Tensor, tgt: Tensor,
                  tgt_lengths: Tensor) -> Tensor:
    """Forced decoding: the summed log-probability (B,) of each target; tgt (B, T) holds target
    ids, EOS, then PAD, and tgt_lengths (B,) counts EOS."""
    memory, state = model.encode(src, src_lengths)
    total = torch.zeros(src.size(0), device=src.device)
    prev = src.new_full((src.size(0),), BOS_ID)
    for t in range(tgt.size(1)):
        lp, state, _ = model.step(prev, state, memory)
        tok = tgt[:, t]
        gained = lp.gather(1, tok.unsqueeze(1)).squeeze(1)
        total += gained.masked_fill(t >= tgt_lengths, 0.0)
        prev = tok.masked_fill(tok == PAD_ID, EOS_ID)
    return total
