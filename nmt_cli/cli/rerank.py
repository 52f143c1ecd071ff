"""The reranking commands: rerank (an n-best list to one line per source line) and tune (its
weights on a dev set)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from nmt_cli.cli.app import Device, app, user_errors
from nmt_cli.errors import NmtError

NBEST = typer.Option(None, "-n", "--n-best", help="The n-best list: TSV rows index, score, text, "
                                                  "as nmt translate --n-best K writes them.")
SOURCE = typer.Option(None, "-s", "--source", help="The source file the n-best list translates.")
REVERSE = typer.Option([], "--reverse", help="A model trained the other way (target -> "
                                             "source): checkpoint or exported folder; repeat "
                                             "checkpoints for an ensemble. Adds the reverse "
                                             "feature.")
LM = typer.Option(None, "--lm", help="A target-language model (a checkpoint trained with "
                                     "model.arch: lm). Adds the lm feature; with --grid, the "
                                     "fusion LM (decode.lm).")
DEVICE = typer.Option(Device.auto, help="Where to run the models.")
THREADS = typer.Option(0, "--threads", min=0,
                       help="CPU threads for the models; 0: one per core.")
BATCH = typer.Option(None, "--batch-size", min=1, help="Sentences per batch when a model scores "
                                                       "(decode.batch_size of its recipe).")


def _inputs(nbest: Optional[Path], source: Optional[Path], cached: Optional[Path],
            reverse: List[Path], lm: Optional[Path]) -> dict[str, List[Path]]:
    """The model features' paths, once the inputs are checked."""
    if cached is not None:
        if nbest is not None or source is not None or reverse or lm is not None:
            raise NmtError("--cached holds the features already; give it alone, or -n/-s "
                           "(and --reverse, --lm) to compute them")
    elif nbest is None or source is None:
        raise NmtError("give the n-best list with -n NBEST and its source with -s SOURCE (or "
                       "cached features with --cached FILE)")
    return {"reverse": reverse, "lm": [] if lm is None else [lm]}


def _settings(device: Device, threads: int, batch_size: Optional[int]):
    from nmt_cli.decoding.engine import EngineSettings

    decode = {} if batch_size is None else {"batch_size": batch_size}
    return EngineSettings(device.value, threads, 1, decode)


@app.command()
def rerank(
    nbest: Optional[Path] = NBEST,
    source: Optional[Path] = SOURCE,
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Default stdout."),
    weights: Optional[str] = typer.Option(
        None, "--weights", help="NAME=NUMBER,... over forward, reverse, lm, length (e.g. "
                                "forward=1,reverse=0.5,length=0.1), or a JSON/YAML file of them "
                                "(nmt tune -o writes one). Default forward=1: the n-best's "
                                "first rows."),
    reverse: List[Path] = REVERSE,
    lm: Optional[Path] = LM,
    features: Optional[Path] = typer.Option(None, "--features",
                                            help="Also write the features here (JSON lines) "
                                                 "for nmt tune."),
    cached: Optional[Path] = typer.Option(None, "--cached", help="Rerank features written by "
                                                                 "--features instead of "
                                                                 "computing them."),
    batch_size: Optional[int] = BATCH,
    device: Device = DEVICE,
    threads: int = THREADS,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No statistics on stderr."),
) -> None:
    """Choose each source line's best hypothesis of an n-best list by weighted features.

    N source lines in, N lines out, in order. Features: forward (the n-best's score), reverse
    (log p(source | hypothesis) by --reverse), lm (log p(hypothesis) by --lm), both per source
    word, and length (words).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as in translate
    with user_errors():
        models = _inputs(nbest, source, cached, reverse, lm)
        from nmt_cli.decoding.rerank import rerank_file

        stats = rerank_file(nbest, source, output, weights=weights,
                            models=models, features_out=features, features_in=cached,
                            settings=_settings(device, threads, batch_size))
        if not quiet:
            print(stats.line(), file=sys.stderr)


@app.command()
def tune(
    reference: List[Path] = typer.Option(..., "-r", "--reference",
                                         help="Dev reference; repeat for more references."),
    cached: Optional[Path] = typer.Option(None, "--cached", help="Features written by nmt rerank "
                                                                 "--features (computed once)."),
    nbest: Optional[Path] = NBEST,
    source: Optional[Path] = SOURCE,
    reverse: List[Path] = REVERSE,
    lm: Optional[Path] = LM,
    features: Optional[Path] = typer.Option(None, "--features", help="Keep the features computed "
                                                                     "here (JSON lines)."),
    metric: str = typer.Option("bleu", "--metric", help="bleu or chrf (sacreBLEU, corpus)."),
    tune_features: Optional[str] = typer.Option(
        None, "--tune-features", help="Comma-separated features to weigh (forward among them); "
                                      "default all of the file's. The others get 0."),
    restarts: int = typer.Option(20, "--restarts", min=0, help="Random starting points besides "
                                                               "forward only."),
    seed: int = typer.Option(0, "--seed", min=0, help="Makes the random starts reproducible."),
    max_weight: float = typer.Option(10.0, "--max-weight", min=0.001,
                                     help="Each weight is searched in [-W, W]."),
    output: Optional[Path] = typer.Option(None, "-o", "--output",
                                          help="Write the weights here (JSON) for --weights."),
    grid: Optional[str] = typer.Option(
        None, "--grid", metavar="KEY=V1,V2,...",
        help="Instead: translate -i with -m once per value of a decode setting (e.g. "
             "lm_weight=0,0.1,0.2 or length_penalty=0.6,1.0) and keep the best."),
    model: List[Path] = typer.Option([], "-m", "--model", help="With --grid: the model(s), as "
                                                               "in nmt translate."),
    input: Optional[Path] = typer.Option(None, "-i", "--input", help="With --grid: the dev "
                                                                     "source."),
    batch_size: Optional[int] = BATCH,
    device: Device = DEVICE,
    threads: int = THREADS,
) -> None:
    """Find the reranking weights that maximise BLEU (or chrF) on a dev set.

    Prints the weights, the dev score with forward only and with them, and the --weights
    argument for nmt rerank. With --grid, the best value of a decode setting instead.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with user_errors():
        if grid is not None or model or input is not None:
            settings = _settings(device, threads, batch_size)
            if lm is not None:  # the fusion LM of a grid over lm_weight (decode.lm)
                settings.decode["lm"] = str(lm)
            _grid(grid, model, input, reference, metric, settings)
            return
        models = _inputs(nbest, source, cached, reverse, lm)
        from nmt_cli.decoding.features import format_weights
        from nmt_cli.decoding.tune import tune_file

        names = None if tune_features is None else [
            n.strip() for n in tune_features.split(",") if n.strip()]
        result = tune_file(reference, features_in=cached, nbest=nbest, source=source,
                           models=models,
                           settings=_settings(device, threads, batch_size),
                           features_out=features, metric=metric.lower(), names=names, seed=seed,
                           restarts=restarts, max_weight=max_weight)
        if output is not None:
            import json

            from nmt_cli.files import atomic_write_text

            atomic_write_text(output, json.dumps(result.weights, indent=2) + "\n")
        print(result.report(format_weights))


def _grid(grid: Optional[str], model: List[Path], input: Optional[Path], reference: List[Path],
          metric: str, settings) -> None:
    if grid is None or not model or input is None:
        raise NmtError("a grid of decode runs needs --grid KEY=V1,V2,..., -m MODEL and -i SOURCE "
                       "(with -r REF)")
    from nmt_cli.decoding.tune import grid_file

    print(grid_file(model, input, reference, grid, metric=metric.lower(),
                    settings=settings).report())
