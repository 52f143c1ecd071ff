"""The model worker's batching, with a stand-in translate function: requests that wait together
share a batch, each setting is one call (the lightest first), results go back to their own
request in order, a failing request fails alone, the queue is bounded, a large request takes
turns with the others, and cancelled requests are dropped without killing the worker."""

from __future__ import annotations

import threading

import pytest

from nmt_cli.serve.batcher import BatchFailed, Batcher, QueueFull


class Recorder:
    """Translates ``line`` into ``key:line``; the first call waits until released; a batch
    holding the line BOOM raises."""

    def __init__(self):
        self.calls: list[tuple[object, list[str]]] = []
        self.release = threading.Event()
        self.reports = []
        self.firsts = []

    def __call__(self, key, lines, first):
        self.calls.append((key, list(lines)))
        self.firsts.append(first)
        if len(self.calls) == 1:
            assert self.release.wait(10)
        if "BOOM" in lines:
            raise RuntimeError("this group breaks")
        return [f"{key}:{line}" for line in lines]


def busy_batcher(recorder: Recorder, max_sentences: int = 100, **kwargs) -> Batcher:
    """A started batcher whose worker is held in its first call."""
    batcher = Batcher(recorder, max_sentences, max_wait=0.0, on_batch=recorder.reports.append,
                      **kwargs)
    batcher.start()
    batcher.first = batcher.submit(["warm"], "a")
    while not recorder.calls:  # the worker is now busy: everything submitted next waits together
        threading.Event().wait(0.01)
    return batcher


def outcome(future):
    try:
        return future.result(10)
    except BatchFailed as exc:
        return exc


def run(recorder: Recorder, jobs: list[tuple[list[str], str]], max_sentences: int = 100,
        **kwargs):
    batcher = busy_batcher(recorder, max_sentences, **kwargs)
    futures = [batcher.submit(lines, key) for lines, key in jobs]
    recorder.release.set()
    assert batcher.first.result(10) == ["a:warm"]
    outcomes = [outcome(future) for future in futures]
    batcher.stop(10)
    return outcomes


def test_waiting_requests_share_one_call_per_setting_the_lightest_first_in_order():
    recorder = Recorder()
    jobs = [(["x1", "x2"], "a"), (["y1"], "b"), (["z1", "z2", "z3"], "a"), (["w1"], "b")]
    outcomes = run(recorder, jobs)
    assert outcomes == [["a:x1", "a:x2"], ["b:y1"], ["a:z1", "a:z2", "a:z3"], ["b:w1"]]
    assert recorder.calls[1:] == [("b", ["y1", "w1"]), ("a", ["x1", "x2", "z1", "z2", "z3"])]
    assert [(r.requests, r.sentences, r.groups) for r in recorder.reports] == [(1, 1, 1), (4, 7, 2)]


def test_a_batch_takes_at_most_max_sentences():
    recorder = Recorder()
    outcomes = run(recorder, [([f"s{i}"], "a") for i in range(7)], max_sentences=3)
    assert outcomes == [[f"a:s{i}"] for i in range(7)]
    assert [len(lines) for _, lines in recorder.calls[1:]] == [3, 3, 1]


def test_a_failing_request_fails_alone_and_its_group_is_answered():
    recorder = Recorder()
    outcomes = run(recorder, [(["x"], "a"), (["y", "BOOM"], "a"), (["z"], "a"), (["u"], "b")])
    assert outcomes[0] == ["a:x"] and outcomes[2] == ["a:z"] and outcomes[3] == ["b:u"]
    assert isinstance(outcomes[1], BatchFailed) and "this group breaks" in str(outcomes[1])
    # the group of three failed, then each of its requests ran alone
    assert recorder.calls[2:] == [("a", ["x", "y", "BOOM", "z"]), ("a", ["x"]),
                                  ("a", ["y", "BOOM"]), ("a", ["z"])]
    assert recorder.reports[-1].failed == 1


def test_a_large_request_takes_turns_with_the_others():
    """40 lines at one unit of work each, 10 units a turn: its chunks alternate with a one-line
    request that came later, which is answered after the first chunk, not after all four."""
    recorder = Recorder()
    batcher = busy_batcher(recorder, turn_work=10)
    large = batcher.submit([f"l{i}" for i in range(40)], "big")
    small = batcher.submit(["s"], "small")
    recorder.release.set()
    assert small.result(10) == ["small:s"]
    assert large.result(10) == [f"big:l{i}" for i in range(40)]
    batcher.stop(10)
    assert recorder.calls[1:] == [("small", ["s"]), *[("big", [f"l{i}" for i in range(j, j + 10)])
                                                     for j in range(0, 40, 10)]]
    assert [(r.requests, r.sentences) for r in recorder.reports[1:]] == \
        [(2, 11), (1, 10), (1, 10), (1, 10)]


