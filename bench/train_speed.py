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
from nmt_cli.trainer import Trainer


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--peak", action="store_true", help="also FLOPs/token, GEMM peak and share")
    args = ap.parse_args(argv)
    base = load_recipe(args.recipe, args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        # Train in a scratch folder that shares the recipe's tokenizer and data.
        scratch = Path(tmp) / "run"
        scratch.mkdir()
        for sub in ("tokenizer", "data"):
            os.symlink(base.workdir / sub, scratch / sub)
        recipe = load_recipe(args.recipe, args.overrides + [
            f"workdir={scratch}", f"train.max_steps={args.steps}", "train.max_time=0",
            f"train.valid_every={10**9}", "train.valid_max_sentences=1", "train.log_every=1000000"])
        trainer = Trainer(recipe)
        start = time.time()
        summary = trainer.train()
        wall = time.time() - start
    result = {
        "recipe": args.recipe, "overrides": args.overrides, "steps": summary.steps,
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
        peak = gemm_peak(shape, recipe.train.precision)
        achieved = flops * summary.tokens_per_second
        result.update({"flops_per_tgt_token": round(flops),
                       "achieved_gflops": round(achieved / 1e9, 1),
                       "gemm_shape_mkn": list(shape), "gemm_peak_gflops": round(peak / 1e9, 1),
                       "share_of_peak": round(achieved / peak, 3),
                       "precision": recipe.train.precision})
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
