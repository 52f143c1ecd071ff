"""Sequence-to-sequence models and language models. ``build_model(cfg, ...)`` is the one entry
point; ``model.arch`` picks the class. Every translation model satisfies
``nmt_cli.model.contract.DecodingModel``, every language model (``arch: lm``) ``LanguageModel``."""

from typing import Callable

from torch import nn

from nmt_cli.config import ModelConfig
from nmt_cli.model.contract import DecodingModel, LanguageModel, Selectable, TrainableModel
from nmt_cli.model.decoder import DecoderState, Memory
from nmt_cli.model.lm import RnnLM, TransformerLM, build_lm
from nmt_cli.model.rnn import Seq2Seq, count_parameters
from nmt_cli.model.transformer import Transformer, TransformerMemory, TransformerState

ARCHS: dict[str, Callable[..., nn.Module]] = {"rnn": Seq2Seq, "transformer": Transformer,
                                              "lm": build_lm}


def build_model(cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int,
                joint_vocab: bool = False) -> nn.Module:
    """The model of ``cfg.arch``, freshly initialised."""
    return ARCHS[cfg.arch](cfg, src_vocab_size, tgt_vocab_size, joint_vocab)


__all__ = ["build_model", "ARCHS", "Seq2Seq", "Transformer", "DecoderState", "Memory",
           "TransformerMemory", "TransformerState", "DecodingModel", "Selectable",
           "TrainableModel", "LanguageModel", "RnnLM", "TransformerLM", "count_parameters"]
