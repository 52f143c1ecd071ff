"""Training throughput: target tokens per second for a recipe, over a fixed number of updates.

Tokens are real target tokens (EOS included, padding excluded) of the batches that were trained on,
divided by the seconds spent in training steps (forward, backward, update); validation and start-up
are excluded. Run the recipe's tokenizer and preprocess stages first.

With ``--peak`` it also reports how much of the machine's matmul peak training reaches: model
FLOPs per target token (forward and backward, counted by ``torch.utils.flop_counter`` on real
training batches, plus the fused attention, which the counter does not see, counted from its
shapes; padding included) times tokens/s, over the GEMM peak measured at the model's own largest
matmul (batch tokens x model width x vocabulary, the output layer) in the training precision.

    python bench/train_speed.py recipes/multi30k-de-en-cpu.yaml --steps 200 [--set key=value ...]
    python bench/train_speed.py recipes/multi30k-de-en-transformer-cpu.yaml --steps 100 --peak

    python bench/train_speed.py recipes/multi30k-de-en-cpu.yaml --steps 200 --precision fp32 auto

With several ``--precision`` values the runs take turns (fp32, auto, fp32, auto, ...), so that a
change in the machine's load hits each alike; each result gives the precision that ``auto``
resolved to, the target tokens per update and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import sys

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nmt_cli.model import count_parameters
from nmt_cli.recipes import load_recipe
from nmt_cli.training.trainer import Trainer


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--peak", action="store_true", help="also FLOPs/token, GEMM peak and share")
    ap.add_argument("--precision", nargs="+", default=[None],
                    help="train.precision values to compare in turn (default: the recipe's)")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args(argv)
    for _ in range(args.repeats):
        for precision in args.precision:
            extra = [f"train.precision={precision}"] if precision else []
            print(json.dumps(measure(args, args.overrides + extra), indent=2), flush=True)


def measure(args, overrides: list[str]) -> dict:
    base = load_recipe(args.recipe, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        # Train in a scratch folder that shares the recipe's tokenizer and data.
        scratch = Path(tmp) / "run"
        scratch.mkdir()
        for sub in ("tokenizer", "data"):
            os.symlink(base.workdir / sub, scratch / sub)
        recipe = load_recipe(args.recipe, overrides + [
            f"workdir={scratch}", f"train.max_steps={args.steps}", "train.max_time=0",
            f"train.valid_every={10**9}", "train.valid_max_sentences=1", "train.log_every=1000000"])
        trainer = Trainer(recipe)
        start = time.time()
        summary = trainer.train()
        wall = time.time() - start
    result = {
        "recipe": args.recipe, "overrides": overrides, "steps": summary.steps,
        "precision": trainer.precision, "precision_setting": recipe.train.precision,
        "tgt_tokens_per_update": round(summary.tgt_tokens / max(summary.steps, 1), 1),
        "parameters": count_parameters(trainer.model), "tgt_tokens": summary.tgt_tokens,
        "train_seconds": round(summary.seconds, 2), "wall_seconds": round(wall, 2),
        "tgt_tok_per_s": round(summary.tokens_per_second, 1), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    if args.peak:
        from flops import gemm_peak, largest_matmul, train_flops_per_token

        flops = train_flops_per_token(trainer)
        shape = largest_matmul(trainer)
        peak = gemm_peak(shape, trainer.precision)
        achieved = flops * summary.tokens_per_second
        result.update({"flops_per_tgt_token": round(flops),
                       "achieved_gflops": round(achieved / 1e9, 1),
                       "gemm_shape_mkn": list(shape), "gemm_peak_gflops": round(peak / 1e9, 1),
                       "share_of_peak": round(achieved / peak, 3),
                       "precision": trainer.precision})
    return result


if __name__ == "__main__":
    main()
