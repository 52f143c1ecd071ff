"""Lexically constrained beam search with dynamic beam allocation (Post & Vilar 2018), batched.

Each sentence has target phrases (piece ids) that its output must contain, whole and in any
order. A hypothesis tracks which phrases it has met and how far it is into the one it is
producing; its *bank* is the number of constraint pieces it has produced. Every step each
sentence gathers candidates from three sources:

- the best ``2 * k`` continuations of its ``k`` rows, as plain beam search takes them;
- each row's single best continuation;
- each row's next constraint piece: the next piece of the phrase it is in, or else the first
  piece of every phrase it has not met.

Candidates that cannot meet their remaining constraints within the length limit are dropped. EOS
is allowed only to hypotheses that met every constraint, and finishes one when it ranks among the
best ``k`` candidates of the full bank. The ``k`` rows that go on are taken round-robin over the
banks, from the most progress down, each bank's best first, so that a bank's slots go to others
when it has too few candidates. A hypothesis that leaves a phrase half-made loses that progress.

Each sentence's candidates depend on its own rows only, so results never depend on the batch.
The model is used through the same contract as ``search`` (ensembles and shallow fusion too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from nmt_cli.config import DecodeConfig
from nmt_cli.decoding.hypotheses import Hypothesis
from nmt_cli.decoding.penalties import NEG_INF, LengthNorm, output_lengths
from nmt_cli.decoding.search import (Beams, Finished, SearchResult, _constrain, start_beams,
                                     top_per_row)
from nmt_cli.ids import EOS_ID


def constrained_beam(beam_size: int, phrases: int) -> int:
    """The beam a sentence with ``phrases`` constraints is searched with: at least one row per
    phrase plus one, so that each bank of progress can hold a hypothesis."""
    return max(beam_size, phrases + 1)


@dataclass(frozen=True)
class Progress:
    """How far one hypothesis is through its sentence's phrases."""

    met: int = 0  # bit j: phrase j is complete
    phrase: int = -1  # the phrase being produced, or -1
    pos: int = 0  # its pieces produced so far
    done: int = 0  # constraint pieces produced: the bank
    closed: bool = False  # the last token completed a phrase: the next may not go on its word


class Phrases:
    """One sentence's constraints, and how each token moves a hypothesis through them."""

    def __init__(self, pieces: Sequence[Sequence[int]]):
        self.pieces = [tuple(p) for p in pieces]
        self.total = sum(map(len, self.pieces))
        self.all_met = (1 << len(self.pieces)) - 1
        self.lengths = [len(p) for p in self.pieces]

    def next_tokens(self, p: Progress) -> list[int]:
        """The constraint pieces that make progress from ``p``."""
        if p.phrase >= 0:
            return [self.pieces[p.phrase][p.pos]]
        return list(dict.fromkeys(piece[0] for j, piece in enumerate(self.pieces)
                                  if not p.met >> j & 1))

    def advance(self, p: Progress, token: int) -> Progress:
        """``p`` after ``token``: on along the phrase in progress, or else in the unmet phrase
        that the longest end of what was just produced begins (``(5, 4)`` after ``5`` started
        ``(5, 6)``), or in none."""
        if p.phrase >= 0:
            piece = self.pieces[p.phrase]
            if piece[p.pos] == token:
                return self._at(p.met, p.phrase, p.pos + 1)
            window = piece[:p.pos] + (token,)
        else:
            window = (token,)
        for start in range(len(window)):
            tail = window[start:]
            for j, piece in enumerate(self.pieces):
                if not p.met >> j & 1 and piece[:len(tail)] == tail:
                    return self._at(p.met, j, len(tail))
        return Progress(p.met, -1, 0, self._met_pieces(p.met))

    def _at(self, met: int, phrase: int, pos: int) -> Progress:
        if pos == self.lengths[phrase]:
            met |= 1 << phrase
            return Progress(met, -1, 0, self._met_pieces(met), closed=True)
        return Progress(met, phrase, pos, self._met_pieces(met) + pos)

    def _met_pieces(self, met: int) -> int:
        return sum(n for j, n in enumerate(self.lengths) if met >> j & 1)


