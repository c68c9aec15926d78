"""YouTube DNN baseline, as THUDM/ComiRec src/model.py ``Model_DNN``.

User vector = dense(masked mean of the history item embeddings): ``reduce_sum(item_his_eb, 1) /
(reduce_sum(mask, 1) + 1e-9)`` then ``tf.layers.dense(hidden_size, activation=None)`` (Glorot kernel, zero
bias, no activation). One interest (K = 1).

Option ``init = "kaiming"`` (deviation from the TF reference, default "glorot"): REMI's DNN (Tokkiu/REMI
src/DNN.py) re-initialises every weight, the item
table included,
Kaiming-normal (std sqrt(2 / d) for the table: item vectors start ~12x longer than Glorot's) and its dense
layer has no bias (``dense_bias = false``).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from mirec.config import DNNConfig
from mirec.data.batching import Batch
from mirec.models.base import MultiInterestModel
from mirec.nn.init import kaiming_reinit
from mirec.nn.self_attentive import tf_dense


class YouTubeDNN(MultiInterestModel):
    name: ClassVar[str] = "dnn"
    paper: ClassVar[str] = (
        "Paul Covington, Jay Adams, Emre Sargin. Deep Neural Networks for YouTube Recommendations. "
        "RecSys 2016 (as re-implemented by ComiRec, Cen et al., KDD 2020, THUDM/ComiRec Model_DNN)"
    )
    config_class = DNNConfig

    def __init__(self, config: DNNConfig, n_items: int):
        super().__init__(config, n_items)
        d = config.embedding_dim
        self.dense = tf_dense(d, d, bias=config.dense_bias)  # tf.layers.dense(hidden_size, activation=None)
        if config.init == "kaiming":  # REMI BasicModel.reset_parameters: fan_in of [n, d] tables is d
            kaiming_reinit(self)

    @property
    def num_interests(self) -> int:
        return 1

    def forward(self, batch: Batch) -> torch.Tensor:
        mask = batch.mask.to(self.item_embedding.weight.dtype)
        x = self.embed_items(batch.items) * mask.unsqueeze(-1)  # masked history embeddings
        mean = x.sum(dim=1) / (mask.sum(dim=1, keepdim=True) + 1e-9)  # ComiRec Model_DNN masked mean
        return self.dense(mean).unsqueeze(1)  # [B, 1, d]
