"""``nmt translate``: lines in, one result per line out, in order.

Input is read in chunks as it arrives (a pipe's first translations appear early, memory stays
flat); file outputs are renamed into place at the end, so an error leaves no half file. Output:
one translation per line; TSV rows ``index<TAB>score<TAB>text`` for n-best (0-based index, best
first, an empty input gives one row with score 0); or one reference score per line.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

from nmt_cli.config import DecodeConfig
from nmt_cli.decoding.engine import Engine, EngineSettings, open_engine
from nmt_cli.decoding.hypotheses import Translation
from nmt_cli.errors import DataError, NmtError
from nmt_cli.files import default_mode, replace_durably
from nmt_cli.text.bitext import BOM, open_binary


@dataclass
class TranslateStats:
    sentences: int = 0
    src_tokens: int = 0
    tgt_tokens: int = 0
    seconds: float = 0.0
    truncated: int = 0  # inputs cut to max_src_len subwords
    precision: str = "fp32"  # decode.precision as resolved for this run
    warnings: list[str] = field(default_factory=list)  # one line each, for stderr
    constraint_problems: int = 0  # lines translated without their constraints

    def line(self) -> str:
        s = max(self.seconds, 1e-9)
        return (f"translated {self.sentences} sentences ({self.tgt_tokens} target tokens) in "
                f"{self.seconds:.2f} s: {self.sentences / s:.1f} sentences/s, "
                f"{self.tgt_tokens / s:.1f} tokens/s, {self.precision}")


@dataclass
class TranslateOptions:
    """What to produce besides (or instead of) the plain translations."""

    tsv: bool = False  # TSV rows (index, score, text) even for one hypothesis per line
    score_reference: Path | None = None  # print log P(reference | source) instead of translating
    alignments: Path | None = None  # Pharaoh i-j lines from attention
    plot_attention: Path | None = None  # one PNG heatmap per sentence
    chunk_lines: int = 1000
    threads: int = 0  # CPU threads in all (0: one per core this process may use)
    inter_threads: int = 0  # on the CPU, batches searched side by side; 0: one per thread
    constraints: Path | None = None  # one line of tab-separated target phrases per input line
    glossary: Path | None = None  # source term<TAB>target term lines
    glossary_ignore_case: bool = False

    @property
    def constrained(self) -> bool:
        return self.constraints is not None or self.glossary is not None


# Lines whose constraints could not be used that are named on stderr, one line each
SHOWN_CONSTRAINT_PROBLEMS = 20


class Utf8Lines:
    """Bytes of one input's lines to text under ``decode.invalid_utf8``: "replace" (U+FFFD, counted
    for one warning) or "error" (stop, naming the file and line)."""

    SHOWN = 5  # line numbers quoted in the warning

    def __init__(self, name: str, policy: str):
        self.name, self.policy, self.bad_lines = name, policy, 0
        self.first_bad: list[int] = []

    def __call__(self, raw: bytes, lineno: int) -> str:
        if lineno == 1 and raw.startswith(BOM):
            raw = raw[len(BOM):]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            if self.policy == "error":
                raise DataError(f"invalid UTF-8 at byte {exc.start}; fix the encoding (for example "
                                "with iconv), or use --invalid-utf8 replace (decode.invalid_utf8)",
                                self.name, lineno) from None
            self.bad_lines += 1
            if len(self.first_bad) < self.SHOWN:
                self.first_bad.append(lineno)
            text = raw.decode("utf-8", errors="replace")
        return text.rstrip("\r\n")

    def warning(self) -> str | None:
        """One line for stderr, or None when every line was valid UTF-8."""
        if not self.bad_lines:
            return None
        lines = ", ".join(map(str, self.first_bad)) + (", ..." if self.bad_lines > self.SHOWN
                                                       else "")
        return (f"warning: {self.name}: {self.bad_lines} line(s) with invalid UTF-8 (line "
                f"{lines}); the bad bytes were replaced by U+FFFD and every line was translated "
                "(--invalid-utf8 error stops instead)")


def read_chunks(stream: IO[bytes], decode: Utf8Lines, max_lines: int) -> Iterator[list[str]]:
    """Lists of at most ``max_lines`` decoded lines, as soon as they arrive: ``read1`` returns what
    is available, so on a pipe nothing waits for the writer to finish."""
    pending, lineno = b"", 0
    while True:
        data = stream.read1(1 << 20)  # type: ignore[attr-defined]
        if not data:
            break
        *complete, pending = (pending + data).split(b"\n")
        for start in range(0, len(complete), max_lines):
            chunk = []
            for raw in complete[start:start + max_lines]:
                lineno += 1
                chunk.append(decode(raw, lineno))
            yield chunk
    if pending:
        yield [decode(pending, lineno + 1)]


def read_lines(path: Path, decode: Utf8Lines) -> Iterator[str]:
    """The lines of a (possibly compressed) text file, decoded by ``decode``."""
    with open_binary(path) as fh:
        for lineno, raw in enumerate(fh, 1):
            yield decode(raw, lineno)


class _Output:
    """stdout, or a file written under a temporary name and renamed on commit; a symbolic link or
    non-regular file (``/dev/stdout``, a pipe) is written in place, as a rename would replace it."""

    def __init__(self, path: Path | None):
        self.path, self.tmp = path, None
        if path is None:
            self.fh: IO[str] = sys.stdout
            return
        if path.is_symlink() or (path.exists() and not path.is_file()):
            self.fh = open(path, "w", encoding="utf-8", newline="\n")
            self.path = None  # nothing to rename
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.chmod(self.tmp, default_mode())
        self.fh = os.fdopen(fd, "w", encoding="utf-8", newline="\n")

    def commit(self) -> None:
        if self.fh is not sys.stdout:
            self.fh.close()
        if self.tmp is not None:
            replace_durably(self.tmp, self.path)  # type: ignore[arg-type]
            self.tmp = None

    def discard(self) -> None:
        if self.fh is not sys.stdout:
            self.fh.close()
        if self.tmp is not None:
            Path(self.tmp).unlink(missing_ok=True)
            self.tmp = None


def _one_line(text: str) -> str:
    return text.replace("\n", " ").replace("\r", " ")


def translate_file(checkpoint: Path | Sequence[Path], input_path: Path | None,
                   output_path: Path | None, *, device: str = "auto",
                   options: TranslateOptions | None = None, **decode: Any) -> TranslateStats:
    """Translate (or score) a file or stdin with a checkpoint, an ensemble or an exported folder.
    Extra keyword arguments are ``DecodeConfig`` keys over the (first) checkpoint's, checked like
    recipe keys: ``beam_size=0`` is a ConfigError naming ``decode.beam_size``."""
    opts = options or TranslateOptions()
    paths = [checkpoint] if isinstance(checkpoint, (str, Path)) else list(checkpoint)
    start = time.time()
    if opts.plot_attention is not None:
        from nmt_cli.decoding.alignment import require_matplotlib

        require_matplotlib()
    engine = open_engine(paths, EngineSettings(device, opts.threads, opts.inter_threads, decode))
    try:
        cfg = engine.defaults
        if "lm_weight" in decode and cfg.lm is None:
            raise NmtError("--lm-weight weighs a language model, and none is given: add --lm "
                           "CKPT (or decode.lm in the recipe)")
        _check_options(engine, opts, cfg)
        stats = TranslateStats(precision=engine.precision)
        _run(engine, cfg, input_path, output_path, opts, stats)
    finally:
        engine.close()
    stats.seconds = time.time() - start
    return stats


def _check_options(engine: Engine, opts: TranslateOptions, cfg: DecodeConfig) -> None:
    """Refuse the output forms that cannot go together, or that this engine cannot give."""
    if not engine.can_align:
        for flag, value in (("--alignments", opts.alignments),
                            ("--plot-attention", opts.plot_attention)):
            if value is not None:
                raise NmtError(f"{flag} does not work on an exported CTranslate2 model (use the "
                               ".pt checkpoint)")
    if opts.score_reference is not None and (opts.tsv or cfg.n_best > 1 or opts.alignments
                                             or opts.plot_attention or opts.constrained):
        raise NmtError("--score-reference prints one score per line; it cannot be combined with "
                       "--n-best, --alignments, --plot-attention, --constraints or --glossary")
    if opts.constrained:
        flag = "--constraints" if opts.constraints is not None else "--glossary"
        if not engine.can_constrain:
            raise NmtError(f"{flag}: {engine.REFUSE_CONSTRAINTS}")  # type: ignore[attr-defined]
        if cfg.sample:
            raise NmtError(f"{flag} needs beam search; it cannot be combined with --sample "
                           "(decode.sample)")


def _run(engine: Engine, cfg: DecodeConfig, input_path: Path | None, output_path: Path | None,
         opts: TranslateOptions, stats: TranslateStats) -> None:
    """Read the input in chunks, translate or score them, and publish the outputs at the end."""
    in_stream = open_binary(input_path) if input_path else sys.stdin.buffer
    source = Utf8Lines(str(input_path) if input_path else "<stdin>", cfg.invalid_utf8)
    reference = Utf8Lines(str(opts.score_reference), cfg.invalid_utf8)
    outputs: list[_Output] = []
    try:
        outputs.append(_Output(output_path))
        if opts.alignments is not None:
            outputs.append(_Output(opts.alignments))
        chunks = read_chunks(in_stream, source, opts.chunk_lines)
        if opts.constrained:
            chunks = _with_constraints(chunks, opts, input_path)
        if opts.score_reference is not None:
            refs = read_lines(opts.score_reference, reference)
            _score_stream(engine, cfg, chunks, refs, opts.score_reference, outputs[0].fh, stats)
        else:
            _translate_stream(engine, cfg, chunks, opts, outputs, stats)
        for o in outputs:
            o.commit()
    finally:
        if input_path:
            in_stream.close()
        for o in outputs:
            o.discard()
    stats.warnings += [w for w in (source.warning(), reference.warning()) if w]
    hidden = stats.constraint_problems - SHOWN_CONSTRAINT_PROBLEMS
    if hidden > 0:
        stats.warnings.append(f"error: {hidden} more input line(s) were translated without "
                              "their constraints")


def _translate_stream(engine: Engine, cfg: DecodeConfig, chunks: Iterator[list[str]],
                      opts: TranslateOptions, outputs: list[_Output],
                      stats: TranslateStats) -> None:
    out, align_out = outputs[0].fh, outputs[1] if len(outputs) > 1 else None
    tsv = opts.tsv or cfg.n_best > 1
    want_attention = align_out is not None or opts.plot_attention is not None
    for chunk in chunks:
        constraints = None
        if isinstance(chunk, ConstrainedChunk):
            chunk, constraints = chunk.lines, chunk.constraints
        found = engine.translate_lines(chunk, cfg, return_attention=want_attention,
                                       first_index=stats.sentences, constraints=constraints)
        for t in found:
            if t.warning is not None:
                _constraint_problem(stats, t.warning)
            _write_translation(t, stats.sentences, out, tsv)
            if want_attention:
                _write_attention(t, stats.sentences, engine.tok, align_out, opts.plot_attention)
            stats.sentences += 1
            stats.src_tokens += t.src_pieces
            stats.tgt_tokens += len(t.hypotheses[0].tokens) if t.hypotheses else 0
            stats.truncated += t.truncated
        for o in outputs:
            o.fh.flush()


def _write_translation(t: Translation, index: int, out: IO[str], tsv: bool) -> None:
    if not tsv:
        out.write(_one_line(t.text) + "\n")
        return
    if not t.hypotheses:
        out.write(f"{index}\t0.0000\t\n")
        return
    for hyp, text in zip(t.hypotheses, t.texts or [t.text]):
        out.write(f"{index}\t{hyp.score:.4f}\t{_one_line(text)}\n")


def _write_attention(t: Translation, index: int, tok, align_out: "_Output | None",
                     plot_dir: Path | None) -> None:
    from nmt_cli.decoding.alignment import hard_alignment, pharaoh, plot_attention

    hyp = t.hypotheses[0] if t.hypotheses else None
    if align_out is not None:
        pairs = [] if hyp is None or hyp.attention is None else \
            hard_alignment(hyp.attention, t.src_pieces, len(hyp.tokens))
        align_out.fh.write(pharaoh(pairs) + "\n")
    if plot_dir is not None and hyp is not None and hyp.attention is not None:
        src_pieces = tok.pieces_src(t.source)[: t.src_pieces] + ["</s>"]
        tgt_pieces = [tok.tgt.id_to_piece(i) for i in hyp.tokens] + ["</s>"]
        plot_attention(hyp.attention, src_pieces, tgt_pieces, plot_dir / f"{index:06d}.png")


def _score_stream(engine: Engine, cfg: DecodeConfig, chunks: Iterator[list[str]],
                  refs: Iterator[str], reference: Path, out: IO[str],
                  stats: TranslateStats) -> None:
    for chunk in chunks:
        ref_chunk = [line for _, line in zip(range(len(chunk)), refs)]
        if len(ref_chunk) < len(chunk):
            raise DataError(f"the reference has fewer lines ({stats.sentences + len(ref_chunk)}) "
                            "than the input; give one reference line per input line", reference)
        for score in engine.score_references(chunk, ref_chunk, cfg):
            out.write(f"{score:.4f}\n")
        stats.sentences += len(chunk)
        stats.tgt_tokens += sum(len(ids) + 1 for ids in engine.tok.encode_tgt(ref_chunk))
        out.flush()
    if next(refs, None) is not None:
        raise DataError(f"the reference has more lines than the input ({stats.sentences}); give "
                        "one reference line per input line", reference)


@dataclass
class ConstrainedChunk:
    lines: list[str]
    constraints: list[list[str]]  # each line's target phrases


def _with_constraints(chunks: Iterator[list[str]], opts: TranslateOptions,
                      input_path: Path | None) -> Iterator[ConstrainedChunk]:
    """The input's chunks with each line's phrases: from the constraint file, which must have as
    many lines as the input (the whole input is read to check it before anything is written),
    then the glossary's target terms for the line's source terms."""
    from nmt_cli.decoding.constraints import Glossary, merge, read_constraint_file

    glossary = None if opts.glossary is None else Glossary.read(opts.glossary,
                                                                opts.glossary_ignore_case)
    given: list[list[str]] | None = None
    if opts.constraints is not None:
        given = read_constraint_file(opts.constraints)
        lines = [line for chunk in chunks for line in chunk]
        if len(given) != len(lines):
            raise DataError(f"the constraint file has {len(given)} line(s) but the input "
                            f"({input_path or '<stdin>'}) has {len(lines)}; give one line of "
                            "tab-separated phrases per input line, empty for none",
                            opts.constraints)
        chunks = iter([lines[i:i + opts.chunk_lines]
                       for i in range(0, len(lines), opts.chunk_lines)])
    done = 0
    for chunk in chunks:
        phrases = [list(given[done + i]) if given is not None else [] for i in range(len(chunk))]
        if glossary is not None:
            phrases = [merge(p, glossary.match(line)) for p, line in zip(phrases, chunk)]
        yield ConstrainedChunk(chunk, phrases)
        done += len(chunk)


def _constraint_problem(stats: TranslateStats, warning: str) -> None:
    """One stderr line for a line whose constraints were not used (the first few of them)."""
    stats.constraint_problems += 1
    if stats.constraint_problems <= SHOWN_CONSTRAINT_PROBLEMS:
        stats.warnings.append(f"error: constraints of input line {stats.sentences + 1}: "
                              f"{warning}")
