"""``nmt tune``: the reranking weights that maximise a dev set's corpus BLEU (or chrF), found on
cached features (``decoding.features``) without running a model again; or the best value of a
decode setting (a fusion weight, a length penalty) on a grid of decode runs (``grid_file``).

The search is Och's MERT line search inside coordinate ascent, from the forward-only weights and
from ``restarts`` random points (``seed``): along one weight, each source line's choice changes
only where two hypotheses' weighted sums cross, so the exact best value on ``[-max_weight,
max_weight]`` is found by sorting those crossings and summing sacreBLEU's sufficient statistics
once per interval. The chosen weights are scaled so that ``forward`` is 1 (the choice does not
change under a positive scale), rounded for printing, and scored as ``nmt rerank`` will use them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from nmt_cli.decoding.engine import EngineSettings, check_model_paths, open_engine
from nmt_cli.decoding.features import (FeatureTable, chosen_lines, read_sources, read_table,
                                       table_from_nbest)
from nmt_cli.config import DecodeConfig, with_overrides
from nmt_cli.errors import DataError, NmtError
from nmt_cli.text.bitext import read_lines

METRICS = ("bleu", "chrf")


@dataclass
class TuneResult:
    metric: str
    weights: dict[str, float]  # as printed and pasted
    before: float  # forward only
    after: float  # with ``weights``, scored on the lines they choose
    starts: int
    seconds: float
    sentences: int = 0
    hypotheses: int = 0

    def report(self, format_weights) -> str:
        """What ``nmt tune`` prints: the search, the scores before and after, the weights."""
        name = {"bleu": "BLEU", "chrf": "chrF"}[self.metric]
        pasted = format_weights(self.weights)
        return "\n".join([
            f"tuned {', '.join(self.weights)} on {self.sentences} sentences ({self.hypotheses} "
            f"hypotheses), {self.starts} starts, in {self.seconds:.1f} s",
            f"dev {name} forward only: {self.before:.2f}",
            f"dev {name} tuned:        {self.after:.2f} ({self.after - self.before:+.2f})",
            f"weights: {pasted}",
            f"nmt rerank ... --weights {pasted}"])


def metric_for(name: str):
    from sacrebleu.metrics import BLEU, CHRF

    if name not in METRICS:
        raise NmtError(f"--metric {name!r}: choose from {', '.join(METRICS)}")
    return BLEU() if name == "bleu" else CHRF()


class DevSet:
    """A table padded to (sources, hypotheses, features), with each hypothesis' sufficient
    statistics of ``metric`` against the references."""

    def __init__(self, table: FeatureTable, references: Sequence[Sequence[str]], metric: str,
                 names: Sequence[str]):
        self.metric = metric_for(metric)
        self.columns = [table.names.index(n) for n in names]
        n, k = len(table), max(map(len, table.hypotheses))
        self.rows = np.array([len(h) for h in table.hypotheses])
        self.values = np.zeros((n, k, len(names)))
        for i, rows in enumerate(table.values):
            self.values[i, :len(rows)] = np.asarray(rows)[:, self.columns]
        flat = [h for hyps in table.hypotheses for h in hyps]
        refs = [[ref[i] for i, hyps in enumerate(table.hypotheses) for _ in hyps]
                for ref in references]
        found = np.asarray(self.metric._extract_corpus_statistics(flat, refs), dtype=np.int64)
        self.stats = np.zeros((n, k, found.shape[1]), dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(self.rows)])
        for i in range(n):
            self.stats[i, :self.rows[i]] = found[offsets[i]:offsets[i + 1]]
        self.padding = np.arange(k)[None, :] >= self.rows[:, None]  # (n, k)

    def value(self, stats: np.ndarray) -> float:
        return float(self.metric._compute_score_from_stats(stats.tolist()).score)

    def sums(self, weights: np.ndarray) -> np.ndarray:
        return np.where(self.padding, -np.inf, self.values @ weights)  # (n, k)

    def score(self, weights: np.ndarray) -> float:
        best = np.argmax(self.sums(weights), axis=1)  # the first among equals
        return self.value(self.stats[np.arange(len(best)), best].sum(0))

    def line_search(self, weights: np.ndarray, k: int, bound: float) -> tuple[float, float]:
        """The value of weight ``k`` in ``[-bound, bound]`` (the others fixed) whose choice
        scores best, and that score."""
        slope = np.where(self.padding, 0.0, self.values[:, :, k])
        offset = self.sums(weights) - slope * weights[k]
        events = envelope(offset, slope, -bound, bound)
        n = np.arange(len(offset))
        current = np.argmax(offset - bound * slope, axis=1)
        total = self.stats[n, current].sum(0)
        points, scores = [-bound], [self.value(total)]
        times, rows, before, after = events
        deltas = self.stats[rows, after] - self.stats[rows, before]
        running = total + np.cumsum(deltas, axis=0)
        for e in range(len(times)):
            if e + 1 < len(times) and times[e + 1] == times[e]:
                continue  # the choice changes on several lines at this point
            points.append(times[e])
            scores.append(self.value(running[e]))
        edges = points[1:] + [bound]
        middles = [(a + b) / 2 for a, b in zip(points, edges)]
        best = max(scores)
        here = [m for m, a, b, s in zip(middles, points, edges, scores)
                if s == best and a <= weights[k] <= b]
        if here:
            return float(weights[k]), best
        pick = min((abs(m - weights[k]), m) for m, s in zip(middles, scores) if s == best)[1]
        return float(pick), best


def envelope(offset: np.ndarray, slope: np.ndarray, low: float, high: float
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Where each source line's choice ``argmax(offset + t * slope)`` (first among equals) changes
    as ``t`` goes from ``low`` to ``high``: (t, line, row before, row after), sorted by t. Padded
    rows have offset -inf. Past a crossing the steeper line wins; of lines crossing at one point,
    the steepest."""
    n, k = offset.shape
    line = np.arange(n)
    current = np.argmax(offset + low * slope, axis=1)
    t = np.full(n, low)
    found: list[tuple[np.ndarray, ...]] = []
    active = np.ones(n, dtype=bool)
    for _ in range(k):
        a, b = offset[line, current][:, None], slope[line, current][:, None]
        steeper = (slope > b) & np.isfinite(offset)
        with np.errstate(divide="ignore", invalid="ignore"):
            cross = np.where(steeper, (a - offset) / (slope - b), np.inf)
        cross = np.maximum(cross, t[:, None])  # never behind the current point
        first = cross.min(axis=1)
        active &= first < high
        if not active.any():
            break
        nxt = np.argmax(np.where(cross == first[:, None], slope, -np.inf), axis=1)
        rows = line[active]
        found.append((first[active], rows, current[active], nxt[active]))
        current = np.where(active, nxt, current)
        t = np.where(active, first, t)
    if not found:
        empty = np.zeros(0, dtype=np.int64)
        return np.zeros(0), empty, empty, empty
    times, rows, before, after = (np.concatenate(parts) for parts in zip(*found))
    order = np.argsort(times, kind="stable")
    return times[order], rows[order], before[order], after[order]


