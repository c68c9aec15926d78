"""The model interface every mirec model implements (plain nn.Module, no training loop, no device logic).

A model maps a :class:`~mirec.data.batching.Batch` to interest vectors ``[B, K, d]`` and exposes the item
vectors it is scored against (``output_embeddings``); retrieval scores an item by the max over interests.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from mirec.config import ModelConfig
from mirec.data.batching import Batch
from mirec.nn.capsule import label_aware_readout
from mirec.nn.embedding import RowGradEmbedding
from mirec.nn.init import glorot_embedding
from mirec.nn.item_features import ItemFeatureEncoder


class TrainingOutput(NamedTuple):
    """What a model gives the trainer for one training batch."""

    user_vectors: torch.Tensor  # [B, d], scored against the targets by the configured softmax loss
    aux_loss: torch.Tensor | None = None  # added to that loss (GemiRec's generator and dictionary objectives)
    # named detached 0-d tensors the trainer logs as means over each log interval (no device sync per step)
    terms: Mapping[str, torch.Tensor] = MappingProxyType({})
    # [B, d] scored by the same loss against a detached item table: trains only the modules that made them
    # (GemiRec's generated interests beside a base with item_table_gradient = "base")
    side_user_vectors: torch.Tensor | None = None
    # [B'] targets of user_vectors when a model scores other rows than one per sequence (SASRec: every position)
    targets: torch.Tensor | None = None


class MultiInterestModel(nn.Module):
    """Base class: item table, optional global context, hard (argmax) label-aware readout."""

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    config_class = ModelConfig
    # True for models built around the global context (GIMIRec): the trainer always attaches one.
    requires_global_context: ClassVar[bool] = False
    # True where a training step may leave parameters without a gradient (DDP must then look for them)
    may_skip_parameters: ClassVar[bool] = False

    def __init__(self, config: ModelConfig, n_items: int):
        super().__init__()
        self.config = config
        self.n_items = n_items  # items 1..n_items have an id row (the items the model trains on)
        self.item_embedding = glorot_embedding(n_items + 1, config.embedding_dim)
        # Set by mirec.graph when config.global_context: maps (ids, E_item) -> rows of A E_item.
        self.global_context: nn.Module | None = None
        # Set by mirec.runs.build_model when config.item_features: id + side features, pooled (MIND 3.1).
        self.feature_encoder: ItemFeatureEncoder | None = None

    @property
    def num_interests(self) -> int:
        return self.config.num_interests

    @property
    def n_catalogue(self) -> int:
        """Items 1..n_catalogue can be scored: the id rows, and with item features every item that has them."""
        return self.feature_encoder.n_items if self.feature_encoder is not None else self.n_items

    def item_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """E_item rows: the id embedding, or with item features the pooled id + feature vectors."""
        if self.feature_encoder is not None:
            return self.feature_encoder(ids, self.item_embedding)
        return self.item_embedding(ids)

    def embed_items(self, ids: torch.Tensor) -> torch.Tensor:
        """Input item vectors: E_item rows, or E_global = A E_item rows with a global context (GIMIRec Eq. 7);
        items beyond the graph (reached through features only) keep their E_item rows."""
        if self.global_context is None:
            return self.item_rows(ids)
        table = self.item_embedding.weight
        if self.feature_encoder is not None:
            table = self.item_rows(torch.arange(self.n_items + 1, device=ids.device))
        if self.n_catalogue == self.n_items:
            return self.global_context(ids, table)
        known = ids <= self.n_items
        inside = self.global_context(torch.where(known, ids, 0), table)
        return torch.where(known.unsqueeze(-1), inside, self.item_rows(ids))

    def output_embeddings(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """The item vectors scored against (softmax weights, retrieval index); the whole catalogue when ids is
        None."""
        if ids is None:
            ids = torch.arange(self.n_catalogue + 1, device=self.item_embedding.weight.device)
        return self.embed_items(ids)

    def item_tables(self) -> list[nn.Embedding]:
        """The tables with one row per item id: the input table, and a model's own output table where it has one
        (warm starts remap each of them by original item id)."""
        return [self.item_embedding]

    def keep_item_grad_buffer(self) -> list[nn.Parameter]:
        """CPU fast path: the item tables' training lookups add their row gradients into one dense ``.grad`` kept
        across steps (:class:`~mirec.nn.embedding.RowGradEmbedding`, one ``index_add_`` per lookup); returns the
        kept parameters. Adam still sees a dense gradient with zero rows for the unused items."""
        kept = []
        for embedding in self.item_tables():
            if isinstance(embedding, RowGradEmbedding):
                embedding.accumulate_rows = True
                embedding.weight.grad = torch.zeros_like(embedding.weight)
                kept.append(embedding.weight)
        return kept

    def interest_groups(self) -> dict[str, slice]:
        """The served interests by kind (:mod:`mirec.eval.merge`): one group here; a model serving interests
        extracted from the history beside generated ones (GemiRec over a base) names ``extracted`` and
        ``generated``, and list shares and collapse diagnostics read them."""
        return {"interests": slice(0, self.num_interests)}

    def forward(self, batch: Batch) -> torch.Tensor:  # pragma: no cover - abstract
        """Return the interests [B, K, d]."""
        raise NotImplementedError

    def training_output(self, batch: Batch) -> TrainingOutput:
        """User vectors [B, d] scored against the targets at training (with an auxiliary loss and named terms
        to log where a model has them).

        Default: interests -> hard readout against the target's output vector. Models with extra
        objectives (GemiRec) or teacher forcing override this.
        """
        assert batch.targets is not None, "training batches carry targets"
        interests = self(batch)
        return TrainingOutput(self.readout(interests, self.output_embeddings(batch.targets)))

    def diagnostics(self, batch: Batch, targets: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Model-specific evaluation diagnostics: per-user values [B] (NaN = undefined for that user), averaged by
        the evaluator into ``result["diagnostics"]`` (e.g. GemiRec's generator hit rate). None by default."""
        return {}

    def on_step_end(self, step: int) -> None:
        """Hook called by the trainer after each optimiser step (e.g. GemiRec's dictionary maintenance)."""

    def readout(self, interests: torch.Tensor, target_vectors: torch.Tensor) -> torch.Tensor:
        """Label-aware attention against the target's output vector: the hard argmax (ComiRec) unless the
        config's ``readout_power`` p is finite (softmax of pow(scores, p); ComiRec's hard_readout=False: p = 1)."""
        if interests.shape[1] == 1:
            return interests[:, 0]
        return label_aware_readout(interests, target_vectors, self.config.readout_power)
