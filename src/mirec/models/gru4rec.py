"""GRU4Rec baseline, as THUDM/ComiRec src/model.py ``Model_GRU4REC``.

``tf.nn.dynamic_rnn(GRUCell(hidden_size), item_his_eb, sequence_length=sum(mask))``: the user vector is the
final state, i.e. the hidden state after the last valid item of the left-aligned history (zero for an empty
history). One interest (K = 1).

Deviation (documented): torch's ``nn.GRU`` applies the reset gate after the recurrent matmul
(n = tanh(W_in x + b_in + r * (W_hn h + b_hn))) while TF's ``GRUCell`` applies it before
(c = tanh(W_c [x, r * h] + b_c)); both are standard GRUs. The initialisation follows ``GRUCell``: Glorot-uniform
kernels over the concatenated [x, h] input (gates: (d_in + d) x 2d, candidate: (d_in + d) x d), gate
biases 1.0, candidate bias 0.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from mirec.config import GRU4RecConfig
from mirec.data.batching import Batch
from mirec.models.base import MultiInterestModel
from mirec.nn.dropout import Dropout
from mirec.nn.fastpath import use_cpu_fast_path
from mirec.nn.gru import packed_gru_last_states


def init_gru_like_tf(gru: nn.GRU) -> None:
    """TF1 ``GRUCell`` initialisation on a one-layer torch GRU (gate order in torch: reset, update, new)."""
    h, d_in = gru.hidden_size, gru.input_size
    gate_bound = math.sqrt(6.0 / ((d_in + h) + 2 * h))  # Glorot on the [(d_in + h), 2h] gates kernel
    cand_bound = math.sqrt(6.0 / ((d_in + h) + h))  # Glorot on the [(d_in + h), h] candidate kernel
    with torch.no_grad():
        for weight in (gru.weight_ih_l0, gru.weight_hh_l0):
            weight[: 2 * h].uniform_(-gate_bound, gate_bound)
            weight[2 * h :].uniform_(-cand_bound, cand_bound)
        gru.bias_ih_l0.zero_()
        gru.bias_ih_l0[: 2 * h].fill_(1.0)  # GRUCell gates bias initializer: constant 1.0
        gru.bias_hh_l0.zero_()


class GRU4Rec(MultiInterestModel):
    name: ClassVar[str] = "gru4rec"
    paper: ClassVar[str] = (
        "Balázs Hidasi, Alexandros Karatzoglou, Linas Baltrunas, Domonkos Tikk. Session-based Recommendations "
        "with Recurrent Neural Networks. ICLR 2016 (as re-implemented by ComiRec, Cen et al., KDD 2020, "
        "THUDM/ComiRec Model_GRU4REC)"
    )
    config_class = GRU4RecConfig

    def __init__(self, config: GRU4RecConfig, n_items: int):
        super().__init__(config, n_items)
        d = config.embedding_dim
        hidden = config.gru_hidden or d
        if hidden != d and not config.output_dense:
            raise ValueError(f"GRU4RecConfig: gru_hidden={hidden} != embedding_dim={d} needs output_dense = true")
        if config.gru_layers < 1:
            raise ValueError(f"GRU4RecConfig.gru_layers: expected >= 1, got {config.gru_layers}")
        self.gru = nn.GRU(d, hidden, num_layers=config.gru_layers, bias=config.gru_bias, batch_first=True)
        if config.gru_layers == 1 and config.gru_bias:
            init_gru_like_tf(self.gru)  # ComiRec: GRUCell(hidden_size), hidden_size = d
        else:  # REMI's _init_weights: Glorot-uniform on the first layer's two matrices only
            nn.init.xavier_uniform_(self.gru.weight_ih_l0)
            nn.init.xavier_uniform_(self.gru.weight_hh_l0)
        self.embedding_dropout = Dropout(config.embedding_dropout)
        self.dense = nn.Linear(hidden, d) if config.output_dense else None  # torch default init, as REMI

    @property
    def num_interests(self) -> int:
        return 1

    def last_states(self, x: torch.Tensor, length: torch.Tensor, packed: bool | None = None) -> torch.Tensor:
        """Top-layer hidden state after the last valid item of each left-aligned history, [B, hidden], from the
        masked history embeddings ``x`` (the input dropout applied here).

        ``packed`` (default: on CPU) runs the GRU on the valid steps only, through :func:`packed_gru_last_states`
        (dropout drawn for those rows only); otherwise ``nn.GRU`` over every position."""
        if packed is None:  # CPU: the recurrence over the valid steps only (histories are ~30% filled)
            packed = use_cpu_fast_path(x)
        if packed:
            sequences = pack_padded_sequence(x, length.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
            sequences = sequences._replace(data=self.embedding_dropout(sequences.data))
            return packed_gru_last_states(self.gru, sequences)
        states, _ = self.gru(self.embedding_dropout(x))  # [B, L, hidden]; states up to length-1 never see padding
        return states[torch.arange(len(length), device=states.device), (length - 1).clamp(min=0)]

    def forward(self, batch: Batch) -> torch.Tensor:
        mask = batch.mask.to(self.item_embedding.weight.dtype)
        x = self.embed_items(batch.items) * mask.unsqueeze(-1)  # dropout(e) * mask = dropout(e * mask)
        length = mask.sum(dim=1).long()
        last = self.last_states(x, length)
        if self.dense is not None:
            last = self.dense(last)
        last = last * (length > 0).unsqueeze(-1).to(last.dtype)  # dynamic_rnn: zero state for length 0
        return last.unsqueeze(1)  # [B, 1, d]
