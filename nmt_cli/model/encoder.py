"""The recurrent encoder: embeddings, then a (bi)directional GRU or LSTM over packed sequences."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt_cli.config import EncoderConfig
from nmt_cli.model.dropout import Dropout

RNN_CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


class RecurrentEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig, emb_size: int):
        super().__init__()
        self.cfg = cfg
        self.rnn = RNN_CELLS[cfg.cell](
            emb_size, cfg.hidden_size, num_layers=cfg.layers, batch_first=True,
            bidirectional=cfg.bidirectional, dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.dropout = Dropout(cfg.dropout)
        self.output_size = cfg.hidden_size * (2 if cfg.bidirectional else 1)

    def forward(self, embedded: Tensor, src_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """embedded (B, S, E), src_lengths (B,) -> outputs (B, S, O), final (B, O): the last
        layer's final states, both directions. Packing keeps padding out of the RNN's results."""
        packed = pack_padded_sequence(embedded, src_lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        outputs, hidden = self.rnn(packed)
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=embedded.size(1))
        if isinstance(hidden, tuple):  # LSTM: (h, c); the bridge starts from h
            hidden = hidden[0]
        return self.dropout(outputs), self._final(hidden)

    def _final(self, hidden: Tensor) -> Tensor:
        dirs = 2 if self.cfg.bidirectional else 1
        # hidden: (layers * dirs, B, H) -> last layer's directions -> (B, dirs * H)
        last = hidden.view(self.cfg.layers, dirs, hidden.size(1), hidden.size(2))[-1]
        return last.transpose(0, 1).reshape(hidden.size(1), dirs * hidden.size(2))
