"""Reranking features of an n-best list, their weights and the choice they make; shared by
``nmt rerank`` and ``nmt tune``, so that both choose alike.

A feature is a name and a callable over pairs (``sources[i]``, ``hypotheses[i]``) that gives one
number per pair: ``length`` counts the hypothesis' words, a model feature is a summed
log-probability divided by the source's length in words (Yee et al., 2019; within one source the
divisor is a constant, across sources it keeps one weight meaning the same). ``forward`` is the
n-best's own score. A new model plugs in as ``ModelScore(name, scorer)``, its scorer any callable
``(sources, hypotheses) -> log-probabilities``, opened through ``MODEL_FEATURES``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from nmt_cli.decoding.engine import Engine, EngineSettings, check_model_paths, open_engine
from nmt_cli.decoding.nbest import NbestEntry, group_nbest
from nmt_cli.errors import DataError, NmtError
from nmt_cli.files import atomic_write_text
from nmt_cli.text.bitext import read_lines

# Every feature a run may compute, in the order of tables and weights.
FEATURES = ("forward", "reverse", "lm", "length")
FORMAT = "nmt-rerank-features-1"


class Feature(Protocol):
    name: str

    def __call__(self, sources: list[str], hypotheses: list[str]) -> list[float]: ...


class Length:
    """The hypothesis' length in words (whitespace-separated), whichever model wrote it."""

    name = "length"

    def __call__(self, sources: list[str], hypotheses: list[str]) -> list[float]:
        return [float(len(h.split())) for h in hypotheses]


@dataclass
class ModelScore:
    """A model's log-probability of each pair (``scorer``), divided by the source's words. The
    scorer gets the pairs in chunks of ``chunk``, shortest first (memory stays bounded, and a
    chunk's pairs have similar lengths); the results come back in the pairs' order."""

    name: str
    scorer: Callable[[list[str], list[str]], list[float]]
    chunk: int = 1000

    def __call__(self, sources: list[str], hypotheses: list[str]) -> list[float]:
        order = sorted(range(len(sources)), key=lambda i: (len(hypotheses[i]), len(sources[i])))
        scores = [0.0] * len(sources)
        for start in range(0, len(order), self.chunk):
            part = order[start:start + self.chunk]
            found = self.scorer([sources[i] for i in part], [hypotheses[i] for i in part])
            for i, value in zip(part, found):
                scores[i] = value / max(1, len(sources[i].split()))
        return scores


def reverse_score(engine: Engine) -> ModelScore:
    """log p(source | hypothesis): forced decoding of the source by a model trained the other way
    (a checkpoint, an ensemble or an exported folder), batched as ``--score-reference`` is."""
    return ModelScore("reverse", lambda src, hyp: engine.score_references(hyp, src,
                                                                          engine.defaults))


@dataclass
class FeatureTable:
    """Each source line's hypotheses and their features (rows best first, as in the n-best)."""

    names: list[str]
    hypotheses: list[list[str]]  # per source line
    values: list[list[list[float]]]  # per source line, per hypothesis, one value per name
    seconds: dict[str, float] = field(default_factory=dict)  # time spent on each feature

    def __len__(self) -> int:
        return len(self.hypotheses)

    @property
    def pairs(self) -> int:
        return sum(map(len, self.hypotheses))


def compute_table(groups: list[list[NbestEntry]], sources: list[str],
                  features: Sequence[Feature]) -> FeatureTable:
    """``forward`` from the n-best, then every feature over the distinct (source, hypothesis)
    pairs, all at once so that a model scores them in its own length-sorted batches."""
    names = ["forward"] + [f.name for f in features]
    rows = [[[e.score] for e in group] for group in groups]
    distinct: dict[tuple[str, str], int] = {}
    for i, group in enumerate(groups):
        for e in group:
            distinct.setdefault((sources[i], e.text), len(distinct))
    pair_src = [s for s, _ in distinct]
    pair_hyp = [h for _, h in distinct]
    seconds = {}
    for feature in features:
        start = time.perf_counter()
        found = feature(pair_src, pair_hyp)
        seconds[feature.name] = time.perf_counter() - start
        for i, group in enumerate(groups):
            for row, e in zip(rows[i], group):
                value = float(found[distinct[(sources[i], e.text)]])
                if not math.isfinite(value):
                    raise NmtError(f"the {feature.name} feature of source line {i + 1} is "
                                   f"{value}; check that model on that line")
                row.append(value)
    return FeatureTable(names, [[e.text for e in g] for g in groups], rows, seconds)


def open_reverse(paths: Sequence[Path], settings: EngineSettings) -> tuple[Feature, Engine]:
    check_model_paths(paths)
    engine = open_engine(list(paths), settings)
    return reverse_score(engine), engine


