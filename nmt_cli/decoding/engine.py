"""The one door to decoding: ``open_engine(paths, settings)`` gives an ``Engine`` for a checkpoint,
an ensemble or a folder written by ``nmt export``; engine, device, precision and threads are
decided here, once.

- ``TorchEngine``: nmt's own search; fp32 on the CPU (bf16 or fp16 there are refused with a
  pointer to ``nmt export``), the whole model cast to bf16 or fp16 on a GPU.
- ``Ct2Engine``: CTranslate2 over an exported folder; torch is imported only for checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

from nmt_cli.config import DecodeConfig, Recipe, with_overrides
from nmt_cli.decoding import ct2
from nmt_cli.decoding.hypotheses import Translation
from nmt_cli.errors import CheckpointError, ConfigError, NmtError

if TYPE_CHECKING:
    import torch

    from nmt_cli.text.tokenizer import Tokenizers


# On the CPU, a call of one batch is split over the workers when each gets this many sentences
SPREAD_MIN = 4


@dataclass(frozen=True)
class EngineSettings:
    """How to open a model: where it runs and with what, besides its recipe's decode settings."""

    device: str = "auto"  # auto, cpu or cuda
    threads: int = 0  # CPU threads in all (0: one per core this process may use)
    inter_threads: int = 0  # on the CPU, batches searched side by side; 0: one per thread
    decode: dict[str, Any] = field(default_factory=dict)  # decode.* keys over the recipe's


