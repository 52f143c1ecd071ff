"""``nmt serve`` under abuse, driven from loopback in one run:

    python bench/serve_load.py -m runs/multi30k-de-en-transformer-cpu/checkpoints/averaged.pt \\
        -i ../shared/data/multi30k/test_2016_flickr.de.gz [--lines 500] [--only heavy,flood]

- ``heavy``: one client loops the largest request the limits allow (--max-texts texts of the
  longest input lines, the largest beam, within --max-work) while a second sends one line at a
  time; the second client's p50/p95 latency.
- ``flood``: 500 requests at once; the status codes, the server's RSS before and after, and
  whether /health answered throughout.
- ``cancel``: 50 heavy requests abandoned by their clients mid-flight; sentences the server
  computed after they left (from /health).
- ``sigterm``: SIGTERM during the heavy loop; exit status, seconds to exit, and no traceback.

Throughput at 1, 32 and 64 clients against ``nmt translate`` is ``bench/serve.py``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from serve import percentile  # noqa: E402


def post(url: str, body: dict, timeout: float = 300) -> tuple[int, float]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    start = time.perf_counter()
    try:
        conn.request("POST", "/translate", json.dumps(body).encode(),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - start
    finally:
        conn.close()


def health(url: str) -> dict:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/health")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def heavy_body(lines: list[str], info: dict) -> dict:
    """The largest request the limits allow: max_texts of the longest lines at the largest
    beam, with texts dropped until the work budget takes it."""
    from nmt_cli.config import DecodeConfig, with_overrides
    from nmt_cli.serve.protocol import line_work

    limits = info["limits"]
    beam = limits["max_beam_size"]
    cfg = with_overrides(DecodeConfig(), {**info["decode"], "beam_size": beam})
    texts = sorted(lines, key=len, reverse=True)[:limits["max_texts"]]
    while sum(line_work(t, cfg) for t in texts) > limits["max_work"]:
        texts.pop()
    return {"texts": texts, "beam_size": beam}


def heavy_loop(url: str, body: dict, stop: threading.Event, counts: list[int]) -> None:
    while not stop.is_set():
        try:
            counts.append(post(url, body)[0])
        except OSError:
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--model", type=Path, required=True)
    parser.add_argument("-i", "--input", type=Path, required=True)
    parser.add_argument("--lines", type=int, default=500)
    parser.add_argument("--only", default="heavy,flood,cancel,sigterm")
    parser.add_argument("--seconds", type=float, default=60, help="of the heavy loop")
    args = parser.parse_args()
    from _serve_helpers import Server
    from nmt_cli.text.bitext import read_lines

    lines = [line for _, line in zip(range(args.lines), read_lines(args.input))]
    work = Path(tempfile.mkdtemp(prefix="nmt-bench-serve-load-"))
    print(f"{len(lines)} lines of {args.input}; load average {os.getloadavg()[0]:.2f}", flush=True)
    only = set(args.only.split(","))
    server = Server(args.model, work / "server.log", "--quiet", "--device", "cpu")
    url = server.url
    try:
        info = json.loads(__import__("urllib.request").request.urlopen(url + "/model").read())
        body = heavy_body(lines, info)
        print(f"heaviest request: {len(body['texts'])} texts, beam {body['beam_size']}")
        if "heavy" in only:
            stop, counts = threading.Event(), []
            loop = threading.Thread(target=heavy_loop, args=(url, body, stop, counts))
            loop.start()
            time.sleep(1)
            latencies, end = [], time.monotonic() + args.seconds
            for line in lines:
                if time.monotonic() > end:
                    break
                status, seconds = post(url, {"text": line})
                assert status == 200, status
                latencies.append(seconds * 1000)
            stop.set()
            loop.join()
            print(f"heavy: second client's one-line requests: {len(latencies)}, p50 "
                  f"{percentile(latencies, 50):.0f} ms, p95 {percentile(latencies, 95):.0f} ms, "
                  f"max {max(latencies):.0f} ms; heavy requests answered {counts.count(200)}; "
                  f"load average {os.getloadavg()[0]:.2f}", flush=True)
        if "flood" in only:
            before, statuses, answered = rss_mib(server.proc.pid), [], []
            done = threading.Event()

            def poll() -> None:
                while not done.is_set():
                    answered.append(health(url)["status"] == "ready")
                    time.sleep(0.2)

            def one(i: int) -> None:
                try:
                    statuses.append(post(url, {"text": lines[i % len(lines)]})[0])
                except OSError as exc:
                    statuses.append(type(exc).__name__)

            poller = threading.Thread(target=poll)
            poller.start()
            flood = [threading.Thread(target=one, args=(i,)) for i in range(500)]
            for t in flood:
                t.start()
            for t in flood:
                t.join()
            done.set()
            poller.join()
            tally = {s: statuses.count(s) for s in sorted(set(statuses), key=str)}
            print(f"flood: 500 requests at once: {tally}; /health ready {sum(answered)} of "
                  f"{len(answered)} polls; RSS {before:.0f} -> {rss_mib(server.proc.pid):.0f} "
                  "MiB", flush=True)
        if "cancel" in only:
            start = health(url)
            for _ in range(50):
                try:
                    post(url, body, timeout=0.2)
                except OSError:
                    pass  # abandoned mid-flight
            time.sleep(0.5)
            mid = health(url)
            time.sleep(5)
            end = health(url)
            print(f"cancel: 50 heavy requests abandoned: sentences computed {start['sentences']}"
                  f" -> {mid['sentences']} (0.5 s after) -> {end['sentences']} (5 s later), "
                  f"batches {mid['batches']} -> {end['batches']}, dropped {end['dropped']}",
                  flush=True)
        if "sigterm" in only:
            stop, counts = threading.Event(), []
            loop = threading.Thread(target=heavy_loop, args=(url, body, stop, counts))
            loop.start()
            time.sleep(3)
            start = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            status = server.proc.wait(120)
            stop.set()
            loop.join()
            log = server.log()
            print(f"sigterm: exit {status} after {time.monotonic() - start:.1f} s; traceback in "
                  f"the log: {'Traceback' in log}", flush=True)
    finally:
        if server.proc.poll() is None:
            server.stop()


if __name__ == "__main__":
    main()
