"""Greedy and batched beam search over a model's ``step``. Tensors in, token ids out; no I/O.

The model contract: ``encode(src, src_lengths) -> (memory, state)`` and
``step(prev_tokens, state, memory) -> (log_probs (N, V), state, attention (N, S))``, where
``memory.select(index)`` and ``state.select(index)`` pick rows of the flattened batch.

Scores: a hypothesis' score is its summed log-probability (EOS included) divided by a length
penalty: GNMT's ``((5 + len) / 6) ** alpha``, with len counting EOS; alpha 0 means no penalty.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from nmt_cli.tokenizer import BOS_ID, EOS_ID, PAD_ID


def length_penalty(length: Tensor | int, alpha: float) -> Tensor | float:
    if alpha == 0.0:
        return 1.0 if isinstance(length, int) else torch.ones_like(length, dtype=torch.float)
    return ((5.0 + length) / 6.0) ** alpha


def max_lengths(src_lengths: Tensor, a: float, b: int) -> Tensor:
    """Longest output allowed per sentence (EOS not counted): a * source length + b."""
    return (src_lengths.float() * a).floor().long() + b


def _forbid_specials(log_probs: Tensor, allow_eos: bool) -> None:
    """Padding and BOS are never generated; EOS only once the minimum length is reached."""
    log_probs[:, PAD_ID] = float("-inf")
    log_probs[:, BOS_ID] = float("-inf")
    if not allow_eos:
        log_probs[:, EOS_ID] = float("-inf")


def _force_eos(log_probs: Tensor, rows: Tensor) -> None:
    """Rows at their length limit may only end; EOS keeps the model's own log-probability."""
    if bool(rows.any()):
        eos = log_probs[:, EOS_ID].clone()
        log_probs.masked_fill_(rows.unsqueeze(1), float("-inf"))
        log_probs[:, EOS_ID] = eos


@dataclass
class Hypothesis:
    tokens: list[int]  # without BOS and EOS
    score: float  # normalized by the length penalty
    log_prob: float  # summed log-probability, EOS included
    attention: Tensor | None = None  # (len + 1, S) over the real source tokens


@dataclass
class SearchResult:
    """Per sentence, hypotheses best first."""

    hypotheses: list[list[Hypothesis]] = field(default_factory=list)

    def best(self) -> list[list[int]]:
        return [h[0].tokens for h in self.hypotheses]


@torch.no_grad()
def greedy_search(model, src: Tensor, src_lengths: Tensor, max_len_a: float = 1.5,
                  max_len_b: int = 10, min_len: int = 0, alpha: float = 1.0,
                  return_attention: bool = False) -> SearchResult:
    """Pick the most likely token at every step, for the whole batch at once."""
    batch = src.size(0)
    memory, state = model.encode(src, src_lengths)
    limit = max_lengths(src_lengths, max_len_a, max_len_b).to(src.device)
    prev = src.new_full((batch,), BOS_ID)
    tokens = src.new_zeros((batch, int(limit.max()) + 1))
    log_prob = torch.zeros(batch, device=src.device)
    lengths = torch.zeros(batch, dtype=torch.long, device=src.device)
    done = torch.zeros(batch, dtype=torch.bool, device=src.device)
    attn = []
    for t in range(int(limit.max()) + 1):
        lp, state, weights = model.step(prev, state, memory)
        _forbid_specials(lp, allow_eos=t >= min_len)
        _force_eos(lp, t >= limit)
        best_lp, best = lp.max(dim=-1)
        best = best.masked_fill(done, EOS_ID)
        log_prob += best_lp.masked_fill(done, 0.0)
        lengths += (~done).long()
        tokens[:, t] = best
        if return_attention:
            attn.append(weights)
        done |= best == EOS_ID
        prev = best
        if done.all():
            break
    hyps = []
    for i in range(batch):
        n = int(lengths[i])  # EOS included
        toks = tokens[i, : n - 1].tolist()
        att = torch.stack(attn, 1)[i, :n, : int(src_lengths[i])].cpu() if return_attention else None
        lp_i = float(log_prob[i])
        hyps.append([Hypothesis(toks, lp_i / float(length_penalty(n, alpha)), lp_i, att)])
    return SearchResult(hyps)


