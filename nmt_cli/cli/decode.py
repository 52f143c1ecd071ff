"""The decoding-side commands: translate, serve, export and eval."""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from nmt_cli.cli.app import Device, app, user_errors
from nmt_cli.errors import NmtError

class Quantize(str, Enum):
    int8 = "int8"


QUANTIZE_HELP = "Removed; for fast CPU decoding export the model: nmt export --quantization int8."


def _no_quantize(quantize: Optional[Quantize]) -> None:
    if quantize is not None:
        raise NmtError("--quantize was removed: torch's dynamic int8 gained under 1.3x over fp32 "
                       "(docs/results.md); nmt export --quantization int8 is the fast CPU path")


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
    lm: Optional[Path] = typer.Option(None, "--lm", help="Language model checkpoint (model.arch: "
                                                          "lm) for shallow fusion; it must share "
                                                          "the model's target tokenizer."),
    lm_weight: Optional[float] = typer.Option(None, "--lm-weight",
                                              help="Weight of log p_LM added to each step's "
                                                   "scores (with --lm); 0 changes nothing."),
    constraints: Optional[Path] = typer.Option(
        None, "--constraints", help="Terminology: one line per input line of tab-separated "
                                    "target phrases that its translation must contain (empty "
                                    "for none)."),
    glossary: Optional[Path] = typer.Option(
        None, "--glossary", help="TSV of source term<TAB>target term: the target term must "
                                 "appear in the translation of every line whose source holds "
                                 "the source term as whole words."),
    glossary_ignore_case: bool = typer.Option(False, "--glossary-ignore-case",
                                              help="Match the glossary's source terms in any "
                                                   "case."),
    score_reference: Optional[Path] = typer.Option(
        None, "--score-reference", help="Print log P(reference line | input line) per line "
                                        "instead of translating."),
    alignments: Optional[Path] = typer.Option(None, "--alignments",
                                              help="Write Pharaoh i-j alignments here."),
    plot_attention: Optional[Path] = typer.Option(
        None, "--plot-attention", help="Write one attention heatmap PNG per sentence here "
                                       "(needs matplotlib)."),
    quantize: Optional[Quantize] = typer.Option(None, "--quantize", help=QUANTIZE_HELP),
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
    # Idle OpenMP threads sleep instead of spinning, which slows decoding on a shared CPU
    # (docs/decoding.md); read when torch is first imported, just below.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    given = locals()
    decode = {key: given[key] for key in DECODE_OPTIONS if given[key] is not None}
    if lm is not None:
        decode["lm"] = str(lm)  # a recipe value: checked as decode.lm
    with user_errors():
        _no_quantize(quantize)
        from nmt_cli.decoding.translate import TranslateOptions, translate_file

        options = TranslateOptions(tsv=n_best is not None, score_reference=score_reference,
                                   alignments=alignments, plot_attention=plot_attention,
                                   threads=threads, inter_threads=inter_threads,
                                   constraints=constraints, glossary=glossary,
                                   glossary_ignore_case=glossary_ignore_case)
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
                  "allow_unk", "invalid_utf8", "precision", "lm", "lm_weight")


def _serve_settings(given: dict) -> "object":
    """ServeConfig with the options that were given; a bad value names its option."""
    from nmt_cli.config import with_overrides
    from nmt_cli.serve.settings import ServeConfig
    from nmt_cli.errors import ConfigError

    try:
        return with_overrides(ServeConfig(), {k: v for k, v in given.items() if v is not None})
    except ConfigError as exc:
        option = "--" + (exc.key or "").replace("_", "-")
        raise NmtError(f"{option}: {str(exc).removeprefix(f'{exc.key}: ')}") from None


