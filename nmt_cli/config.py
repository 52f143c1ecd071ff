"""Typed, frozen recipe sections and the checks that build them from plain dicts. Every recipe
key is a dataclass field; choices are ``Literal`` types and ranges live in the field's metadata,
so a typo or an out-of-range value is rejected with its full key path."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from nmt_cli.errors import ConfigError
from nmt_cli.model_settings import (DecoderConfig, EncoderConfig, LMConfig, RnnLMConfig,
                                    TransformerConfig)
from nmt_cli.schema import build, field_type, to_dict, with_overrides
from nmt_cli.schema import number as _num

__all__ = ["build", "field_type", "to_dict", "with_overrides", "EncoderConfig", "DecoderConfig",
           "TransformerConfig", "LMConfig", "RnnLMConfig"]  # with the sections below


# ----------------------------------------------------------------------------------------------
# Sections


@dataclass(frozen=True)
class Corpus:
    """One line-aligned bitext: a source and a target file, or one two-column TSV file; or, for
    a language model (``model.arch: lm``), one ``text`` file of target-language sentences.

    Files may be plain text or .gz/.xz/.bz2. ``weight`` resamples the corpus after filtering:
    2.0 writes every kept pair twice, 0.5 keeps each with probability one half.
    """

    src: Optional[Path] = None
    tgt: Optional[Path] = None
    tsv: Optional[Path] = None
    weight: float = _num(1.0, gt=0.0, le=100.0)
    text: Optional[Path] = None

    def problem(self) -> tuple[str, str] | None:
        """Why this corpus is not usable, as (key, message), or None."""
        if self.text is not None and (self.src or self.tgt or self.tsv):
            return "text", "give either text (one side) or src and tgt (or tsv), not both"
        if self.tsv is not None and (self.src is not None or self.tgt is not None):
            return "tsv", "give either tsv or src and tgt, not both"
        if self.tsv is None and self.text is None:
            for key in ("src", "tgt"):
                if getattr(self, key) is None:
                    return key, "this key is required (or give one tsv file with two " \
                                "tab-separated columns)"
        return None

    def files(self) -> list[Path]:
        one = self.text if self.text is not None else self.tsv
        return [one] if one is not None else [self.src, self.tgt]  # type: ignore[list-item]

    def sources(self) -> list["Corpus"]:
        return [self]


@dataclass(frozen=True)
class Split(Corpus):
    """A split: one corpus given inline (``{src, tgt}`` or ``{tsv}``) or a list of ``corpora``."""

    corpora: list[Corpus] = field(default_factory=list)

    def sources(self) -> list[Corpus]:  # type: ignore[override]
        """The corpora of this split, in order."""
        if self.corpora:
            return list(self.corpora)
        return [Corpus(self.src, self.tgt, self.tsv, self.weight, self.text)]

    def problem(self) -> tuple[str, str] | None:
        if self.corpora:
            if self.src or self.tgt or self.tsv or self.text:
                return "corpora", "give either corpora or src/tgt/tsv/text, not both"
            for i, corpus in enumerate(self.corpora):
                found = corpus.problem()
                if found:
                    return f"corpora[{i}].{found[0]}", found[1]
            return None
        return super().problem()


# a language code names tokenizer files (tokenizer/de.model), so it must stay one plain name
LANG_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,15}")


@dataclass(frozen=True)
class DataConfig:
    src_lang: str = "src"
    tgt_lang: str = "tgt"
    train: Optional[Split] = None
    dev: Optional[Split] = None
    test: Optional[Split] = None

    def __post_init__(self) -> None:
        for key in ("src_lang", "tgt_lang"):
            if not LANG_CODE.fullmatch(getattr(self, key)):
                raise ConfigError(f"{getattr(self, key)!r} is not a language code; use a letter "
                                  "and up to 15 letters, digits, '_' or '-' (such as de or pt_BR)",
                                  f"data.{key}")
        for name in ("train", "dev", "test"):
            split = getattr(self, name)
            found = split.problem() if split is not None else None
            if found:
                raise ConfigError(found[1], f"data.{name}.{found[0]}")

    def splits(self) -> dict[str, Split]:
        """The splits the recipe gives, train first."""
        return {n: s for n in ("train", "dev", "test") if (s := getattr(self, n)) is not None}

    def files_by_key(self) -> list[tuple[str, Path]]:
        """Every data file with the recipe key that names it, e.g. ``data.dev.src`` or
        ``data.train.corpora[1].tsv``, train first."""
        found = []
        for name, split in self.splits().items():
            corpora = [(f"data.{name}.corpora[{i}]", c) for i, c in enumerate(split.corpora)] \
                or [(f"data.{name}", split)]
            for prefix, corpus in corpora:
                found += [(f"{prefix}.{key}", path) for key in ("src", "tgt", "tsv", "text")
                          if (path := getattr(corpus, key)) is not None]
        return found


@dataclass(frozen=True)
class TokenizerConfig:
    model_type: Literal["bpe", "unigram"] = "bpe"
    vocab_size: int = _num(8000, ge=16, le=1_000_000)
    joint: bool = True
    character_coverage: float = _num(1.0, gt=0.0, le=1.0)
    input_sentence_size: int = _num(2_000_000, ge=0, doc="random sample of lines; 0 means all")
    byte_fallback: bool = False
    user_defined_symbols: list[str] = field(default_factory=list)
    num_threads: int = _num(2, ge=1)
    # an existing SentencePiece model used for both sides instead of training one, such as a
    # translation model's target tokenizer for a language model that will be fused with it
    model: Optional[Path] = None


@dataclass(frozen=True)
class NormalizeConfig:
    """Text clean-up applied to every line before filtering, encoding and tokenizer training."""

    unicode: Literal["nfc", "nfkc", "none"] = "nfc"
    remove_control: bool = True  # C0/C1 control characters, NUL included (tab is whitespace)
    remove_zero_width: bool = True  # U+200B-U+200D, U+2060 and U+FEFF
    collapse_whitespace: bool = True  # runs of whitespace -> one space, ends trimmed
    invalid_utf8: Literal["drop", "replace", "error"] = "drop"


@dataclass(frozen=True)
class PreprocessConfig:
    min_len: int = _num(1, ge=0, doc="fewest subword tokens per side")
    max_len: int = _num(100, ge=1, doc="most subword tokens per side")
    max_chars: int = _num(1000, ge=0, doc="most characters per side; 0 is off")
    max_ratio: float = _num(3.0, ge=1.0, doc="longer / shorter side, in tokens")
    max_nonletter: float = _num(0.5, ge=0.0, le=1.0,
                                doc="highest share of non-letter, non-space characters; 1 is off")
    drop_copies: bool = True  # pairs whose source equals their target
    dedup: bool = True
    dedup_memory_mb: int = _num(128, ge=1, doc="most memory the duplicate table may use")
    examples: int = _num(3, ge=0, doc="dropped pairs kept per filter for the report")
    workers: int = _num(1, ge=1)
    chunk_size: int = _num(10_000, ge=1, doc="pairs per unit of work")
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)


# Keys of ``model`` that belong to one architecture, and their defaults when a recipe for that
# architecture leaves them out. A key of the other architecture is a recipe error.
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "rnn": {"emb_size": 256, "emb_dropout": 0.2, "encoder": EncoderConfig(),
            "decoder": DecoderConfig()},
    "transformer": {"transformer": TransformerConfig()},
    "lm": {"lm": LMConfig()},
}


@dataclass(frozen=True)
class ModelConfig:
    """The model; ``arch`` picks the architecture and which keys of this section apply.

    ``share_embeddings`` (one table for source and target, with a joint vocabulary) and
    ``tie_embeddings`` (the output layer reuses the target table) belong to both architectures:
    they are about the vocabularies and the output layer, not about what runs between them.
    ``emb_size``, ``emb_dropout``, ``encoder`` and ``decoder`` are the RNN's: they stay at this
    level so that recipes and checkpoints written before the Transformer load unchanged, and the
    Transformer's embeddings are ``transformer.d_model`` wide and use ``transformer.dropout``.
    ``arch: lm`` is a language model over the target side alone (``lm``, ``tie_embeddings``).
    A key left out is ``None`` until ``__post_init__`` fills in its architecture's default.
    """

    arch: Literal["rnn", "transformer", "lm"] = "rnn"
    emb_size: Optional[int] = _num(None, ge=1, doc="rnn; default 256")
    emb_dropout: Optional[float] = _num(None, ge=0.0, lt=1.0, doc="rnn; default 0.2")
    tie_embeddings: bool = False
    share_embeddings: bool = False
    encoder: Optional[EncoderConfig] = None  # rnn
    decoder: Optional[DecoderConfig] = None  # rnn
    transformer: Optional[TransformerConfig] = None  # transformer
    lm: Optional[LMConfig] = None  # lm

    def __post_init__(self) -> None:
        if self.arch == "lm" and self.share_embeddings:
            raise ConfigError("a language model has one embedding table; remove it (or use "
                              "model.tie_embeddings)", "model.share_embeddings")
        own = ARCH_DEFAULTS[self.arch]
        for arch, keys in ARCH_DEFAULTS.items():
            for name in keys:
                if name not in own and getattr(self, name) is not None:
                    raise ConfigError(f"belongs to model.arch '{arch}', not '{self.arch}'; "
                                      "remove it (or set model.arch)", f"model.{name}")
        for name, default in own.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 1234
    batch_tokens: int = _num(2000, ge=1)
    max_steps: int = _num(10_000, ge=0)
    max_epochs: int = _num(100, ge=1)
    max_time: float = _num(0.0, ge=0.0, doc="training wall time in minutes, summed over resumes; "
                                            "0 means none")
    optimizer: Literal["adam", "adamw"] = "adam"
    learning_rate: float = _num(1e-3, gt=0.0)
    weight_decay: float = _num(0.0, ge=0.0)
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: Literal["constant", "plateau", "inverse_sqrt", "cosine"] = "constant"
    warmup_steps: int = _num(0, ge=0)
    plateau_factor: float = _num(0.5, gt=0.0, lt=1.0)
    plateau_patience: int = _num(2, ge=0)
    min_learning_rate: float = _num(1e-5, ge=0.0)
    clip_norm: float = _num(1.0, ge=0.0, doc="0 turns clipping off")
    label_smoothing: float = _num(0.1, ge=0.0, lt=1.0)
    accum_steps: int = _num(1, ge=1)
    log_every: int = _num(50, ge=1)
    valid_every: int = _num(500, ge=1)
    valid_beam_size: int = _num(1, ge=1)
    valid_max_sentences: int = _num(0, ge=0, doc="0 means the whole dev set")
    early_stopping_patience: int = _num(0, ge=0, doc="validations without improvement; 0 is off")
    keep_last: int = _num(1, ge=1, doc="most recent step checkpoints kept besides last.pt")
    keep_best: int = _num(1, ge=0, doc="best-scoring step checkpoints kept besides best.pt")
    save_every: int = _num(0, ge=0, doc="steps between checkpoints; 0 saves at each validation")
    average_last: int = _num(0, ge=0, doc="at the end, average the newest N step checkpoints "
                                           "into checkpoints/averaged.pt; 0 is off")
    ema_decay: float = _num(0.0, ge=0.0, lt=1.0, doc="exponential moving average of the "
                                                      "weights (training/ema.py); 0 is off")
    # auto: bf16 on a GPU that has it or a CPU with native bf16 matmul, else fp32 (runtime.py);
    # master weights, the loss and the log-softmax stay fp32 at every choice. The default since
    # full pipelines showed it costs no BLEU against fp32 (docs/results.md, "precision: auto").
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    max_nonfinite: int = _num(10, ge=1, doc="skipped non-finite updates in a row before stopping")
    tensorboard: bool = False
    threads: int = _num(0, ge=0, doc="torch CPU threads; 0 leaves torch's default")
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        if self.schedule == "cosine" and not (self.max_steps or self.max_time):
            raise ConfigError("'cosine' decays to train.min_learning_rate at the end of the "
                              "budget; set train.max_steps or train.max_time (or both: it ends "
                              "at whichever comes first)", "train.schedule")
        if self.average_last > self.keep_last:
            raise ConfigError(f"averaging the newest {self.average_last} checkpoints needs "
                              f"train.keep_last >= {self.average_last} (it is {self.keep_last})",
                              "train.average_last")


@dataclass(frozen=True)
class DecodeConfig:
    beam_size: int = _num(5, ge=1)
    batch_size: int = _num(64, ge=1, doc="sentences or source tokens per batch (batch_type)")
    batch_type: Literal["sentences", "tokens"] = "sentences"
    length_penalty: float = _num(1.0, ge=0.0, doc="GNMT alpha; 0 ranks by raw log-probability")
    length_norm: Literal["gnmt", "average", "none"] = "gnmt"
    min_len_a: float = _num(0.0, ge=0.0)
    min_len_b: int = _num(0, ge=0)
    max_len_a: float = _num(1.5, ge=0.0)
    max_len_b: int = _num(10, ge=1)
    no_repeat_ngram: int = _num(0, ge=0, doc="0 allows repeats")
    max_src_len: int = _num(250, ge=1, doc="longer inputs are cut to this many subwords")
    sample: bool = False
    temperature: float = _num(1.0, ge=0.001, doc="lower is nearer greedy search")
    top_k: int = _num(0, ge=0, doc="0 keeps the whole vocabulary")
    top_p: float = _num(1.0, gt=0.0, le=1.0)
    seed: int = _num(0, ge=0)
    n_best: int = _num(1, ge=1, doc="hypotheses (or samples) kept per sentence, best first")
    allow_unk: bool = False  # let search emit <unk>; off, like PAD and BOS, by default
    invalid_utf8: Literal["replace", "error"] = "replace"  # bad bytes in text to translate
    # weights and activations while translating (decoding/engine.py): auto is bf16 on a GPU that
    # supports it, else fp32; the CPU decodes in fp32 only (nmt export is its fast path)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    lm: Optional[Path] = None  # a language model checkpoint for shallow fusion
    lm_weight: float = _num(0.2, ge=0.0, doc="weight of log p_LM added to every step's scores")

    def __post_init__(self) -> None:
        if not self.sample and self.n_best > self.beam_size:
            raise ConfigError(f"{self.n_best} is more than decode.beam_size ({self.beam_size}); "
                              "beam search keeps at most beam_size hypotheses, so lower n_best "
                              "or raise beam_size", "decode.n_best")


@dataclass(frozen=True)
class EvalConfig:
    metrics: list[Literal["bleu", "chrf", "ter"]] = field(default_factory=lambda: ["bleu", "chrf"])
    tokenize: Literal["13a", "intl", "zh", "ja-mecab", "ko-mecab", "char", "none", "flores101",
                      "flores200"] = "13a"
    lowercase: bool = False


@dataclass(frozen=True)
class Recipe:
    """A whole experiment: data, tokenizer, preprocessing, model, training, decoding, evaluation."""

    name: str = "experiment"
    workdir: Path = Path("runs/experiment")
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def check_training(recipe: Recipe) -> None:
    """Rules that tie training keys to each other and to the data; ConfigError names the key.

    Checked for every recipe file that is loaded and by the trainer, but not when a checkpoint's
    recipe is rebuilt, so a model trained before a rule existed still translates.
    """
    data = recipe.data
    if not recipe.tokenizer.joint and data.src_lang == data.tgt_lang:
        raise ConfigError(f"equals data.src_lang ({data.src_lang!r}), so with tokenizer.joint: "
                          f"false the target tokenizer would overwrite the source one; use "
                          "different language codes or tokenizer.joint: true", "data.tgt_lang")
    if recipe.tokenizer.model is not None and not recipe.tokenizer.joint:
        raise ConfigError("tokenizer.model serves both sides; remove tokenizer.joint: false",
                          "tokenizer.joint")
    _check_sides(recipe)
    cfg = recipe.train
    if cfg.schedule == "inverse_sqrt" and cfg.warmup_steps == 0:
        raise ConfigError("schedule 'inverse_sqrt' needs a warmup, or it decays from the first "
                          "step; set train.warmup_steps above 0 (4000 is common)",
                          "train.warmup_steps")
    if recipe.data.dev is None:
        if cfg.early_stopping_patience:
            raise ConfigError("early stopping needs a dev set; add data.dev or set "
                              "train.early_stopping_patience to 0", "train.early_stopping_patience")
        if cfg.schedule == "plateau":
            raise ConfigError("the plateau schedule needs a dev set; add data.dev or choose "
                              "'constant' or 'inverse_sqrt'", "train.schedule")


def _check_sides(recipe: Recipe) -> None:
    """A language model trains on ``text`` corpora, a translation model on bitexts."""
    lm = recipe.model.arch == "lm"
    for key, _ in recipe.data.files_by_key():
        if key.endswith(".text") != lm:
            fix = ("give one text file per corpus (data.train.text)" if lm else
                   "give src and tgt, or set model.arch: lm to train a language model")
            raise ConfigError(f"model.arch '{recipe.model.arch}' does not train on "
                              f"{'bitexts' if lm else 'monolingual text'}; {fix}", key)
