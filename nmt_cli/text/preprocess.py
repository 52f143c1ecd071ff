"""Clean, filter, deduplicate, encode and binarize the recipe's splits into flat token-id files.

``preprocess.workers`` processes encode raw chunks, at most ``2 * workers`` in flight, results in
input order, so memory depends on the chunk size only; the main process dedups, resamples
weighted corpora and appends ids. ``WORKDIR/data`` holds ``{split}.{side}.bin`` (ids back to
back, the smallest dtype that fits), ``{split}.{side}.idx.npy`` (n + 1 int64 offsets) and
``manifest.json`` (filter counts, length statistics, SHA-256 of the tokenizer and inputs).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import time
from collections import Counter, deque
from dataclasses import dataclass, replace
from itertools import chain
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol

import numpy as np

from nmt_cli.config import PreprocessConfig, Recipe, Split
from nmt_cli.errors import DataError
from nmt_cli.files import atomic_write_text, sha256_file
from nmt_cli.text.bitext import (RawChunk, count_pairs, decode_side, read_chunks, scan_file,
                                 split_tsv)
from nmt_cli.text.filters import (DedupTable, FilterCounts, example, filter_params, text_filter,
                                  token_filter)
from nmt_cli.text.normalize import Normalizer, char_table
from nmt_cli.text.shards import Lengths, ShardWriter
from nmt_cli.text.tokenizer import Tokenizers, processor

MANIFEST = "manifest.json"
FORMAT = "nmt-binarized-1"


def data_dir(recipe: Recipe) -> Path:
    return recipe.workdir / "data"


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest integer type that holds every id of the vocabulary."""
    for dtype in (np.uint8, np.uint16):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    return np.dtype(np.int32)


class Progress(Protocol):
    def start(self, split: str, total: int) -> None: ...
    def advance(self, pairs: int) -> None: ...


@dataclass
class EncodedChunk:
    corpus: int
    pairs_in: int
    normalized: dict[str, Counter]
    filters: FilterCounts
    src_ids: np.ndarray  # flat ids of the kept pairs
    src_len: np.ndarray  # (kept,)
    tgt_ids: np.ndarray
    tgt_len: np.ndarray
    digests: np.ndarray  # (kept,) uint64, empty when dedup is off


_WORKER: dict[str, Any] = {}


def _init_worker(src_model: bytes, tgt_model: bytes, cfg: PreprocessConfig) -> None:
    """Load the model(s) once per process."""
    src = processor(src_model)
    tgt = src if tgt_model == src_model else processor(tgt_model)
    _WORKER.update(src=src, tgt=tgt, cfg=cfg, normalizer=Normalizer(cfg.normalize),
                   dtypes=(id_dtype(src.get_piece_size()), id_dtype(tgt.get_piece_size())))
    char_table()


def encode_chunk(chunk: RawChunk, full: bool) -> EncodedChunk:
    """Decode, clean, filter and encode one chunk (runs in a worker process)."""
    cfg: PreprocessConfig = _WORKER["cfg"]
    if chunk.mono:  # both sides are the one text: every line would be a "copy"
        cfg = replace(cfg, drop_copies=False)
    policy = cfg.normalize.invalid_utf8
    norm = {"src": Counter(), "tgt": Counter()}
    tsv = chunk.tgt is None
    src_block, tgt_block = split_tsv(chunk) if tsv else (chunk.src, chunk.tgt)
    src, bad_src = decode_side(src_block, chunk.n, policy, chunk.src_path, chunk.first, norm["src"])
    tgt, bad_tgt = decode_side(tgt_block, chunk.n, policy, chunk.tgt_path, chunk.first, norm["tgt"])
    src, src_nonletter = _WORKER["normalizer"].clean_lines(src, chunk.first == 1, norm["src"])
    tgt, tgt_nonletter = _WORKER["normalizer"].clean_lines(tgt, chunk.first == 1 and not tsv,
                                                           norm["tgt"])
    counts = FilterCounts(cfg.examples)
    bad = set(bad_src) | set(bad_tgt) if policy == "drop" else set()
    keep = text_filter(cfg, full, src, tgt, bad, src_nonletter, tgt_nonletter, counts)
    src, tgt = [src[i] for i in keep], [tgt[i] for i in keep]
    src_ids, src_len = _encode(_WORKER["src"], src, _WORKER["dtypes"][0])
    tgt_ids, tgt_len = _encode(_WORKER["tgt"], tgt, _WORKER["dtypes"][1])
    ok = np.ones(len(src), dtype=bool)
    for name, mask in token_filter(cfg, full, src_len, tgt_len).items():
        for j in np.flatnonzero(mask).tolist():
            counts.drop(name, src[j], tgt[j])
        ok &= ~mask
    rows = np.flatnonzero(ok)
    digests = np.zeros(0, dtype=np.uint64)
    if full and cfg.dedup:
        digests = np.frombuffer(b"".join(
            hashlib.blake2b(f"{src[j]}\t{tgt[j]}".encode("utf-8"), digest_size=8).digest()
            for j in rows.tolist()), dtype=np.uint64)
    if len(rows) < len(ok):
        src_ids, tgt_ids = src_ids[np.repeat(ok, src_len)], tgt_ids[np.repeat(ok, tgt_len)]
        src_len, tgt_len = src_len[rows], tgt_len[rows]
    return EncodedChunk(chunk.corpus, len(chunk), norm, counts, src_ids, src_len, tgt_ids, tgt_len,
                        digests)


