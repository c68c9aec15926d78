"""ComiRec-SA, as THUDM/ComiRec src/model.py ``Model_ComiRec_SA`` (``add_pos=True``).

H = masked history embeddings + a learned position embedding [L, d] (Glorot, ``tf.get_variable`` default);
A = softmax over positions of W_2 tanh(W_1 H + b_1) + b_2 (d_a = 4d, K heads, padding set to -2^32 + 1);
interests = A @ (masked history embeddings WITHOUT the position term). Hard readout at training (ComiRec-SA
has no soft branch; ``readout_power = 1``, the softmax-weighted readout of ComiRec's capsule models, is an option).

Option ``init = "kaiming"`` (deviation, default "glorot" as TF): the PyTorch ports (ShiningCosmos/pytorch_ComiRec,
REMI) re-initialise every weight Kaiming-normal: the item table with std sqrt(2 / d), ~12x Glorot's, and the
[1, L, d] position embedding with fan_in L * d; biases stay zero (those ports' attention layers have none).
Option ``position_init_scale`` (deviation, default 1 = TF): scales the position table's initial draw; TF's
[1, L, d] Glorot gives std ~0.15, ten times the item table's ~0.015, so at the start the attention sees
mostly positions (0.1 puts both on the same scale; docs/models.md 3).
Option ``routing_reg`` (REMI, Xie et al. RecSys 2023; default 0 = off): lambda times REMI's routing regulariser
(:func:`mirec.nn.regularizers.routing_penalty`) added to the training loss.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from mirec.config import ComiRecSAConfig
from mirec.data.batching import Batch
from mirec.models.base import MultiInterestModel, TrainingOutput
from mirec.nn.init import kaiming_reinit
from mirec.nn.regularizers import routing_penalty
from mirec.nn.self_attentive import SelfAttentiveExtractor


class ComiRecSA(MultiInterestModel):
    name: ClassVar[str] = "comirec-sa"
    paper: ClassVar[str] = (
        "Yukuo Cen, Jianwei Zhang, Xu Zou, Chang Zhou, Hongxia Yang, Jie Tang. Controllable Multi-Interest "
        "Framework for Recommendation. KDD 2020 (ComiRec-SA; code THUDM/ComiRec)"
    )
    config_class = ComiRecSAConfig

    def __init__(self, config: ComiRecSAConfig, n_items: int):
        super().__init__(config, n_items)
        d = config.embedding_dim
        self.position_embedding: nn.Parameter | None = None
        if config.add_pos:
            self.position_embedding = nn.Parameter(torch.empty(config.maxlen, d))
            nn.init.xavier_uniform_(self.position_embedding)  # TF Glorot on [1, L, d]: fan_in L, fan_out d
        self.extractor = SelfAttentiveExtractor(d, config.num_interests, hidden=4 * d)
        if config.init == "kaiming":
            kaiming_reinit(self)
            if self.position_embedding is not None:  # the ports' parameter is [1, L, d]: fan_in L * d
                nn.init.kaiming_normal_(self.position_embedding.data.unsqueeze(0))
        if self.position_embedding is not None:  # after either initialisation, so the option applies to both
            self.position_embedding.data.mul_(config.position_init_scale)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.interests_and_attention(batch)[0]

    def training_output(self, batch: Batch) -> TrainingOutput:
        """The hard readout; with ``model.routing_reg`` REMI's routing regulariser as the auxiliary loss."""
        if self.config.routing_reg == 0:
            return super().training_output(batch)
        interests, attention = self.interests_and_attention(batch)
        penalty = routing_penalty(attention, self.config.embedding_dim)
        readout = self.readout(interests, self.output_embeddings(batch.targets))
        return TrainingOutput(readout, self.config.routing_reg * penalty, {"routing_penalty": penalty.detach()})

    def interests_and_attention(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Interests [B, K, d] and the attention over positions that made them [B, K, L]."""
        mask = batch.mask.to(self.item_embedding.weight.dtype)
        x = self.embed_items(batch.items) * mask.unsqueeze(-1)
        H = x
        if self.position_embedding is not None:
            L = x.shape[1]
            if L > self.position_embedding.shape[0]:
                raise ValueError(
                    f"ComiRec-SA was built for histories of at most maxlen={self.position_embedding.shape[0]} "
                    f"positions, got a batch of length {L}; set model.maxlen to the batch length"
                )
            H = x + self.position_embedding[:L]
        attention = self.extractor.attention(H, mask)
        return torch.matmul(attention, x), attention
