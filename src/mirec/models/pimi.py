"""PIMI (Chen et al., IJCAI 2021): periodicity (time-interval attention) + interactivity (star graph) +
ComiRec-SA multi-interest extraction. Faithful to the official TF code ChenGaoDe/PIMI_Rec @330017b
(``model.py`` class ``Model_PIMIRec``); see docs/models.md section 2.
"""

from __future__ import annotations

import torch

from mirec.config import PIMIConfig
from mirec.data.batching import Batch
from mirec.models.base import MultiInterestModel
from mirec.nn.init import glorot_embedding
from mirec.nn.self_attentive import SelfAttentiveExtractor
from mirec.nn.star_graph import PIMI_NEIGHBOURS, StarGraph
from mirec.nn.time_interval import TimeIntervalAttention, time_interval_matrix


class PIMI(MultiInterestModel):
    """Interests = A(h^(L)) @ x: attention from the star-graph output, applied to the raw masked item vectors."""

    name = "pimi"
    paper = (
        "Chen et al., Exploring Periodicity and Interactivity in Multi-Interest Framework for Sequential "
        "Recommendation, IJCAI 2021"
    )
    config_class = PIMIConfig

    def __init__(self, config: PIMIConfig, n_items: int):
        super().__init__(config, n_items)
        d = config.embedding_dim
        self.position_embedding = glorot_embedding(config.maxlen, d)  # learned absolute positions P
        self.time_attention = TimeIntervalAttention(d, config.time_span)
        self.star_graph = StarGraph(
            d,
            config.num_layers,
            config.num_heads,
            config.dropout,
            PIMI_NEIGHBOURS,
            config.mask_center,
            config.star_activation,
        )
        self.extractor = SelfAttentiveExtractor(d, config.num_interests, hidden=4 * d)

    def encode(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(h^(L) [B, L, d], masked item vectors x [B, L, d], central node s^(L) [B, d])."""
        items, mask = batch.items, batch.mask.to(self.item_embedding.weight.dtype)
        length = items.shape[1]
        if length > self.config.maxlen:
            raise ValueError(f"batch length {length} exceeds maxlen {self.config.maxlen} (position table size)")
        m = mask[:, :, None]
        x = self.embed_items(items) * m  # x_j * mu_j
        e = (x + self.position_embedding.weight[:length]) * m  # e_j = (x_j + P_j) mu_j (no time term)
        intervals = time_interval_matrix(batch.days, mask, self.config.time_span)
        p = self.time_attention(intervals, mask)  # p_i = sum_j alpha_ij tau_ij
        h0 = (x + self.position_embedding.weight[:length] + p) * m  # h^(0) = (x + P + p) mu
        center = h0.sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)  # s^(0): mean over valid items
        h, center = self.star_graph(h0, center, e, mask)
        return h, x, center

    def forward(self, batch: Batch) -> torch.Tensor:
        h, x, _ = self.encode(batch)
        return self.extractor(h, batch.mask, values=x)  # V_u = A(h^(3)) X (ComiRec-SA style)