class _Nothing:
    """What ``open_lm_feature`` hands back to close: the LM holds no engine."""

    def close(self) -> None:
        pass


def open_lm_feature(paths: Sequence[Path], settings: EngineSettings) -> tuple[Feature, Any]:
    """log p_LM(hypothesis): a target-language model (``model.arch: lm``) scores each hypothesis
    on its own, with the LM's tokenizer (any tokenizer: reranking works on text)."""
    if len(paths) != 1:
        raise NmtError(f"--lm takes one language model, not {len(paths)}; give --lm once")
    check_model_paths(paths)
    import torch

    from nmt_cli.decoding.lm import lm_line_scores, open_lm
    from nmt_cli.runtime import pick_device

    device = pick_device(settings.device)
    if settings.threads > 0 and device.type == "cpu":
        torch.set_num_threads(settings.threads)
    model, tok, recipe = open_lm(Path(paths[0]), device)
    batch = int(settings.decode.get("batch_size", 64))  # sentences

    def scorer(sources: list[str], hypotheses: list[str]) -> list[float]:
        found = lm_line_scores(model, tok, hypotheses, normalize=recipe.preprocess.normalize,
                               batch_size=batch, device=device)
        return [logprob for logprob, _ in found]

    return ModelScore("lm", scorer), _Nothing()


# The model features, in table order: name -> what opens its model(s) and gives the feature and
# the engine to close.
MODEL_FEATURES: dict[str, Callable[[Sequence[Path], EngineSettings], tuple[Feature, Any]]] = {
    "reverse": open_reverse, "lm": open_lm_feature}
MODEL_OPTIONS = {"reverse": "--reverse CKPT", "lm": "--lm CKPT"}  # how each is asked for


def feature_names(models: dict[str, Sequence[Path]]) -> list[str]:
    """The table's columns for a run given ``models`` (feature name -> model paths)."""
    return ["forward"] + [n for n in MODEL_FEATURES if models.get(n)] + ["length"]


def open_features(models: dict[str, Sequence[Path]], settings: EngineSettings
                  ) -> tuple[list[Feature], list[Any]]:
    """The features a run computes besides ``forward``, in ``feature_names`` order, and the
    engines to close afterwards."""
    engines: list[Any] = []
    features: list[Feature] = []
    try:
        for name, opener in MODEL_FEATURES.items():
            if models.get(name):
                feature, engine = opener(models[name], settings)
                features.append(feature)
                engines.append(engine)
    except BaseException:
        for engine in engines:
            engine.close()
        raise
    features.append(Length())
    return features, engines


def read_sources(path: Path) -> list[str]:
    """The source lines, bad UTF-8 replaced as ``nmt translate`` does by default."""
    return list(read_lines(path, errors="replace"))


def table_from_nbest(nbest: Path, source: Path, models: dict[str, Sequence[Path]],
                     settings: EngineSettings, weights: dict[str, float] | None = None,
                     keep: Path | None = None) -> FeatureTable:
    """Read the source and its n-best list, check the weights' names, open the models, compute;
    the table is written to ``keep`` when given."""
    sources = read_sources(source)
    groups = group_nbest(nbest, len(sources))
    unknown = [n for n in models if n not in MODEL_FEATURES]
    if unknown:
        raise NmtError(f"no model feature {unknown[0]!r}; the model features are "
                       f"{', '.join(MODEL_FEATURES)}")
    if weights is not None:
        check_weight_names(weights, feature_names(models))
    features, engines = open_features(models, settings)
    try:
        table = compute_table(groups, sources, features)
    finally:
        for engine in engines:
            engine.close()
    if keep is not None:
        write_table(table, keep, {"nbest": str(nbest), "source": str(source),
                                  **{n: [str(p) for p in paths] for n, paths in models.items()}})
    return table


# --- weights ---------------------------------------------------------------------------------

WEIGHTS_HINT = "give NAME=NUMBER pairs, e.g. --weights forward=1,reverse=0.5,length=0.1"


def parse_weights(spec: str) -> dict[str, float]:
    """``forward=1,reverse=0.5`` or a JSON or YAML file that maps names to numbers."""
    path = Path(spec)
    if path.suffix.lower() in (".json", ".yaml", ".yml") or path.is_file():
        return _weights_file(path)
    found: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, eq, number = part.partition("=")
        try:
            value = float(number) if eq else math.nan
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise NmtError(f"--weights: {part!r} is not NAME=NUMBER; {WEIGHTS_HINT}")
        found[name.strip()] = value
    return _known(found, "--weights")


