"""``nmt rerank``: an n-best list and its source in, the best hypothesis of each source line out
(N source lines, N output lines, in order), chosen by a weighted sum of features
(``decoding.features``); the features can be kept for ``nmt tune``. Outputs are written under a
temporary name and renamed at the end, so a failure leaves no half file."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from nmt_cli.decoding.engine import EngineSettings
from nmt_cli.decoding.features import (check_weight_names, choose, parse_weights, read_table,
                                       table_from_nbest)
from nmt_cli.files import atomic_write_text


@dataclass
class RerankStats:
    sentences: int = 0
    hypotheses: int = 0
    changed: int = 0  # lines whose choice is not the n-best's first row
    seconds: float = 0.0
    feature_seconds: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        features = ", ".join(f"{n} {s:.2f} s" for n, s in self.feature_seconds.items())
        return (f"reranked {self.sentences} sentences ({self.hypotheses} hypotheses) in "
                f"{self.seconds:.2f} s ({features or 'no model features'}); {self.changed} "
                "changed from the n-best's first")


def rerank_file(nbest: Path | None, source: Path | None, output: Path | None, *,
                weights: str | None = None,
                models: dict[str, Sequence[Path]] | None = None,
                features_out: Path | None = None, features_in: Path | None = None,
                settings: EngineSettings | None = None) -> RerankStats:
    """Rerank ``nbest`` (rows of ``nmt translate --n-best K`` for ``source``), or the cached
    features ``features_in``; without ``weights``, forward only (the n-best's first rows)."""
    start = time.time()
    chosen_weights = parse_weights(weights) if weights is not None else {"forward": 1.0}
    if features_in is not None:
        table = read_table(features_in)
        check_weight_names(chosen_weights, table.names)
    else:
        assert nbest is not None and source is not None  # the CLI asks for both
        table = table_from_nbest(nbest, source, models or {}, settings or EngineSettings(),
                                 chosen_weights, keep=features_out)
    best = choose(table, chosen_weights)
    write_lines(output, [texts[j] for texts, j in zip(table.hypotheses, best)])
    return RerankStats(len(table), table.pairs, sum(1 for j in best if j), time.time() - start,
                       dict(table.seconds))


def write_lines(path: Path | None, lines: list[str]) -> None:
    """One line each, to ``path`` (atomically) or stdout; a symbolic link or a file that is not
    regular (``/dev/stdout``, a pipe) is written through, as a rename would replace it."""
    text = "".join(line + "\n" for line in lines)
    if path is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    elif path.is_symlink() or (path.exists() and not path.is_file()):
        with open(path, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
    else:
        atomic_write_text(path, text)

