"""GIMIRec: "Global Interaction Aware Multi-Interest Framework for Sequential Recommendation" (Zhang et al., 2021,
section 4). No public code: where the paper is silent the PIMI_Rec reference (Chen et al., IJCAI 2021) is
followed, and each such place says so. ``model.star_activation``: Eq. 17 and 19 have no activation after the
star-graph attention; PIMI_Rec's code has a ReLU, the default (docs/models.md 1).

Pipeline: E_global = A E_item (GCE, attached as ``model.global_context``, Eq. 1-7) -> recent time-interval
representation E_time (Eq. 8-10) -> E_hyb = E_time + E_global (Eq. 11-12) -> star-graph aggregation
(Eq. 13-19) -> self-attentive extraction applied to the aggregation output (Eq. 20-21). Training readout
against the target's E_global row (Eq. 22-23) and retrieval by max over interests (Eq. 24) come from the
base class (``output_embeddings`` -> ``embed_items`` -> global context) and the evaluator.
"""

from __future__ import annotations

import torch

from mirec.config import GIMIRecConfig
from mirec.data.batching import Batch
from mirec.models.base import MultiInterestModel, TrainingOutput
from mirec.nn.init import glorot_embedding
from mirec.nn.self_attentive import SelfAttentiveExtractor
from mirec.nn.star_graph import GIMIREC_NEIGHBOURS, StarGraph
from mirec.nn.time_interval import TimeIntervalAttention, time_interval_matrix


class GIMIRec(MultiInterestModel):
    """Interests = S2(E) @ E with E the star-graph output over E_hyb = E_time + E_global."""

    name = "gimirec"
    paper = "GIMIRec: Global Interaction Aware Multi-Interest Framework for Sequential Recommendation"
    config_class = GIMIRecConfig
    requires_global_context = True

    def __init__(self, config: GIMIRecConfig, n_items: int):
        super().__init__(config, n_items)
        d = config.embedding_dim
        self.time_attention = TimeIntervalAttention(d, config.time_span)  # W_T and W_1 of Eq. 9
        self.position_embedding = glorot_embedding(config.maxlen, d) if config.position_embedding else None
        self.star_graph = StarGraph(
            d,
            config.num_layers,
            config.num_heads,
            config.dropout,
            GIMIREC_NEIGHBOURS,
            config.mask_center,
            config.star_activation,
        )
        self.extractor = SelfAttentiveExtractor(d, config.num_interests, hidden=4 * d)  # W_2: 4d x d, W_3: K x 4d

    def encode(self, batch: Batch, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(aggregation output E [B, L, d], masked E_global rows [B, L, d], central node e_c^(L_layer) [B, d]).

        ``rows`` (optional): ``embed_items(batch.items)`` already computed by the caller.
        """
        if self.global_context is None:
            raise RuntimeError(
                "GIMIRec needs its global context: set model.global_context = "
                "mirec.graph.build_global_context(dataset, config.graph) (the trainer does this)"
            )
        items, mask = batch.items, batch.mask.to(self.item_embedding.weight.dtype)
        length = items.shape[1]
        if length > self.config.maxlen:
            raise ValueError(f"batch length {length} exceeds maxlen (L_rec) {self.config.maxlen}")
        m = mask[:, :, None]
        e_global = (
            self.embed_items(items) if rows is None else rows
        ) * m  # E^u_global rows (Eq. 11); padding zeroed as PIMI_Rec
        if self.config.time_scale != 0.0:
            intervals = time_interval_matrix(batch.days, mask, self.config.time_span)  # Eq. 8
            e_time = self.time_attention(intervals, mask)  # E_time = S1 T' (Eq. 9-10)
            hybrid = self.config.time_scale * e_time + e_global  # Eq. 12 (time_scale 1)
        else:
            hybrid = e_global
        if self.position_embedding is not None:
            hybrid = hybrid + self.position_embedding.weight[:length]
        hybrid = hybrid * m
        # Eq. 13 divides by L_rec; padded rows are zero, so as PIMI_Rec we average over the real items.
        center = hybrid.sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        # Eq. 14-19: q^(0) = E_hyb, neighbours [q_{i-1}; e_c; q_i; e_i] with e_i the global-context row.
        aggregated, center = self.star_graph(hybrid, center, e_global, mask)
        return aggregated, e_global, center

    def extract(self, batch: Batch, aggregated: torch.Tensor, e_global: torch.Tensor) -> torch.Tensor:
        """S2 = softmax(W3 tanh(W2 E^T)) (Eq. 20); interests S2 E (Eq. 21) or S2 E_global (``interest_values``)."""
        values = e_global if self.config.interest_values == "embedding" else None
        return self.extractor(aggregated, batch.mask, values=values)

    def forward(self, batch: Batch) -> torch.Tensor:
        aggregated, e_global, _ = self.encode(batch)
        return self.extract(batch, aggregated, e_global)

    def training_output(self, batch: Batch) -> TrainingOutput:
        """Base-class hard readout (Eq. 22-23), with ONE global-context lookup for history and target rows."""
        assert batch.targets is not None, "training batches carry targets"
        B, L = batch.items.shape
        rows = self.embed_items(torch.cat([batch.items.reshape(-1), batch.targets.reshape(-1)]))
        aggregated, e_global, _ = self.encode(batch, rows[: B * L].view(B, L, -1))
        interests = self.extract(batch, aggregated, e_global)
        return TrainingOutput(self.readout(interests, rows[B * L :]))
