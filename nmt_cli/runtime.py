"""Where and how computation runs: device choice and seeding."""

from __future__ import annotations

import random

import numpy as np
import torch

from nmt_cli.errors import NmtError


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
