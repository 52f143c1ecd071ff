"""Start-up: time to the first output line of a 1-line ``nmt translate``, against the bare
``python -c "import torch"`` on the same machine, in the same run.

Both are run in turns (import, translate, import, translate, ...) so that a change in the machine's
load hits both alike; the medians and their ratio are printed with the load average.

    python bench/startup.py -m runs/m30k/checkpoints/best.pt [--runs 5] [--precision auto]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINE = "Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt.\n"


def bare_import() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    return time.perf_counter() - start


def first_line(model: Path, extra: list[str], teardown: bool = False) -> tuple[float, float, str]:
    """Seconds to the first line on stdout, seconds to exit, and that line; ``teardown`` turns
    the quick exit off (``NMT_QUICK_EXIT=0``), to show what it saves."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if teardown:
        env["NMT_QUICK_EXIT"] = "0"
    # cwd=ROOT: `python -m` puts the current folder first on the path (another checkout's nmt_cli)
    cmd = [sys.executable, "-m", "nmt_cli", "translate", "-m", str(Path(model).resolve()), "-q",
           *extra]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                            text=True, cwd=ROOT)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(LINE)
    proc.stdin.close()
    line = proc.stdout.readline()
    first = time.perf_counter() - start
    proc.stdout.read()
    if proc.wait() != 0:
        raise SystemExit(f"nmt translate failed with exit code {proc.returncode}")
    return first, time.perf_counter() - start, line.rstrip("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--model", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--precision", default=None, help="--precision for translate")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    extra = ["--device", args.device] + (["--precision", args.precision] if args.precision else [])
    imports, firsts, totals, slow_exits = [], [], [], []
    load_before = os.getloadavg()
    for _ in range(args.runs):
        imports.append(bare_import())
        first, total, line = first_line(args.model, extra)
        firsts.append(first)
        totals.append(total)
        slow_exits.append(first_line(args.model, extra, teardown=True)[1])
    load_after = os.getloadavg()
    med_import, med_first = statistics.median(imports), statistics.median(firsts)
    print(f"python -c 'import torch': median {med_import:.2f} s over {args.runs} runs "
          f"(min {min(imports):.2f}, max {max(imports):.2f})")
    print(f"nmt translate, 1 line: first output line after median {med_first:.2f} s "
          f"(min {min(firsts):.2f}, max {max(firsts):.2f}); exit after median "
          f"{statistics.median(totals):.2f} s; with the interpreter's teardown "
          f"(NMT_QUICK_EXIT=0) after median {statistics.median(slow_exits):.2f} s")
    print(f"ratio first line / import torch: {med_first / med_import:.2f}x (medians), "
          f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}, "
          f"{os.cpu_count()} CPUs")
    print(f"translation: {line!r}")


if __name__ == "__main__":
    main()
