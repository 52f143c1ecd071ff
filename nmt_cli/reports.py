"""What the commands show a person on the terminal: rich progress bars and summary tables for
preprocessing and training. Plain rendering over the results the library returns."""

from __future__ import annotations

import math
import time
from typing import Any


def stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


class PreprocessProgress:
    """One rich progress bar per split, with pairs/s."""

    def __init__(self) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.bar = Progress(TextColumn("{task.description:>5}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]} pairs/s"), TimeElapsedColumn(),
                            TimeRemainingColumn(), console=stderr_console())
        self.task = None

    def start(self, split: str, total: int) -> None:
        self.bar.start()
        self.task = self.bar.add_task(split, total=total, rate="-")
        self.t0, self.done = time.perf_counter(), 0

    def advance(self, pairs: int) -> None:
        self.done += pairs
        rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.update(self.task, advance=pairs, rate=f"{rate:,.0f}")

    def stop(self) -> None:
        if self.task is not None:  # a bar never started would still print an empty line
            self.bar.stop()


def print_preprocess_summary(manifest: dict, con) -> None:
    """Rich tables: pairs in and out per filter, then lengths and unknown-piece rates."""
    from rich.table import Table

    for split, info in manifest["splits"].items():
        table = Table(title=f"{split}: {info['pairs_in']} pairs in, {info['kept']} kept, "
                            f"{info['written']} written", title_justify="left")
        for col in ("step", "parameters", "pairs in", "dropped", "pairs out"):
            table.add_column(col, justify="left" if col in ("step", "parameters") else "right")
        left = info["pairs_in"]
        shown = []
        for name, f in info["filters"].items():
            params = ", ".join(f"{k}={v}" for k, v in f["params"].items())
            if f.get("unchecked"):
                params += f", unchecked={f['unchecked']:,}"
            table.add_row(name, params, f"{left:,}", f"{f['dropped']:,}",
                          f"{left - f['dropped']:,}")
            left -= f["dropped"]
            shown += [(name, ex) for ex in f["examples"]]
        weights = [c["weight"] for c in info["corpora"]]
        if any(w != 1.0 for w in weights):
            table.add_row("weights", ", ".join(map(str, weights)), f"{info['kept']:,}", "",
                          f"{info['written']:,}")
        con.print(table)
        unchecked = info["filters"].get("duplicate", {}).get("unchecked", 0)
        if unchecked:
            con.print(f"warning: the duplicate table was full; {unchecked:,} pairs were kept "
                      "without a duplicate check; raise preprocess.dedup_memory_mb", style="yellow")
        for name, (src, tgt) in shown:
            con.print(f"  dropped by {name}: {src[:70]!r} ||| {tgt[:70]!r}", soft_wrap=True)
        lengths = Table(title=f"{split}: subword lengths of the pairs written", title_justify="left")
        for col in ("side", "tokens", "p50", "p90", "p95", "p99", "max", "unk rate", "lines cleaned"):
            lengths.add_column(col, justify="left" if col in ("side", "lines cleaned") else "right")
        for side in ("src", "tgt"):
            st = info[side]
            pct = st.get("percentiles", {})
            norm = ", ".join(f"{k} {v:,}" for k, v in info["normalized"][side].items()) or "none"
            lengths.add_row(side, f"{st['tokens']:,}", *(str(pct.get(k, "-")) for k in
                                                          ("p50", "p90", "p95", "p99", "p100")),
                            f"{st['unk_rate']:.3%}", norm)
        con.print(lengths)
    con.print(f"{manifest['pairs_per_second']:,} pairs/s over {manifest['seconds']:.1f} s")


class TrainProgress:
    """A rich progress bar showing step, loss, tokens/s and learning rate."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("step {task.completed}/{task.total}"), BarColumn(),
                             TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                             console=stderr_console(), transient=False)
        self._task = None

    def start(self, total: int) -> None:
        self._bar.start()
        self._task = self._bar.add_task("train", total=total or None, info="")

    def update(self, step: int, record: dict | None) -> None:
        info = {}
        if record:
            info["info"] = (f"loss {record['loss']:.3f}  {record['tok_per_s']:,.0f} tok/s  "
                            f"lr {record['lr']:.2e}")
        self._bar.update(self._task, completed=step, **info)

    def stop(self) -> None:
        self._bar.stop()


def print_train_summary(summary: Any, has_dev: bool, con) -> None:
    """The closing lines of ``nmt train``: steps, speed, why it stopped, the best dev score."""
    best = (f"best dev BLEU {summary.best_bleu:.2f} at step {summary.best_step}"
            if summary.best_bleu is not None else "best dev BLEU n/a" if has_dev
            else "no dev set, best.pt is last.pt")
    if summary.best_bleu is not None and "dev_bleu" not in summary.last_dev:  # a language model
        best = (f"best dev perplexity {math.exp(min(-summary.best_bleu, 50.0)):.2f} at step "
                f"{summary.best_step}")
    con.print(f"done: {summary.steps} steps in {summary.seconds:.0f} s "
              f"({summary.tokens_per_second:,.0f} target tok/s), stopped by "
              f"{summary.stopped_by}; {best}; "
              f"skipped updates: {summary.nonfinite_skipped} non-finite, "
              f"{summary.oom_skipped} out of memory")
    if summary.stopped_by == "interrupted":
        con.print("continue with the same command plus --resume")
