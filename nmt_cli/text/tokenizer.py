"""SentencePiece training, loading and use, with the special-token ids of ``nmt_cli.ids``."""

from __future__ import annotations

import hashlib
import io
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
import sentencepiece as spm

from nmt_cli.config import NormalizeConfig, Recipe, Split, TokenizerConfig
from nmt_cli.errors import DataError, NmtError
from nmt_cli.files import atomic_write_bytes
from nmt_cli.ids import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from nmt_cli.text.bitext import LineReader, open_binary, read_chunks, split_tsv
from nmt_cli.text.normalize import Normalizer


def tokenizer_dir(recipe: Recipe) -> Path:
    return recipe.workdir / "tokenizer"


def _side_blocks(split: Split, sides: tuple[str, ...]) -> Iterator[tuple[bytes, int, bool]]:
    """Raw blocks of lines (joined by newlines) of the wanted sides of every corpus, each with its
    line count and whether it opens its file. Sides are read separately: no alignment needed."""
    for index, corpus in enumerate(split.sources()):
        if corpus.tsv is not None:
            for chunk in read_chunks(corpus, index, 10_000):
                blocks = split_tsv(chunk)
                for side in sides:
                    yield blocks[0 if side == "src" else 1], chunk.n, chunk.first == 1
            continue
        for side in sides[:1] if corpus.text is not None else sides:  # one side, read once
            path = corpus.text or (corpus.src if side == "src" else corpus.tgt)
            with open_binary(path) as fh:
                reader, first = LineReader(fh), True
                while lines := reader.take(10_000):
                    yield b"\n".join(lines), len(lines), first
                    first = False


def _sample_lines(split: Split, sides: tuple[str, ...], limit: int, seed: int,
                  cfg: NormalizeConfig) -> list[str]:
    """Cleaned non-empty lines of ``sides`` of every corpus, a uniform random sample of at most
    ``limit`` (0: all). Reservoir sampling keeps memory bounded however large the corpus is."""
    rng = random.Random(seed)
    normalizer = Normalizer(cfg)
    sample: list[str] = []
    seen = 0
    for raw, n, file_start in _side_blocks(split, sides):
        text = raw.decode("utf-8", errors="replace").split("\n") if n else []
        lines, _ = normalizer.clean_lines(text, file_start, Counter())
        for line in lines:
            if not line:
                continue
            seen += 1
            if not limit or len(sample) < limit:
                sample.append(line)
            else:
                j = rng.randrange(seen)
                if j < limit:
                    sample[j] = line
    return sample


def train_model(lines: list[str], cfg: TokenizerConfig) -> bytes:
    """Train one SentencePiece model on ``lines`` and return its serialized bytes."""
    if not lines:
        raise DataError("no non-empty lines to train the tokenizer on; check data.train in the recipe")
    out = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=out, model_type=cfg.model_type,
            vocab_size=cfg.vocab_size, character_coverage=cfg.character_coverage,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            byte_fallback=cfg.byte_fallback,
            user_defined_symbols=list(cfg.user_defined_symbols) or "",
            input_sentence_size=0, shuffle_input_sentence=False,
            num_threads=cfg.num_threads, hard_vocab_limit=False, minloglevel=2,
            train_extremely_large_corpus=False,
        )
    except RuntimeError as exc:
        raise NmtError(f"SentencePiece training failed: {exc}; try a smaller tokenizer.vocab_size") \
            from None
    return out.getvalue()


