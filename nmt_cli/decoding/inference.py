"""Text in, text out: clean each line with the checkpoint's ``preprocess.normalize`` (as its
training data was), tokenize, batch by length, search, detokenize, restore the input order.
N lines in give N results; sources are cut to ``max_src_len`` subwords (bounded time and memory),
and blank lines give empty translations without reaching the model."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Callable, Iterator, Sequence

import torch

from nmt_cli.config import DecodeConfig, NormalizeConfig
from nmt_cli.data import pad_sequences
from nmt_cli.decoding.hypotheses import (Translation, clean_lines, empty_translation,
                                         encode_sources)
from nmt_cli.decoding.search import SearchResult, beam_search, sample_search, score_targets
from nmt_cli.errors import ConfigError
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
    """``search`` over ``batches``, in order; with ``workers`` above 1, that many run side by side
    in threads (torch releases the GIL in its kernels; set its threads to cores / workers). Each
    batch is searched as alone, so output does not change. Workers take the caller's grad and
    inference mode, which are per thread."""
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
                    workers: int = 1,
                    constraints: Sequence[Sequence[str]] | None = None) -> list[Translation]:
    """One ``Translation`` per line, in order, with ``cfg.n_best`` hypotheses (or samples) best
    first. Results never depend on the batch size or ``workers``: each sentence is searched on its
    own. ``first_index`` is the first line's number in the whole input (sampling seeds).

    ``constraints`` holds each line's target phrases (``decoding.constraints``): a line with some
    is searched by ``constrained_beam_search``, one without exactly as plain beam search; a line
    whose phrases cannot be used is translated without them and its ``warning`` says why."""
    device = torch.device(device)
    n_best = cfg.n_best
    sources, src_ids, truncated = encode_sources(tok, lines, normalize, cfg.max_src_len)
    results: list[Translation | None] = [None] * len(lines)
    for i, ids in enumerate(src_ids):
        if not ids:
            results[i] = empty_translation(i, sources[i])
    constrained = Constrained.of(tok, src_ids, constraints, cfg)

    def search(batch: list[int]) -> SearchResult:
        if constrained is not None and any(constrained.pieces[i] for i in batch):
            return constrained.search(model, batch, src_ids, cfg, device, return_attention)
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
    if constrained is not None:
        for i, warning in constrained.warnings.items():
            results[i].warning = warning  # type: ignore[union-attr]
    return [r for r in results if r is not None]


class Constrained:
    """The constrained lines of one call: each one's phrases as pieces (empty: search it as
    plain beam search) and the warnings of the lines whose phrases were not used."""

    def __init__(self, pieces: list[tuple], warnings: dict[int, str], word_pieces: list[bool]):
        self.pieces, self.warnings = pieces, warnings
        self.word_pieces = word_pieces  # target pieces that may not follow a completed phrase

    @classmethod
    def of(cls, tok: Tokenizers, src_ids: list[list[int]],
           constraints: Sequence[Sequence[str]] | None, cfg: DecodeConfig) -> "Constrained | None":
        from nmt_cli.decoding.constraints import prepare, word_continuations
        from nmt_cli.decoding.penalties import length_limits

        if constraints is None or not any(constraints):
            return None
        if len(constraints) != len(src_ids):
            raise ValueError(f"{len(constraints)} constraint lines for {len(src_ids)} lines")
        if cfg.sample:
            raise ConfigError("constraints need beam search; sampling cannot be constrained "
                              "(set decode.sample to false)", "decode.sample")
        src_len = torch.tensor([len(ids) + 1 for ids in src_ids])  # EOS counted, as in search
        limits = length_limits(src_len, cfg.max_len_a, cfg.max_len_b).tolist()
        prepared = prepare(tok, [list(c) for c in constraints], limits, cfg.allow_unk)
        pieces: list[tuple] = []
        warnings: dict[int, str] = {}
        for i, (line, ids) in enumerate(zip(prepared, src_ids)):
            if line is not None and not ids:
                warnings[i] = "the line is empty, so its constraints were not used"
            elif line is not None and line.problem:
                warnings[i] = f"{line.problem}; translated without its constraints"
            pieces.append(line.pieces if line is not None and ids and not line.problem else ())
        return cls(pieces, warnings, word_continuations(tok))

    def search(self, model, batch: list[int], src_ids: list[list[int]], cfg: DecodeConfig,
               device: torch.device, return_attention: bool) -> SearchResult:
        """``batch`` searched line group by line group: the lines without constraints by plain
        beam search, the others grouped by their beam (``constrained_beam``); a line whose
        constrained search finds nothing gets its plain translation and a warning."""
        from nmt_cli.decoding.constrained import constrained_beam, constrained_beam_search

        groups: dict[int, list[int]] = {}
        for i in batch:
            beam = constrained_beam(cfg.beam_size, len(self.pieces[i])) if self.pieces[i] else 0
            groups.setdefault(beam, []).append(i)
        found: dict[int, list] = {}
        for beam, members in sorted(groups.items()):
            src, src_lengths = pad_sequences([src_ids[i] for i in members], suffix=EOS_ID)
            src, src_lengths = src.to(device), src_lengths.to(device)
            if beam == 0:
                hyps = beam_search(model, src, src_lengths, cfg, return_attention).hypotheses
            else:
                hyps = constrained_beam_search(
                    model, src, src_lengths, [self.pieces[i] for i in members],
                    replace(cfg, beam_size=beam), return_attention,
                    torch.tensor(self.word_pieces, device=device)).hypotheses
            found.update(zip(members, hyps))
        failed = [i for i in batch if not found[i]]
        if failed:
            src, src_lengths = pad_sequences([src_ids[i] for i in failed], suffix=EOS_ID)
            plain = beam_search(model, src.to(device), src_lengths.to(device), cfg,
                                return_attention).hypotheses
            for i, hyps in zip(failed, plain):
                found[i] = hyps
                self.warnings[i] = ("no translation within the length limit contains every "
                                    "constraint; translated without them")
        return SearchResult([found[i] for i in batch])


def score_references(model, tok: Tokenizers, lines: list[str], references: list[str],
                     cfg: DecodeConfig, *, normalize: NormalizeConfig,
                     device: torch.device | str = "cpu") -> list[float]:
    """Forced decoding: each reference's summed log-probability (EOS included), lines cleaned and
    sources cut as in translation."""
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
