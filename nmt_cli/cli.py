"""The ``nmt`` command line: thin Typer wrappers over plain functions.

This is the only module that imports Typer. Heavy modules (torch above all) are imported inside the
commands, so ``nmt --help`` stays fast. A user's mistake (``NmtError``) becomes one line on stderr
and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Iterator, List, Optional

import typer

from nmt_cli.errors import NmtError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_enable=False,
                  help="Neural machine translation: tokenizer -> preprocess -> train -> translate "
                       "-> eval, each stage driven by a YAML recipe.")


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def _stderr():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn NmtError into 'error: ...' on stderr and its exit code."""
    try:
        yield
    except NmtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise typer.Exit(130) from None
    except BrokenPipeError:
        raise typer.Exit(0) from None
    except OSError as exc:  # unwritable output folder, full disk, permissions
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}; check the path and its permissions",
              file=sys.stderr)
        raise typer.Exit(1) from None


RECIPE = typer.Argument(..., help="YAML recipe file (see recipes/).", show_default=False,
                        metavar="RECIPE")
SET = typer.Option([], "--set", help="Override a recipe key, e.g. --set train.max_steps=100; "
                                     "repeatable.", metavar="KEY.PATH=VALUE")


def _load(recipe: Path, overrides: List[str]):
    from nmt_cli.recipes import load_recipe

    return load_recipe(recipe, overrides)


@app.command()
def tokenizer(recipe: Path = RECIPE, set_: List[str] = SET) -> None:
    """Train SentencePiece subword models on the training bitext.

    One joint model or one per language, on a random sample of the training bitext.
    """
    with user_errors():
        from nmt_cli.text.tokenizer import Tokenizers, dev_statistics, train_tokenizers

        rcp = _load(recipe, set_)
        paths = train_tokenizers(rcp)
        tok = Tokenizers.load(rcp)
        for side in sorted(set(paths.values())):
            print(f"wrote {side}")
        print(f"vocabulary: {tok.src_vocab_size} source / {tok.tgt_vocab_size} target pieces"
              f"{' (joint)' if tok.joint else ''}")
        where = "dev" if rcp.data.dev is not None else "train"
        for side, st in dev_statistics(rcp, tok).items():
            print(f"{where} {side}: unknown pieces {st['unk_rate']:.3%}, "
                  f"{st['pieces_per_word']:.2f} pieces per word ({st['lines']} lines)")


class _PreprocessProgress:
    """One rich progress bar per split, with pairs/s."""

    def __init__(self) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.bar = Progress(TextColumn("{task.description:>5}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]} pairs/s"), TimeElapsedColumn(),
                            TimeRemainingColumn(), console=_stderr())
        self.task = None

    def start(self, split: str, total: int) -> None:
        import time

        self.bar.start()
        self.task = self.bar.add_task(split, total=total, rate="-")
        self.t0, self.done = time.perf_counter(), 0

    def advance(self, pairs: int) -> None:
        import time

        self.done += pairs
        rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.update(self.task, advance=pairs, rate=f"{rate:,.0f}")

    def stop(self) -> None:
        if self.task is not None:  # a bar never started would still print an empty line
            self.bar.stop()


