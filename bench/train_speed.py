"""Training throughput: target tokens per second for a recipe, over a fixed number of updates.

Tokens are real target tokens (EOS included, padding excluded) of the batches that were trained on,
divided by the seconds spent in training steps (forward, backward, update); validation and start-up
are excluded. Run the recipe's tokenizer and preprocess stages first.

    python bench/train_speed.py recipes/multi30k-de-en-cpu.yaml --steps 200 [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from nmt_cli.model import count_parameters
from nmt_cli.recipes import load_recipe
from nmt_cli.trainer import Trainer


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
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
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
