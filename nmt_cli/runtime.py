"""Where and how computation runs: device choice, seeding and numeric precision."""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

import numpy as np
import torch

from nmt_cli.errors import ConfigError, NmtError


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when a GPU is visible, else the CPU; ``cuda`` without a GPU is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise NmtError("device 'cuda' was asked for but no CUDA device is available; use --device "
                       "cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# CPU flags that mean native bf16 matrix multiplication (x86 AVX512-BF16 and AMX; Arm BF16).
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})

CPUINFO = Path("/proc/cpuinfo")

# 0 or 1: the CPU counts as without or with native bf16 (CI runs the suite both ways, so no test
# depends on the machine); anything else reads the CPU's flags.
NATIVE_BF16_ENV = "NMT_CPU_BF16"


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo, or None where that file does not exist."""
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, Arm
            flags.update(value.split())
    return flags


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively: its flags, else torch's own probe (never a guess
    from the vendor); ``NMT_CPU_BF16`` overrides both."""
    forced = os.environ.get(NATIVE_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    flags = cpu_flags()
    if flags is not None:
        return bool(flags & BF16_CPU_FLAGS)
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(probe and probe())


def resolve_precision(precision: str, device: torch.device, key: str) -> str:
    """The training precision to run at: ``auto`` is bf16 on a GPU that supports it or a CPU with
    native bf16 matmul, else fp32; an explicit choice is checked (``key`` names the setting)."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"
    check_precision(device, precision, key)
    return precision


def check_precision(device: torch.device, precision: str, key: str = "train.precision") -> None:
    """fp16 needs CUDA (the CPU has no fast fp16 matmuls); bf16 needs a GPU that supports it."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("fp16 needs a CUDA device; use bf16 or fp32 on the CPU", key)
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("this GPU does not support bf16; use fp16 or fp32", key)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """Mixed-precision context for forward passes; a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16 only; a disabled scaler (every call a pass-through) otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def free_device_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