@torch.no_grad()
def constrained_beam_search(model, src: Tensor, src_lengths: Tensor,
                            constraints: Sequence[Sequence[Sequence[int]]], cfg: DecodeConfig,
                            return_attention: bool = False,
                            word_pieces: Tensor | None = None) -> SearchResult:
    """``cfg.n_best`` hypotheses per sentence that contain all of its ``constraints`` (piece ids
    per phrase), best first; ``cfg.beam_size`` is the beam of every sentence (callers widen it
    with ``constrained_beam``). A sentence whose search finds no such hypothesis gets an empty
    list. Every phrase must fit the sentence's length limit (``constraints.prepare`` checks).
    ``word_pieces`` (V,) marks the pieces that go on a word (``constraints.word_continuations``):
    none may follow a completed phrase, so that the phrase ends its word as given."""
    batch, k, device = src.size(0), cfg.beam_size, src.device
    norm = LengthNorm.of(cfg)
    phrases = [Phrases(c) for c in constraints]
    memory, state = model.encode(src, src_lengths)
    min_len, max_len = (t.to(device) for t in output_lengths(cfg, src_lengths))
    limits = max_len.tolist()
    live, finished = start_beams(src, state, memory, k, cfg.n_best, return_attention)
    progress = [Progress() for _ in range(batch)]  # one per live row
    step = 0
    while live.active.numel() > 0:
        lp, live.state, weights = model.step(live.prefix[:, -1], live.state, live.memory,
                                             return_attention)  # (n_act * beams, V)
        act_min, act_max = min_len.index_select(0, live.active), max_len.index_select(0, live.active)
        _constrain(lp, live, cfg, step, act_min, act_max)
        sentences = live.active.tolist()
        beams = live.beams
        unmet = [r for r, p in enumerate(progress) if p.met != phrases[sentences[r // beams]].all_met]
        if unmet:
            lp[torch.tensor(unmet, device=device), EOS_ID] = NEG_INF
        closed = [r for r, p in enumerate(progress) if p.closed]
        if closed and word_pieces is not None:
            rows = torch.tensor(closed, device=device)
            lp[rows] = lp[rows].masked_fill(word_pieces, NEG_INF)
        picked = _step(lp, live, progress, phrases, sentences, limits, step, k)
        origin, tokens, scores, progress, ends = picked
        if ends:
            _store(live, ends, weights, float(norm.divisor(step + 1)), finished)
        n_act = len(sentences)
        origin_t = torch.tensor(origin, dtype=torch.long, device=device)
        live.advance(origin_t, torch.tensor(tokens, dtype=torch.long, device=device),
                     torch.tensor(scores, device=device).view(n_act, k), weights, k)
        best_live = live.scores.max(dim=1).values
        bound = best_live / norm.divisor(act_max + 1)
        done = (step >= act_max) | (best_live == NEG_INF) | (
            finished.nth_best.index_select(0, live.active) >= bound)
        if bool(done.any()):
            keep = (~done).nonzero().view(-1)
            rows = (keep.unsqueeze(1) * k + torch.arange(k, device=device)).view(-1).tolist()
            progress = [progress[r] for r in rows]
            live.keep(keep)
        step += 1
    n_src = src_lengths.tolist()
    for sent, hyps in enumerate(finished.hypotheses):
        del hyps[cfg.n_best:]
        for h in hyps:
            if h.attention is not None:
                h.attention = h.attention[:, : n_src[sent]]
    return SearchResult(finished.hypotheses)


def _step(lp: Tensor, live: Beams, progress: list[Progress], phrases: list[Phrases],
          sentences: list[int], limits: list[int], step: int, k: int):
    """The rows that go on (flat origins, tokens, scores, their progress; k per sentence) and the
    hypotheses that end here ((row, score) pairs)."""
    n_act, beams = live.scores.shape
    device = lp.device
    total = lp + live.scores.view(-1, 1)  # (n_act * beams, V)
    width = min(k + 1, lp.size(-1))
    row_scores, row_tokens = top_per_row(total, width)  # each row's best, ranked per sentence
    flat_scores = row_scores.view(n_act, beams * width)
    top_scores, top_pos = flat_scores.topk(min(2 * k, beams * width), dim=-1)
    # forced candidates: each row's next constraint pieces
    extra_rows, extra_tokens = [], []
    for r, p in enumerate(progress):
        for token in phrases[sentences[r // beams]].next_tokens(p):
            extra_rows.append(r)
            extra_tokens.append(token)
    extra_scores = total[torch.tensor(extra_rows, dtype=torch.long, device=device),
                         torch.tensor(extra_tokens, dtype=torch.long, device=device)].tolist() \
        if extra_rows else []
    top_scores, top_pos = top_scores.tolist(), top_pos.tolist()
    best_scores, best_tokens = row_scores[:, 0].tolist(), row_tokens[:, 0].tolist()
    row_tok = row_tokens.tolist()
    per_sentence: list[dict[tuple[int, int], float]] = [{} for _ in range(n_act)]
    for s in range(n_act):
        cands = per_sentence[s]
        for value, pos in zip(top_scores[s], top_pos[s]):
            r = s * beams + pos // width
            cands[(r, row_tok[r][pos % width])] = value
        for r in range(s * beams, (s + 1) * beams):
            cands[(r, best_tokens[r])] = best_scores[r]
    for r, token, value in zip(extra_rows, extra_tokens, extra_scores):
        per_sentence[r // beams][(r, token)] = value

    origin, tokens, scores, new_progress, ends = [], [], [], [], []
    for s, cands in enumerate(per_sentence):
        ph, limit = phrases[sentences[s]], limits[sentences[s]]
        banks: dict[int, list[tuple[float, int, int, Progress]]] = {}
        full: list[tuple[float, bool, int, int]] = []  # the full bank with EOS: who ends
        for (r, token), value in cands.items():
            if value == NEG_INF:
                continue
            if token == EOS_ID:
                full.append((value, True, r, token))
                continue
            p = ph.advance(progress[r], token)
            if step + ph.total - p.done > limit - 1:  # its missing pieces no longer fit
                continue
            banks.setdefault(p.done, []).append((value, r, token, p))
            if p.done == ph.total:
                full.append((value, False, r, token))
        full.sort(key=lambda c: (-c[0], c[2], c[3]))
        for value, is_eos, r, _ in full[:k]:
            if is_eos:
                ends.append((r, value))
        chosen = _allocate(banks, k)
        for value, r, token, p in chosen:
            origin.append(r)
            tokens.append(token)
            scores.append(value)
            new_progress.append(p)
        for _ in range(k - len(chosen)):  # a dead row: nothing follows from it
            origin.append(s * beams)
            tokens.append(EOS_ID)
            scores.append(NEG_INF)
            new_progress.append(Progress())
    return origin, tokens, scores, new_progress, ends


def _allocate(banks: dict[int, list[tuple[float, int, int, Progress]]], k: int):
    """At most ``k`` candidates, round-robin over the banks from the most progress down, each
    bank's best first; returned best first."""
    queues = [sorted(banks[b], key=lambda c: (-c[0], c[1], c[2])) for b in sorted(banks,
                                                                                   reverse=True)]
    chosen: list[tuple[float, int, int, Progress]] = []
    depth = 0
    while len(chosen) < k and any(depth < len(q) for q in queues):
        for q in queues:
            if depth < len(q) and len(chosen) < k:
                chosen.append(q[depth])
        depth += 1
    chosen.sort(key=lambda c: (-c[0], c[1], c[2]))
    return chosen


def _store(live: Beams, ends: list[tuple[int, float]], weights: Tensor | None, divisor: float,
           finished: Finished) -> None:
    """Hypotheses that produced EOS from rows ``ends`` go to their sentences' finished lists."""
    device = live.prefix.device
    rows = torch.tensor([r for r, _ in ends], dtype=torch.long, device=device)
    tokens = live.prefix.index_select(0, rows)[:, 1:].tolist()
    atts = None
    if live.attention is not None:
        atts = torch.cat([live.attention.index_select(0, rows),
                          weights.float().index_select(0, rows).unsqueeze(1)], 1).cpu()
    hyps = [Hypothesis(tokens[j], raw / divisor, raw, atts[j] if atts is not None else None)
            for j, (_, raw) in enumerate(ends)]
    sentences = live.active.index_select(0, torch.div(rows, live.beams,
                                                      rounding_mode="floor")).tolist()
    finished.add(sentences, hyps)
