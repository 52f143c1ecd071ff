"""Translation on a folder written by ``nmt export`` (the engine's files, the SentencePiece
model(s) and ``nmt-export.json``), with the contract of ``inference.translate_lines``: the same
cleaning and subwords, N lines in and N results out, in order. Decode settings map onto
``Translator.translate_batch`` (docs/decoding.md says which differ); sentences are grouped by
their length limits, one engine call a group, and cut to the exported position table."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nmt_cli.config import DecodeConfig, NormalizeConfig, Recipe
from nmt_cli.decoding.hypotheses import (Hypothesis, Translation, clean_lines, empty_translation,
                                         encode_sources)
from nmt_cli.errors import CheckpointError, NmtError
from nmt_cli.files import sha256_bytes
from nmt_cli.ids import BOS_ID, PAD_ID

METADATA = "nmt-export.json"
FORMAT = "nmt-ctranslate2-1"
SRC_SPM, TGT_SPM = "source.spm.model", "target.spm.model"
ENGINE_FILES = ("model.bin", "config.json")


def is_exported(path: Path) -> bool:
    """A folder that ``nmt export`` wrote (or that claims to be one: it holds the metadata)."""
    return path.is_dir() and any((path / name).exists() for name in (METADATA,) + ENGINE_FILES)


def require_ctranslate2():
    try:
        import ctranslate2
    except ImportError:
        raise NmtError("CTranslate2 is not installed; pip install 'nmt[ct2]' (or "
                       "pip install ctranslate2)") from None
    return ctranslate2


def read_metadata(folder: Path) -> dict[str, Any]:
    """``nmt-export.json`` of an exported folder, every file it names present, or one error."""
    if not (folder / METADATA).is_file():
        raise CheckpointError(f"{folder}: incomplete model directory, {METADATA} missing; "
                              "export the model again with nmt export")
    try:
        meta = json.loads((folder / METADATA).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder}: {METADATA} is unreadable ({exc.__class__.__name__}); "
                              "export the model again with nmt export") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{folder}: {METADATA} is not an nmt export (expected format "
                              f"{FORMAT!r}); export the model again with nmt export")
    needed = list(ENGINE_FILES) + sorted(set(meta.get("tokenizer", {}).get("files", {}).values()))
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"{folder}: incomplete model directory, {', '.join(missing)} "
                              "missing; export the model again with nmt export")
    return meta


@dataclass
class Ct2Model:
    """An exported model loaded for translation: the engine, the tokenizers and the recipe."""

    translator: Any  # ctranslate2.Translator
    tok: Any  # nmt_cli.text.tokenizer.Tokenizers
    recipe: Recipe
    metadata: dict[str, Any]
    folder: Path
    options: dict[str, Any]  # the Translator's device and thread settings
    warned: set[str] = field(default_factory=set)  # the warnings already printed

    @property
    def positions(self) -> int:
        """Rows of the engine's position table (``max_positions`` in an older export)."""
        return int(self.metadata.get("positions", self.recipe.model.transformer.max_positions))

    def sampler(self, seed: int) -> Any:
        """The translator that samples: the engine seeds a worker once, when it first samples,
        so later calls draw on; several workers become one, once, so that the draws do not
        depend on which worker takes which group."""
        ct2 = require_ctranslate2()
        ct2.set_random_seed(seed % 2 ** 32)
        if self.options["inter_threads"] > 1:
            self.options = dict(self.options, inter_threads=1, intra_threads=(
                self.options["intra_threads"] * self.options["inter_threads"]))
            self.translator = ct2.Translator(str(self.folder), **self.options)
        return self.translator

    def warn(self, text: str) -> None:
        """``text`` as one line on stderr, the first time this model meets it."""
        if text not in self.warned:
            self.warned.add(text)
            print(f"warning: {text}", file=sys.stderr)


def engine_device(device: str) -> str:
    """nmt's --device (auto, cpu, cuda) as the engine's; auto picks a GPU the engine can see."""
    ct2 = require_ctranslate2()
    if device == "auto":
        return "cuda" if ct2.get_cuda_device_count() > 0 else "cpu"
    if device == "cuda" and ct2.get_cuda_device_count() == 0:
        raise NmtError("--device cuda: CTranslate2 sees no CUDA device; use --device cpu")
    return device


