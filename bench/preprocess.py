"""Throughput and peak memory of `nmt preprocess` on a synthetic corpus built from Multi30k train.

Every line gets its line number appended, so all pairs are distinct and dedup keeps them. The corpus
is written gzipped to a git-ignored folder (.data/bench by default). A tokenizer is trained once
with `nmt tokenizer` on the smallest corpus, then `nmt preprocess` runs as a child process for each
size; the script polls /proc to sum the resident memory of that process and all its workers, and
reports the end-to-end rate (process start, alignment check and decompression to finished shards).

    OMP_NUM_THREADS=1 python bench/preprocess.py --sizes 200000 2000000 --workers 2
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_corpus(multi30k: Path, n: int, folder: Path, src_lang: str, tgt_lang: str) -> Path:
    """Repeat Multi30k train up to ``n`` pairs, tagging each line with its number; gzip it."""
    out = folder / f"corpus-{n}"
    done = out / "complete"
    if done.is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for lang in (src_lang, tgt_lang):
        with gzip.open(multi30k / f"train.{lang}.gz", "rt", encoding="utf-8") as fh:
            base = [line.rstrip("\n") for line in fh]
        with gzip.open(out / f"train.{lang}.gz", "wt", encoding="utf-8", compresslevel=6) as fh:
            for start in range(0, n, len(base)):
                stop = min(n, start + len(base))
                fh.write("".join(f"{base[i - start]} {i}\n" for i in range(start, stop)))
    done.write_text("ok\n")
    return out


def write_recipe(path: Path, corpus: Path, workdir: Path, args: argparse.Namespace) -> None:
    path.write_text(json.dumps({
        "name": f"bench-{path.stem}", "workdir": str(workdir),
        "data": {"src_lang": args.src, "tgt_lang": args.tgt,
                 "train": {"src": str(corpus / f"train.{args.src}.gz"),
                           "tgt": str(corpus / f"train.{args.tgt}.gz")}},
        "tokenizer": {"model_type": args.model_type, "vocab_size": args.vocab_size,
                      "input_sentence_size": 200_000, "num_threads": args.workers},
        "preprocess": {"workers": args.workers, "chunk_size": args.chunk_size},
    }, indent=2))  # JSON is YAML


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        p, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(p)
        rss[p] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Run ``cmd``; return wall seconds, peak summed RSS of its process tree, and its stderr."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    stop = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss(proc.pid))
            stop.wait(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    stop.set()
    poller.join()
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{out}\n{err}")
    return wall, peak, err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--multi30k", type=Path, default=ROOT.parent / "shared" / "data" / "multi30k")
    ap.add_argument("--out", type=Path, default=ROOT / ".data" / "bench")
    ap.add_argument("--sizes", type=int, nargs="+", default=[200_000, 2_000_000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunk-size", type=int, default=10_000)
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"])
    ap.add_argument("--src", default="de")
    ap.add_argument("--tgt", default="en")
    args = ap.parse_args()

    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    nmt = [sys.executable, "-m", "nmt_cli"]
    args.out.mkdir(parents=True, exist_ok=True)
    corpora = {}
    for n in args.sizes:
        t0 = time.perf_counter()
        corpora[n] = build_corpus(args.multi30k, n, args.out, args.src, args.tgt)
        print(f"corpus {n:,} pairs: {corpora[n]} ({time.perf_counter() - t0:.0f} s to build)")

    tok_dir = None
    results = []
    for n in args.sizes:
        workdir = args.out / f"run-{n}"
        shutil.rmtree(workdir / "data", ignore_errors=True)
        recipe = args.out / f"recipe-{n}.yaml"
        write_recipe(recipe, corpora[n], workdir, args)
        if tok_dir is None:
            subprocess.run(nmt + ["tokenizer", str(recipe)], env=env, check=True)
            tok_dir = workdir / "tokenizer"
        elif tok_dir != workdir / "tokenizer":
            shutil.copytree(tok_dir, workdir / "tokenizer", dirs_exist_ok=True)
        load = os.getloadavg()[0]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall, peak, _ = run_measured(nmt + ["preprocess", str(recipe), "--no-progress"], env)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        manifest = json.loads((workdir / "data" / "manifest.json").read_text())
        train = manifest["splits"]["train"]
        children_max = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        results.append({"pairs": n, "written": train["written"], "wall_s": round(wall, 2),
                        "pairs_per_s": round(n / wall), "inner_pairs_per_s":
                        manifest["pairs_per_second"], "peak_rss_mb": round(peak / 2**20, 1),
                        "largest_process_rss_mb": round(children_max / 2**20, 1),
                        "cpu_s": round(cpu, 1), "pairs_per_cpu_s": round(n / cpu),
                        "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2)})
        r = results[-1]
        print(f"{n:>10,} pairs: {r['written']:,} written in {r['wall_s']} s end to end = "
              f"{r['pairs_per_s']:,} pairs/s ({r['inner_pairs_per_s']:,} inside preprocess); "
              f"peak RSS {r['peak_rss_mb']} MB summed over the process tree "
              f"(largest single process so far {r['largest_process_rss_mb']} MB); "
              f"{r['cpu_s']} CPU-s over all processes = {r['pairs_per_cpu_s']:,} pairs per CPU-s; "
              f"load average {r['load_before']} before, {r['load_after']} after", flush=True)
    if len(results) >= 2:
        small, large = results[0], results[-1]
        growth = large["peak_rss_mb"] / small["peak_rss_mb"] - 1
        print(f"peak RSS at {large['pairs']:,} is {growth:+.1%} relative to {small['pairs']:,}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
