"""MIND baseline as ComiRec implements it (THUDM/ComiRec src/model.py ``Model_MIND``, ``CapsuleNetwork``
with ``bilinear_type=0``; MIND: Li et al., CIKM 2019, Algorithm 1).

Masked history embeddings -> one shared dense map S (d -> d, tiled over the K capsules) -> 3 routing
iterations from logits b ~ TruncatedNormal(0, 1) (truncated at 2 std, as ``tf.truncated_normal``), drawn
afresh at every forward pass, in training and in evaluation alike (the TF graph op is re-sampled at every
``sess.run``) -> squash -> optional dense ReLU projection (``relu_layer``; ComiRec enables it for Book only).
Training readout: hard argmax (MIND's p -> inf) unless ``readout_power`` is finite.

Option ``dynamic_interests`` (MIND Eq. 9, not in ComiRec): K'_u = max(1, min(K, floor(log2 n_u))) with n_u the
number of valid history items in the window (the floor is our choice; the paper leaves the rounding open).
Interests k >= K'_u take part in no routing softmax, and their output slots repeat interest 0. So max-over-
interests scoring, merging of the K per-interest top-N lists (duplicates removed) and the hard readout
(argmax returns the first of tied slots) all behave exactly as with K'_u interests; a zero vector instead
would score 0 for every item and could outrank the real interests. ``active_interests(mask)`` gives the slots.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from mirec.config import MINDConfig
from mirec.data.batching import Batch
from mirec.models.base import MultiInterestModel
from mirec.nn.capsule import CapsuleRouting, SharedBilinear
from mirec.nn.fastpath import use_cpu_fast_path
from mirec.nn.init import truncated_normal_
from mirec.nn.rows import gather_rows, real_rows, scatter_rows
from mirec.nn.self_attentive import tf_dense


class MIND(MultiInterestModel):
    name: ClassVar[str] = "mind"
    paper: ClassVar[str] = (
        "Chao Li, Zhiyuan Liu, Mengmeng Wu, Yuchi Xu, Pipei Huang, Huan Zhao, Guoliang Kang, Qiwei Chen, Wei Li, "
        "Dik Lun Lee. Multi-Interest Network with Dynamic Routing for Recommendation at Tmall. CIKM 2019 (as "
        "re-implemented by ComiRec, Cen et al., KDD 2020, THUDM/ComiRec Model_MIND)"
    )
    config_class = MINDConfig

    def __init__(self, config: MINDConfig, n_items: int):
        super().__init__(config, n_items)
        if config.routing_init_std < 0:
            raise ValueError(f"model.routing_init_std must be >= 0, got {config.routing_init_std}")
        d, K = config.embedding_dim, config.num_interests
        self.bilinear = SharedBilinear(d, K)
        self.routing = CapsuleRouting(config.routing_iterations, config.stop_gradient)
        self.proj = tf_dense(d, d) if config.relu_layer else None  # tf.layers.dense(dim, relu, name='proj')

    def active_interests(self, mask: torch.Tensor) -> torch.Tensor:
        """[B, K] bool: the interest slots in use (all of them unless ``dynamic_interests``; MIND Eq. 9)."""
        K = self.config.num_interests
        if not self.config.dynamic_interests:
            return torch.ones(mask.shape[0], K, dtype=torch.bool, device=mask.device)
        n = mask.sum(dim=1).clamp(min=1)
        k_user = torch.log2(n).floor().clamp(1, K)  # K'_u = max(1, min(K, log2 |I_u|))
        return torch.arange(K, device=mask.device)[None, :] < k_user[:, None]

    def draw_routing_logits(
        self, batch_size: int, seq_len: int, device: torch.device, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """b_ij ~ TruncatedNormal(0, std) truncated at 2 std (``tf.truncated_normal``), [B, K, L]."""
        std = self.config.routing_init_std
        out = torch.empty(batch_size, self.config.num_interests, seq_len, device=device, dtype=dtype)
        if std == 0:
            return out.zero_()
        return truncated_normal_(out, std)

    def shared_predictions(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """S e_i + s for the masked history [B, L] -> [B, L, d]. CPU fast path: the map on the real rows only,
        zeros on padding rows (the routing weighs padding 0, so neither their values nor gradients count)."""
        real = mask > 0
        if not use_cpu_fast_path(mask) or bool(real.all()):
            return self.bilinear.shared_predictions(self.embed_items(items) * mask.unsqueeze(-1))
        rows = real_rows(real)
        predictions = self.bilinear.shared_predictions(self.embed_items(gather_rows(items, rows)))
        return scatter_rows(predictions, rows, items.shape, 0.0)

    def forward(self, batch: Batch, init_logits: torch.Tensor | None = None) -> torch.Tensor:
        """Interests [B, K, d]; ``init_logits`` [B, K, L] replaces the random routing logits (tests)."""
        mask = batch.mask.to(self.item_embedding.weight.dtype)
        item_hat = self.shared_predictions(batch.items, mask)  # [B, L, d], shared by the K interests (tf.tile)
        B, L, _ = item_hat.shape
        if init_logits is None:
            init_logits = self.draw_routing_logits(B, L, item_hat.device, item_hat.dtype)
        active = self.active_interests(mask) if self.config.dynamic_interests else None
        capsules = self.routing(item_hat, mask, init_logits=init_logits, interest_mask=active)
        if self.proj is not None:
            capsules = torch.relu(self.proj(capsules))
        if active is not None:
            capsules = torch.where(active[:, :, None], capsules, capsules[:, :1])  # unused slots repeat interest 0
        return capsules
