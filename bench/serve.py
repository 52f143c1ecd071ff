"""Server speed: ``nmt serve`` driven from loopback, one sentence per request, against
``nmt translate``'s batch throughput on the same lines, in one run.

    python bench/serve.py -m runs/multi30k-de-en-cpu/checkpoints/best.pt \\
        -i ../shared/data/multi30k/test_2016_flickr.de.gz --beam-size 5 [--lines 1000] \\
        [--concurrency 1,8,32] [--threads 2]

For each concurrency C, C client threads (one keep-alive connection each) send the lines one per
request until all are answered; it prints sentences/s and latency p50/p95/p99, and checks that
every answer equals the batch translation. The batch figures: ``nmt translate`` as a process (its
own statistics line, model load included) and decode only (``translate_lines`` with the recipe's
batch size after a warm-up, as ``bench/decode.py``). The clients run on the same machine, so they
take CPU time from the server.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def drive(url: str, lines: list[str], concurrency: int, beam_size: int):
    """C threads, one keep-alive connection each (the standard library's client, which costs
    the shared CPU less than a richer one), until every line is answered."""
    import http.client
    import json
    from urllib.parse import urlsplit

    where = urlsplit(url)
    answers: list[str | None] = [None] * len(lines)
    latencies: list[float] = []
    lock, position = threading.Lock(), iter(range(len(lines)))

    def client_loop() -> None:
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=120)
        try:
            while True:
                with lock:
                    i = next(position, None)
                if i is None:
                    return
                body = json.dumps({"text": lines[i], "beam_size": beam_size}).encode()
                start = time.perf_counter()
                conn.request("POST", "/translate", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                data = response.read()
                elapsed = time.perf_counter() - start
                if response.status != 200:
                    raise RuntimeError(f"{response.status}: {data[:200]!r}")
                answers[i] = json.loads(data)["translations"][0]["text"]
                with lock:
                    latencies.append(elapsed)
        finally:
            conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, latencies, answers


def batch_figures(args, lines: list[str], source: Path) -> tuple[float, str, list[str]]:
    """Decode-only sentences/s in this process, and nmt translate's own statistics line."""
    from nmt_cli.decoding.engine import EngineSettings, open_engine

    # one search at a time on every thread, as the server runs it
    engine = open_engine([args.model], EngineSettings("cpu", args.threads, 1,
                                                      {"beam_size": args.beam_size}))
    try:
        cfg = engine.defaults
        engine.translate_lines(lines[:cfg.batch_size], cfg)  # warm-up
        start = time.perf_counter()
        found = engine.translate_lines(lines, cfg)
        decode_rate = len(lines) / (time.perf_counter() - start)
    finally:
        engine.close()
    cmd = [sys.executable, "-m", "nmt_cli", "translate", "-m", str(args.model), "-i",
           str(source), "-o", os.devnull, "--beam-size", str(args.beam_size), "--device", "cpu"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    wall = time.perf_counter() - start
    line = proc.stderr.strip().splitlines()[-1]
    return decode_rate, f"{line} (whole process {wall:.2f} s)", [t.text for t in found]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--model", type=Path, required=True)
    parser.add_argument("-i", "--input", type=Path, required=True, help="plain or .gz")
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: its default")
    parser.add_argument("--max-wait-ms", type=float, default=None)
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from nmt_cli.text.bitext import read_lines

    lines = [line for _, line in zip(range(args.lines), read_lines(args.input))]
    work = Path(tempfile.mkdtemp(prefix="nmt-bench-serve-"))
    source = work / "input.txt"
    source.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    print(f"{len(lines)} lines of {args.input}, beam {args.beam_size}, one sentence per request; "
          f"load average {os.getloadavg()[0]:.2f} at start", flush=True)

    from _serve_helpers import Server

    extra = ["--quiet", "--max-texts", "1", "--device", "cpu"]
    if args.threads:
        extra += ["--threads", str(args.threads)]
    if args.max_wait_ms is not None:
        extra += ["--max-wait-ms", str(args.max_wait_ms)]
    env = {"OMP_NUM_THREADS": str(args.threads or os.cpu_count()),
           "MKL_NUM_THREADS": str(args.threads or os.cpu_count())}
    server = Server(args.model, work / "server.log", *extra, env=env)
    try:
        drive(server.url, lines[:32], 8, args.beam_size)  # warm-up
        rates = {}
        answers_by_level = {}
        for level in (int(c) for c in args.concurrency.split(",")):
            seconds, latencies, answers = drive(server.url, lines, level, args.beam_size)
            rates[level] = len(lines) / seconds
            answers_by_level[level] = answers
            ms = [x * 1000 for x in latencies]
            print(f"server, concurrency {level:>2}: {rates[level]:6.1f} sentences/s, latency "
                  f"p50 {percentile(ms, 50):6.1f} ms, p95 {percentile(ms, 95):6.1f} ms, "
                  f"p99 {percentile(ms, 99):6.1f} ms ({seconds:.1f} s); load average "
                  f"{os.getloadavg()[0]:.2f}", flush=True)
    finally:
        status = server.stop()
    decode_rate, translate_line, reference = batch_figures(args, lines, source)
    print(f"nmt translate, decode only (batch of the recipe): {decode_rate:6.1f} sentences/s")
    print(f"nmt translate, as a process: {translate_line}")
    # the sentences/s that nmt translate itself reports (model load included, start-up not)
    translate_rate = float(re.search(r"([\d.]+) sentences/s", translate_line).group(1))
    for level, answers in answers_by_level.items():
        wrong = sum(a != b for a, b in zip(answers, reference))
        print(f"concurrency {level:>2}: {wrong} of {len(lines)} answers differ from the batch "
              "translation")
        print(f"concurrency {level:>2}: server / decode-only batch throughput = "
              f"{rates[level] / decode_rate:.0%}; server / nmt translate's own figure = "
              f"{rates[level] / translate_rate:.0%}")
    print(f"server exit status {status}; load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
