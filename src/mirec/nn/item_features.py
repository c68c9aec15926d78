"""Item vectors from an id embedding and side features, pooled as MIND does (Li et al. 2019, section 3.1: the
embeddings of an item's id and its categorical ids, brand, shop, ..., "are further passed through an average
pooling layer to form the label item embedding").

Each feature gives one part: a categorical or multi-valued feature the mean of its values' embeddings (an
EmbeddingBag; value 0 is a learned "missing" row), a dense vector its linear projection. The item vector is the
mean of its parts, the id part counted only for items 1..n_id_items (the others have no trained id row) and only
with ``use_id``; in training, ``id_dropout`` drops each lookup's id part with that probability (DropoutNet,
Volkovs et al. 2017: items never trained on are scored by features alone, so the model must learn to score such
vectors against the warm ones). Both sides (history inputs and scored items) read the same vectors, as MIND and
ComiRec share one item table.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mirec.data.features import ItemFeatures


class ItemFeatureEncoder(nn.Module):
    """The pooled item vectors of catalogue items 0..n_items; feature tables are buffers (not saved in the
    weights: a prepared dataset or a bundle carries them), encoder weights are parameters."""

    def __init__(self, features: ItemFeatures, dim: int, n_id_items: int, use_id: bool = True, id_dropout: float = 0.0):
        super().__init__()
        self.id_dropout = id_dropout
        if not features.features:
            raise ValueError("ItemFeatureEncoder needs at least one feature")
        self.n_items, self.n_id_items, self.use_id, self.dim = features.n_items, n_id_items, use_id, dim
        self.names = features.names
        self.tables = nn.ModuleDict()
        for feature in features.features:
            name = feature.spec.name
            if feature.vectors is not None:
                self.tables[name] = nn.Linear(feature.dim, dim, bias=False)
                self.register_buffer(f"vectors_{name}", torch.from_numpy(np.array(feature.vectors)), persistent=False)
            else:
                bag = nn.EmbeddingBag(feature.dim + 1, dim, mode="mean")
                nn.init.xavier_uniform_(bag.weight)  # as the id table (TF's get_variable default)
                self.tables[name] = bag
                self.register_buffer(f"indptr_{name}", torch.from_numpy(np.array(feature.indptr)), persistent=False)
                self.register_buffer(f"values_{name}", torch.from_numpy(np.array(feature.values)), persistent=False)

    def feature_part(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        """[N, dim] the ``name`` part of the flat ids ``ids``."""
        table = self.tables[name]
        if isinstance(table, nn.Linear):
            return table(getattr(self, f"vectors_{name}")[ids])
        indptr, values = getattr(self, f"indptr_{name}"), getattr(self, f"values_{name}")
        starts = indptr[ids]
        lengths = indptr[ids + 1] - starts
        offsets = torch.cumsum(lengths, 0) - lengths
        take = torch.repeat_interleave(starts - offsets, lengths) + torch.arange(int(lengths.sum()), device=ids.device)
        return table(values[take], offsets)

    def forward(self, ids: torch.Tensor, id_table: nn.Embedding) -> torch.Tensor:
        """[*ids.shape, dim]: the mean of each item's parts."""
        flat = ids.reshape(-1)
        total = sum(self.feature_part(name, flat) for name in self.names)
        count = torch.full((len(flat), 1), float(len(self.names)), device=flat.device)
        if self.use_id:
            has_id = (flat <= self.n_id_items).unsqueeze(1)
            if self.training and self.id_dropout > 0:  # DropoutNet: teach the model features-only vectors
                has_id = has_id & (torch.rand(has_id.shape, device=flat.device) >= self.id_dropout)
            total = total + id_table(torch.where(has_id[:, 0], flat, 0)) * has_id
            count = count + has_id
        return (total / count).view(*ids.shape, self.dim)
