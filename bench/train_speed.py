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
    python bench/train_speed.py recipes/multi30k-de-en-transformer-cpu.yaml --steps 100 --peak --profile 30

    python bench/train_speed.py recipes/multi30k-de-en-cpu.yaml --steps 200 --precision fp32 auto

With ``--profile N``, N more updates run under ``torch.profiler``: the share of the step's CPU
time spent in matrix products, the largest other operators, and with ``--peak`` the bound on
the share of peak: the share training would reach if every matrix product ran at the measured
peak and everything else took the time it takes now.

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
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="then N more updates under torch.profiler: the matmuls' share of the "
                         "step's time, and with --peak the share of peak reachable were every "
                         "matmul at the peak and the rest unchanged")
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
        profile = profile_updates(args.recipe, overrides, scratch, args.profile) \
            if args.profile else None
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
    if profile is not None:
        result.update(profile)
        if args.peak:
            # Time per update without the profiler, split as the profile splits it; the matmuls'
            # part replaced by the time they would take at the peak.
            update = summary.seconds / max(summary.steps, 1)
            at_peak = flops * result["tgt_tokens_per_update"] / peak
            rest = update * (1 - profile["profile_matmul_share_of_time"])
            result["share_of_peak_bound_with_matmuls_at_peak"] = round(at_peak / (at_peak + rest), 3)
    return result


# Operators that multiply matrices (self time: the kernels, oneDNN's or MKL's, included).
MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm",
           "aten::_scaled_dot_product_flash_attention_for_cpu",
           "aten::_scaled_dot_product_flash_attention_for_cpu_backward")


def profile_updates(recipe_path: str, overrides: list[str], scratch: Path, steps: int) -> dict:
    """``steps`` more updates from scratch under ``torch.profiler``: the share of the step's CPU
    time (self time, all threads) spent in matrix products, and the largest other operators."""
    run = scratch.parent / "profiled"
    run.mkdir()
    for sub in ("tokenizer", "data"):
        os.symlink(scratch / sub, run / sub)
    recipe = load_recipe(recipe_path, overrides + [
        f"workdir={run}", f"train.max_steps={steps}", "train.max_time=0",
        f"train.valid_every={10**9}", "train.valid_max_sentences=1", "train.log_every=1000000"])
    trainer = Trainer(recipe)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        trainer.train()
    ops = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    total = sum(ops.values()) or 1.0
    matmul = sum(t for k, t in ops.items() if k in MATMULS)
    others = sorted(((k, t) for k, t in ops.items() if k not in MATMULS), key=lambda kv: -kv[1])
    return {"profile_updates": steps,
            "profile_matmul_share_of_time": round(matmul / total, 3),
            "profile_largest_other_operators": {k: round(t / total, 3) for k, t in others[:8]}}


if __name__ == "__main__":
    main()
