"""Token-id arrays read through memory maps, length-bucketed token batching, and collation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from nmt_cli.errors import DataError
from nmt_cli.ids import BOS_ID, EOS_ID, PAD_ID


class TokenArray:
    """Id sequences stored flat in a ``.bin`` file beside an offsets array, both memory-mapped."""

    def __init__(self, bin_path: Path, dtype: str):
        idx_path = bin_path.with_suffix(".idx.npy")
        if not bin_path.is_file() or not idx_path.is_file():
            raise DataError("binarized data is missing; run 'nmt preprocess' on this recipe",
                            bin_path)
        self.offsets = np.load(idx_path, mmap_mode="r")
        size = int(self.offsets[-1])
        dt = np.dtype(dtype)
        if bin_path.stat().st_size != size * dt.itemsize:
            raise DataError(f"holds {bin_path.stat().st_size} bytes but its offsets say {size} "
                            f"{dt.name} ids; run 'nmt preprocess' again", bin_path)
        self.ids = (np.memmap(bin_path, dtype=dt, mode="r", shape=(size,))
                    if size else np.zeros(0, dtype=dt))
        self.lengths = np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i]:self.offsets[i + 1]]


@dataclass
class Batch:
    src: Tensor  # (B, S) source ids + EOS, padded
    src_lengths: Tensor  # (B,)
    tgt_in: Tensor  # (B, T) BOS + target ids, padded
    tgt_out: Tensor  # (B, T) target ids + EOS, padded
    n_tgt_tokens: int  # real target tokens, EOS included

    def to(self, device: torch.device) -> "Batch":
        nb = device.type == "cuda"
        return Batch(self.src.to(device, non_blocking=nb), self.src_lengths,
                     self.tgt_in.to(device, non_blocking=nb), self.tgt_out.to(device, non_blocking=nb),
                     self.n_tgt_tokens)


def pad_sequences(seqs: list[np.ndarray | list[int]], prefix: int | None = None,
                  suffix: int | None = None) -> tuple[Tensor, Tensor]:
    """Pad id sequences into a (B, L) long tensor with optional BOS/EOS; also return the lengths."""
    extra = (prefix is not None) + (suffix is not None)
    lengths = np.fromiter((len(s) + extra for s in seqs), dtype=np.int64, count=len(seqs))
    out = np.full((len(seqs), max(1, int(lengths.max()) if len(seqs) else 1)), PAD_ID,
                  dtype=np.int64)
    start = 1 if prefix is not None else 0
    for i, s in enumerate(seqs):
        if prefix is not None:
            out[i, 0] = prefix
        out[i, start:start + len(s)] = s
        if suffix is not None:
            out[i, start + len(s)] = suffix
    return torch.from_numpy(out), torch.from_numpy(lengths)


def collate(src: list[np.ndarray], tgt: list[np.ndarray]) -> Batch:
    src_t, src_len = pad_sequences(src, suffix=EOS_ID)
    tgt_in, _ = pad_sequences(tgt, prefix=BOS_ID)
    tgt_out, tgt_len = pad_sequences(tgt, suffix=EOS_ID)
    return Batch(src_t, src_len, tgt_in, tgt_out, int(tgt_len.sum()))


def token_batches(src_lengths: np.ndarray, tgt_lengths: np.ndarray, batch_tokens: int,
                  rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Pair indices in batches of similar length whose ``batch_size * longest side`` (BOS/EOS
    included) fits ``batch_tokens``; a longer pair goes alone. ``rng`` breaks length ties at
    random and shuffles the batch order."""
    n = len(src_lengths)
    if n == 0:
        return []
    tie = rng.random(n) if rng is not None else np.arange(n)
    order = np.lexsort((tie, tgt_lengths, src_lengths))
    longest = np.maximum(src_lengths, tgt_lengths)[order] + 1
    batches: list[np.ndarray] = []
    start, width = 0, 0
    for i in range(n):
        new_width = max(width, int(longest[i]))
        if i > start and new_width * (i - start + 1) > batch_tokens:
            batches.append(order[start:i])
            start, new_width = i, int(longest[i])
        width = new_width
    batches.append(order[start:])
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


class ParallelData:
    """The binarized source and target arrays of one split."""

    def __init__(self, folder: Path, split: str, dtypes: dict[str, str]):
        self.src = TokenArray(folder / f"{split}.src.bin", dtypes["src"])
        self.tgt = TokenArray(folder / f"{split}.tgt.bin", dtypes["tgt"])
        if len(self.src) != len(self.tgt):
            raise DataError(f"{split} has {len(self.src)} source but {len(self.tgt)} target "
                            "sentences; run 'nmt preprocess' again", folder)

    def __len__(self) -> int:
        return len(self.src)

    def batches(self, batch_tokens: int, rng: np.random.Generator | None = None) -> list[np.ndarray]:
        return token_batches(self.src.lengths, self.tgt.lengths, batch_tokens, rng)

    def collate(self, indices: np.ndarray) -> Batch:
        return collate([self.src[i] for i in indices], [self.tgt[i] for i in indices])

    def padding_fraction(self, batches: list[np.ndarray]) -> float:
        """Share of padding positions in the source and target tensors of these batches."""
        real = padded = 0
        for idx in batches:
            s, t = self.src.lengths[idx] + 1, self.tgt.lengths[idx] + 1
            real += int(s.sum() + t.sum())
            padded += len(idx) * int(s.max() + t.max())
        return 1.0 - real / max(1, padded)
