"""ComiRec-DR, as THUDM/ComiRec src/model.py ``Model_ComiRec_DR`` (``CapsuleNetwork``, ``bilinear_type=2``).

Masked history embeddings -> a separate bilinear map W_ij per (position i, interest j) (one [L, K*d, d]
parameter, random_normal(0, 1) init) -> 3 routing iterations from zero logits (softmax over interests,
padded positions zeroed after the softmax, stop-gradient on the first two iterations' predictions) ->
squash. No ReLU projection (``relu_layer=False``); hard readout at training. The reference trains it with
lr 5e-3 (ComiRec README).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from mirec.config import ComiRecDRConfig
from mirec.data.batching import Batch
from mirec.models.base import MultiInterestModel
from mirec.nn.capsule import CapsuleRouting, PerPositionBilinear
from mirec.nn.self_attentive import tf_dense


class ComiRecDR(MultiInterestModel):
    name: ClassVar[str] = "comirec-dr"
    paper: ClassVar[str] = (
        "Yukuo Cen, Jianwei Zhang, Xu Zou, Chang Zhou, Hongxia Yang, Jie Tang. Controllable Multi-Interest "
        "Framework for Recommendation. KDD 2020 (ComiRec-DR; code THUDM/ComiRec)"
    )
    config_class = ComiRecDRConfig

    def __init__(self, config: ComiRecDRConfig, n_items: int):
        super().__init__(config, n_items)
        d, K = config.embedding_dim, config.num_interests
        self.bilinear = PerPositionBilinear(d, K, config.maxlen)
        self.routing = CapsuleRouting(config.routing_iterations, config.stop_gradient)
        self.proj = tf_dense(d, d) if config.relu_layer else None

    def forward(self, batch: Batch) -> torch.Tensor:
        mask = batch.mask.to(self.item_embedding.weight.dtype)
        x = self.embed_items(batch.items) * mask.unsqueeze(-1)
        capsules = self.routing(self.bilinear(x), mask)  # b_ij = 0 at start (bilinear_type > 0)
        if self.proj is not None:
            capsules = torch.relu(self.proj(capsules))
        return capsules
