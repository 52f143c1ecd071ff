"""``nmt translate``: a checkpoint, lines in, translations out, in order, one line per line.

Input is read in chunks as it arrives, so with a pipe the first translations appear before the
writer has finished, and memory does not grow with the input. A file output is written under a
temporary name and renamed at the end, so an error never leaves half a file behind.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Iterator

import torch

from nmt_cli.bitext import decode_line, open_binary
from nmt_cli.checkpoint import load_checkpoint, model_from_checkpoint
from nmt_cli.files import default_mode
from nmt_cli.inference import translate_lines
from nmt_cli.runtime import pick_device


@dataclass
class TranslateStats:
    sentences: int = 0
    src_tokens: int = 0
    tgt_tokens: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        s = max(self.seconds, 1e-9)
        return (f"translated {self.sentences} sentences ({self.tgt_tokens} target tokens) in "
                f"{self.seconds:.2f} s: {self.sentences / s:.1f} sentences/s, "
                f"{self.tgt_tokens / s:.1f} tokens/s")


def read_chunks(stream: IO[bytes], name: str, max_lines: int) -> Iterator[list[str]]:
    """Yield lists of at most ``max_lines`` decoded lines, as soon as they have arrived.

    ``read1`` returns whatever bytes are available (one underlying read), so on a pipe each chunk
    holds the complete lines received so far and nothing waits for the writer to finish.
    """
    pending = b""
    lineno = 0
    while True:
        data = stream.read1(1 << 20)  # type: ignore[attr-defined]
        if not data:
            break
        *complete, pending = (pending + data).split(b"\n")
        for start in range(0, len(complete), max_lines):
            chunk = []
            for raw in complete[start:start + max_lines]:
                lineno += 1
                chunk.append(decode_line(raw, Path(name), lineno))
            yield chunk
    if pending:
        yield [decode_line(pending, Path(name), lineno + 1)]


def translate_file(checkpoint: Path, input_path: Path | None, output_path: Path | None,
                   beam_size: int | None = None, batch_size: int | None = None,
                   length_penalty: float | None = None, max_len_a: float | None = None,
                   max_len_b: int | None = None, device: str = "auto",
                   chunk_lines: int = 1000) -> TranslateStats:
    payload = load_checkpoint(checkpoint)
    dev = pick_device(device)
    model, tok, recipe = model_from_checkpoint(payload, checkpoint, dev)
    overrides = {k: v for k, v in {"beam_size": beam_size, "batch_size": batch_size,
                                   "length_penalty": length_penalty, "max_len_a": max_len_a,
                                   "max_len_b": max_len_b}.items() if v is not None}
    cfg = replace(recipe.decode, **overrides)
    stats = TranslateStats()
    start = time.time()
    in_stream = open_binary(input_path) if input_path else sys.stdin.buffer
    name = str(input_path) if input_path else "<stdin>"
    tmp_path = None
    if output_path is not None:
        output_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_path = tempfile.mkstemp(prefix=f".{output_path.name}.", dir=output_path.parent)
        os.chmod(tmp_path, default_mode())
        out: IO[str] = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
    else:
        out = sys.stdout
    try:
        with torch.inference_mode():
            for chunk in read_chunks(in_stream, name, chunk_lines):
                for t in translate_lines(model, tok, chunk, cfg, dev):
                    out.write(t.text.replace("\n", " ") + "\n")
                    stats.sentences += 1
                    stats.src_tokens += t.src_pieces
                    stats.tgt_tokens += len(t.hypotheses[0].tokens) if t.hypotheses else 0
                out.flush()
        if tmp_path is not None:
            out.close()
            os.replace(tmp_path, output_path)  # type: ignore[arg-type]
            tmp_path = None
    finally:
        if input_path:
            in_stream.close()
        if tmp_path is not None:
            out.close()
            Path(tmp_path).unlink(missing_ok=True)
    stats.seconds = time.time() - start
    return stats
