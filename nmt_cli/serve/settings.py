"""``nmt serve``'s own settings: listening, batching and the limits on each request. Decode
defaults come from the checkpoint's recipe (``nmt_cli.config.DecodeConfig``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from nmt_cli.schema import number as _num


@dataclass(frozen=True)
class ServeConfig:
    """``nmt serve``: listening, batching and limits; decode defaults come from the checkpoint."""

    host: str = "127.0.0.1"
    port: int = _num(8000, ge=0, le=65535, doc="0 picks a free port")
    max_batch_sentences: int = _num(64, ge=1, doc="sentences the model worker gathers at most")
    max_wait_ms: float = _num(30.0, ge=0.0, doc="how long a batch waits for the last one's requests")
    max_texts: int = _num(128, ge=1, doc="texts per request")
    max_chars: int = _num(1000, ge=1, doc="characters per text")
    max_beam_size: int = _num(16, ge=1, doc="largest beam size (and n-best) a request may ask for")
    max_output_len: int = _num(512, ge=1, doc="output subwords a request's length limits allow")
    max_work: int = _num(262_144, ge=1, doc="per request, over its texts: beam x output cap")
    turn_work: int = _num(8192, ge=1, doc="work of a chunk, a large request's turn in a batch")
    max_queue: int = _num(1024, ge=1, doc="sentences that may wait; past it, 503 and Retry-After")
    timeout: float = _num(60.0, gt=0.0, doc="seconds a request may wait and run; then 504")
    max_connections: int = _num(1000, ge=1, doc="open connections and requests; past it, 503")
    read_timeout: float = _num(10.0, gt=0.0, doc="seconds a client may take to send its body")
    drain: float = _num(30.0, ge=0.0, doc="seconds the requests in flight have after SIGTERM")
    allowed_hosts: list[str] = field(default_factory=list)  # Host headers taken; empty: any
    threads: int = _num(0, ge=0, doc="torch CPU threads; 0 leaves torch's default")
    quiet: bool = False  # no access or batch log lines


@dataclass(frozen=True)
class RequestOptions:
    """What one ``POST /translate`` may ask for besides decode settings."""

    return_scores: bool = False
    return_alignments: bool = False
