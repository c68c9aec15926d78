"""SASRec: Wang-Cheng Kang, Julian McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018; the block
structure of pmixer/SASRec.pytorch ``model.py`` (the authors' TF code ported), the single-interest control.

E = item embeddings * sqrt(d) (``model.scale_items``) + learned position embeddings, dropout; then per block
(Kang section III-B/C): Q = LayerNorm(x); x = Q + MHA(Q, x, x) with a causal mask; x = LayerNorm(x);
x = x + FFN(x) (two position-wise linear layers, ReLU, dropout); padding rows zeroed after each block; a final
LayerNorm. The output at a position is the user state after reading the items up to it; the item embeddings are
shared as output vectors, or with ``model.output_table = "separate"`` a second item table scores the states
(gSASRec-pytorch ``gsasrec.py``: ``output_embedding`` when ``reuse_item_embeddings`` is false).
``model.item_dropout``: RecTools' ``IdEmbeddingsItemNet`` drops elements of the whole item table once per training
step (``get_all_embeddings``) and both reads the history and scores the items from that one dropped table; so does
this one (before the global context when on; the separate output table is not dropped).

Training (``model.all_positions``, the paper's objective): every position of the window predicts the item after
it (the last one the batch's target), one loss term per real position; retrieval reads the last real position
(K = 1). Histories are left-aligned here, so positions are counted from the most recent item: position 0 is
always the latest item, as in SASRec's right-aligned windows.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mirec.config import SASRecConfig
from mirec.data.batching import Batch
from mirec.models.base import MultiInterestModel, TrainingOutput
from mirec.nn.dropout import Dropout
from mirec.nn.dropout import dropout as table_dropout  # the blocks' `dropout` is their rate
from mirec.nn.init import glorot_embedding


class SASRecBlock(nn.Module):
    """One self-attention block (SASRec.pytorch: attention layernorm, MHA, forward layernorm, point-wise FFN)."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.attention_norm = nn.LayerNorm(d, eps=1e-8)
        self.attention = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.forward_norm = nn.LayerNorm(d, eps=1e-8)
        self.feed_forward = nn.Sequential(
            nn.Linear(d, d), Dropout(dropout), nn.ReLU(), nn.Linear(d, d), Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, causal: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        q = self.attention_norm(x)
        attended, _ = self.attention(q, x, x, attn_mask=causal, need_weights=False)
        x = self.forward_norm(q + attended)
        return (x + self.feed_forward(x)) * keep


class SASRec(MultiInterestModel):
    name: ClassVar[str] = "sasrec"
    paper: ClassVar[str] = (
        "Wang-Cheng Kang, Julian McAuley. Self-Attentive Sequential Recommendation. ICDM 2018 "
        "(blocks as pmixer/SASRec.pytorch)"
    )
    config_class = SASRecConfig

    def __init__(self, config: SASRecConfig, n_items: int):
        super().__init__(config, n_items)
        d = config.embedding_dim
        self.position_embedding = nn.Embedding(config.maxlen, d)
        self.dropout = Dropout(config.dropout)
        self.blocks = nn.ModuleList(SASRecBlock(d, config.num_heads, config.dropout) for _ in range(config.num_blocks))
        self.last_norm = nn.LayerNorm(d, eps=1e-8)
        self._step_item_table: torch.Tensor | None = None  # the item table under this step's model.item_dropout
        # the scoring table (initialised as the input table below), or None: the input table is shared
        separate = config.output_table == "separate"
        self.output_item_embedding = glorot_embedding(n_items + 1, d) if separate else None
        if config.init == "xavier":  # SASRec.pytorch: xavier_normal_ on every parameter it accepts (2+ dims)
            for weight in self.parameters():
                if weight.dim() >= 2:
                    nn.init.xavier_normal_(weight)
        for table in self.item_tables():
            if config.init == "torch":  # RecTools: nn.Embedding's N(0, 1), padding row zero
                nn.init.normal_(table.weight)
            if config.init != "mixed":
                with torch.no_grad():
                    table.weight[0].zero_()  # padding row, as SASRec.pytorch zeroes it (masked everywhere)

    def item_tables(self) -> list[nn.Embedding]:
        return super().item_tables() + ([self.output_item_embedding] if self.output_item_embedding is not None else [])

    def output_embeddings(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """The shared item vectors (with the global context when on), or the separate output table's rows."""
        if self.output_item_embedding is None:
            return super().output_embeddings(ids)
        if ids is None:
            ids = torch.arange(self.n_items + 1, device=self.output_item_embedding.weight.device)
        return self.output_item_embedding(ids)

    def embed_items(self, ids: torch.Tensor) -> torch.Tensor:
        table = self._step_item_table
        if not self.training or table is None:
            return super().embed_items(ids)
        if self.global_context is not None:  # a new table every step: never the context's cached product
            return self.global_context.rows(ids, table)
        return F.embedding(ids, table)

    def on_step_end(self, step: int) -> None:
        self._step_item_table = None  # drawn again by the next training step

    def sequence_states(self, batch: Batch) -> torch.Tensor:
        """The state after each position [B, L, d] (zeros at padding)."""
        items = batch.items
        length = items.shape[1]
        if length > self.position_embedding.num_embeddings:
            raise ValueError(f"SASRec was built for maxlen={self.position_embedding.num_embeddings}, got {length}")
        keep = batch.mask.to(self.item_embedding.weight.dtype).unsqueeze(-1)
        counts = batch.mask.sum(1, keepdim=True).long()
        recency = (counts - 1 - torch.arange(length, device=items.device)).clamp(min=0)  # 0 = the latest item
        scale = self.config.embedding_dim**0.5 if self.config.scale_items else 1.0
        x = self.embed_items(items) * scale + self.position_embedding(recency)
        x = self.dropout(x) * keep
        # left-aligned: a real position only sees earlier real ones; padding rows are dropped below
        causal = torch.ones(length, length, dtype=torch.bool, device=items.device).triu(1)
        for block in self.blocks:
            x = block(x, causal, keep)
        return self.last_norm(x) * keep

    def forward(self, batch: Batch) -> torch.Tensor:
        states = self.sequence_states(batch)
        last = (batch.mask.sum(1).long() - 1).clamp(min=0)
        return states[torch.arange(len(states), device=states.device), last].unsqueeze(1)  # [B, 1, d]

    def training_output(self, batch: Batch) -> TrainingOutput:
        """Every real position scored against its next item (the last against the batch's target)."""
        assert batch.targets is not None, "training batches carry targets"
        if self.training and self.config.item_dropout > 0:  # one dropped table for the step: inputs and outputs agree
            self._step_item_table = table_dropout(self.item_embedding.weight, self.config.item_dropout)
        if not self.config.all_positions:
            return TrainingOutput(self(batch)[:, 0])
        states = self.sequence_states(batch)
        real = batch.mask > 0
        following = torch.cat([batch.items[:, 1:], torch.zeros_like(batch.items[:, :1])], dim=1)
        last = real.sum(1) - 1
        rows = torch.arange(len(following), device=following.device)
        following[rows, last] = batch.targets
        return TrainingOutput(states[real], targets=following[real])