def _print_summary(manifest: dict, con) -> None:
    """Rich tables: pairs in and out per filter, then lengths and unknown-piece rates."""
    from rich.table import Table

    for split, info in manifest["splits"].items():
        table = Table(title=f"{split}: {info['pairs_in']} pairs in, {info['kept']} kept, "
                            f"{info['written']} written", title_justify="left")
        for col in ("step", "parameters", "pairs in", "dropped", "pairs out"):
            table.add_column(col, justify="left" if col in ("step", "parameters") else "right")
        left = info["pairs_in"]
        shown = []
        for name, f in info["filters"].items():
            params = ", ".join(f"{k}={v}" for k, v in f["params"].items())
            if f.get("unchecked"):
                params += f", unchecked={f['unchecked']:,}"
            table.add_row(name, params, f"{left:,}", f"{f['dropped']:,}",
                          f"{left - f['dropped']:,}")
            left -= f["dropped"]
            shown += [(name, ex) for ex in f["examples"]]
        weights = [c["weight"] for c in info["corpora"]]
        if any(w != 1.0 for w in weights):
            table.add_row("weights", ", ".join(map(str, weights)), f"{info['kept']:,}", "",
                          f"{info['written']:,}")
        con.print(table)
        unchecked = info["filters"].get("duplicate", {}).get("unchecked", 0)
        if unchecked:
            con.print(f"warning: the duplicate table was full; {unchecked:,} pairs were kept "
                      "without a duplicate check; raise preprocess.dedup_memory_mb", style="yellow")
        for name, (src, tgt) in shown:
            con.print(f"  dropped by {name}: {src[:70]!r} ||| {tgt[:70]!r}", soft_wrap=True)
        lengths = Table(title=f"{split}: subword lengths of the pairs written", title_justify="left")
        for col in ("side", "tokens", "p50", "p90", "p95", "p99", "max", "unk rate", "lines cleaned"):
            lengths.add_column(col, justify="left" if col in ("side", "lines cleaned") else "right")
        for side in ("src", "tgt"):
            st = info[side]
            pct = st.get("percentiles", {})
            norm = ", ".join(f"{k} {v:,}" for k, v in info["normalized"][side].items()) or "none"
            lengths.add_row(side, f"{st['tokens']:,}", *(str(pct.get(k, "-")) for k in
                                                          ("p50", "p90", "p95", "p99", "p100")),
                            f"{st['unk_rate']:.3%}", norm)
        con.print(lengths)
    con.print(f"{manifest['pairs_per_second']:,} pairs/s over {manifest['seconds']:.1f} s")


@app.command()
def preprocess(recipe: Path = RECIPE, set_: List[str] = SET,
               dry_run: bool = typer.Option(False, "--dry-run",
                                            help="Report what the filters would do; write nothing."),
               progress: bool = typer.Option(True, "--progress/--no-progress",
                                             help="Show progress bars with pairs/s.")) -> None:
    """Clean, filter, dedup, encode and binarize the bitext.

    Every split of the recipe is written as token-id shards that training reads.
    """
    with user_errors():
        from nmt_cli.text.preprocess import data_dir, preprocess as run

        rcp = _load(recipe, set_)
        bars = _PreprocessProgress() if progress else None
        try:
            manifest = run(rcp, dry_run=dry_run, progress=bars)
        finally:
            if bars is not None:
                bars.stop()
        con = _stderr()
        _print_summary(manifest, con)
        if dry_run:
            con.print("dry run: nothing written")
        else:
            print(f"wrote {data_dir(rcp)}")


