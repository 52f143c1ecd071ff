"""The architectures' recipe sections (``model.encoder``, ``model.decoder``,
``model.transformer``, ``model.lm``), kept apart from ``config`` so that each stays small;
``nmt_cli.config`` re-exports them, and its ``ModelConfig`` says which arch owns which."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

from nmt_cli.errors import ConfigError
from nmt_cli.schema import number as _num


@dataclass(frozen=True)
class EncoderConfig:
    cell: Literal["gru", "lstm"] = "gru"
    hidden_size: int = _num(256, ge=1)
    layers: int = _num(1, ge=1, le=4)
    bidirectional: bool = True
    dropout: float = _num(0.2, ge=0.0, lt=1.0)


@dataclass(frozen=True)
class DecoderConfig:
    cell: Literal["gru", "lstm"] = "gru"
    hidden_size: int = _num(256, ge=1)
    layers: int = _num(1, ge=1, le=4)
    attention: Literal["bahdanau", "luong_dot", "luong_general"] = "bahdanau"
    input_feeding: bool = True
    init: Literal["bridge", "zeros"] = "bridge"
    dropout: float = _num(0.2, ge=0.0, lt=1.0)


@dataclass(frozen=True)
class TransformerConfig:
    """The Transformer (``model.arch: transformer``). Every option maps one to one onto
    CTranslate2's ``TransformerSpec``: ``norm`` is its ``pre_norm``, ``positions`` fills its
    position table, ``activation`` its ``activation``, ``scale_embeddings`` its
    ``multiply_by_sqrt_depth``; the embeddings are ``d_model`` wide."""

    d_model: int = _num(512, ge=8)
    ff_size: int = _num(2048, ge=1)
    heads: int = _num(8, ge=1)
    encoder_layers: int = _num(6, ge=1, le=24)
    decoder_layers: int = _num(6, ge=1, le=24)
    norm: Literal["pre", "post"] = "pre"
    positions: Literal["sinusoidal", "learned"] = "sinusoidal"
    activation: Literal["relu", "gelu"] = "relu"
    dropout: float = _num(0.1, ge=0.0, lt=1.0, doc="on embeddings and every residual branch")
    attention_dropout: float = _num(0.0, ge=0.0, lt=1.0, doc="on the attention weights")
    activation_dropout: float = _num(0.0, ge=0.0, lt=1.0, doc="inside the feed-forward block")
    scale_embeddings: bool = True  # multiply embeddings by sqrt(d_model) before adding positions
    max_positions: int = _num(1024, ge=1, doc="longest source or target, in subwords + EOS")

    def __post_init__(self) -> None:
        if self.d_model % self.heads:
            raise ConfigError(f"{self.heads} heads do not divide model.transformer.d_model "
                              f"({self.d_model}); choose heads that divide d_model",
                              "model.transformer.heads")


@dataclass(frozen=True)
class RnnLMConfig:
    """The recurrent language model (``model.lm.family: rnn``): embeddings, a stack of LSTM or GRU
    layers, the output layer (which ``model.tie_embeddings`` makes the embedding table's)."""

    cell: Literal["lstm", "gru"] = "lstm"
    emb_size: int = _num(512, ge=1)
    hidden_size: int = _num(512, ge=1)
    layers: int = _num(2, ge=1, le=8)
    dropout: float = _num(0.3, ge=0.0, lt=1.0, doc="on the embeddings, between layers and on "
                                                  "the last layer's output")


# Keys of ``model.lm`` that belong to one family, and their defaults when left out.
LM_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "rnn": {"rnn": RnnLMConfig()},
    "transformer": {"transformer": TransformerConfig()},
}


@dataclass(frozen=True)
class LMConfig:
    """A language model over the target language (``model.arch: lm``), trained on monolingual
    text: an RNN (``rnn``) or a decoder-only Transformer (``transformer``: the options of our
    Transformer's decoder; ``decoder_layers`` is the depth and an LM has no encoder)."""

    family: Literal["rnn", "transformer"] = "rnn"
    rnn: Optional[RnnLMConfig] = None  # rnn
    transformer: Optional[TransformerConfig] = None  # transformer

    def __post_init__(self) -> None:
        own = LM_FAMILY_DEFAULTS[self.family]
        for family, keys in LM_FAMILY_DEFAULTS.items():
            for name in keys:
                if name not in own and getattr(self, name) is not None:
                    raise ConfigError(f"belongs to model.lm.family '{family}', not "
                                      f"'{self.family}'; remove it (or set model.lm.family)",
                                      f"model.lm.{name}")
        for name, default in own.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        if self.transformer is not None and \
                self.transformer.encoder_layers != TransformerConfig.encoder_layers:
            raise ConfigError("a language model has no encoder; remove it (decoder_layers sets "
                              "the depth)", "model.lm.transformer.encoder_layers")