def coordinate_ascent(dev: DevSet, start: np.ndarray, bound: float, passes: int = 10
                      ) -> tuple[np.ndarray, float]:
    """Line search along each weight in turn until a pass gains nothing."""
    weights, score = start.copy(), dev.score(start)
    for _ in range(passes):
        gained = False
        for k in range(len(weights)):
            value, _ = dev.line_search(weights, k, bound)
            trial = weights.copy()
            trial[k] = value
            found = dev.score(trial)  # the exact choice at that point
            if found > score + 1e-9:
                weights, score, gained = trial, found, True
        if not gained:
            break
    return weights, score


def tune_weights(table: FeatureTable, references: Sequence[Sequence[str]], *,
                 metric: str = "bleu", names: Sequence[str] | None = None, seed: int = 0,
                 restarts: int = 20, max_weight: float = 10.0) -> TuneResult:
    """The weights of ``names`` (default: every feature of the table) that maximise ``metric`` on
    the references (one list per reference stream, a line per source line)."""
    start_time = time.time()
    names = list(names or table.names)
    _check(table, references, names)
    dev = DevSet(table, references, metric, names)
    forward = np.array([1.0 if n == "forward" else 0.0 for n in names])
    rng = np.random.default_rng(seed)
    starts = [forward] + [np.where(forward > 0, rng.uniform(0, 1, len(names)),
                                   rng.uniform(-1, 1, len(names))) for _ in range(restarts)]
    best, best_score = forward, -np.inf
    for start in starts:
        weights, score = coordinate_ascent(dev, start, max_weight)
        if score > best_score + 1e-9:
            best, best_score = weights, score
    weights = printable(dict(zip(names, best.tolist())))
    scorer = dev.metric
    after = scorer.corpus_score(chosen_lines(table, weights), [list(r) for r in references])
    before = scorer.corpus_score(chosen_lines(table, {"forward": 1.0}),
                                 [list(r) for r in references])
    return TuneResult(metric, weights, float(before.score), float(after.score), len(starts),
                      time.time() - start_time, len(table), table.pairs)


