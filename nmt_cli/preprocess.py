"""Clean, filter, encode and binarize a bitext into flat token-id files that training memory-maps.

Layout in ``WORKDIR/data``: for each split and side, ``{split}.{side}.bin`` holds every sentence's
ids back to back (uint16 when the vocabulary fits, else int32) and ``{split}.{side}.idx.npy`` holds
the ``n + 1`` offsets into it. ``manifest.json`` records counts, filters, lengths and hashes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from nmt_cli.bitext import PairFilter, check_aligned, normalize, read_bitext
from nmt_cli.config import Recipe, Split
from nmt_cli.errors import DataError
from nmt_cli.files import atomic_write_text, sha256_file
from nmt_cli.tokenizer import Tokenizers

CHUNK = 10_000
MANIFEST = "manifest.json"


def data_dir(recipe: Recipe) -> Path:
    return recipe.workdir / "data"


def id_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.int32)


def _chunks(pairs: Iterator[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    chunk: list[tuple[str, str]] = []
    for pair in pairs:
        chunk.append(pair)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass
class _ShardWriter:
    """Appends id sequences to a .bin file under a temporary name; ``commit`` renames it in place."""

    path: Path
    dtype: np.dtype

    def __post_init__(self) -> None:
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._fh = open(self._tmp, "wb")
        self._offsets = [0]

    def add(self, ids: list[int]) -> None:
        self._fh.write(np.asarray(ids, dtype=self.dtype).tobytes())
        self._offsets.append(self._offsets[-1] + len(ids))

    def commit(self) -> np.ndarray:
        self._fh.close()
        offsets = np.asarray(self._offsets, dtype=np.int64)
        idx_path = self.path.with_suffix(".idx.npy")
        np.save(str(idx_path) + ".tmp.npy", offsets)
        os.replace(str(idx_path) + ".tmp.npy", idx_path)
        os.replace(self._tmp, self.path)
        return np.diff(offsets)

    def abort(self) -> None:
        self._fh.close()
        self._tmp.unlink(missing_ok=True)


def _percentiles(lengths: np.ndarray) -> dict[str, float]:
    if lengths.size == 0:
        return {}
    return {f"p{q}": float(np.percentile(lengths, q)) for q in (50, 90, 99, 100)}


def preprocess_split(name: str, split: Split, tok: Tokenizers, recipe: Recipe, out: Path,
                     dry_run: bool = False, filter_pairs: bool = True,
                     progress: Callable[[int], None] | None = None) -> dict[str, object]:
    """Encode one split; returns its manifest entry. Nothing is left behind on error."""
    cfg = recipe.preprocess
    filt = PairFilter(min_len=cfg.min_len, max_len=cfg.max_len, max_ratio=cfg.max_ratio,
                      dedup=cfg.dedup) if filter_pairs else PairFilter(
        min_len=0, max_len=10**9, max_ratio=10**9, dedup=False)
    writers = {}
    if not dry_run:
        writers = {"src": _ShardWriter(out / f"{name}.src.bin", id_dtype(tok.src_vocab_size)),
                   "tgt": _ShardWriter(out / f"{name}.tgt.bin", id_dtype(tok.tgt_vocab_size))}
    src_lens: list[int] = []
    tgt_lens: list[int] = []
    try:
        for chunk in _chunks(read_bitext(split.src, split.tgt), CHUNK):
            srcs = [normalize(s) for s, _ in chunk]
            tgts = [normalize(t) for _, t in chunk]
            src_ids = tok.encode_src(srcs)
            tgt_ids = tok.encode_tgt(tgts)
            for s, t, si, ti in zip(srcs, tgts, src_ids, tgt_ids):
                if filt.keep(s, t, len(si), len(ti)):
                    src_lens.append(len(si))
                    tgt_lens.append(len(ti))
                    if writers:
                        writers["src"].add(si)
                        writers["tgt"].add(ti)
            if progress:
                progress(len(chunk))
        for w in writers.values():
            w.commit()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    return {
        "files": {"src": str(split.src), "tgt": str(split.tgt)},
        "sha256": {"src": sha256_file(split.src), "tgt": sha256_file(split.tgt)},
        "filters": filt.report.as_dict(),
        "src_tokens": int(sum(src_lens)), "tgt_tokens": int(sum(tgt_lens)),
        "src_len": _percentiles(np.asarray(src_lens)), "tgt_len": _percentiles(np.asarray(tgt_lens)),
    }


def preprocess(recipe: Recipe, dry_run: bool = False,
               progress: Callable[[int], None] | None = None) -> dict[str, object]:
    """Encode the train split (filtered) and dev split (kept whole) and write the manifest."""
    if recipe.data.train is None:
        raise DataError("the recipe has no data.train section; add data.train.src and data.train.tgt")
    tok = Tokenizers.load(recipe)
    for split in (recipe.data.train, recipe.data.dev):  # fail before anything is written
        if split is not None:
            check_aligned(split)
    out = data_dir(recipe)
    if not dry_run:
        out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    splits: dict[str, object] = {}
    splits["train"] = preprocess_split("train", recipe.data.train, tok, recipe, out, dry_run,
                                       filter_pairs=True, progress=progress)
    if recipe.data.dev is not None:
        # Dev keeps every pair that has text on both sides, so its loss is comparable across runs.
        splits["dev"] = preprocess_split("dev", recipe.data.dev, tok, recipe, out, dry_run,
                                         filter_pairs=False, progress=progress)
    manifest = {
        "format": "nmt-binarized-1",
        "tokenizer_sha256": tok.sha256(),
        "src_vocab_size": tok.src_vocab_size, "tgt_vocab_size": tok.tgt_vocab_size,
        "dtype": {"src": id_dtype(tok.src_vocab_size).name, "tgt": id_dtype(tok.tgt_vocab_size).name},
        "splits": splits,
        "seconds": round(time.time() - start, 3),
    }
    if not dry_run:
        atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def load_manifest(recipe: Recipe) -> dict[str, object]:
    path = data_dir(recipe) / MANIFEST
    if not path.is_file():
        raise DataError("no preprocessed data; run 'nmt preprocess' on this recipe first", path)
    return json.loads(path.read_text(encoding="utf-8"))
