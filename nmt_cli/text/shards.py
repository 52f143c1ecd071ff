"""The output side of preprocessing: token-id shards written under temporary names and published
whole, and length histograms for exact percentiles in constant memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nmt_cli.files import replace_durably
from nmt_cli.ids import UNK_ID


class ShardWriter:
    """Appends id sequences to ``.bin`` under a temporary name; ``commit`` writes the offsets and
    renames both into place. Lengths go to a temporary file, so memory stays flat."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path, self.dtype = path, dtype
        self._tmp = path.with_name(path.name + ".tmp")
        self._len_tmp = path.with_name(path.name + ".len.tmp")
        self._fh = open(self._tmp, "wb")
        self._len_fh = open(self._len_tmp, "wb")
        self.count = 0

    def add(self, ids: np.ndarray, lengths: np.ndarray) -> None:
        self._fh.write(ids.astype(self.dtype, copy=False).tobytes())
        self._len_fh.write(lengths.astype(np.int64, copy=False).tobytes())
        self.count += len(lengths)

    def commit(self) -> None:
        self._fh.close()
        self._len_fh.close()
        idx_path = self.path.with_suffix(".idx.npy")
        idx_tmp = idx_path.with_name(idx_path.name + ".tmp")
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.int64)),
                  "fortran_order": False, "shape": (self.count + 1,)}
        with open(idx_tmp, "wb") as out, open(self._len_tmp, "rb") as lengths:
            np.lib.format.write_array_header_1_0(out, header)
            total = 0
            out.write(np.zeros(1, dtype=np.int64).tobytes())
            while block := lengths.read(1 << 20):
                offsets = total + np.cumsum(np.frombuffer(block, dtype=np.int64))
                out.write(offsets.tobytes())
                total = int(offsets[-1])
        replace_durably(idx_tmp, idx_path)
        replace_durably(self._tmp, self.path)
        self._len_tmp.unlink()

    def abort(self) -> None:
        for fh in (self._fh, self._len_fh):
            fh.close()
        for tmp in (self._tmp, self._len_tmp, self.path.with_suffix(".idx.npy.tmp")):
            tmp.unlink(missing_ok=True)


@dataclass
class Lengths:
    """A histogram of sequence lengths, for exact percentiles in constant memory."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))
    unk: int = 0

    def add(self, lengths: np.ndarray, ids: np.ndarray) -> None:
        hist = np.bincount(lengths, minlength=len(self.counts))
        if len(hist) > len(self.counts):
            self.counts = np.pad(self.counts, (0, len(hist) - len(self.counts)))
        self.counts += hist
        self.unk += int(np.count_nonzero(ids == UNK_ID))

    def summary(self) -> dict[str, Any]:
        n, tokens = int(self.counts.sum()), int(self.counts @ np.arange(len(self.counts)))
        out: dict[str, Any] = {"tokens": tokens, "unk_rate": self.unk / tokens if tokens else 0.0}
        if n:
            cum = np.cumsum(self.counts)
            out["percentiles"] = {f"p{q}": int(np.searchsorted(cum, q / 100 * n))
                                  for q in (50, 90, 95, 99, 100)}
            out["mean"] = tokens / n
        return out