def printable(weights: dict[str, float]) -> dict[str, float]:
    """``weights`` scaled so that ``forward`` is 1 (when positive), at 6 significant digits."""
    scale = weights.get("forward", 0.0)
    if scale <= 0:
        scale = max(abs(v) for v in weights.values()) or 1.0
    return {n: float(f"{v / scale:.6g}") + 0.0 for n, v in weights.items()}


def _check(table: FeatureTable, references: Sequence[Sequence[str]], names: list[str]) -> None:
    unknown = [n for n in names if n not in table.names]
    if unknown:
        raise NmtError(f"--tune-features names {unknown[0]!r}, which the features file does not "
                       f"hold (it holds {', '.join(table.names)})")
    if "forward" not in names:
        raise NmtError("--tune-features must include forward, the weight the others are scaled "
                       "against")
    for ref in references:
        if len(ref) != len(table):
            raise NmtError(f"a reference has {len(ref)} lines but the n-best list has "
                           f"{len(table)} source lines; give the references of that source")


def read_references(paths: Sequence[Path], sources: int) -> list[list[str]]:
    """Each reference file's lines, as ``nmt eval`` reads them; one line per source line."""
    if not paths:
        raise NmtError("give the dev references with -r REF")
    found = []
    for path in paths:
        lines = [line.rstrip() for line in read_lines(path)]
        if len(lines) != sources:
            raise DataError(f"has {len(lines)} lines but the n-best list has {sources} source "
                            "lines; give the references of the source the list was made from",
                            path)
        found.append(lines)
    return found


def tune_file(references: Sequence[Path], *, features_in: Path | None = None,
              nbest: Path | None = None, source: Path | None = None,
              models: dict[str, Sequence[Path]] | None = None,
              settings: EngineSettings | None = None,
              features_out: Path | None = None, **options) -> TuneResult:
    """Tune on a features file, or on features computed here from an n-best list (and kept in
    ``features_out`` when given); ``options`` go to ``tune_weights``."""
    if features_in is not None:
        table = read_table(features_in)
    else:
        assert nbest is not None and source is not None  # the CLI asks for both
        table = table_from_nbest(nbest, source, models or {}, settings or EngineSettings(),
                                 keep=features_out)
    return tune_weights(table, read_references(references, len(table)), **options)


# --- a decode setting, by a grid of decode runs ------------------------------------------------

@dataclass
class GridResult:
    metric: str
    key: str  # a decode.* key, such as lm_weight or length_penalty
    values: list
    scores: list[float]
    seconds: float

    @property
    def best(self):
        """The value with the highest score; the first of the grid among equals."""
        return self.values[max(range(len(self.values)), key=lambda i: (self.scores[i], -i))]

    def report(self) -> str:
        name = {"bleu": "BLEU", "chrf": "chrF"}[self.metric]
        rows = [f"decode.{self.key}={v}: dev {name} {s:.2f}"
                for v, s in zip(self.values, self.scores)]
        return "\n".join(rows + [f"best: decode.{self.key}={self.best} ({len(self.values)} "
                                 f"decode runs in {self.seconds:.1f} s)",
                                 f"--set decode.{self.key}={self.best}   (recipe: decode: "
                                 f"{{{self.key}: {self.best}}})"])


def parse_grid(spec: str) -> tuple[str, list]:
    """``KEY=V1,V2,...`` (``decode.`` optional) as the key and its values, each checked as the
    recipe key ``decode.KEY`` would be."""
    import yaml

    key, eq, values = spec.partition("=")
    key = key.strip().removeprefix("decode.")
    found = [yaml.safe_load(v) for v in values.split(",") if v.strip()] if eq else []
    if not key or not found:
        raise NmtError(f"--grid {spec!r}: give a decode key and its values, e.g. --grid "
                       "lm_weight=0,0.1,0.2")
    for value in found:
        with_overrides(DecodeConfig(beam_size=64), {key: value}, "decode")
    return key, found


def grid_file(models: Sequence[Path], source: Path, references: Sequence[Path], grid: str, *,
              metric: str = "bleu", settings: EngineSettings | None = None) -> GridResult:
    """Translate ``source`` once per value of ``grid`` (``KEY=V1,V2``) and score each run."""
    start = time.time()
    key, values = parse_grid(grid)
    scorer = metric_for(metric)
    lines = read_sources(source)
    refs = read_references(references, len(lines))
    check_model_paths(models)
    engine = open_engine(list(models), settings or EngineSettings())
    try:
        scores = []
        for value in values:
            cfg = with_overrides(engine.defaults, {key: value}, "decode")
            hyps = [t.text for t in engine.translate_lines(lines, cfg)]
            scores.append(float(scorer.corpus_score(hyps, refs).score))
    finally:
        engine.close()
    return GridResult(metric, key, values, scores, time.time() - start)
