"""One model worker that batches the sentences of concurrent requests. A batch takes turns: each
waiting request gives one chunk (its next sentences, up to ``turn_work`` units of work), so a large
request is spread over many batches and a one-line request never waits behind all of it. The
queue is bounded; requests whose futures were cancelled (a client gone, a deadline passed) are
dropped before their next chunk runs. Search is batch-invariant, so batching never changes a
result; a group that raises is retried request by request, and fails only the one that breaks."""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence


class BatchFailed(Exception):
    """The request could not be translated; the message says why."""


class QueueFull(BatchFailed):
    """Too many sentences wait already; ``retry_after`` is a guess in seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Job:
    lines: list[str]
    key: Hashable  # requests with equal keys share one search
    work: list[int]  # units of work each line may cost (texts x beam x output length)
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)
    results: list[Any] = field(default_factory=list)
    next: int = 0  # the first line not yet handed to a batch

    def chunk(self, budget: int, room: int) -> tuple[int, int]:
        """The next lines, up to ``budget`` units of work and ``room`` lines, one at least."""
        end, spent = self.next, 0
        while end < len(self.lines) and end - self.next < room and \
                (end == self.next or spent + self.work[end] <= budget):
            spent += self.work[end]
            end += 1
        return self.next, end

    @property
    def open(self) -> bool:
        return not self.future.done()


def settle(future: Future, result: Any = None, error: BaseException | None = None) -> None:
    """Answer a future that may have been cancelled meanwhile: the worker must survive that."""
    try:
        if not future.done():
            future.set_exception(error) if error is not None else future.set_result(result)
    except InvalidStateError:
        pass  # cancelled between the check and the call


@dataclass
class BatchReport:
    requests: int
    sentences: int
    groups: int
    seconds: float
    failed: int  # requests that failed in this batch
    dropped: int = 0  # sentences of cancelled requests left out of it


# translate(key, lines, first) -> one result per line, in order; ``first`` is the first line's
# number within its request when the group is one request's chunk (sampling seeds follow it)
TranslateFn = Callable[[Any, list[str], int], Sequence[Any]]


class Batcher:
    def __init__(self, translate: TranslateFn, max_sentences: int, max_wait: float,
                 on_batch: Callable[[BatchReport], None] | None = None, *,
                 max_queue: int = 1 << 30, turn_work: int = 1 << 62):
        self.translate, self.max_sentences, self.max_wait = translate, max_sentences, max_wait
        self.max_queue, self.turn_work, self.on_batch = max_queue, turn_work, on_batch
        self._queue: deque[Job] = deque()
        self._waiting = 0  # sentences in the queue, not yet handed to a batch
        self._cond = threading.Condition()
        self._closed = self._stopping = False
        self._last_end = 0.0  # when the last batch finished
        self._expected = 0  # requests the next batch may hold: the last one's, back, and the
        # ones that queued while it ran
        self._rate = 0.0  # sentences a second over the last batch
        self._thread: threading.Thread | None = None
        self.batches = self.sentences = 0  # computed so far
        self.dropped = 0  # sentences of cancelled requests never computed

    @property
    def waiting(self) -> int:
        return self._waiting

    def start(self, setup: Callable[[], None] | None = None) -> None:
        """Run the worker thread; ``setup`` runs first inside it (thread-local torch state)."""
        self._thread = threading.Thread(target=self._run, args=(setup,), name="nmt-model-worker",
                                        daemon=True)
        self._thread.start()

    def submit(self, lines: list[str], key: Hashable, work: Sequence[int] | None = None) -> Future:
        job = Job(list(lines), key, list(work) if work is not None else [1] * len(lines))
        job.results = [None] * len(job.lines)
        with self._cond:
            if self._closed:
                raise BatchFailed("the server is shutting down")
            if self._waiting and self._waiting + len(job.lines) > self.max_queue:
                wait = self._waiting / self._rate if self._rate > 0 else 1.0
                raise QueueFull(f"{self._waiting} sentences are waiting, at most "
                                f"{self.max_queue} may (--max-queue); retry later",
                                max(1, min(60, round(wait))))
            self._queue.append(job)
            self._waiting += len(job.lines)
            self._cond.notify()
        return job.future

    def close(self) -> None:
        """Take no new requests; the queued ones are still answered."""
        with self._cond:
            self._closed = True

    def refuse_waiting(self) -> None:
        """Take no new requests and fail the queued ones; the batch that runs still finishes."""
        with self._cond:
            self._closed = True
            for job in self._queue:
                settle(job.future, error=BatchFailed("the server is shutting down"))
            self._queue.clear()
            self._waiting = 0

    def stop(self, timeout: float | None = None) -> None:
        """Refuse what waits and end the worker after its batch."""
        self.refuse_waiting()
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _drop_closed(self) -> int:
        """Remove cancelled or answered requests from the queue; their sentences left out."""
        dropped = 0
        for job in [j for j in self._queue if not j.open]:
            self._queue.remove(job)
            dropped += len(job.lines) - job.next
        self._waiting -= dropped
        self.dropped += dropped
        return dropped

    def _take(self) -> tuple[list[tuple[Job, int, int]], int] | None:
        with self._cond:
            while True:
                dropped = self._drop_closed()
                if self._queue or self._stopping:
                    break
                self._cond.wait()
            if not self._queue:
                return None
            # wait for the clients of the last batch to send again, no longer than max_wait from
            # when the oldest request could first run; a lone client is served at once, since
            # nobody else has been seen
            start = max(self._queue[0].arrived, self._last_end)
            while (len(self._queue) < self._expected and self._waiting < self.max_sentences
                   and not self._stopping):
                left = start + self.max_wait - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            dropped += self._drop_closed()
            chunks, count, again = [], 0, []
            while self._queue and count < self.max_sentences:
                job = self._queue.popleft()
                begin, end = job.chunk(self.turn_work, self.max_sentences - count)
                chunks.append((job, begin, end))
                job.next, count = end, count + end - begin
                if end < len(job.lines):
                    again.append(job)  # its next turn comes after the requests not served yet
            self._queue.extend(again)
            self._waiting -= count
            return chunks, dropped

    def _run(self, setup: Callable[[], None] | None) -> None:
        if setup is not None:
            setup()
        while (taken := self._take()) is not None:
            if taken[0]:
                self._process(*taken)
            elif taken[1] and self.on_batch is not None:  # every request left was cancelled
                self.on_batch(BatchReport(0, 0, 0, 0.0, 0, taken[1]))
            with self._cond:
                self._last_end = time.monotonic()
                answered = sum(end == len(job.lines) for job, _, end in taken[0])
                self._expected = len(self._queue) + answered

    def _process(self, chunks: list[tuple[Job, int, int]], dropped: int = 0) -> None:
        start = time.perf_counter()
        groups: dict[Hashable, list[tuple[Job, int, int]]] = {}
        for chunk in chunks:
            groups.setdefault(chunk[0].key, []).append(chunk)
        # the lightest group first: a one-line request is answered before a large chunk runs
        order = sorted(groups.values(), key=lambda g: sum(sum(j.work[b:e]) for j, b, e in g))
        failed = sentences = 0
        for members in order:
            members = [c for c in members if c[0].open]  # cancelled while another group ran
            sentences += sum(e - b for _, b, e in members)
            failed += self._run_group(members)
        self.batches += sentences > 0
        self.sentences += sentences
        for job, _, end in chunks:
            if end == len(job.lines):
                settle(job.future, job.results)
        seconds = time.perf_counter() - start
        self._rate = sentences / seconds if seconds > 0 else 0.0
        if self.on_batch is not None:
            self.on_batch(BatchReport(len(chunks), sentences, len(groups), seconds, failed,
                                      dropped))

    def _run_group(self, members: list[tuple[Job, int, int]]) -> int:
        """Translate one group; when it raises, each request again alone. Returns the failures."""
        if not members:
            return 0
        key = members[0][0].key
        lines = [line for job, b, e in members for line in job.lines[b:e]]
        try:
            results = list(self.translate(key, lines, members[0][1]))
            if len(results) != len(lines):
                raise RuntimeError(f"{len(results)} results for {len(lines)} lines")
        except Exception as exc:  # noqa: BLE001 - one bad request must not stop the worker
            if len(members) > 1:
                return sum(self._run_group([member]) for member in members)
            settle(members[0][0].future, error=BatchFailed(f"{exc.__class__.__name__}: {exc}"))
            return 1
        offset = 0
        for job, b, e in members:
            job.results[b:e] = results[offset:offset + e - b]
            offset += e - b
        return 0