class _TrainProgress:
    """A rich progress bar showing step, loss, tokens/s and learning rate."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("step {task.completed}/{task.total}"), BarColumn(),
                             TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                             console=_stderr(), transient=False)
        self._task = None

    def start(self, total: int) -> None:
        self._bar.start()
        self._task = self._bar.add_task("train", total=total or None, info="")

    def update(self, step: int, record: dict | None) -> None:
        info = {}
        if record:
            info["info"] = (f"loss {record['loss']:.3f}  {record['tok_per_s']:,.0f} tok/s  "
                            f"lr {record['lr']:.2e}")
        self._bar.update(self._task, completed=step, **info)

    def stop(self) -> None:
        self._bar.stop()


@app.command()
def train(recipe: Path = RECIPE, set_: List[str] = SET,
          device: Optional[Device] = typer.Option(None, help="Overrides train.device."),
          resume: bool = typer.Option(False, "--resume",
                                      help="Continue the run in the recipe's workdir from its "
                                           "newest checkpoint."),
          overwrite: bool = typer.Option(False, "--overwrite",
                                         help="Delete the run folder's checkpoints and metrics "
                                              "and start afresh."),
          init_from: Optional[Path] = typer.Option(None, "--init-from", metavar="CKPT",
                                                   help="Start from this checkpoint's weights "
                                                        "with a fresh optimizer and schedule "
                                                        "(fine-tuning).")) -> None:
    """Train an attention encoder-decoder model.

    Validates every train.valid_every steps and keeps the last and best checkpoints.

    Under torchrun (--nproc-per-node N) it trains data-parallel on N processes.
    """
    with user_errors():
        from nmt_cli.training.runs import prepare_run
        from nmt_cli.training.trainer import Trainer

        rcp = _load(recipe, set_)
        prepare_run(rcp, resume=resume, overwrite=overwrite, init_from=init_from)
        con = _stderr()
        trainer = Trainer(rcp, device.value if device else None, console=con, resume=resume,
                          init_from=init_from)
        try:
            summary = trainer.train(_TrainProgress() if trainer.dist.is_main else None)
        finally:
            from nmt_cli.training.distributed import teardown

            teardown()
        if not trainer.dist.is_main:
            return
        best = (f"best dev BLEU {summary.best_bleu:.2f} at step {summary.best_step}"
                if summary.best_bleu is not None else "no dev set, best.pt is last.pt"
                if rcp.data.dev is None else "best dev BLEU n/a")
        con.print(f"done: {summary.steps} steps in {summary.seconds:.0f} s "
                  f"({summary.tokens_per_second:,.0f} target tok/s), stopped by "
                  f"{summary.stopped_by}; {best}; "
                  f"skipped updates: {summary.nonfinite_skipped} non-finite, "
                  f"{summary.oom_skipped} out of memory")
        if summary.stopped_by == "interrupted":
            con.print("continue with the same command plus --resume")
        print(f"best checkpoint: {rcp.workdir / 'checkpoints' / 'best.pt'}")


class Quantize(str, Enum):
    int8 = "int8"


@app.command()
def plot(run_dir: Path = typer.Argument(..., help="A training run folder (the recipe's workdir).",
                                        show_default=False),
         output: Optional[Path] = typer.Option(None, "-o", "--output",
                                               help="PNG to write; default RUN_DIR/curves.png.")
         ) -> None:
    """Plot loss, dev BLEU and learning rate of a training run.

    Reads RUN_DIR/metrics.jsonl and writes a PNG of the curves against steps.
    """
    with user_errors():
        from nmt_cli.plot import plot_run

        print(f"wrote {plot_run(run_dir, output)}")


@app.command()
def translate(
    model: List[Path] = typer.Option(..., "-m", "--model",
                                     help="Checkpoint (.pt) written by nmt train, or a folder "
                                          "written by nmt export; repeat checkpoints for an "
                                          "ensemble that averages log-probabilities."),
    input: Optional[Path] = typer.Option(None, "-i", "--input", help="Source text; default stdin."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Default stdout."),
    beam_size: Optional[int] = typer.Option(None, "--beam-size", help="1 is greedy."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size",
                                             help="Sentences (or source tokens) per batch."),
    batch_type: Optional[str] = typer.Option(None, "--batch-type",
                                             help="What --batch-size counts: sentences or "
                                                  "tokens."),
    length_penalty: Optional[float] = typer.Option(None, "--length-penalty",
                                                   help="GNMT alpha (with --length-norm gnmt)."),
    length_norm: Optional[str] = typer.Option(
        None, "--length-norm", help="Score = log-prob / GNMT penalty (gnmt), / length (average), "
                                    "or raw (none)."),
    min_len_a: Optional[float] = typer.Option(None, "--min-len-a"),
    min_len_b: Optional[int] = typer.Option(None, "--min-len-b",
                                            help="Shortest output: a * source length + b."),
    max_len_a: Optional[float] = typer.Option(None, "--max-len-a"),
    max_len_b: Optional[int] = typer.Option(None, "--max-len-b",
                                            help="Longest output: a * source length + b."),
    no_repeat_ngram: Optional[int] = typer.Option(None, "--no-repeat-ngram",
                                                  help="Never repeat an n-gram of this size."),
    max_src_len: Optional[int] = typer.Option(None, "--max-src-len",
                                              help="Longer inputs are cut to this many subwords."),
    n_best: Optional[int] = typer.Option(None, "--n-best",
                                         help="Print K hypotheses per line as TSV: index, score, "
                                              "text."),
    sample: Optional[bool] = typer.Option(None, "--sample/--no-sample",
                                          help="Sample instead of beam search."),
    temperature: Optional[float] = typer.Option(None, "--temperature"),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="0: no cut."),
    top_p: Optional[float] = typer.Option(None, "--top-p"),
    seed: Optional[int] = typer.Option(None, "--seed", help="Makes sampling reproducible."),
    allow_unk: Optional[bool] = typer.Option(None, "--allow-unk/--no-allow-unk",
                                             help="Let the output contain <unk> (shown as ⁇); "
                                                  "forbidden by default."),
    invalid_utf8: Optional[str] = typer.Option(
        None, "--invalid-utf8", help="Bad bytes in the input: replace (warn once, translate every "
                                     "line) or error (stop)."),
    score_reference: Optional[Path] = typer.Option(
        None, "--score-reference", help="Print log P(reference line | input line) per line "
                                        "instead of translating."),
    alignments: Optional[Path] = typer.Option(None, "--alignments",
                                              help="Write Pharaoh i-j alignments here."),
    plot_attention: Optional[Path] = typer.Option(
        None, "--plot-attention", help="Write one attention heatmap PNG per sentence here "
                                       "(needs matplotlib)."),
    quantize: Optional[Quantize] = typer.Option(None, "--quantize",
                                                help="int8 dynamic quantization (CPU)."),
    precision: Optional[str] = typer.Option(
        None, "--precision", help="auto (bf16 on a GPU that has it, else fp32), fp32, or bf16 "
                                  "and fp16 on a GPU. The CPU decodes in fp32; nmt export is "
                                  "its fast path."),
    device: Device = typer.Option(Device.auto, help="Where to run the model."),
    threads: int = typer.Option(0, "--threads", min=0,
                                help="CPU threads for torch, or in all for CTranslate2 on an "
                                     "exported model; 0 keeps the default (one per core)."),
    inter_threads: int = typer.Option(0, "--inter-threads", min=0,
                                      help="On the CPU: batches translated side by side "
                                           "(a checkpoint or an exported model), each on "
                                           "threads/N threads; 0 is one per thread."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No statistics on stderr."),
) -> None:
    """Translate text with beam search, greedy or sampling.

    N lines in, N lines out, in order; an empty line stays empty. Each decode option overrides
    the checkpoint recipe's decode.* key of the same name and is checked like it.
    """
    # Idle OpenMP threads sleep instead of spinning: on a CPU shared with other work, spinning
    # threads made decoding several times slower; on an idle CPU the cost is negligible. Read by
    # the OpenMP runtime when torch is first imported, which happens just below.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    given = locals()
    decode = {key: given[key] for key in DECODE_OPTIONS if given[key] is not None}
    with user_errors():
        from nmt_cli.decoding.translate import TranslateOptions, translate_file

        options = TranslateOptions(tsv=n_best is not None, score_reference=score_reference,
                                   alignments=alignments, plot_attention=plot_attention,
                                   quantize=quantize.value if quantize else None,
                                   threads=threads, inter_threads=inter_threads)
        stats = translate_file(model, input, output, device=device.value, options=options,
                               **decode)
        for line in stats.warnings:
            print(line, file=sys.stderr)
        if stats.truncated:
            print(f"warning: {stats.truncated} input line(s) longer than the source limit were "
                  "cut (see --max-src-len)", file=sys.stderr)
        if not quiet:
            print(stats.line(), file=sys.stderr)


# The options of ``translate`` that are decode.* keys (same names), passed on when given.
DECODE_OPTIONS = ("beam_size", "batch_size", "batch_type", "length_penalty", "length_norm",
                  "min_len_a", "min_len_b", "max_len_a", "max_len_b", "no_repeat_ngram",
                  "max_src_len", "n_best", "sample", "temperature", "top_k", "top_p", "seed",
                  "allow_unk", "invalid_utf8", "precision")


def _serve_settings(given: dict) -> "object":
    """ServeConfig with the options that were given; a bad value names its option."""
    from nmt_cli.config import ServeConfig, with_overrides
    from nmt_cli.errors import ConfigError

    try:
        return with_overrides(ServeConfig(), {k: v for k, v in given.items() if v is not None})
    except ConfigError as exc:
        option = "--" + (exc.key or "").replace("_", "-")
        raise NmtError(f"{option}: {str(exc).removeprefix(f'{exc.key}: ')}") from None


def _serve_help(name: str, text: str) -> str:
    from nmt_cli.config import ServeConfig

    return f"{text} Default {getattr(ServeConfig, name)}."


@app.command()
def serve(
    model: List[Path] = typer.Option(..., "-m", "--model",
                                     help="Checkpoint (.pt), or a folder written by nmt "
                                          "export; repeat checkpoints for an ensemble, as in "
                                          "translate."),
    host: Optional[str] = typer.Option(None, "--host", help=_serve_help("host", "Address to "
                                                                         "listen on.")),
    port: Optional[int] = typer.Option(None, "--port", help=_serve_help("port", "0 picks a free "
                                                                         "port.")),
    max_batch_sentences: Optional[int] = typer.Option(
        None, "--max-batch-sentences", help=_serve_help("max_batch_sentences", "Most sentences "
                                                        "of waiting requests batched together.")),
    max_wait_ms: Optional[float] = typer.Option(
        None, "--max-wait-ms", help=_serve_help("max_wait_ms", "How long a batch waits for more "
                                                "requests.")),
    max_texts: Optional[int] = typer.Option(None, "--max-texts",
                                            help=_serve_help("max_texts", "Texts per request.")),
    max_chars: Optional[int] = typer.Option(None, "--max-chars",
                                            help=_serve_help("max_chars", "Characters per text.")),
    max_beam_size: Optional[int] = typer.Option(
        None, "--max-beam-size", help=_serve_help("max_beam_size", "Largest beam size or n-best "
                                                  "a request may ask for.")),
    max_output_len: Optional[int] = typer.Option(
        None, "--max-output-len", help=_serve_help("max_output_len", "Most output subwords a "
                                                   "request's length limits may allow.")),
    set_: List[str] = typer.Option([], "--set", metavar="decode.KEY=VALUE",
                                   help="Change a decode default of the checkpoint's recipe, "
                                        "e.g. --set decode.beam_size=4; repeatable."),
    quantize: Optional[Quantize] = typer.Option(None, "--quantize",
                                                help="int8 dynamic quantization (CPU)."),
    device: Device = typer.Option(Device.auto, help="Where to run the model."),
    threads: Optional[int] = typer.Option(None, "--threads",
                                          help="CPU threads for torch; 0 keeps torch's default."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No access or batch log lines."),
) -> None:
    """Serve translations over HTTP, batching concurrent requests.

    GET /health, GET /model, POST /translate (JSON) and a page to try it at GET /. Needs the
    optional extra: pip install 'nmt[serve]'.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as in translate
    with user_errors():
        from nmt_cli.config import DecodeConfig, with_overrides
        from nmt_cli.recipes import parse_override
        from nmt_cli.serve import require_server_extra, run_server

        require_server_extra()
        settings = _serve_settings({
            "host": host, "port": port, "max_batch_sentences": max_batch_sentences,
            "max_wait_ms": max_wait_ms, "max_texts": max_texts, "max_chars": max_chars,
            "max_beam_size": max_beam_size, "max_output_len": max_output_len,
            "threads": threads, "quiet": quiet or None})
        decode = {}
        for text in set_:
            key, value = parse_override(text)
            if not key.startswith("decode."):
                raise NmtError(f"--set {text}: nmt serve changes decode.* keys only")
            decode[key.removeprefix("decode.")] = value
        with_overrides(DecodeConfig(), decode, "decode")  # a bad key fails before loading
        run_server(model, settings, device.value, decode,
                   quantize.value if quantize else None)


