"""Terminology constraints on a test set, by the usual protocol: for each sentence, 1 or 2 phrases
drawn from its reference (content words, or two-word phrases) that the unconstrained output
lacks, with a fixed seed. Then plain beam search against constrained beam search, whole process.

    python bench/constraints.py make --hyp PLAIN.hyp --ref REF -o CONSTRAINTS [--seed 1]
    python bench/constraints.py run -m CKPT --src SRC --ref REF -o OUT [--beam-size 5] [--check]

``make`` writes the constraint file only (one line per sentence, phrases separated by tabs, empty
when the output already holds every candidate). ``run`` does everything into OUT: the plain beam
output, the constraint file, the constrained output at batch 64 and at batch 1, the output with an
empty constraint file, their timings and BLEU/chrF, and how many constraints appear in the
outputs, into OUT/summary.json. With ``--check`` it exits 1 unless every constraint appears,
batch 1 and batch 64 agree and the empty file gives the plain output byte for byte.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

# Function words of English, German and French that a term list would not hold; a constraint is
# a content word (letters only, 3 or more) or a two-word phrase with at least one content word.
STOPWORDS = set("""
a an the and or but of to in on at by for with from into onto over under up down out off as is
are was were be been being has have had do does did not no nor so than then there here this that
these those it its he she they them his her their we our you your i me my mine who whom which
what where when while some any all each every both few more most other such only own same too
very can will just one two three four five
der die das den dem des ein eine einen einem einer eines und oder aber in im an am auf aus bei
mit nach von vom zu zum zur ist sind war waren hat haben wird werden sich nicht kein keine
le la les un une des du de et ou dans sur avec pour par est sont au aux en
""".split())


def read(path: Path) -> list[str]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [line.rstrip("\n") for line in fh]


def words(line: str) -> list[str]:
    return re.findall(r"[^\W\d_]+(?:['-][^\W\d_]+)*", line)


def content(word: str) -> bool:
    return len(word) >= 3 and word.lower() not in STOPWORDS


def holds(text: str, phrase: str) -> bool:
    """``phrase`` occurs in ``text`` as whole words."""
    return re.search(r"(?<!\w)" + re.escape(phrase) + r"(?!\w)", text) is not None


def draw(hyp: str, ref: str, rng: random.Random) -> list[str]:
    """1 or 2 phrases of ``ref`` that ``hyp`` lacks, not overlapping each other."""
    ws = words(ref)
    spans = [(i, i + 1) for i, w in enumerate(ws) if content(w)]
    spans += [(i, i + 2) for i in range(len(ws) - 1) if content(ws[i]) or content(ws[i + 1])]
    candidates = [(a, b) for a, b in spans if not holds(hyp, " ".join(ws[a:b]))
                  and holds(ref, " ".join(ws[a:b]))]
    rng.shuffle(candidates)
    want = rng.choice((1, 2))
    chosen: list[tuple[int, int]] = []
    for a, b in candidates:
        if all(b <= c or a >= d for c, d in chosen):
            chosen.append((a, b))
        if len(chosen) == want:
            break
    return [" ".join(ws[a:b]) for a, b in sorted(chosen)]


def make(hyps: list[str], refs: list[str], seed: int) -> list[list[str]]:
    if len(hyps) != len(refs):
        raise SystemExit(f"error: {len(hyps)} hypotheses but {len(refs)} references")
    rng = random.Random(seed)
    return [draw(h, r, rng) for h, r in zip(hyps, refs)]


def write_constraints(path: Path, constraints: list[list[str]]) -> None:
    path.write_text("".join("\t".join(c) + "\n" for c in constraints), encoding="utf-8")


def translate(ckpt: str, src: Path, out: Path, *args: str) -> float:
    """Seconds of one whole ``nmt translate`` process."""
    cmd = [sys.executable, "-m", "nmt_cli", "translate", "-m", ckpt, "-i", str(src), "-o",
           str(out), "-q", *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed:\n{proc.stderr}")
    if proc.stderr.strip():
        print(proc.stderr.strip(), file=sys.stderr)
    return seconds


def scores(hyp: Path, ref: Path) -> dict[str, float]:
    import sacrebleu

    hyps, refs = read(hyp), read(ref)
    return {"bleu": round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2),
            "chrf": round(sacrebleu.corpus_chrf(hyps, [refs]).score, 2)}


def coverage(hyp: Path, constraints: list[list[str]]) -> dict[str, int]:
    hyps = read(hyp)
    total = sum(map(len, constraints))
    pieces = sum(phrase in h for h, c in zip(hyps, constraints) for phrase in c)
    whole = sum(holds(h, phrase) for h, c in zip(hyps, constraints) for phrase in c)
    return {"constraints": total, "lines_constrained": sum(bool(c) for c in constraints),
            "present": pieces, "present_as_whole_words": whole}


def run(args: argparse.Namespace) -> int:
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    src, ref = out / "src.txt", out / "ref.txt"
    src.write_text("".join(line + "\n" for line in read(args.src)), encoding="utf-8")
    ref.write_text("".join(line + "\n" for line in read(args.ref)), encoding="utf-8")
    common = ["--beam-size", str(args.beam_size), "--device", "cpu"]
    seconds = {"plain": translate(args.model, src, out / "plain.hyp", *common)}
    constraints = make(read(out / "plain.hyp"), read(ref), args.seed)
    cons = out / "constraints.tsv"
    write_constraints(cons, constraints)
    seconds["constrained"] = translate(args.model, src, out / "constrained.hyp", *common,
                                       "--constraints", str(cons))
    empty = out / "empty.tsv"
    write_constraints(empty, [[] for _ in constraints])
    seconds["empty_file"] = translate(args.model, src, out / "empty.hyp", *common,
                                      "--constraints", str(empty))
    if not args.skip_batch1:
        seconds["constrained_batch1"] = translate(args.model, src, out / "constrained.b1.hyp",
                                                  *common, "--constraints", str(cons),
                                                  "--batch-size", "1")
    lines = len(read(src))
    summary = {
        "model": args.model, "beam_size": args.beam_size, "seed": args.seed, "lines": lines,
        "load_average": list(os.getloadavg()),
        "scores": {k: scores(out / f"{k}.hyp", ref) for k in ("plain", "constrained")},
        "coverage": coverage(out / "constrained.hyp", constraints),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "sentences_per_s": {k: round(lines / v, 1) for k, v in seconds.items()},
        "speed_ratio": round(seconds["plain"] / seconds["constrained"], 3),
        "empty_file_identical": (out / "empty.hyp").read_bytes() == (out / "plain.hyp").read_bytes(),
    }
    summary["bleu_gain"] = round(summary["scores"]["constrained"]["bleu"]
                                 - summary["scores"]["plain"]["bleu"], 2)
    if not args.skip_batch1:
        summary["batch1_vs_64_differ"] = sum(
            a != b for a, b in zip(read(out / "constrained.b1.hyp"), read(out / "constrained.hyp")))
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=1))
    if args.check:
        cov = summary["coverage"]
        ok = (cov["present"] == cov["constraints"] and summary["empty_file_identical"]
              and summary.get("batch1_vs_64_differ", 0) == 0)
        if not ok:
            print("check failed: a constraint is missing, or the outputs differ", file=sys.stderr)
            return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make", help="write the constraint file from plain output and reference")
    m.add_argument("--hyp", type=Path, required=True)
    m.add_argument("--ref", type=Path, required=True)
    m.add_argument("-o", "--output", type=Path, required=True)
    m.add_argument("--seed", type=int, default=1)
    r = sub.add_parser("run", help="plain against constrained decoding, into a folder")
    r.add_argument("-m", "--model", required=True)
    r.add_argument("--src", type=Path, required=True)
    r.add_argument("--ref", type=Path, required=True)
    r.add_argument("-o", "--output", type=Path, required=True)
    r.add_argument("--beam-size", type=int, default=5)
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--skip-batch1", action="store_true", help="no batch-1 run (it is slow)")
    r.add_argument("--check", action="store_true")
    args = parser.parse_args()
    if args.command == "make":
        write_constraints(args.output, make(read(args.hyp), read(args.ref), args.seed))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