@torch.no_grad()
def beam_search(model, src: Tensor, src_lengths: Tensor, beam_size: int = 5, alpha: float = 1.0,
                max_len_a: float = 1.5, max_len_b: int = 10, min_len: int = 0, n_best: int = 1,
                return_attention: bool = False) -> SearchResult:
    """Batched beam search: every sentence's beams advance together in one flat batch.

    Each step takes the top ``2 * beam`` continuations per sentence; those ending in EOS among the
    top ``beam`` are finished and stored apart, and the best ``beam`` others go on. A sentence is
    done when it has ``beam`` finished hypotheses and no live one can still beat its best, or when it
    reaches its maximum length; done sentences leave the batch, so no work is spent on them.
    """
    if beam_size == 1 and n_best == 1:
        return greedy_search(model, src, src_lengths, max_len_a, max_len_b, min_len, alpha,
                             return_attention)
    device = src.device
    batch, k = src.size(0), beam_size
    n_best = min(n_best, k)
    memory, state = model.encode(src, src_lengths)
    flat = torch.arange(batch, device=device).repeat_interleave(k)  # each sentence k times
    memory, state = memory.select(flat), state.select(flat)
    limit = max_lengths(src_lengths, max_len_a, max_len_b).to(device)

    active = torch.arange(batch, device=device)  # sentence ids still searching
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # only the first beam is live at the start
    prefix = torch.full((batch * k, 1), BOS_ID, dtype=torch.long, device=device)
    attn_prefix = None  # (active * k, steps, S), reordered with prefix; kept only when asked for
    if return_attention:
        attn_prefix = torch.zeros((batch * k, 0, src.size(1)), device=device)
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    nth_best = torch.full((batch,), float("-inf"), device=device)  # n_best-th finished score
    step = 0
    while active.numel() > 0:
        n_act = active.numel()
        lp, state, weights = model.step(prefix[:, -1], state, memory)
        vocab = lp.size(-1)
        _forbid_specials(lp, allow_eos=step >= min_len)
        _force_eos(lp, (step >= limit[active]).repeat_interleave(k))
        cand = (scores.view(-1, 1) + lp).view(n_act, k * vocab)
        top_scores, top_ids = cand.topk(min(2 * k, k * vocab), dim=-1)  # (n_act, 2k)
        beam_origin = top_ids // vocab
        token = top_ids % vocab
        is_eos = token == EOS_ID
        length = step + 1  # tokens generated including this one (EOS counts)
        penalty = float(length_penalty(length, alpha))

        # Store finished hypotheses: EOS among the top k candidates.
        eos_rows = (is_eos[:, :k] & (top_scores[:, :k] > float("-inf"))).nonzero().tolist()
        for row, col in eos_rows:
            sent = int(active[row])
            origin = row * k + int(beam_origin[row, col])
            raw = float(top_scores[row, col])
            att = None
            if attn_prefix is not None:
                att = torch.cat([attn_prefix[origin], weights[origin].unsqueeze(0)], 0).cpu()
            fin = finished[sent]
            fin.append(Hypothesis(prefix[origin, 1:].tolist(), raw / penalty, raw, att))
            fin.sort(key=lambda h: h.score, reverse=True)
            del fin[k:]
            if len(fin) >= n_best:
                nth_best[sent] = fin[n_best - 1].score

        # Continue with the best k non-EOS candidates per sentence.
        cont_scores = top_scores.masked_fill(is_eos, float("-inf"))
        cont_scores, order = cont_scores.topk(k, dim=-1)  # (n_act, k)
        origin = beam_origin.gather(1, order) + torch.arange(n_act, device=device).unsqueeze(1) * k
        next_tok = token.gather(1, order)

        # A sentence is done at its length limit, or when no live hypothesis can beat its
        # n-best finished ones: live scores only fall, and the penalty is largest at the limit.
        best_live = cont_scores[:, 0]
        bound = best_live / length_penalty(limit[active] + 1, alpha) if alpha > 0 else best_live
        done = (step >= limit[active]) | (best_live == float("-inf")) | (nth_best[active] >= bound)

        origin_flat = origin.view(-1)
        prefix = torch.cat([prefix.index_select(0, origin_flat), next_tok.view(-1, 1)], dim=1)
        state = state.select(origin_flat)
        if attn_prefix is not None:
            attn_prefix = torch.cat([attn_prefix.index_select(0, origin_flat),
                                     weights.index_select(0, origin_flat).unsqueeze(1)], dim=1)
        scores = cont_scores
        if bool(done.any()):  # drop done sentences from every tensor
            keep = (~done).nonzero().view(-1)
            rows = (keep.unsqueeze(1) * k + torch.arange(k, device=device)).view(-1)
            active, scores = active.index_select(0, keep), scores.index_select(0, keep)
            prefix, state, memory = prefix.index_select(0, rows), state.select(rows), \
                memory.select(rows)
            if attn_prefix is not None:
                attn_prefix = attn_prefix.index_select(0, rows)
        step += 1

    result = []
    for sent in range(batch):
        hyps = finished[sent][:n_best] or [Hypothesis([], float("-inf"), float("-inf"))]
        if return_attention:
            n_src = int(src_lengths[sent])
            hyps = [Hypothesis(h.tokens, h.score, h.log_prob,
                               None if h.attention is None else h.attention[:, :n_src])
                    for h in hyps]
        result.append(hyps)
    return SearchResult(result)

