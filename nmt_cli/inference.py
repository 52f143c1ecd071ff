"""Text in, text out: tokenize, batch by length, search, detokenize, and restore the input order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from nmt_cli.config import DecodeConfig
from nmt_cli.data import pad_sequences
from nmt_cli.search import Hypothesis, beam_search
from nmt_cli.tokenizer import EOS_ID, Tokenizers


@dataclass
class Translation:
    index: int  # position in the input
    text: str
    hypotheses: list[Hypothesis]  # best first; empty for an empty input line
    src_pieces: int  # source subwords, EOS not counted


def _batches(lengths: list[int], batch_size: int) -> Iterator[list[int]]:
    """Indices of non-empty inputs, sorted by length (longest first), cut into batches."""
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def translate_lines(model, tok: Tokenizers, lines: list[str], cfg: DecodeConfig,
                    device: torch.device | str = "cpu", n_best: int = 1,
                    return_attention: bool = False) -> list[Translation]:
    """Translate ``lines``; the i-th result belongs to the i-th line, and empty lines stay empty.

    The result never depends on the batch size: each sentence's search is independent of the
    others in its batch (packed encoder, masked attention, per-sentence beams and stopping).
    """
    device = torch.device(device)
    src_ids = tok.encode_src([" ".join(line.split()) for line in lines])
    results: list[Translation | None] = [None] * len(lines)
    for i, ids in enumerate(src_ids):
        if not ids:
            results[i] = Translation(i, "", [], 0)
    for batch in _batches([len(s) for s in src_ids], cfg.batch_size):
        src, src_lengths = pad_sequences([src_ids[i] for i in batch], suffix=EOS_ID)
        found = beam_search(model, src.to(device), src_lengths.to(device), beam_size=cfg.beam_size,
                            alpha=cfg.length_penalty, max_len_a=cfg.max_len_a,
                            max_len_b=cfg.max_len_b, n_best=n_best,
                            return_attention=return_attention)
        texts = tok.decode_tgt([h[0].tokens for h in found.hypotheses])
        for i, hyps, text in zip(batch, found.hypotheses, texts):
            results[i] = Translation(i, text, hyps, len(src_ids[i]))
    return [r for r in results if r is not None]


def chunked(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
