"""``nmt serve`` against a real server in a subprocess on 127.0.0.1: parity with ``nmt translate``,
concurrent load with batching across requests, bad input, a failing batch, and SIGTERM."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from _serve_helpers import Server
from conftest import CLI_ENV, ROOT, assert_one_line_error, run_cli, sample_lines

MAX_TEXTS, MAX_CHARS = 60, 200


@pytest.fixture(scope="module")
def server(experiment, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    srv = Server(experiment.checkpoint, log, "--max-texts", str(MAX_TEXTS), "--max-chars",
                 str(MAX_CHARS), "--max-wait-ms", "10")
    yield srv
    assert srv.stop() == 0, srv.log()


def post(client: httpx.Client, body: dict) -> httpx.Response:
    return client.post("/translate", json=body)


def nmt_translate(checkpoint, lines: list[str], tmp_path, *args: str) -> list[str]:
    src = tmp_path / "in.txt"
    src.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    proc = run_cli("translate", "-m", checkpoint, "-i", src, "-q", *args, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("\n")[:-1]


def test_health_and_model_describe_the_checkpoint(server, experiment):
    with server.client() as client:
        health = client.get("/health").json()
        info = client.get("/model").json()
    assert health["status"] == "ready" and {"waiting", "batches", "sentences"} <= set(health)
    assert info["checkpoints"] == [experiment.checkpoint.name]  # no folder of the host's
    recipe = experiment.recipe
    assert info["name"] == recipe.name
    assert info["languages"] == {"source": "src", "target": "tgt"}
    assert info["architecture"]["arch"] == "rnn" and info["parameters"] > 0
    assert info["vocabulary"]["source"] == 300 and len(info["tokenizer_sha256"]["src"]) == 64
    assert info["decode"]["beam_size"] == recipe.decode.beam_size
    assert {"torch", "nmt", "fastapi", "uvicorn"} <= set(info["versions"])
    assert info["limits"]["max_texts"] == MAX_TEXTS
    assert recipe.decode.precision == "auto" and info["precision"] == "fp32"  # as the CPU decodes


def test_the_server_refuses_bf16_on_the_cpu_as_nmt_translate_does(experiment):
    """decode.precision is a server setting (a request cannot change it, see the bad-input
    cases) and follows nmt translate: bf16 on the CPU stops the server with one error naming the
    key and pointing to nmt export."""
    from nmt_cli.serve.settings import ServeConfig
    from nmt_cli.errors import ConfigError
    from nmt_cli.serve.app import Service

    stopped = []
    service = Service([experiment.checkpoint], ServeConfig(quiet=True), "cpu",
                      {"precision": "bf16"})
    service.on_failure = lambda: stopped.append(True)
    service.load()
    assert not service.ready and stopped == [True]
    assert isinstance(service.error, ConfigError) and service.error.key == "decode.precision"
    assert "nmt export --quantization int8" in str(service.error)


def test_the_server_casts_the_model_once_when_its_engine_picks_bf16(experiment, monkeypatch):
    """Where the engine decodes in bf16 (a GPU that has it; the choice faked here, on the CPU),
    every weight is cast when the model loads, and /model says so."""
    import torch

    import nmt_cli.decoding.engine as engine
    from nmt_cli.serve.settings import ServeConfig
    from nmt_cli.serve.app import Service

    monkeypatch.setattr(engine, "decoding_precision", lambda cfg, device: "bf16")
    service = Service([experiment.checkpoint], ServeConfig(quiet=True), "cpu")
    service.load()
    assert service.error is None and service.ready, service.error
    assert service.info["precision"] == "bf16"
    assert {p.dtype for p in service.engine.model.parameters()} == {torch.bfloat16}


def test_200_test_lines_are_byte_identical_to_nmt_translate(server, experiment, tmp_path):
    lines = sample_lines("test", "src", 200)
    greedy = nmt_translate(experiment.checkpoint, lines, tmp_path, "--beam-size", "1")
    beam = nmt_translate(experiment.checkpoint, lines, tmp_path, "--beam-size", "5")
    assert len(greedy) == len(beam) == 200 and greedy != beam
    with server.client() as client, ThreadPoolExecutor(8) as pool:
        # greedy: four requests of 50 lines at once; beam 5: 200 one-line requests, 8 at a time
        chunks = [lines[i:i + 50] for i in range(0, 200, 50)]
        answers = pool.map(lambda c: post(client, {"texts": c, "beam_size": 1}), chunks)
        served_greedy = [t["text"] for r in answers for t in r.json()["translations"]]
        answers = pool.map(lambda line: post(client, {"text": line, "beam_size": 5}), lines)
        served_beam = [r.json()["translations"][0]["text"] for r in answers]
    assert served_greedy == greedy
    assert served_beam == beam


# Request shapes for the load test: settings x texts, each answer checked against translate_lines.
SETTINGS = [
    {},
    {"beam_size": 1},
    {"beam_size": 3, "length_penalty": 0.6},
    {"beam_size": 5, "n_best": 3, "return_scores": True},
    {"sample": True, "seed": 3, "top_k": 10, "n_best": 2},
    {"beam_size": 2, "max_len_b": 4},
]


def _text_sets() -> list[list[str]]:
    lines = sorted(sample_lines("test", "src"), key=len)
    return [[lines[0]], [lines[-1]], [lines[250]], lines[10:13], ["", lines[40], ""],
            lines[300:306], [lines[100], lines[-2]], lines[450:458]]


def _expected(experiment, settings: dict, texts: list[str]) -> list[list[tuple[str, float]]]:
    from nmt_cli.config import with_overrides

    if not hasattr(_expected, "engine"):  # opened as the server opens it: one search at a time
        from nmt_cli.decoding.engine import EngineSettings, open_engine

        _expected.engine = open_engine([experiment.checkpoint],  # type: ignore[attr-defined]
                                       EngineSettings("cpu", 1, 1))
    engine = _expected.engine  # type: ignore[attr-defined]
    decode = {k: v for k, v in settings.items() if k != "return_scores"}
    found = engine.translate_lines(texts, with_overrides(engine.defaults, decode))
    return [[(text, h.score) for h, text in zip(t.hypotheses, t.texts)] or [("", 0.0)]
            for t in found]


def test_32_clients_get_every_answer_right_and_requests_share_batches(server, experiment):
    text_sets = _text_sets()
    expected = {(s, t): _expected(experiment, SETTINGS[s], text_sets[t])
                for s in range(len(SETTINGS)) for t in range(len(text_sets))}
    clients, per_client = 32, 20

    def client_run(c: int) -> list[tuple[int, int, httpx.Response]]:
        out = []
        with server.client(timeout=120) as client:
            for r in range(per_client):
                s, t = (c + r) % len(SETTINGS), (3 * c + r) % len(text_sets)
                out.append((s, t, post(client, {"texts": text_sets[t], **SETTINGS[s]})))
        return out

    before = server.log().count('"POST /translate" 200')
    start = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        results = [item for run in pool.map(client_run, range(clients)) for item in run]
    assert time.monotonic() - start < 240  # a bound, not a speed claim
    assert len(results) == clients * per_client
    for s, t, response in results:
        assert response.status_code == 200, response.text
        got = response.json()["translations"]
        want = expected[(s, t)]
        assert [g["text"] for g in got] == [w[0][0] for w in want], (SETTINGS[s], text_sets[t])
        if SETTINGS[s].get("n_best", 1) > 1:
            for g, w in zip(got, want):
                assert [h["text"] for h in g["hypotheses"]] == [x for x, _ in w]
                assert [h["score"] for h in g["hypotheses"]] == pytest.approx([y for _, y in w],
                                                                              abs=1e-4)
        if SETTINGS[s].get("return_scores"):
            assert [g["score"] for g in got] == pytest.approx([w[0][1] for w in want], abs=1e-4)
    log = server.log()
    assert log.count('"POST /translate" 200') - before == clients * per_client
    sizes = [int(n) for n in re.findall(r"^batch: (\d+) requests", log, re.M)]
    assert max(sizes) > 1, "no batch held more than one request"


BAD = [  # (case, request kwargs, status, field)
    ("malformed JSON", {"content": b'{"texts": [', "headers": {"content-type": "application/json"}},
     400, "body"),
    ("invalid UTF-8", {"content": b'{"texts": ["\xff\xfe"]}',
                       "headers": {"content-type": "application/json"}}, 400, "body"),
    ("wrong content type", {"content": b'{"texts": ["a"]}',
                            "headers": {"content-type": "text/plain"}}, 400, "content-type"),
    ("not an object", {"json": ["a"]}, 422, "body"),
    ("texts is a string", {"json": {"texts": "a b"}}, 422, "texts"),
    ("a text is a number", {"json": {"texts": ["a", 5]}}, 422, "texts[1]"),
    ("beam size a string", {"json": {"text": "a", "beam_size": "five"}}, 422, "beam_size"),
    ("beam size null", {"json": {"text": "a", "beam_size": None}}, 422, "beam_size"),
    ("unknown setting", {"json": {"text": "a", "beam_sise": 2}}, 422, "beam_sise"),
    ("unknown choice", {"json": {"text": "a", "length_norm": "gnmx"}}, 422, "length_norm"),
    ("beam 0", {"json": {"text": "a", "beam_size": 0}}, 422, "beam_size"),
    ("beam over the limit", {"json": {"text": "a", "beam_size": 1000}}, 422, "beam_size"),
    ("temperature 0", {"json": {"text": "a", "sample": True, "temperature": 0}}, 422,
     "temperature"),
    ("n-best above beam", {"json": {"text": "a", "beam_size": 2, "n_best": 3}}, 422, "n_best"),
    ("endless output", {"json": {"text": "a", "max_len_b": 10 ** 9}}, 422, "max_len_b"),
    ("a server setting", {"json": {"text": "a", "batch_size": 1}}, 422, "batch_size"),
    ("precision per request", {"json": {"text": "a", "precision": "bf16"}}, 422, "precision"),
    ("both text and texts", {"json": {"text": "a", "texts": ["b"]}}, 422, "text"),
    ("no text", {"json": {"beam_size": 2}}, 422, "texts"),
    ("empty list", {"json": {"texts": []}}, 422, "texts"),
    ("text over the limit", {"json": {"texts": ["a" * (MAX_CHARS + 1)]}}, 413, "texts[0]"),
    ("too many texts", {"json": {"texts": ["a"] * (MAX_TEXTS + 1)}}, 413, "texts"),
    ("deeply nested", {"content": b"[" * 50_000 + b"]" * 50_000,
                       "headers": {"content-type": "application/json"}}, 400, "body"),
    ("infinite number", {"content": b'{"text": "a", "length_penalty": Infinity}',
                         "headers": {"content-type": "application/json"}}, 400, "body"),
    ("number too large", {"content": b'{"text": "a", "length_penalty": 1e999}',
                          "headers": {"content-type": "application/json"}}, 400, "body"),
    ("huge integer", {"json": {"text": "a", "max_len_b": 10 ** 400}}, 422, "max_len_b"),
    ("integer of 5,000 digits", {"content": b'{"text": "a", "beam_size": 1' + b"0" * 5000 + b"}",
                                 "headers": {"content-type": "application/json"}}, 400, "body"),
    ("temperature 0 in float32", {"json": {"text": "a", "sample": True, "temperature": 1e-300}},
     422, "temperature"),
    ("work over the budget", {"json": {"texts": ["a" * MAX_CHARS] * MAX_TEXTS,
                                       "beam_size": 16}}, 422, "texts"),
    ("huge minimum", {"json": {"text": "a", "min_len_b": 10 ** 30}}, 422, "min_len_b"),
    ("huge seed", {"json": {"text": "a", "sample": True, "seed": 2 ** 70}}, 422, "seed"),
    ("lone surrogate", {"content": b'{"texts": ["ok", "\\ud800"]}',
                        "headers": {"content-type": "application/json"}}, 422, "texts[1]"),
    ("body over the limit", {"content": b" " * 400_000,
                             "headers": {"content-type": "application/json"}}, 413, "body"),
]


def test_bad_requests_get_a_4xx_naming_the_field_and_the_server_carries_on(server):
    with server.client() as client:
        for case, kwargs, status, field in BAD:
            response = client.post("/translate", **kwargs)
            assert response.status_code == status, (case, response.text)
            body = response.json()
            assert body["field"] == field, (case, body)
            assert body["error"].startswith(field + ":"), (case, body)
        unknown = client.post("/translate", json={"text": "a", "beam_sise": 2}).json()
        assert "did you mean 'beam_size'" in unknown["error"]
        too_many = client.post("/translate", json={"texts": ["a"] * (MAX_TEXTS + 1)}).json()
        assert "--max-texts" in too_many["error"] and str(MAX_TEXTS) in too_many["error"]
        # an empty string is not an error: it gives an empty string
        empty = client.post("/translate", json={"text": ""})
        assert empty.status_code == 200 and empty.json() == {"translations": [{"text": ""}]}
        assert client.get("/health").status_code == 200
        good = client.post("/translate", json={"texts": sample_lines("test", "src", 2)})
        assert good.status_code == 200 and len(good.json()["translations"]) == 2
    assert "Traceback" not in server.log()


def test_a_failing_batch_fails_its_requests_only_and_sigterm_finishes_in_flight_work(
        experiment, tmp_path):
    srv = Server(experiment.checkpoint, tmp_path / "faulty.log", "--max-wait-ms", "200",
                 fault="serve-delay:1.5,serve-fail-on:BOOM")
    try:
        line = sample_lines("test", "src", 1)[0]
        want = nmt_translate(experiment.checkpoint, [line], tmp_path, "--beam-size", "2")
        with srv.client() as client, ThreadPoolExecutor(2) as pool:
            # one batch, two groups: the group holding BOOM fails, the other one is answered
            bad = pool.submit(post, client, {"texts": ["BOOM", line]})
            time.sleep(0.05)
            good = pool.submit(post, client, {"texts": [line], "beam_size": 2})
            bad, good = bad.result(60), good.result(60)
            # the cause goes to the log, not to the client
            assert bad.status_code == 500 and bad.json()["error"] == \
                "server: translating this request failed; the server's log says why"
            assert "BOOM" in srv.log() and "BOOM" not in bad.text
            assert good.status_code == 200 and good.json()["translations"][0]["text"] == want[0]
            assert client.get("/health").status_code == 200

            # SIGTERM while a request waits in its batch: it completes; new ones are refused
            in_flight = pool.submit(post, client, {"texts": [line], "beam_size": 2})
            time.sleep(0.5)
            srv.proc.send_signal(15)
            deadline = time.monotonic() + 10
            while "SIGTERM" not in srv.log() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            with pytest.raises(httpx.TransportError):
                with httpx.Client(base_url=srv.url, timeout=5) as fresh:
                    fresh.get("/health")
            answer = in_flight.result(60)
        assert answer.status_code == 200 and answer.json()["translations"][0]["text"] == want[0]
        assert srv.stop() == 0, srv.log()
        assert "stopped" in srv.log() and "Traceback" not in srv.log()
    finally:
        srv.kill()


def test_without_the_extra_it_says_what_to_install(tmp_path):
    code = ("import sys; sys.modules['fastapi'] = None\n"
            "from nmt_cli.cli import main; sys.argv = ['nmt', 'serve', '-m', 'x.pt']; main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                                        text=True, env={**CLI_ENV, "PYTHONPATH": str(ROOT)},
                                        timeout=60)
    assert_one_line_error(proc, "pip install 'nmt[serve]'")


@pytest.mark.parametrize("args, needle", [
    (["--max-texts", "0"], "--max-texts"),
    (["--set", "decode.beam_sise=2"], "did you mean 'decode.beam_size'"),
    (["--set", "train.max_steps=2"], "decode.* keys only"),
])
def test_bad_options_fail_in_one_line(experiment, args, needle):
    assert_one_line_error(run_cli("serve", "-m", experiment.checkpoint, *args, timeout=60), needle)


def test_a_missing_checkpoint_fails_in_one_line(tmp_path):
    assert_one_line_error(run_cli("serve", "-m", tmp_path / "none.pt", "--port", "0",
                                  timeout=60), "none.pt", "not found")


def test_a_busy_port_fails_in_one_line(experiment):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = run_cli("serve", "-m", experiment.checkpoint, "--port", str(port), timeout=60)
    assert_one_line_error(proc, f"127.0.0.1:{port}", "--port")


def test_each_request_leaves_an_access_line(server):
    """Status, sentences and latency."""
    with server.client() as client:
        client.post("/translate", json={"texts": ["x", "y", "z"]})
    assert re.search(r'"POST /translate" 200 3 sentences [\d.]+ ms', server.log())


def test_a_checkpoint_that_does_not_load_stops_the_server_with_one_error_line(tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    proc = run_cli("serve", "-m", broken, "--port", "0", timeout=60)
    assert proc.returncode == 4, proc.stderr  # CheckpointError's exit code
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.pt" in errors[0] and "cannot read" in errors[0], proc.stderr


def test_work_over_the_budget_is_refused_naming_the_limit(experiment, tmp_path):
    srv = Server(experiment.checkpoint, tmp_path / "work.log", "--max-work", "2000")
    try:
        with srv.client() as client:
            small = client.post("/translate", json={"text": "ein Hund", "beam_size": 2})
            large = client.post("/translate", json={"texts": ["ein Hund läuft"] * 40})
        assert small.status_code == 200
        assert large.status_code == 422 and large.json()["field"] == "texts"
        assert "--max-work" in large.json()["error"] and "2,000" in large.json()["error"]
    finally:
        assert srv.stop() == 0, srv.log()


def test_a_full_queue_answers_503_with_retry_after_and_a_deadline_504(experiment, tmp_path):
    """The worker is held 1.5 s a batch: with --max-queue 3 a fourth waiting sentence is
    refused at once, and with --timeout 1 the requests are answered 504 at their deadline,
    the one that runs as the ones that wait."""
    srv = Server(experiment.checkpoint, tmp_path / "queue.log", "--max-queue", "3",
                 "--timeout", "1", "--max-wait-ms", "0", fault="serve-delay:1.5")
    try:
        with ThreadPoolExecutor(3) as pool:
            def send(texts):
                with srv.client() as client:
                    return client.post("/translate", json={"texts": texts})
            first = pool.submit(send, ["a"])  # runs, held in the worker
            time.sleep(0.5)
            waiting = pool.submit(send, ["b", "c", "d"])  # fills the queue
            time.sleep(0.3)
            refused = send(["e"])
            assert refused.status_code == 503 and refused.json()["field"] == "server"
            assert "--max-queue" in refused.json()["error"]
            assert int(refused.headers["retry-after"]) >= 1
            late = waiting.result(30)
            assert late.status_code == 504 and "--timeout" in late.json()["error"]
            assert first.result(30).status_code == 504
        with srv.client() as client:
            assert client.get("/health").status_code == 200
    finally:
        assert srv.stop() == 0, srv.log()
    assert "Traceback" not in srv.log()


def test_requests_whose_clients_left_are_not_computed(experiment, tmp_path):
    """While the worker is held, 6 clients send two lines each and hang up; when the worker is
    free, none of their sentences is translated (the batch log and /health count them)."""
    srv = Server(experiment.checkpoint, tmp_path / "gone.log", "--max-wait-ms", "0",
                 fault="serve-delay:2")
    try:
        line = sample_lines("test", "src", 1)[0]
        with ThreadPoolExecutor(7) as pool:
            def send(texts, timeout):
                try:
                    with srv.client(timeout=timeout) as client:
                        return client.post("/translate", json={"texts": texts}).status_code
                except httpx.TimeoutException:
                    return "gone"
            held = pool.submit(send, [line], 30)
            time.sleep(0.5)
            gone = [pool.submit(send, [f"{line} {i}", line], 0.5) for i in range(6)]
            assert [g.result(30) for g in gone] == ["gone"] * 6
            assert held.result(30) == 200
        with srv.client() as client:
            assert client.post("/translate", json={"text": line}).status_code == 200
            health = client.get("/health").json()
        assert health["sentences"] == 2 and health["waiting"] == 0  # held and the last one
        assert health["dropped"] == 12
    finally:
        assert srv.stop() == 0, srv.log()


def test_hosts_paths_and_slow_bodies(experiment, tmp_path):
    """--allowed-hosts refuses other Host headers with 400; a path holding a newline is logged
    escaped, on one line; a body that does not arrive in --read-timeout gets 408."""
    import socket

    srv = Server(experiment.checkpoint, tmp_path / "hosts.log", "--allowed-hosts",
                 "mt.example.org,127.0.0.1", "--read-timeout", "0.5")
    try:
        port = int(srv.url.rsplit(":", 1)[1])
        with httpx.Client(base_url=srv.url, timeout=10) as client:
            other = client.get("/health", headers={"host": "evil.example.com"})
            assert other.status_code == 400 and other.json()["field"] == "host"
            assert client.get("/health", headers={"host": f"mt.example.org:{port}"}
                              ).status_code == 200
            assert client.get("/health", headers={"host": "localhost"}).status_code == 400
            client.get("/x%0A127.0.0.1:1 \"GET /forged\" 200")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                         b"application/json\r\nContent-Length: 100\r\n\r\n{\"te")
            answer = b""
            while b'"}' not in answer and (part := sock.recv(4096)):  # headers and body may
                answer += part                                       # come in two packets
            answer = answer.decode()
        assert answer.startswith("HTTP/1.1 408") and '"field":"body"' in answer
    finally:
        assert srv.stop() == 0, srv.log()
    lines = srv.log().splitlines()
    assert not any(line.startswith('127.0.0.1:1 "GET /forged"') for line in lines)
    assert any("/x%0A127.0.0.1:1" in line for line in lines)