@app.command()
def average(
    checkpoints: List[Path] = typer.Argument(..., help="Checkpoints to average, or one run folder "
                                                       "with --last.", show_default=False),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the averaged model."),
    last: Optional[int] = typer.Option(None, "--last", min=1,
                                       help="Average the newest N checkpoints of the run folder."),
) -> None:
    """Average the weights of several checkpoints of one model."""
    with user_errors():
        from nmt_cli.training.average import average_to_file, run_checkpoints

        if last is not None:
            if len(checkpoints) != 1 or not checkpoints[0].is_dir():
                raise NmtError("--last N takes one run folder (the recipe's workdir)")
            paths = run_checkpoints(checkpoints[0], last)
            if len(paths) < last:
                print(f"note: {checkpoints[0]} holds {len(paths)} distinct checkpoint(s), not "
                      f"{last}; averaging those", file=sys.stderr)
        else:
            dirs = [p for p in checkpoints if p.is_dir()]
            if dirs:
                raise NmtError(f"{dirs[0]} is a folder; give checkpoint files, or one run folder "
                               "with --last N")
            paths = list(checkpoints)
        average_to_file(paths, output)
        print(f"averaged {len(paths)} checkpoint(s) ({', '.join(str(p) for p in paths)}) "
              f"into {output}")