@dataclass
class Tokenizers:
    """The source and target SentencePiece models (the same object when the vocabulary is joint)."""

    src: spm.SentencePieceProcessor
    tgt: spm.SentencePieceProcessor
    src_bytes: bytes
    tgt_bytes: bytes

    @classmethod
    def from_bytes(cls, src_bytes: bytes, tgt_bytes: bytes) -> "Tokenizers":
        src = processor(src_bytes)
        tgt = src if tgt_bytes == src_bytes else processor(tgt_bytes)
        return cls(src, tgt, src_bytes, tgt_bytes)

    @classmethod
    def load(cls, recipe: Recipe) -> "Tokenizers":
        folder = tokenizer_dir(recipe)
        paths = model_paths(recipe)
        for p in paths.values():
            if not p.is_file() and recipe.tokenizer.model is not None:
                raise DataError("tokenizer model not found; check tokenizer.model in the recipe "
                                "(train that tokenizer first)", p)
            if not p.is_file():
                raise DataError(f"tokenizer model not found; run 'nmt tokenizer' on this recipe first"
                                f" (looked in {folder})", p)
        return cls.from_bytes(paths["src"].read_bytes(), paths["tgt"].read_bytes())

    @property
    def joint(self) -> bool:
        return self.src_bytes == self.tgt_bytes

    @property
    def src_vocab_size(self) -> int:
        return self.src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self.tgt.get_piece_size()

    def sha256(self) -> dict[str, str]:
        return {"src": hashlib.sha256(self.src_bytes).hexdigest(),
                "tgt": hashlib.sha256(self.tgt_bytes).hexdigest()}

    def encode_src(self, lines: list[str]) -> list[list[int]]:
        return self.src.encode(lines)

    def encode_tgt(self, lines: list[str]) -> list[list[int]]:
        return self.tgt.encode(lines)

    def decode_tgt(self, ids: list[list[int]]) -> list[str]:
        return self.tgt.decode(ids)

    def pieces_src(self, line: str) -> list[str]:
        return self.src.encode(line, out_type=str)


def processor(model: bytes) -> spm.SentencePieceProcessor:
    sp = spm.SentencePieceProcessor()
    sp.load_from_serialized_proto(model)
    return sp


def model_paths(recipe: Recipe) -> dict[str, Path]:
    folder = tokenizer_dir(recipe)
    if recipe.tokenizer.model is not None:  # given, not trained: one model for both sides
        return {"src": recipe.tokenizer.model, "tgt": recipe.tokenizer.model}
    if recipe.tokenizer.joint:
        joint = folder / "joint.model"
        return {"src": joint, "tgt": joint}
    return {"src": folder / f"{recipe.data.src_lang}.model",
            "tgt": folder / f"{recipe.data.tgt_lang}.model"}


def train_tokenizers(recipe: Recipe) -> dict[str, Path]:
    """Train the recipe's tokenizer(s) on its training bitext; return the written model paths."""
    train = recipe.data.train
    if train is None:
        raise DataError("the recipe has no data.train section; add data.train.src and data.train.tgt")
    for key, path in recipe.data.files_by_key():
        if key.startswith("data.train.") and not path.exists():  # a pipe is fine
            raise DataError(f"file not found; check {key} in the recipe", path)
    cfg, seed = recipe.tokenizer, recipe.train.seed
    norm = recipe.preprocess.normalize
    paths = model_paths(recipe)
    if cfg.model is not None:  # nothing to train: the recipe names its model
        Tokenizers.load(recipe)  # which must exist and read
        return paths
    trained_on = {"src": ("src", "tgt")} if cfg.joint else {"src": ("src",), "tgt": ("tgt",)}
    for model, sides in trained_on.items():
        lines = _sample_lines(train, sides, cfg.input_sentence_size, seed, norm)
        atomic_write_bytes(paths[model], train_model(lines, cfg))
    return paths


def dev_statistics(recipe: Recipe, tok: "Tokenizers") -> dict[str, dict[str, float]]:
    """Unknown-piece rate and average pieces per word of each side of the dev set (or train)."""
    split = recipe.data.dev or recipe.data.train
    if split is None:
        return {}
    stats = {}
    for side, sp in (("src", tok.src), ("tgt", tok.tgt)):
        lines = _sample_lines(split, (side,), 100_000, 0, recipe.preprocess.normalize)
        ids = sp.encode(lines)
        pieces = sum(map(len, ids))
        words = sum(len(line.split()) for line in lines)
        unk = sum(row.count(UNK_ID) for row in ids)
        stats[side] = {"lines": len(lines), "unk_rate": unk / max(pieces, 1),
                       "pieces_per_word": pieces / max(words, 1)}
    return stats
