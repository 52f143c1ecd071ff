"""Sequence-to-sequence models. ``build_model(cfg, ...)`` is the one entry point; ``model.arch``
picks the class. Every model satisfies ``nmt_cli.model.contract.DecodingModel``."""

from torch import nn

from nmt_cli.config import ModelConfig
from nmt_cli.model.contract import DecodingModel, Selectable, TrainableModel
from nmt_cli.model.decoder import DecoderState, Memory
from nmt_cli.model.rnn import Seq2Seq, count_parameters
from nmt_cli.model.transformer import Transformer, TransformerMemory, TransformerState

ARCHS: dict[str, type[nn.Module]] = {"rnn": Seq2Seq, "transformer": Transformer}


def build_model(cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int,
                joint_vocab: bool = False) -> nn.Module:
    """The model of ``cfg.arch``, freshly initialised."""
    return ARCHS[cfg.arch](cfg, src_vocab_size, tgt_vocab_size, joint_vocab)


__all__ = ["build_model", "ARCHS", "Seq2Seq", "Transformer", "DecoderState", "Memory",
           "TransformerMemory", "TransformerState", "DecodingModel", "Selectable",
           "TrainableModel", "count_parameters"]
