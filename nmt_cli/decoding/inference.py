"""Text in, text out: tokenize, batch by length, search, detokenize, and restore the input order.

Inputs are sorted by length so each batch holds sentences of nearly the same length (little
padding), cut into batches of ``batch_size`` sentences or source tokens, and the results are put
back in input order. A source longer than ``max_src_len`` subwords is cut to that length (the
limit keeps time and memory bounded on a runaway line); empty and whitespace-only lines give empty
translations without reaching the model. N lines in always give N results, in order.

Every line is first cleaned by the checkpoint's own ``preprocess.normalize`` (Unicode form, control
and zero-width characters, whitespace), exactly as the training data was, so that a source typed
differently from the training text still meets the subwords the model knows.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import torch

from nmt_cli.config import DecodeConfig, NormalizeConfig
from nmt_cli.data import pad_sequences
from nmt_cli.decoding.hypotheses import (Translation, clean_lines, empty_translation,
                                         encode_sources)
from nmt_cli.decoding.search import (Hypothesis, SearchResult, beam_search, sample_search,
                                     score_targets)
from nmt_cli.ids import EOS_ID
from nmt_cli.text.tokenizer import Tokenizers


def make_batches(lengths: list[int], batch_size: int, batch_type: str = "sentences"
                 ) -> Iterator[list[int]]:
    """Indices of non-empty inputs, longest first, cut into batches of ``batch_size`` sentences,
    or of at most ``batch_size`` padded source tokens (a longer sentence goes alone)."""
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: (-lengths[i], i))
    if batch_type == "sentences":
        for start in range(0, len(order), batch_size):
            yield order[start:start + batch_size]
        return
    batch: list[int] = []
    for i in order:  # longest first: the first sentence of a batch sets its padded width
        width = lengths[batch[0]] if batch else lengths[i]
        if batch and (len(batch) + 1) * (width + 1) > batch_size:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _map_batches(search: Callable[[list[int]], SearchResult], batches: list[list[int]],
                 workers: int) -> Iterator[SearchResult]:
    """``search`` over ``batches``, in order. With ``workers`` above 1, that many batches run side
    by side in threads: torch releases the GIL inside its kernels, so on a CPU two batches, each on
    its own core, keep both cores busier than one batch whose small per-step matrix products are
    split over both (set torch's threads to cores / workers). Each batch is searched exactly as
    alone, so the output does not change. Grad and inference mode are per thread, so the workers
    take the caller's."""
    if workers <= 1 or len(batches) <= 1:
        yield from map(search, batches)
        return
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def run(batch: list[int]) -> SearchResult:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return search(batch)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nmt-search") as pool:
        yield from pool.map(run, batches)


def sentence_seed(seed: int, index: int) -> int:
    """A sample's seed depends on the run's seed and the line number only."""
    return (seed * 1_000_003 + index * 1009) % (2 ** 62)


def translate_lines(model, tok: Tokenizers, lines: list[str], cfg: DecodeConfig, *,
                    normalize: NormalizeConfig, device: torch.device | str = "cpu",
                    return_attention: bool = False, first_index: int = 0,
                    workers: int = 1) -> list[Translation]:
    """Translate ``lines``; the i-th result belongs to the i-th line, and empty lines stay empty.

    ``cfg`` is taken as it is (build it with ``config.with_overrides``); each result holds
    ``cfg.n_best`` hypotheses (or samples), best first. ``normalize`` is the checkpoint's
    ``preprocess.normalize``. The result never depends on the batch size: each sentence's search
    is independent of the others in its batch (packed encoder, masked attention, per-sentence
    beams, stopping and random generators). ``first_index`` is the first line's number in the
    whole input (sampling seeds). ``workers`` above 1 searches that many batches side by side
    (see ``_map_batches``); the results are the same as with one.
    """
    device = torch.device(device)
    n_best = cfg.n_best
    sources, src_ids, truncated = encode_sources(tok, lines, normalize, cfg.max_src_len)
    results: list[Translation | None] = [None] * len(lines)
    for i, ids in enumerate(src_ids):
        if not ids:
            results[i] = empty_translation(i, sources[i])

    def search(batch: list[int]) -> SearchResult:
        src, src_lengths = pad_sequences([src_ids[i] for i in batch], suffix=EOS_ID)
        src, src_lengths = src.to(device), src_lengths.to(device)
        if cfg.sample:  # n_best samples per sentence, each with its own seed
            rows = torch.arange(len(batch), device=device).repeat_interleave(n_best)
            seeds = [sentence_seed(cfg.seed, first_index + i) + j for i in batch
                     for j in range(n_best)]
            drawn = sample_search(model, src.index_select(0, rows),
                                  src_lengths.index_select(0, rows), seeds, cfg,
                                  return_attention).hypotheses
            return SearchResult([
                sorted((h for hs in drawn[b * n_best:(b + 1) * n_best] for h in hs),
                       key=lambda h: -h.score) for b in range(len(batch))])
        return beam_search(model, src, src_lengths, cfg, return_attention)

    batches = list(make_batches([len(s) for s in src_ids], cfg.batch_size, cfg.batch_type))
    for batch, found in zip(batches, _map_batches(search, batches, workers)):
        flat = [h.tokens for hyps in found.hypotheses for h in hyps]
        texts = iter(tok.decode_tgt(flat))
        for i, hyps in zip(batch, found.hypotheses):
            all_texts = [next(texts) for _ in hyps]
            results[i] = Translation(i, all_texts[0], hyps, len(src_ids[i]), truncated[i],
                                     all_texts, sources[i])
    return [r for r in results if r is not None]


def score_references(model, tok: Tokenizers, lines: list[str], references: list[str],
                     cfg: DecodeConfig, *, normalize: NormalizeConfig,
                     device: torch.device | str = "cpu") -> list[float]:
    """Forced decoding: the model's summed log-probability (EOS included) of each reference.

    Sources and references are cleaned by ``normalize`` (the checkpoint's
    ``preprocess.normalize``) and sources are cut to ``max_src_len`` like in translation; an
    empty source is scored as a bare EOS.
    """
    device = torch.device(device)
    src_ids = encode_sources(tok, lines, normalize, cfg.max_src_len).ids
    tgt_ids = tok.encode_tgt(clean_lines(references, normalize))
    scores = [0.0] * len(lines)
    lengths = [max(1, len(s)) for s in src_ids]  # empty sources still run (as EOS alone)
    for batch in make_batches(lengths, cfg.batch_size, cfg.batch_type):
        src, src_lengths = pad_sequences([src_ids[i] for i in batch], suffix=EOS_ID)
        tgt, tgt_lengths = pad_sequences([tgt_ids[i] for i in batch], suffix=EOS_ID)
        found = score_targets(model, src.to(device), src_lengths.to(device), tgt.to(device),
                              tgt_lengths.to(device))
        for i, value in zip(batch, found.tolist()):
            scores[i] = value
    return scores
