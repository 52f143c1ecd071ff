"""Corpus-level sacreBLEU scores (BLEU, chrF, TER) with their signatures. No torch here."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from nmt_cli.errors import DataError
from nmt_cli.text.bitext import read_lines

METRICS = ("bleu", "chrf", "ter")


@dataclass(frozen=True)
class Score:
    metric: str
    score: float
    signature: str
    text: str  # sacreBLEU's own one-line rendering, e.g. "BLEU = 34.20 65.1/40.2/..."

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _metric(name: str, tokenize: str, lowercase: bool):
    from sacrebleu.metrics import BLEU, CHRF, TER

    if name == "bleu":
        return BLEU(tokenize=tokenize, lowercase=lowercase)
    if name == "chrf":
        return CHRF(lowercase=lowercase)
    if name == "ter":
        return TER(case_sensitive=not lowercase)
    raise DataError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")


def score_lines(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
                metrics: Sequence[str] = ("bleu", "chrf"), tokenize: str = "13a",
                lowercase: bool = False) -> list[Score]:
    """Score hypotheses against one or more reference streams, each as long as the hypotheses."""
    out = []
    for name in metrics:
        metric = _metric(name, tokenize, lowercase)
        result = metric.corpus_score(list(hypotheses), [list(r) for r in references])
        out.append(Score(name, float(result.score), str(metric.get_signature()), str(result)))
    return out


def score_files(hyp_path: Path, ref_paths: Sequence[Path], metrics: Sequence[str] = ("bleu", "chrf"),
                tokenize: str = "13a", lowercase: bool = False) -> list[Score]:
    """Score a hypothesis file against reference files; every file must have the same line count."""
    if not ref_paths:
        raise DataError("give at least one reference file with -r")
    for name in metrics:
        if name not in METRICS:
            raise DataError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
    # Trailing whitespace is dropped, as the sacrebleu command line does, so the scores agree.
    hyps = [line.rstrip() for line in read_lines(hyp_path)]
    refs = []
    for path in ref_paths:
        lines = [line.rstrip() for line in read_lines(path)]
        if len(lines) != len(hyps):
            raise DataError(f"has {len(lines)} lines but the hypotheses {hyp_path} have {len(hyps)}; "
                            "each reference needs one line per hypothesis", path)
        refs.append(lines)
    return score_lines(hyps, refs, metrics, tokenize, lowercase)
