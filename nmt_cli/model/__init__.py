"""Sequence-to-sequence models. ``build_model(cfg, ...)`` is the one entry point."""

from nmt_cli.model.decoder import DecoderState, Memory
from nmt_cli.model.seq2seq import Seq2Seq, build_model, count_parameters

__all__ = ["build_model", "Seq2Seq", "DecoderState", "Memory", "count_parameters"]