def test_work_per_line_sets_the_chunks_and_a_line_over_the_budget_goes_alone():
    recorder = Recorder()
    batcher = busy_batcher(recorder, turn_work=10)
    future = batcher.submit(["a", "b", "c", "d", "e"], "k", work=[4, 4, 4, 30, 1])
    recorder.release.set()
    assert future.result(10) == ["k:a", "k:b", "k:c", "k:d", "k:e"]
    batcher.stop(10)
    assert [lines for _, lines in recorder.calls[1:]] == [["a", "b"], ["c"], ["d"], ["e"]]
    assert recorder.firsts[1:] == [0, 2, 3, 4]  # each chunk's first line within its request


def test_the_queue_is_bounded_and_says_when_to_retry():
    recorder = Recorder()
    batcher = busy_batcher(recorder, max_queue=5)
    waiting = batcher.submit(["1", "2", "3", "4"], "a")
    with pytest.raises(QueueFull, match="--max-queue") as refused:
        batcher.submit(["5", "6"], "a")
    assert refused.value.retry_after >= 1
    fits = batcher.submit(["5"], "a")
    recorder.release.set()
    assert waiting.result(10) == ["a:1", "a:2", "a:3", "a:4"] and fits.result(10) == ["a:5"]
    batcher.stop(10)


def test_cancelled_requests_are_dropped_before_they_are_computed():
    recorder = Recorder()
    batcher = busy_batcher(recorder, turn_work=2)
    gone = [batcher.submit([f"g{i}", f"h{i}"], "a") for i in range(5)]
    kept = batcher.submit(["k"], "a")
    for future in gone:
        assert future.cancel()
    recorder.release.set()
    assert kept.result(10) == ["a:k"]
    batcher.stop(10)
    assert recorder.calls[1:] == [("a", ["k"])]
    assert recorder.reports[-1].dropped == 10 and batcher.sentences == 2  # warm and k


def test_a_request_cancelled_while_its_batch_runs_does_not_stop_the_worker():
    """The future is cancelled while the worker translates its lines; answering it then must
    not raise in the worker (which would leave every later request unanswered)."""
    recorder = Recorder()
    batcher = Batcher(recorder, 100, max_wait=0.0)
    batcher.start()
    first = batcher.submit(["x"], "a")
    while not recorder.calls:
        threading.Event().wait(0.01)
    assert first.cancel()
    recorder.release.set()
    assert batcher.submit(["y"], "a").result(10) == ["a:y"]
    batcher.stop(10)


def test_after_stop_new_requests_are_refused_and_waiting_ones_answered_503():
    recorder = Recorder()
    batcher = busy_batcher(recorder)
    waiting = batcher.submit(["w"], "a")
    stopper = threading.Thread(target=batcher.stop, args=(10,))
    stopper.start()
    threading.Event().wait(0.1)
    with pytest.raises(BatchFailed, match="shutting down"):
        batcher.submit(["b"], "a")
    recorder.release.set()
    stopper.join(10)
    assert "shutting down" in str(outcome(waiting))
    assert batcher.first.result(10) == ["a:warm"]  # the batch that ran finished


def test_a_lone_client_is_served_without_waiting_for_others():
    """Nobody else has been seen, so a request starts at once, not after max_wait (30 s)."""
    recorder = Recorder()
    recorder.release.set()
    batcher = Batcher(recorder, 100, max_wait=30.0)
    batcher.start()
    try:
        for line in ("one", "two", "three"):  # each after the last answer, as one client sends
            assert batcher.submit([line], "a").result(5) == [f"a:{line}"]
    finally:
        batcher.stop(10)
    assert [lines for _, lines in recorder.calls] == [["one"], ["two"], ["three"]]


def test_the_requests_of_the_last_batch_are_awaited_for_the_next():
    """After a batch of three requests, the next batch waits (up to max_wait) until three have
    come back, so clients whose answers just went out share a batch again."""
    recorder = Recorder()
    batcher = Batcher(recorder, 100, max_wait=2.0)
    batcher.start()
    try:
        first = batcher.submit(["warm"], "a")
        while not recorder.calls:
            threading.Event().wait(0.01)
        held = [batcher.submit([line], "a") for line in ("x", "y", "z")]
        recorder.release.set()
        assert first.result(10) == ["a:warm"] and [f.result(10) for f in held]
        late = [batcher.submit(["p"], "a")]
        threading.Event().wait(0.3)  # the others come back later
        late += [batcher.submit([line], "a") for line in ("q", "r")]
        assert [f.result(10) for f in late] == [["a:p"], ["a:q"], ["a:r"]]
    finally:
        batcher.stop(10)
    assert [lines for _, lines in recorder.calls][2:] == [["p", "q", "r"]]
