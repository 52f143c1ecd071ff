"""What decoding returns and the clean-up every input line gets first, shared by both engines;
no torch, so an exported model translates without it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, NamedTuple

from nmt_cli.config import NormalizeConfig
from nmt_cli.text.normalize import Normalizer


@dataclass
class Hypothesis:
    tokens: list[int]  # without BOS and EOS
    score: float  # log_prob divided by the length normalizer
    log_prob: float  # summed log-probability, EOS included
    attention: Any = None  # a (len + 1, S) tensor over the real source tokens (EOS included)


@dataclass
class Translation:
    index: int  # position in the input
    text: str  # the best hypothesis, detokenized
    hypotheses: list[Hypothesis]  # best first; empty for an empty input line
    src_pieces: int  # source subwords given to the model, EOS not counted
    truncated: bool = False  # the source was cut to max_src_len subwords
    texts: list[str] | None = None  # every hypothesis detokenized, best first (n-best)
    source: str = ""  # the input line as cleaned and given to the tokenizer
    warning: str | None = None  # why the line's constraints were not used, if they were not


def clean_lines(lines: list[str], normalize: NormalizeConfig) -> list[str]:
    """Lines as the training data was cleaned (``preprocess.normalize``), whitespace collapsed."""
    cleaned, _ = Normalizer(normalize).clean_lines(list(lines), False, Counter())
    return [" ".join(line.split()) for line in cleaned]


class Sources(NamedTuple):
    """The input lines as both engines give them to the model."""

    texts: list[str]  # cleaned (``clean_lines``)
    ids: list[list[int]]  # source pieces, cut to ``max_src_len``
    truncated: list[bool]  # whether the cut removed pieces


def encode_sources(tok, lines: list[str], normalize: NormalizeConfig, max_src_len: int) -> Sources:
    """Clean ``lines``, encode them with ``tok`` (``Tokenizers``) and cut them to ``max_src_len``."""
    texts = clean_lines(lines, normalize)
    ids = tok.encode_src(texts)
    return Sources(texts, [x[:max_src_len] for x in ids], [len(x) > max_src_len for x in ids])


def empty_translation(index: int, source: str) -> Translation:
    """The translation of a line with nothing to translate: an empty line."""
    return Translation(index, "", [], 0, texts=[""], source=source)
