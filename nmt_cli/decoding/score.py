"""``nmt score``: how likely a model finds each line. A language model scores the lines themselves;
a translation model scores references given their sources (forced decoding, through the engine
seam, so an exported model scores too). N lines in, N results out, in order.

Log-probabilities are natural logs summed over a line's subwords and its EOS; a line's
perplexity is ``exp(-logprob / tokens)`` with ``tokens`` = subwords + 1. The corpus perplexity
per subword divides the summed log-probability by all tokens, per word by all whitespace-separated
words plus one EOS per line, so models with different tokenizers compare on the same count.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nmt_cli.decoding import ct2
from nmt_cli.decoding.hypotheses import clean_lines
from nmt_cli.errors import DataError, NmtError
from nmt_cli.files import atomic_write_text
from nmt_cli.text.bitext import read_lines


@dataclass(frozen=True)
class LineScore:
    logprob: float  # natural log, EOS included
    tokens: int  # subwords + EOS
    words: int  # whitespace-separated words + EOS

    @property
    def perplexity(self) -> float:
        return math.exp(min(-self.logprob / max(self.tokens, 1), 700.0))


@dataclass(frozen=True)
class ScoreReport:
    lines: list[LineScore]

    def _total(self, name: str) -> float:
        return sum(getattr(s, name) for s in self.lines)

    @property
    def perplexity_subword(self) -> float:
        return math.exp(min(-self._total("logprob") / max(self._total("tokens"), 1), 700.0))

    @property
    def perplexity_word(self) -> float:
        return math.exp(min(-self._total("logprob") / max(self._total("words"), 1), 700.0))

    def corpus(self) -> dict[str, Any]:
        return {"lines": len(self.lines), "logprob": self._total("logprob"),
                "tokens": int(self._total("tokens")), "words": int(self._total("words")),
                "perplexity_subword": self.perplexity_subword,
                "perplexity_word": self.perplexity_word}

    def as_dict(self) -> dict[str, Any]:
        return {"corpus": self.corpus(),
                "lines": [{"logprob": s.logprob, "tokens": s.tokens, "perplexity": s.perplexity}
                          for s in self.lines]}

    def tsv(self) -> str:
        """One ``logprob<TAB>tokens<TAB>perplexity`` row per line."""
        return "".join(f"{s.logprob:.4f}\t{s.tokens}\t{s.perplexity:.4f}\n" for s in self.lines)

    def line(self) -> str:
        c = self.corpus()
        return (f"scored {c['lines']} lines ({c['tokens']} subword tokens, {c['words']} words, "
                f"EOS included): perplexity {c['perplexity_subword']:.2f} per subword, "
                f"{c['perplexity_word']:.2f} per word")


def _words(texts: list[str]) -> list[int]:
    return [len(t.split()) + 1 for t in texts]


def score_lines(model: Path, lines: list[str], references: list[str] | None = None, *,
                batch_size: int = 64, device: str = "auto") -> list[LineScore]:
    """Each line's score under ``model``: a language model (no references), or a translation
    model given one reference per line."""
    model = Path(model)
    from nmt_cli.decoding.lm import checkpoint_arch

    is_lm = not ct2.is_exported(model) and checkpoint_arch(model) == "lm"
    if is_lm and references is not None:
        raise NmtError(f"{model}: a language model scores the input alone; drop -r (give -r "
                       "with a translation model to score references given their sources)")
    if not is_lm and references is None:
        raise NmtError(f"{model}: a translation model scores references given their sources; "
                       "give -r REFERENCES, or -m a language model (model.arch: lm)")
    if is_lm:
        return _score_with_lm(model, lines, batch_size, device)
    return _score_references(model, lines, references or [], batch_size, device)


def _score_with_lm(path: Path, lines: list[str], batch_size: int, device: str) -> list[LineScore]:
    from nmt_cli.decoding.lm import lm_line_scores, open_lm
    from nmt_cli.runtime import pick_device

    dev = pick_device(device)
    model, tok, recipe = open_lm(path, dev)
    normalize = recipe.preprocess.normalize
    found = lm_line_scores(model, tok, lines, normalize=normalize, batch_size=batch_size,
                           device=dev)
    words = _words(clean_lines(lines, normalize))
    return [LineScore(lp, n, w) for (lp, n), w in zip(found, words)]


def _score_references(path: Path, lines: list[str], references: list[str], batch_size: int,
                      device: str) -> list[LineScore]:
    from nmt_cli.decoding.engine import EngineSettings, open_engine

    engine = open_engine([path], EngineSettings(device=device, decode={"batch_size": batch_size}))
    try:
        scores = engine.score_references(lines, references, engine.defaults)
        texts = clean_lines(references, engine.recipe.preprocess.normalize)
        tokens = [len(ids) + 1 for ids in engine.tok.encode_tgt(texts)]
    finally:
        engine.close()
    return [LineScore(lp, n, w) for lp, n, w in zip(scores, tokens, _words(texts))]


def score_file(model: Path, input: Path, reference: Path | None, output: Path | None, *,
               as_json: bool = False, batch_size: int = 64, device: str = "auto") -> ScoreReport:
    """Score ``input`` (against ``reference`` for a translation model) and write the rows, or the
    JSON document, to ``output`` (stdout when None; a file appears whole or not at all)."""
    lines = list(read_lines(input))
    references = None if reference is None else list(read_lines(reference))
    if references is not None and len(references) != len(lines):
        raise DataError(f"has {len(references)} lines but the input has {len(lines)}; give one "
                        "reference line per input line", reference)
    report = ScoreReport(score_lines(model, lines, references, batch_size=batch_size,
                                     device=device))
    text = json.dumps(report.as_dict(), indent=1) + "\n" if as_json else report.tsv()
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write_text(output, text)
    return report