def thread_split(device: str, threads: int, inter_threads: int) -> tuple[int, int]:
    """The engine's (intra_threads, inter_threads) for nmt's --threads (in all; 0: one per core
    this process may use) and --inter-threads (0: one per thread). On the CPU a small model runs
    fastest with the batches of a call side by side, one thread each: the engine scales better
    across batches than within one. On a GPU, one translation at a time."""
    if device != "cpu":
        return threads, inter_threads or 1
    total = threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                        else os.cpu_count() or 1)
    inter = min(inter_threads or total, total)
    return max(1, total // inter), inter


def load_exported(folder: Path, device: str = "auto", threads: int = 0,
                  inter_threads: int = 1) -> Ct2Model:
    """Open an exported folder; a corrupt or partial one is one CheckpointError line.
    ``threads`` and ``inter_threads`` are split by ``thread_split`` (0: automatic)."""
    from nmt_cli.recipes import recipe_from_dict
    from nmt_cli.text.tokenizer import Tokenizers

    ct2 = require_ctranslate2()
    meta = read_metadata(folder)
    files = meta["tokenizer"]["files"]
    try:
        src, tgt = (folder / files["src"]).read_bytes(), (folder / files["tgt"]).read_bytes()
        recipe = recipe_from_dict(meta["recipe"])
    except (KeyError, NmtError) as exc:
        raise CheckpointError(f"{folder}: {METADATA} is incomplete ({exc}); export the model "
                              "again with nmt export") from None
    for side, data in (("src", src), ("tgt", tgt)):
        if sha256_bytes(data) != meta["tokenizer"]["sha256"][side]:
            raise CheckpointError(f"{folder}: {files[side]} does not match the SHA-256 in "
                                  f"{METADATA}; export the model again with nmt export")
    src_sp = _processor(folder, files["src"], src)
    tgt_sp = src_sp if tgt == src else _processor(folder, files["tgt"], tgt)
    tok = Tokenizers(src_sp, tgt_sp, src, tgt)
    where = engine_device(device)
    intra, inter = thread_split(where, threads, inter_threads)
    options = {"device": where, "intra_threads": intra, "inter_threads": inter}
    try:
        translator = ct2.Translator(str(folder), **options)
    except (RuntimeError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, PermissionError):
            raise CheckpointError(f"{folder}: cannot read the exported model ({first}); check "
                                  "the files' permissions") from None
        raise CheckpointError(f"{folder}: CTranslate2 cannot load this model ({first}); if it "
                              "is truncated or corrupt, export it again with nmt export") from None
    return Ct2Model(translator, tok, recipe, meta, folder, options)


def _processor(folder: Path, name: str, data: bytes):
    from nmt_cli.text.tokenizer import processor

    try:
        return processor(data)
    except Exception:  # sentencepiece raises plain RuntimeError on a corrupt model
        raise CheckpointError(f"{folder}: {name} is not a SentencePiece model; export the model "
                              "again with nmt export") from None


GNMT_WARNING = ("an exported model divides by length ** length_penalty, not nmt's GNMT "
                "((5 + length) / 6) ** length_penalty: scores differ, and so may the choice of "
                "hypothesis (length_norm: average or none are exact)")


def engine_options(cfg: DecodeConfig) -> dict[str, Any]:
    """The decode settings that map onto ``translate_batch`` options (length limits apart)."""
    if cfg.length_norm == "none" or (cfg.length_norm == "gnmt" and cfg.length_penalty == 0.0):
        penalty = 0.0
    elif cfg.length_norm == "average":
        penalty = 1.0
    else:  # gnmt: the engine divides by length ** alpha, not ((5 + length) / 6) ** alpha
        penalty = cfg.length_penalty
    options: dict[str, Any] = {
        "length_penalty": penalty, "no_repeat_ngram_size": cfg.no_repeat_ngram,
        "disable_unk": not cfg.allow_unk, "num_hypotheses": cfg.n_best, "return_scores": True,
        "max_batch_size": cfg.batch_size,
        "batch_type": "examples" if cfg.batch_type == "sentences" else "tokens",
        "max_input_length": 0,  # sources are cut to max_src_len here, as nmt does
    }
    if cfg.sample:
        options.update(beam_size=1, sampling_topk=cfg.top_k, sampling_topp=cfg.top_p,
                       sampling_temperature=cfg.temperature)
    else:
        options.update(beam_size=cfg.beam_size)
    return options


def _limits(n_src: int, cfg: DecodeConfig, positions: int) -> tuple[int, int]:
    """nmt's per-sentence output limits (``penalties.output_lengths``) for a source of ``n_src``
    subwords (the source length counts its EOS, as in nmt's search), at most ``positions``
    subwords: the engine feeds <s> and each output but the last at positions 0, 1, ..."""
    length = n_src + 1
    max_len = min(max(0, int(cfg.max_len_a * length) + cfg.max_len_b), positions)
    min_len = min(max(0, int(cfg.min_len_a * length) + cfg.min_len_b), max_len)
    return min_len, max_len


def translate_lines(model: Ct2Model, lines: list[str], cfg: DecodeConfig, *,
                    normalize: NormalizeConfig, first_index: int = 0) -> list[Translation]:
    """Translate ``lines``; the i-th result belongs to the i-th line. ``first_index`` is taken
    for the same calls as ``inference.translate_lines``: sampling draws from one generator."""
    tok = model.tok
    if cfg.length_norm == "gnmt" and cfg.length_penalty != 0.0:
        model.warn(GNMT_WARNING)
    max_src_len = min(cfg.max_src_len, model.positions - 1)  # and EOS at the last position
    sources, src_ids, truncated = encode_sources(tok, lines, normalize, max_src_len)
    results: list[Translation | None] = [None] * len(lines)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, ids in enumerate(src_ids):
        if not ids:
            results[i] = empty_translation(i, sources[i])
        else:
            groups.setdefault(_limits(len(ids), cfg, model.positions), []).append(i)
    options = engine_options(cfg)
    # PAD and BOS are never generated, as in nmt's search (<unk> is disable_unk).
    options["suppress_sequences"] = [[tok.tgt.id_to_piece(PAD_ID)], [tok.tgt.id_to_piece(BOS_ID)]]
    translator = model.sampler(cfg.seed) if cfg.sample else model.translator
    # Every group is handed to the engine at once (asynchronous calls), so that with several
    # inter_threads the groups run side by side; results are read back in each group's order.
    pending = []
    for (min_len, max_len), batch in sorted(groups.items()):
        pieces = [[tok.src.id_to_piece(t) for t in src_ids[i]] for i in batch]
        # Both limits count subwords without EOS, as nmt's do; at the maximum the engine stops
        # without adding EOS's log-probability to the score (nmt adds it).
        pending.append((batch, max_len, translator.translate_batch(
            pieces, min_decoding_length=min_len, max_decoding_length=max_len,
            asynchronous=True, **options)))
    penalty = options["length_penalty"]  # the engine's score is log_prob / length ** it
    for batch, max_len, futures in pending:
        for i, future in zip(batch, futures):
            res = future.result()
            # the length counts EOS, which an output stopped at max_len does not have
            hyps = [Hypothesis([tok.tgt.piece_to_id(p) for p in hyp], float(score),
                               float(score) * (len(hyp) + (len(hyp) < max_len)) ** penalty)
                    for hyp, score in zip(res.hypotheses, res.scores)]
            hyps.sort(key=lambda h: -h.score)
            texts = tok.decode_tgt([h.tokens for h in hyps])
            results[i] = Translation(i, texts[0], hyps, len(src_ids[i]), truncated[i], texts,
                                     sources[i])
    return [r for r in results if r is not None]


def score_references(model: Ct2Model, lines: list[str], references: list[str], *,
                     normalize: NormalizeConfig, max_src_len: int) -> list[float]:
    """Forced decoding (``score_batch``): each reference's summed log-probability, EOS included,
    as ``inference.score_references``, both sides cut to the position table."""
    tok = model.tok
    longest = model.positions - 1
    src = encode_sources(tok, lines, normalize, min(max_src_len, longest)).ids
    tgt = [ids[:longest] for ids in tok.encode_tgt(clean_lines(references, normalize))]
    scores: list[float] = []
    for start in range(0, len(src), SCORE_CHUNK):  # one call for all lines holds them all
        found = model.translator.score_batch(
            [[tok.src.id_to_piece(t) for t in ids] for ids in src[start:start + SCORE_CHUNK]],
            [[tok.tgt.id_to_piece(t) for t in ids] for ids in tgt[start:start + SCORE_CHUNK]],
            max_input_length=0)
        scores.extend(float(sum(res.log_probs)) for res in found)
    return scores


# Lines per score_batch call: the engine keeps every line of a call in memory at once
# (12,000 pairs in one call took 18 GB, docs/results.md)
SCORE_CHUNK = 1000