def _encode(sp, lines: list[str], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Encode lines into one flat id array of ``dtype`` and the per-line lengths."""
    ids = sp.encode(lines, num_threads=1)
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))
    return flat, lengths


class Encoder:
    """Runs ``encode_chunk`` in worker processes (or in this one when workers is 1), in order."""

    def __init__(self, tok: Tokenizers, cfg: PreprocessConfig):
        self.workers = cfg.workers
        self.pool = None
        args = (tok.src_bytes, tok.tgt_bytes, cfg)
        if self.workers > 1:
            char_table()  # built once here; forked workers share it
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            self.pool = ctx.Pool(self.workers, _init_worker, args)
        else:
            _init_worker(*args)

    def scan(self, files: list[tuple[Path, bool]]) -> dict[Path, tuple[int, int]]:
        """``scan_file`` on every (path, is_tsv), in parallel when there are workers."""
        files = list(dict.fromkeys(files))
        results = (self.pool.starmap(scan_file, files, chunksize=1) if self.pool
                   else [scan_file(*f) for f in files])
        return {path: result for (path, _), result in zip(files, results)}

    def map(self, chunks: Iterable[RawChunk], full: bool) -> Iterator[EncodedChunk]:
        if self.pool is None:
            yield from (encode_chunk(c, full) for c in chunks)
            return
        # Pool.imap would read the whole input ahead of the workers; a bounded window does not.
        pending: deque = deque()
        for chunk in chunks:
            pending.append(self.pool.apply_async(encode_chunk, (chunk, full)))
            if len(pending) >= 2 * self.workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

    def close(self, failed: bool = False) -> None:
        if self.pool is not None:
            (self.pool.terminate if failed else self.pool.close)()
            self.pool.join()


def _copies(weight: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """How many times each of ``n`` pairs is written: floor(weight), plus one with the remainder."""
    base = int(weight)
    extra = rng.random(n) < (weight - base) if weight != base else np.zeros(n, dtype=bool)
    return base + extra.astype(np.int64)


def _split_report(split: Split, cfg: PreprocessConfig, full: bool) -> dict[str, Any]:
    if all(c.text is not None for c in split.sources()):  # one side: no copies to drop
        cfg = replace(cfg, drop_copies=False)
    return {"corpora": [{"files": [str(p) for p in c.files()], "weight": c.weight, "pairs_in": 0,
                         "kept": 0, "written": 0} for c in split.sources()],
            "pairs_in": 0, "kept": 0, "written": 0, "params": filter_params(cfg, full),
            "normalized": {"src": Counter(), "tgt": Counter()}}


def preprocess_split(name: str, split: Split, tok: Tokenizers, encoder: Encoder, recipe: Recipe,
                     pairs: int, out: Path | None, progress: Progress | None) -> dict[str, Any]:
    """Encode one split (train is filtered in full; dev and test lose only unusable pairs)."""
    cfg, full = recipe.preprocess, name == "train"
    sources = split.sources()
    report = _split_report(split, cfg, full)
    counts = FilterCounts(cfg.examples)
    dedup = DedupTable(cfg.dedup_memory_mb) if full and cfg.dedup else None
    rng = np.random.default_rng(recipe.train.seed)
    lengths = {"src": Lengths(), "tgt": Lengths()}
    writers: dict[str, ShardWriter] = {}
    if out is not None:
        writers = {"src": ShardWriter(out / f"{name}.src.bin", id_dtype(tok.src_vocab_size)),
                   "tgt": ShardWriter(out / f"{name}.tgt.bin", id_dtype(tok.tgt_vocab_size))}
    if progress:
        progress.start(name, pairs)
    chunks = (chunk for i, corpus in enumerate(sources)
              for chunk in read_chunks(corpus, i, cfg.chunk_size))
    try:
        for res in encoder.map(chunks, full):
            for side in ("src", "tgt"):
                report["normalized"][side].update(res.normalized[side])
            counts.merge(res.filters)
            keep = np.ones(len(res.src_len), dtype=bool)
            if dedup is not None:
                dup = dedup.add(res.digests)
                _count_duplicates(counts, dup, res, tok)
                keep = ~dup
            corpus = report["corpora"][res.corpus]
            corpus["pairs_in"] += res.pairs_in
            corpus["kept"] += int(keep.sum())
            copies = np.where(keep, _copies(sources[res.corpus].weight, len(keep), rng), 0)
            corpus["written"] += int(copies.sum())
            for r in range(int(copies.max(initial=0))):
                sel = copies > r
                every = bool(sel.all())
                for side, ids, lens in (("src", res.src_ids, res.src_len),
                                        ("tgt", res.tgt_ids, res.tgt_len)):
                    picked = ids if every else ids[np.repeat(sel, lens)]
                    lens = lens if every else lens[sel]
                    lengths[side].add(lens, picked)
                    if writers:
                        writers[side].add(picked, lens)
            if progress:
                progress.advance(res.pairs_in)
        for w in writers.values():
            w.commit()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    return _finish_report(report, counts, dedup, lengths)


def _finish_report(report: dict[str, Any], counts: FilterCounts, dedup: DedupTable | None,
                   lengths: dict[str, Lengths]) -> dict[str, Any]:
    """The split's report with its totals, filter counts and length statistics filled in."""
    for key in ("pairs_in", "kept", "written"):
        report[key] = sum(c[key] for c in report["corpora"])
    report["normalized"] = {side: dict(c) for side, c in report["normalized"].items()}
    report["filters"] = {f: {"params": p, "dropped": counts.dropped[f],
                             "examples": counts.examples.get(f, [])}
                         for f, p in report.pop("params").items()}
    if dedup is not None:
        report["filters"]["duplicate"].update(unchecked=dedup.unchecked, memory_bytes=dedup.nbytes)
    report["src"], report["tgt"] = lengths["src"].summary(), lengths["tgt"].summary()
    return report


def _count_duplicates(counts: FilterCounts, dup: np.ndarray, res: EncodedChunk,
                      tok: Tokenizers) -> None:
    """Count duplicates; decode the first few back to text as examples."""
    n = int(dup.sum())
    if not n:
        return
    counts.dropped["duplicate"] += n
    shown = counts.examples.setdefault("duplicate", [])
    if len(shown) >= counts.max_examples:
        return
    src_off = np.concatenate([[0], np.cumsum(res.src_len)])
    tgt_off = np.concatenate([[0], np.cumsum(res.tgt_len)])
    for j in np.flatnonzero(dup)[: counts.max_examples - len(shown)].tolist():
        shown.append(example(tok.src.decode(res.src_ids[src_off[j]:src_off[j + 1]].tolist()),
                             tok.tgt.decode(res.tgt_ids[tgt_off[j]:tgt_off[j + 1]].tolist())))


def preprocess(recipe: Recipe, dry_run: bool = False,
               progress: Progress | None = None) -> dict[str, Any]:
    """Encode every split and write the manifest, which it returns; ``dry_run`` writes nothing."""
    splits = recipe.data.splits()
    if "train" not in splits:
        raise DataError("the recipe has no data.train section; add data.train.src and data.train.tgt")
    start = time.time()
    for key, path in recipe.data.files_by_key():
        if not path.is_file():
            raise DataError(f"file not found; check {key} in the recipe", path)
    tok = Tokenizers.load(recipe)
    encoder = Encoder(tok, recipe.preprocess)
    failed = True
    try:
        # Every corpus is counted and checked for alignment before anything is written.
        scans = encoder.scan([(p, c.tsv is not None) for s in splits.values()
                              for c in s.sources() for p in c.files()])
        pairs = {name: sum(count_pairs(c, scans) for c in split.sources())
                 for name, split in splits.items()}
        out = None if dry_run else data_dir(recipe)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        reports: dict[str, Any] = {}
        for name, split in splits.items():
            reports[name] = preprocess_split(name, split, tok, encoder, recipe, pairs[name], out,
                                             progress)
        failed = False
    finally:
        encoder.close(failed)
    seconds = time.time() - start
    for name, split in splits.items():
        files, hashes = [], []
        for corpus, info in zip(split.sources(), reports[name]["corpora"]):
            info["sha256"] = [sha256_file(p) for p in corpus.files()]
            keys = (("text",) if corpus.text is not None else ("tsv",) if corpus.tsv is not None
                    else ("src", "tgt"))
            files.append(dict(zip(keys, info["files"])))
            hashes.append(dict(zip(keys, info["sha256"])))
        # One corpus: {"src": ..., "tgt": ...} (or {"tsv": ...}); several: a list of those.
        reports[name]["files"] = files[0] if len(files) == 1 else files
        reports[name]["sha256"] = hashes[0] if len(hashes) == 1 else hashes
    manifest = {
        "format": FORMAT,
        "tokenizer_sha256": tok.sha256(),
        "src_vocab_size": tok.src_vocab_size, "tgt_vocab_size": tok.tgt_vocab_size,
        "dtype": {"src": id_dtype(tok.src_vocab_size).name, "tgt": id_dtype(tok.tgt_vocab_size).name},
        "normalize": {k: v for k, v in vars(recipe.preprocess.normalize).items()},
        "splits": reports,
        "seconds": round(seconds, 3),
        "pairs_per_second": round(sum(r["pairs_in"] for r in reports.values()) / max(seconds, 1e-9)),
    }
    if out is not None:
        atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def load_manifest(recipe: Recipe) -> dict[str, Any]:
    path = data_dir(recipe) / MANIFEST
    if not path.is_file():
        raise DataError("no preprocessed data; run 'nmt preprocess' on this recipe first", path)
    return json.loads(path.read_text(encoding="utf-8"))