def _serve_help(name: str, text: str) -> str:
    from nmt_cli.serve.settings import ServeConfig

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
        None, "--max-wait-ms", help=_serve_help("max_wait_ms", "How long a batch waits for the "
                                                "last batch's requests to come back.")),
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
    max_work: Optional[int] = typer.Option(
        None, "--max-work", help=_serve_help("max_work", "Work one request may ask for: over "
                                             "its texts, beam (or samples) x output-length cap; "
                                             "past it, 422.")),
    turn_work: Optional[int] = typer.Option(
        None, "--turn-work", help=_serve_help("turn_work", "Work of one turn: a larger request "
                                              "is cut into chunks that take turns with others.")),
    max_queue: Optional[int] = typer.Option(
        None, "--max-queue", help=_serve_help("max_queue", "Sentences that may wait; past it, "
                                              "503 with Retry-After.")),
    timeout: Optional[float] = typer.Option(
        None, "--timeout", help=_serve_help("timeout", "Seconds a request may wait and run; "
                                            "then 504.")),
    max_connections: Optional[int] = typer.Option(
        None, "--max-connections", help=_serve_help("max_connections", "Open connections and "
                                                    "requests; past it, 503.")),
    read_timeout: Optional[float] = typer.Option(
        None, "--read-timeout", help=_serve_help("read_timeout", "Seconds a client may take "
                                                 "to send its body; then 408.")),
    drain: Optional[float] = typer.Option(
        None, "--drain", help=_serve_help("drain", "Seconds the requests in flight have to "
                                          "finish after SIGTERM.")),
    allowed_hosts: Optional[str] = typer.Option(
        None, "--allowed-hosts", help="Comma-separated Host header names to answer (others get "
                                      "400), e.g. localhost,mt.example.org. Default: any."),
    set_: List[str] = typer.Option([], "--set", metavar="decode.KEY=VALUE",
                                   help="Change a decode default of the checkpoint's recipe, "
                                        "e.g. --set decode.beam_size=4; repeatable."),
    quantize: Optional[Quantize] = typer.Option(None, "--quantize", help=QUANTIZE_HELP),
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
        _no_quantize(quantize)
        from nmt_cli.config import DecodeConfig, with_overrides
        from nmt_cli.recipes import parse_override
        from nmt_cli.serve import require_server_extra, run_server

        require_server_extra()
        settings = _serve_settings({
            "host": host, "port": port, "max_batch_sentences": max_batch_sentences,
            "max_wait_ms": max_wait_ms, "max_texts": max_texts, "max_chars": max_chars,
            "max_beam_size": max_beam_size, "max_output_len": max_output_len,
            "max_work": max_work, "turn_work": turn_work, "max_queue": max_queue,
            "timeout": timeout, "max_connections": max_connections, "read_timeout": read_timeout,
            "drain": drain, "threads": threads, "quiet": quiet or None,
            "allowed_hosts": None if allowed_hosts is None else
            [h.strip() for h in allowed_hosts.split(",") if h.strip()]})
        decode = {}
        for text in set_:
            key, value = parse_override(text)
            if not key.startswith("decode."):
                raise NmtError(f"--set {text}: nmt serve changes decode.* keys only")
            decode[key.removeprefix("decode.")] = value
        with_overrides(DecodeConfig(), decode, "decode")  # a bad key fails before loading
        run_server(model, settings, device.value, decode)


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


@app.command()
def score(
    model: Path = typer.Option(..., "-m", "--model",
                               help="Language model checkpoint (model.arch: lm), or a "
                                    "translation model with -r."),
    input: Path = typer.Option(..., "-i", "--input",
                               help="Text to score (for a translation model: its sources)."),
    reference: Optional[Path] = typer.Option(
        None, "-r", "--reference", help="With a translation model: the targets to score, one "
                                        "per input line (forced decoding)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Default stdout."),
    as_json: bool = typer.Option(False, "--json", help="One JSON document: every line's figures "
                                                       "and the corpus perplexities."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Sentences per batch."),
    device: Device = typer.Option(Device.auto, help="Where to run the model."),
) -> None:
    """Score text: per line the log-probability (natural log, EOS included), the token count
    (subwords + EOS) and the perplexity, as TSV; the corpus perplexity per subword and per word
    (words + one EOS per line) on stderr, or all of it as JSON with --json.
    """
    with user_errors():
        from nmt_cli.decoding.score import score_file

        report = score_file(model, input, reference, output, as_json=as_json,
                            batch_size=batch_size, device=device.value)
        if not as_json:
            print(report.line(), file=sys.stderr)
