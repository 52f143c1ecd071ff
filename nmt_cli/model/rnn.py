"""The recurrent encoder-decoder with attention (``model.arch: rnn``)."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from nmt_cli.config import ModelConfig
from nmt_cli.errors import ConfigError
from nmt_cli.ids import PAD_ID
from nmt_cli.model.decoder import DecoderState, Memory, RecurrentDecoder
from nmt_cli.model.encoder import RecurrentEncoder
from nmt_cli.model.dropout import Dropout


class Seq2Seq(nn.Module):
    def __init__(self, cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int,
                 joint_vocab: bool = False):
        super().__init__()
        self.cfg = cfg
        self.src_vocab_size, self.tgt_vocab_size = src_vocab_size, tgt_vocab_size
        self.src_embed = nn.Embedding(src_vocab_size, cfg.emb_size, padding_idx=PAD_ID)
        if cfg.share_embeddings:
            if not joint_vocab or src_vocab_size != tgt_vocab_size:
                raise ConfigError("needs one joint vocabulary; set tokenizer.joint: true or turn "
                                  "this off", "model.share_embeddings")
            self.tgt_embed = self.src_embed
        else:
            self.tgt_embed = nn.Embedding(tgt_vocab_size, cfg.emb_size, padding_idx=PAD_ID)
        self.emb_dropout = Dropout(cfg.emb_dropout)
        self.encoder = RecurrentEncoder(cfg.encoder, cfg.emb_size)
        self.decoder = RecurrentDecoder(cfg.decoder, cfg.emb_size, self.encoder.output_size,
                                        self.encoder.output_size)
        self.output_layer = nn.Linear(self.decoder.output_size, tgt_vocab_size, bias=False)
        self.reset_parameters()
        if cfg.tie_embeddings:
            if cfg.decoder.hidden_size != cfg.emb_size:
                raise ConfigError(f"needs model.decoder.hidden_size ({cfg.decoder.hidden_size}) "
                                  f"equal to model.emb_size ({cfg.emb_size})", "model.tie_embeddings")
            self.output_layer.weight = self.tgt_embed.weight

    def reset_parameters(self) -> None:
        """Xavier for feed-forward weights, orthogonal recurrent weights, LSTM forget bias 1."""
        for name, param in self.named_parameters():
            if "embed" in name:
                nn.init.normal_(param, mean=0.0, std=self.cfg.emb_size ** -0.5)
                with torch.no_grad():
                    param[PAD_ID].zero_()
            elif "weight_hh" in name:
                hidden = param.size(1)
                for i in range(0, param.size(0), hidden):  # one orthogonal block per gate
                    nn.init.orthogonal_(param.data[i:i + hidden])
            elif "bias" in name:
                nn.init.zeros_(param)
            elif param.dim() > 1:
                nn.init.xavier_uniform_(param)
        for rnn in (self.encoder.rnn, self.decoder.rnn):
            if isinstance(rnn, nn.LSTM):
                for name, param in rnn.named_parameters():
                    if name.startswith("bias_ih"):  # gates are ordered input, forget, cell, output
                        h = param.size(0) // 4
                        with torch.no_grad():
                            param[h:2 * h].fill_(1.0)

    def encode(self, src: Tensor, src_lengths: Tensor) -> tuple[Memory, DecoderState]:
        """src (B, S) padded ids, src_lengths (B,) -> what the decoder attends to, its first state."""
        embedded = self.emb_dropout(self.src_embed(src))
        outputs, final = self.encoder(embedded, src_lengths)
        return self.decoder.memory(outputs, src != PAD_ID), self.decoder.init_state(final)

    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: logits (B, T, V). Under CPU autocast only the output layer runs in
        bf16: the RNNs' many small products are slower in bf16 than in fp32 (docs/results.md)."""
        recurrent = (torch.autocast("cpu", enabled=False)
                     if src.device.type == "cpu" and _cpu_autocast_on()
                     else contextlib.nullcontext())
        with recurrent:
            memory, state = self.encode(src, src_lengths)
            vectors, _ = self.decoder(self.emb_dropout(self.tgt_embed(tgt_in)), state, memory)
        return self.output_layer(vectors)

    def step(self, prev_tokens: Tensor, state: DecoderState, memory: Memory,
             need_attention: bool = False) -> tuple[Tensor, DecoderState, Tensor]:
        """prev_tokens (B,) -> log-probabilities (B, V), new state, attention (B, S), which comes
        free with the RNN whatever ``need_attention`` says."""
        vector, state, weights = self.decoder.step(self.tgt_embed(prev_tokens), state, memory)
        logits = self.output_layer(vector)
        return torch.log_softmax(logits, dim=-1, dtype=torch.float32), state, weights


def _cpu_autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch before 2.4 takes no device here
        return torch.is_autocast_cpu_enabled()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
