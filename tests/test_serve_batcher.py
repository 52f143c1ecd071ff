"""The model worker's batching, with a stand-in translate function: requests that wait together
share a batch, each setting is one call, results go back to their own request in order, and a
failing group fails only its own requests."""

from __future__ import annotations

import threading

import pytest

from nmt_cli.serve.batcher import BatchFailed, Batcher


class Recorder:
    """Translates ``line`` into ``key:line``; the first call waits until released."""

    def __init__(self, fail_key=None):
        self.calls: list[tuple[object, list[str]]] = []
        self.release, self.fail_key = threading.Event(), fail_key
        self.reports = []

    def __call__(self, key, lines):
        if not self.calls:
            self.calls.append((key, list(lines)))
            assert self.release.wait(10)
        else:
            self.calls.append((key, list(lines)))
        if key == self.fail_key:
            raise RuntimeError("this group breaks")
        return [f"{key}:{line}" for line in lines]


def run(recorder: Recorder, jobs: list[tuple[list[str], str]], max_sentences: int = 100):
    batcher = Batcher(recorder, max_sentences, max_wait=0.0, on_batch=recorder.reports.append)
    batcher.start()
    first = batcher.submit(["warm"], "a")
    while not recorder.calls:  # the worker is now busy: everything below waits together
        threading.Event().wait(0.01)
    futures = [batcher.submit(lines, key) for lines, key in jobs]
    recorder.release.set()
    assert first.result(10) == ["a:warm"]
    outcomes = []
    for future in futures:
        try:
            outcomes.append(future.result(10))
        except BatchFailed as exc:
            outcomes.append(exc)
    batcher.stop(10)
    return outcomes


def test_waiting_requests_share_one_call_per_setting_and_keep_their_order():
    recorder = Recorder()
    jobs = [(["x1", "x2"], "a"), (["y1"], "b"), (["z1", "z2", "z3"], "a"), (["w1"], "b")]
    outcomes = run(recorder, jobs)
    assert outcomes == [["a:x1", "a:x2"], ["b:y1"], ["a:z1", "a:z2", "a:z3"], ["b:w1"]]
    assert recorder.calls[1:] == [("a", ["x1", "x2", "z1", "z2", "z3"]), ("b", ["y1", "w1"])]
    assert [(r.requests, r.sentences, r.groups) for r in recorder.reports] == [(1, 1, 1), (4, 7, 2)]


def test_a_batch_takes_at_most_max_sentences():
    recorder = Recorder()
    outcomes = run(recorder, [([f"s{i}"], "a") for i in range(7)], max_sentences=3)
    assert outcomes == [[f"a:s{i}"] for i in range(7)]
    assert [len(lines) for _, lines in recorder.calls[1:]] == [3, 3, 1]


def test_a_failing_group_fails_only_its_own_requests():
    recorder = Recorder(fail_key="bad")
    outcomes = run(recorder, [(["x"], "a"), (["y"], "bad"), (["z"], "a"), (["u"], "bad")])
    assert outcomes[0] == ["a:x"] and outcomes[2] == ["a:z"]
    for failed in (outcomes[1], outcomes[3]):
        assert isinstance(failed, BatchFailed) and "this group breaks" in str(failed)
    assert recorder.reports[-1].failed == 2


def test_after_stop_new_requests_are_refused():
    batcher = Batcher(lambda key, lines: lines, 10, 0.0)
    batcher.start()
    assert batcher.submit(["a"], 1).result(10) == ["a"]
    batcher.stop(10)
    with pytest.raises(BatchFailed, match="shutting down"):
        batcher.submit(["b"], 1)