def spread(cfg: DecodeConfig, lines: int, workers: int) -> tuple[DecodeConfig, int]:
    """A call that fits one batch (a server's batch, a short input) is split into one batch per
    worker when each gets ``SPREAD_MIN`` sentences, so that every worker runs; else it stays one
    batch on one worker (on the CPU one thread beats two at a few sentences, where the threads
    wait on each other at every small product). Each sentence is searched as alone, so the
    output is the same either way. Returns the workers to use."""
    if workers > 1 and cfg.batch_type == "sentences" and lines <= cfg.batch_size:
        if lines < SPREAD_MIN * workers:
            return cfg, 1
        cfg = replace(cfg, batch_size=-(-lines // workers))
    return cfg, workers


class Engine(Protocol):
    """What translate and serve use, whichever engine holds the model; both methods behave as
    ``decoding.inference``'s functions of the same names."""

    tok: Tokenizers
    recipe: Recipe
    defaults: DecodeConfig  # the recipe's decode section with the settings' decode keys
    precision: str  # what the engine computes in, for reports ("fp32", "ctranslate2 int8")
    device: str
    parameters: int
    versions: dict[str, str]  # of nmt and the libraries the engine runs on
    can_align: bool  # attention (alignments, plots) is available

    can_constrain: bool  # terminology constraints are available

    def translate_lines(self, lines: list[str], cfg: DecodeConfig, *,
                        return_attention: bool = False, first_index: int = 0,
                        constraints: Sequence[Sequence[str]] | None = None
                        ) -> list[Translation]: ...

    def score_references(self, lines: list[str], references: list[str],
                         cfg: DecodeConfig) -> list[float]: ...

    def close(self) -> None: ...


def open_engine(paths: Path | Sequence[Path], settings: EngineSettings) -> Engine:
    """The engine for one checkpoint, several (an ensemble) or one exported folder."""
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    exported = [p for p in paths if ct2.is_exported(p)]
    if not exported:
        return TorchEngine(paths, settings)
    if len(paths) > 1:
        raise NmtError(f"{exported[0]}: an exported CTranslate2 model cannot be part of an "
                       "ensemble; give one -m, or ensemble the .pt checkpoints")
    return Ct2Engine(exported[0], settings)


def check_model_paths(paths: Sequence[Path]) -> None:
    """Every path is a checkpoint file or an exported folder, or one error naming it."""
    for path in map(Path, paths):
        if not path.is_file() and not ct2.is_exported(path):
            raise CheckpointError(f"{path}: checkpoint not found; train one with 'nmt train "
                                  "RECIPE' (checkpoints are written to WORKDIR/checkpoints/)")


class Ct2Engine:
    """An exported model on CTranslate2; it computes in the type it was exported with."""

    can_align = False
    can_constrain = False
    REFUSE_CONSTRAINTS = ("an exported CTranslate2 model cannot decode with terminology "
                          "constraints (--constraints, --glossary); give the .pt checkpoint")

    def __init__(self, folder: Path, settings: EngineSettings):
        self.model = ct2.load_exported(folder, settings.device, settings.threads,
                                       settings.inter_threads)
        self.tok, self.recipe = self.model.tok, self.model.recipe
        self.defaults = with_overrides(self.recipe.decode, settings.decode, "decode")
        if self.defaults.lm is not None:
            raise NmtError(f"{folder}: an exported CTranslate2 model cannot decode with a language "
                           "model (--lm, decode.lm); shallow fusion runs on the .pt checkpoint")
        self.precision = f"ctranslate2 {self.model.metadata.get('quantization', '')}".strip()
        self.device = str(self.model.translator.device)
        self.parameters = int(self.model.metadata.get("parameters", 0))
        self.versions = _versions(ctranslate2=ct2.require_ctranslate2().__version__)

    def translate_lines(self, lines: list[str], cfg: DecodeConfig, *,
                        return_attention: bool = False, first_index: int = 0,
                        constraints: Sequence[Sequence[str]] | None = None) -> list[Translation]:
        if constraints is not None and any(constraints):
            raise NmtError(self.REFUSE_CONSTRAINTS)
        cfg, _ = spread(cfg, len(lines), self.model.options.get("inter_threads", 1))
        return ct2.translate_lines(self.model, lines, cfg, normalize=self.recipe.preprocess.normalize,
                                   first_index=first_index)

    def score_references(self, lines: list[str], references: list[str],
                         cfg: DecodeConfig) -> list[float]:
        return ct2.score_references(self.model, lines, references,
                                    normalize=self.recipe.preprocess.normalize,
                                    max_src_len=cfg.max_src_len)

    def close(self) -> None:
        pass


class TorchEngine:
    """One checkpoint, or an ensemble of several sharing one tokenizer, on nmt's own search."""

    can_align = True
    can_constrain = True

    def __init__(self, paths: list[Path], settings: EngineSettings):
        import torch

        from nmt_cli.model import count_parameters
        from nmt_cli.runtime import DTYPES, pick_device

        self._device = pick_device(settings.device)
        self.device = str(self._device)
        self._threads_before = torch.get_num_threads()
        self.workers = 1
        if self._device.type == "cpu":  # batches side by side, as CTranslate2 runs them
            intra, self.workers = ct2.thread_split("cpu", settings.threads or self._threads_before,
                                                   settings.inter_threads)
            if intra != self._threads_before:
                torch.set_num_threads(intra)
        elif settings.threads:
            torch.set_num_threads(settings.threads)
        try:
            model, self.tok, self.recipe = load_models(paths, self._device)
            self.defaults = with_overrides(self.recipe.decode, settings.decode, "decode")
            self.precision = decoding_precision(self.defaults, self._device)
            self.lm = None if self.defaults.lm is None else self._open_lm(self.defaults.lm)
            if self.precision != "fp32":
                model = model.to(DTYPES[self.precision])
                self.lm = None if self.lm is None else self.lm.to(DTYPES[self.precision])
        except BaseException:
            self.close()
            raise
        self.model = model
        self.parameters = count_parameters(model)
        self.versions = _versions(torch=str(torch.__version__))

    def _open_lm(self, path: Path):
        """The language model for shallow fusion, sharing the translation model's target
        vocabulary (``decode.lm``, opened once; ``decode.lm_weight`` is read per call)."""
        from nmt_cli.decoding.lm import check_shared_vocabulary, open_lm

        lm, lm_tok, lm_recipe = open_lm(path, self._device)
        check_shared_vocabulary(path, lm_tok, lm_recipe, self.tok, self.recipe)
        return lm

    def _decoder(self, cfg: DecodeConfig):
        """The model search runs: the translation model, fused with the LM when there is one."""
        if self.lm is None:
            return self.model
        from nmt_cli.decoding.fusion import ShallowFusion

        return ShallowFusion(self.model, self.lm, cfg.lm_weight)

    def translate_lines(self, lines: list[str], cfg: DecodeConfig, *,
                        return_attention: bool = False, first_index: int = 0,
                        constraints: Sequence[Sequence[str]] | None = None) -> list[Translation]:
        import torch

        from nmt_cli.decoding.inference import translate_lines

        cfg, workers = spread(cfg, len(lines), self.workers)
        with torch.inference_mode():
            return translate_lines(self._decoder(cfg), self.tok, lines, cfg,
                                   normalize=self.recipe.preprocess.normalize, device=self._device,
                                   return_attention=return_attention, first_index=first_index,
                                   workers=workers, constraints=constraints)

    def score_references(self, lines: list[str], references: list[str],
                         cfg: DecodeConfig) -> list[float]:
        import torch

        from nmt_cli.decoding.inference import score_references

        with torch.inference_mode():
            return score_references(self.model, self.tok, lines, references, cfg,
                                    normalize=self.recipe.preprocess.normalize,
                                    device=self._device)

    def close(self) -> None:
        """Give torch back the thread count it had before this engine opened."""
        import torch

        if torch.get_num_threads() != self._threads_before:
            torch.set_num_threads(self._threads_before)


def _versions(**engine: str) -> dict[str, str]:
    import platform

    import sentencepiece

    from nmt_cli import __version__

    return {"nmt": __version__, **engine, "sentencepiece": sentencepiece.__version__,
            "python": platform.python_version()}


def decoding_precision(cfg: DecodeConfig, device: torch.device) -> str:
    """``decode.precision`` resolved for ``device``: ``auto`` is bf16 on a GPU that supports it
    and fp32 everywhere else; on the CPU only fp32 runs."""
    import torch

    from nmt_cli.runtime import check_precision

    precision = cfg.precision
    if device.type != "cuda":
        if precision in ("auto", "fp32"):
            return "fp32"
        raise ConfigError(f"{precision} decoding runs on a GPU only; on the CPU use fp32 (or "
                          "auto), or nmt export --quantization int8 for fast CPU decoding",
                          "decode.precision")
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    check_precision(device, precision, "decode.precision")
    return precision


def load_models(paths: Sequence[Path], device: torch.device):
    """One model, or an ensemble of several that share one tokenizer; the first one's recipe."""
    from nmt_cli.checkpoint import load_checkpoint, model_from_checkpoint
    from nmt_cli.decoding.ensemble import Ensemble

    models, first_tok, recipe = [], None, None
    for path in paths:
        model, tok, rcp = model_from_checkpoint(load_checkpoint(path, mmap=True), path, device)
        if rcp.model.arch == "lm":
            raise CheckpointError(f"{path}: a language model (model.arch: lm), not a translation "
                                  "model; give it as --lm CKPT (shallow fusion) or score text "
                                  "with it: nmt score -m CKPT -i FILE")
        if first_tok is None:
            first_tok, recipe = tok, rcp
        elif (tok.src_bytes, tok.tgt_bytes) != (first_tok.src_bytes, first_tok.tgt_bytes):
            raise CheckpointError(f"{path}: its tokenizer differs from {paths[0]}'s; an ensemble "
                                  "needs models trained with the same tokenizer")
        models.append(model)
    model = models[0] if len(models) == 1 else Ensemble(models).eval()
    return model, first_tok, recipe