class ExportFormat(str, Enum):
    ctranslate2 = "ctranslate2"


class Quantization(str, Enum):
    int8 = "int8"
    int8_float32 = "int8_float32"
    int16 = "int16"
    float16 = "float16"
    bfloat16 = "bfloat16"
    float32 = "float32"


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="A Transformer checkpoint (.pt).",
                                      show_default=False),
    output: Path = typer.Option(..., "-o", "--output", help="Model directory to write."),
    format: ExportFormat = typer.Option(ExportFormat.ctranslate2, "--format",
                                        help="Inference engine."),
    quantization: Quantization = typer.Option(Quantization.float32, "--quantization",
                                              help="Weight type of the exported model."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty directory."),
) -> None:
    """Export a Transformer checkpoint for CTranslate2 (translate and serve take the folder).

    Needs the optional extra: pip install 'nmt[ct2]'.
    """
    with user_errors():
        from nmt_cli.export.ct2 import export_ctranslate2

        export_ctranslate2(checkpoint, output, quantization.value, overwrite)
        print(f"exported {checkpoint} to {output} ({format.value}, {quantization.value})")


@app.command("eval")
def eval_(
    input: Path = typer.Option(..., "-i", "--input", help="Hypotheses, one per line."),
    reference: List[Path] = typer.Option(..., "-r", "--reference",
                                         help="Reference file; repeat for more references."),
    metrics: Optional[str] = typer.Option(None, "--metrics", "-m",
                                          help="Comma-separated: bleu, chrf, ter "
                                               "(default: bleu,chrf)."),
    tokenize: Optional[str] = typer.Option(None, "--tokenize",
                                           help="sacreBLEU tokenizer for BLEU (default: 13a)."),
    lowercase: Optional[bool] = typer.Option(None, "--lowercase", "-lc"),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Score translations with sacreBLEU: BLEU, chrF, TER.

    Prints each score with its signature, or JSON with --json. The options override eval.*
    keys and are checked like them.
    """
    with user_errors():
        from nmt_cli.config import EvalConfig, with_overrides
        from nmt_cli.scoring import score_files

        given = {"tokenize": tokenize, "lowercase": lowercase, "metrics": None if metrics is None
                 else [m.strip().lower() for m in metrics.split(",") if m.strip()]}
        cfg = with_overrides(EvalConfig(), {k: v for k, v in given.items() if v is not None},
                             "eval")
        scores = score_files(input, reference, cfg.metrics, cfg.tokenize, cfg.lowercase)
        if as_json:
            print(json.dumps([s.as_dict() for s in scores], indent=2))
        else:
            for s in scores:
                print(f"{s.text}\n  signature: {s.signature}")


def main() -> None:
    """The ``nmt`` command. A mistyped command, option or value is one ``error:`` line (exit 2)
    naming what is wrong and where to find the right usage, like every other user error."""
    try:  # typer's own copy of click (newer typer), else click itself
        from typer._click import exceptions as errors
    except ImportError:  # pragma: no cover - depends on the installed typer
        from click import exceptions as errors

    no_args = getattr(errors, "NoArgsIsHelpError", ())
    try:
        code = app(prog_name="nmt", standalone_mode=False)
    except no_args as exc:  # bare `nmt` or `nmt COMMAND`: the help, as click shows it
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except errors.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "nmt"
        print(f"error: {where}: {exc.format_message()} (see '{where} --help')", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    except errors.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        raise SystemExit(1) from None
    raise SystemExit(code if isinstance(code, int) else 0)


# Commands that leave nothing to tidy once they return: their files are closed and their
# threads joined, so the process may end without the interpreter's teardown.
QUICK_EXIT_COMMANDS = frozenset({"translate", "eval"})


def run() -> None:
    """The ``nmt`` console script: :func:`main`, then, after a command of
    ``QUICK_EXIT_COMMANDS`` that succeeded, an exit without the interpreter's teardown.

    Unloading torch and freeing the model at shutdown costs about a second on a 2-core machine
    (``python -c "import torch"`` takes ~1.2 s longer than the same import followed by
    ``os._exit``), a large share of a short ``nmt translate``. Output is flushed first. Failures,
    every other command (training with its writers and process groups above all), a process
    under a profiler or tracer (cProfile, coverage: their results are written at exit), and
    ``NMT_QUICK_EXIT=0`` in the environment end the ordinary way."""
    command = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    quick = (command in QUICK_EXIT_COMMANDS and os.environ.get("NMT_QUICK_EXIT", "1") != "0"
             and sys.gettrace() is None and sys.getprofile() is None)
    try:
        main()
    except SystemExit as exc:
        if quick and not exc.code:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except OSError:  # a reader that left early (broken pipe): the ordinary way
                raise exc from None
            os._exit(0)
        raise


if __name__ == "__main__":
    run()