def _weights_file(path: Path) -> dict[str, float]:
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError("weights file not found; check the path, or " + WEIGHTS_HINT,
                        path) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DataError(f"cannot read the weights ({exc.__class__.__name__}); write a mapping "
                        "such as {forward: 1, reverse: 0.5}", path) from None
    numbers = isinstance(raw, dict) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        for v in raw.values())
    if not numbers or not raw:
        raise DataError("the weights must be a mapping of feature names to numbers, such as "
                        "{forward: 1, reverse: 0.5}", path)
    return _known({str(k): float(v) for k, v in raw.items()}, str(path))


def _known(weights: dict[str, float], where: str) -> dict[str, float]:
    unknown = [n for n in weights if n not in FEATURES]
    if unknown:
        raise NmtError(f"{where}: unknown feature {unknown[0]!r}; the features are "
                       f"{', '.join(FEATURES)}")
    if not weights:
        raise NmtError(f"{where}: no weights; {WEIGHTS_HINT}")
    return weights


def check_weight_names(weights: dict[str, float], names: Sequence[str]) -> None:
    """Every weighted feature is computed by this run, or one error saying how to compute it."""
    for name, value in weights.items():
        if value != 0 and name not in names:
            how = (f"give its model with {MODEL_OPTIONS[name]}" if name in MODEL_FEATURES
                   else "drop it")
            raise NmtError(f"--weights gives {name} a weight, but this run does not compute it "
                           f"(it computes {', '.join(names)}); {how}")


def format_weights(weights: dict[str, float]) -> str:
    """The ``--weights`` argument for ``weights``, in feature order; numbers as Python reads them
    back exactly."""
    return ",".join(f"{n}={_number(weights[n])}" for n in FEATURES if n in weights)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def choose(table: FeatureTable, weights: dict[str, float]) -> list[int]:
    """The row each source line keeps: the highest weighted sum, the first (best by the n-best)
    among equals. Features without a weight, or of weight 0, take no part."""
    used = [(table.names.index(n), w) for n, w in weights.items() if w != 0 and n in table.names]
    best = []
    for rows in table.values:
        totals = [sum(w * row[k] for k, w in used) for row in rows]
        best.append(max(range(len(rows)), key=lambda j: (totals[j], -j)))
    return best



def chosen_lines(table: FeatureTable, weights: dict[str, float]) -> list[str]:
    """The text each source line keeps under ``weights``."""
    return [texts[j] for texts, j in zip(table.hypotheses, choose(table, weights))]

# --- the cache -------------------------------------------------------------------------------

def write_table(table: FeatureTable, path: Path, about: dict[str, Any]) -> None:
    """The table as JSON lines: a header, then one row per hypothesis (index, text, features)."""
    lines = [json.dumps({"format": FORMAT, "features": table.names, "sources": len(table),
                         **about}, ensure_ascii=False)]
    for i, (texts, rows) in enumerate(zip(table.hypotheses, table.values)):
        for text, row in zip(texts, rows):
            lines.append(json.dumps({"index": i, "text": text, **dict(zip(table.names, row))},
                                    ensure_ascii=False))
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_table(path: Path) -> FeatureTable:
    """A table written by ``write_table``; anything else is one DataError naming the line."""
    lines = iter(enumerate(read_lines(path), 1))
    header = _json_line(next(lines, (1, "")), path)
    if header.get("format") != FORMAT or not isinstance(header.get("features"), list) \
            or not isinstance(header.get("sources"), int):
        raise DataError(f"not a features file (expected a {FORMAT} header); write it with nmt "
                        "rerank --features FILE", path, 1)
    names = [str(n) for n in header["features"]]
    table = FeatureTable(names, [[] for _ in range(header["sources"])],
                         [[] for _ in range(header["sources"])])
    last = 0
    for lineno, line in lines:
        row = _json_line((lineno, line), path)
        index, text = row.get("index"), row.get("text")
        values = [row.get(n) for n in names]
        if not (isinstance(index, int) and last <= index < len(table) and isinstance(text, str)
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)):
            raise DataError(f"not a features row: needs index ({last} to {len(table) - 1}, in "
                            f"order), text and a number for each of {', '.join(names)}; write "
                            "the file with nmt rerank --features FILE", path, lineno)
        last = index
        table.hypotheses[index].append(text)
        table.values[index].append([float(v) for v in values])
    missing = [i for i, rows in enumerate(table.values) if not rows]
    if missing:
        raise DataError(f"no rows for source line index {missing[0]} ({len(missing)} line(s) "
                        "missing); write the file again with nmt rerank --features FILE", path)
    return table


def _json_line(item: tuple[int, str], path: Path) -> dict:
    lineno, line = item
    try:
        found = json.loads(line)
    except ValueError:
        found = None
    if not isinstance(found, dict):
        raise DataError("not a JSON object; write the file with nmt rerank --features FILE",
                        path, lineno)
    return found
