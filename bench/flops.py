"""Model FLOPs per training token and a measured GEMM peak, for bench/train_speed.py --peak."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from nmt_cli.model import Transformer
from nmt_cli.runtime import autocast
from nmt_cli.training.loss import sequence_loss
from nmt_cli.training.trainer import epoch_batches


def _attention_flops(model, src_len: int, tgt_len: int, batch: int) -> int:
    """Forward + backward FLOPs of the fused attention (scores and weighted sum): 4 * T * S * d
    per sequence forward, twice that backward; causal self-attention counts half."""
    if not isinstance(model, Transformer):
        return 0
    d = model.tcfg.d_model
    per = lambda t, s: 3 * 4 * batch * t * s * d  # noqa: E731
    enc = per(src_len, src_len) * len(model.encoder_layers)
    dec = (per(tgt_len, tgt_len) // 2 + per(tgt_len, src_len)) * len(model.decoder_layers)
    return enc + dec


def train_flops_per_token(trainer, batches: int = 8) -> float:
    """FLOPs of forward and backward per real target token, over the first training batches."""
    model, cfg = trainer.model, trainer.recipe.train
    model.train()
    order = epoch_batches(trainer.train_data, cfg.batch_tokens, cfg.seed, 0)[:batches]
    total = tokens = 0
    for idx in order:
        batch = trainer.train_data.collate(idx).to(trainer.device)
        with FlopCounterMode(display=False) as counter:
            with autocast(trainer.device, cfg.precision):
                logits = model(batch.src, batch.src_lengths, batch.tgt_in)
            loss, _ = sequence_loss(logits, batch.tgt_out, cfg.label_smoothing)
            loss.backward()
        model.zero_grad(set_to_none=True)
        total += counter.get_total_flops() + _attention_flops(
            model, batch.src.size(1), batch.tgt_in.size(1), batch.src.size(0))
        tokens += batch.n_tgt_tokens
    return total / tokens


def largest_matmul(trainer) -> tuple[int, int, int]:
    """(M, K, N) of the output layer on a full batch: the model's largest matmul."""
    weight = trainer.model.output_layer.weight  # (V, K)
    return trainer.recipe.train.batch_tokens, int(weight.size(1)), int(weight.size(0))


def gemm_peak(shape: tuple[int, int, int], precision: str, seconds: float = 3.0) -> float:
    """Best FLOP/s of ``(M, K) @ (K, N)`` in the training precision, after a warm-up.

    The product is written into the same output tensor every time: a fresh output of this size
    (tens of megabytes) comes from the kernel with page faults on every call, which measured the
    allocator more than the GEMM (a 4,096 x 256 x 8,000 bf16 product: 40 ms fresh, 15 ms
    reused)."""
    m, k, n = shape
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    out = torch.empty(m, n, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b, out=out)
    best, end = np.inf, time.time() + seconds
    while time.time() < end:
        t0 = time.perf_counter()
        for _ in range(5):
            torch.matmul(a, b, out=out)
        best = min(best, (time.perf_counter() - t0) / 5)
    return 2 * m * k * n / best
