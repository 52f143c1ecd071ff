"""One model worker that batches the sentences of concurrent requests: it gathers requests until
``max_sentences`` wait or the oldest has waited ``max_wait`` seconds, and runs each group of equal
decode settings as one call. Search is batch-invariant, so batching never changes a result; a
group that raises fails its own requests only."""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence


class BatchFailed(Exception):
    """The batch a request was in failed; the message says why."""


@dataclass
class Job:
    lines: list[str]
    key: Hashable  # requests with equal keys share one search
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class BatchReport:
    requests: int
    sentences: int
    groups: int
    seconds: float
    failed: int  # requests whose group raised


# translate(key, lines) -> one result per line, in order
TranslateFn = Callable[[Any, list[str]], Sequence[Any]]


class Batcher:
    def __init__(self, translate: TranslateFn, max_sentences: int, max_wait: float,
                 on_batch: Callable[[BatchReport], None] | None = None):
        self.translate, self.max_sentences, self.max_wait = translate, max_sentences, max_wait
        self.on_batch = on_batch
        self._queue: deque[Job] = deque()
        self._waiting = 0  # sentences in the queue
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self, setup: Callable[[], None] | None = None) -> None:
        """Run the worker thread; ``setup`` runs first inside it (thread-local torch state)."""
        self._thread = threading.Thread(target=self._run, args=(setup,), name="nmt-model-worker",
                                        daemon=True)
        self._thread.start()

    def submit(self, lines: list[str], key: Hashable) -> Future:
        job = Job(list(lines), key)
        with self._cond:
            if self._stopping:
                raise BatchFailed("the server is shutting down")
            self._queue.append(job)
            self._waiting += len(job.lines)
            self._cond.notify()
        return job.future

    def stop(self, timeout: float | None = None) -> None:
        """Finish the queued requests, then end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _take(self) -> list[Job] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return None  # stopping, nothing left
            deadline = self._queue[0].arrived + self.max_wait  # the oldest waits no longer
            while self._waiting < self.max_sentences and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            jobs, count = [], 0
            while self._queue and (not jobs or count + len(self._queue[0].lines)
                                   <= self.max_sentences):
                job = self._queue.popleft()
                jobs.append(job)
                count += len(job.lines)
            self._waiting -= count
            return jobs

    def _run(self, setup: Callable[[], None] | None) -> None:
        if setup is not None:
            setup()
        while (jobs := self._take()) is not None:
            self._process(jobs)

    def _process(self, jobs: list[Job]) -> None:
        start = time.perf_counter()
        groups: dict[Hashable, list[Job]] = {}
        for job in jobs:
            groups.setdefault(job.key, []).append(job)
        failed = 0
        for key, members in groups.items():
            lines = [line for job in members for line in job.lines]
            try:
                results = list(self.translate(key, lines))
                if len(results) != len(lines):
                    raise RuntimeError(f"{len(results)} results for {len(lines)} lines")
            except Exception as exc:  # noqa: BLE001 - one bad batch must not stop the worker
                failed += len(members)
                error = BatchFailed(f"translating the batch this request was in failed "
                                    f"({exc.__class__.__name__}: {exc}); the server carries on")
                for job in members:
                    job.future.set_exception(error)
                continue
            offset = 0
            for job in members:
                job.future.set_result(results[offset:offset + len(job.lines)])
                offset += len(job.lines)
        if self.on_batch is not None:
            self.on_batch(BatchReport(len(jobs), sum(len(j.lines) for j in jobs), len(groups),
                                      time.perf_counter() - start, failed))
