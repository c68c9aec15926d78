"""Star-graph multi-head attention with a virtual central node (PIMI's interactivity module; GIMIRec Eq. 13-19).

Each item node i attends over 4 neighbours: its predecessor h_{i-1} (a zero vector for i = 0), itself, the
central node and an extra vector e_i (PIMI: item + position embedding; GIMIRec: the global-context row);
then the central node attends over [s; h_1..h_L] of the already-updated items. One attention module per
layer is SHARED by the two updates (PIMI_Rec: both calls under one variable scope with AUTO_REUSE).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# PIMI_Rec compute_adj_matrix + concat: [h_{i-1}; h_i; s; e_i]. GIMIRec Eq. 15-16: [q_{i-1}; e_c; q_i; e_i].
# Attention over the neighbours is order-invariant (no position terms); the order only fixes which dropout
# mask falls on which neighbour, so both are exposed for fidelity, not for different results.
PIMI_NEIGHBOURS = ("prev", "self", "center", "extra")
GIMIREC_NEIGHBOURS = ("prev", "center", "self", "extra")


def _dense(dim: int) -> nn.Linear:
    """d -> d dense layer initialised as tf.layers.dense: Glorot-uniform kernel, zero bias."""
    layer = nn.Linear(dim, dim)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class StarMultiHeadAttention(nn.Module):
    """PIMI_Rec ``modules.multihead_attention``: Q/K/V/O dense with bias, scaled dot product, attention dropout.

    No residual, no LayerNorm, no FFN; the caller applies the activation (ReLU or none). ``key_mask`` (optional,
    [..., n] bool, True = keep) is NOT used by the reference; it backs the ``mask_center`` deviation.
    """

    def __init__(self, dim: int, num_heads: int = 4, dropout: float = 0.1):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.query = _dense(dim)
        self.key = _dense(dim)
        self.value = _dense(dim)
        self.output = _dense(dim)
        self.dropout = nn.Dropout(dropout)

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One query per row from PROJECTED tensors: q [..., d], k/v [..., n, d] -> output dense [..., d].

        softmax(q k^T / sqrt(d_h)) per head, dropout on the weights (training only), heads concatenated.
        Elementwise products instead of many 1 x n matmuls: the star graph has one query per node.
        """
        *lead, n, d = k.shape
        heads = self.num_heads
        dh = d // heads
        kh = k.reshape(*lead, n, heads, dh)
        logits = (q.reshape(*lead, 1, heads, dh) * kh).sum(-1) / math.sqrt(dh)  # [..., n, heads]
        if key_mask is not None:
            logits = logits.masked_fill(~key_mask[..., None], float("-inf"))
        weights = self.dropout(torch.softmax(logits, dim=-2))
        out = (weights[..., None] * v.reshape(*lead, n, heads, dh)).sum(-3)  # [..., heads, dh]
        return self.output(out.reshape(*lead, d))

    def forward(self, query: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """query [..., d], context (keys = values) [..., n, d] -> [..., d]."""
        return self.attend(self.query(query), self.key(context), self.value(context), key_mask)


STAR_ACTIVATIONS = ("relu", "none")


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class StarGraph(nn.Module):
    """L rounds of star-graph attention (PIMI_Rec model.py ``for i in range(3)``; GIMIRec Eq. 14-19)."""

    def __init__(
        self,
        dim: int,
        num_layers: int = 3,
        num_heads: int = 4,
        dropout: float = 0.1,
        neighbours: Sequence[str] = PIMI_NEIGHBOURS,
        mask_center: bool = False,
        activation: str = "relu",
    ):
        super().__init__()
        if activation not in STAR_ACTIVATIONS:
            raise ValueError(f"activation must be one of {STAR_ACTIVATIONS}, got {activation!r}")
        # PIMI_Rec applies ReLU after each star-graph attention; GIMIRec Eq. 17 and 19 have no activation.
        self.activation = torch.relu if activation == "relu" else _identity
        if sorted(neighbours) != sorted(PIMI_NEIGHBOURS):
            raise ValueError(f"neighbours must order {PIMI_NEIGHBOURS}, got {tuple(neighbours)}")
        self.neighbours = tuple(neighbours)
        # Deviation switch: the reference's central update attends over padded (zero) item rows too.
        self.mask_center = mask_center
        self.layers = nn.ModuleList(StarMultiHeadAttention(dim, num_heads, dropout) for _ in range(num_layers))

    def satellite_context(
        self, h: torch.Tensor, center: torch.Tensor, extra: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Neighbour vectors [B, L, 4, d]; rows of padded nodes zeroed (PIMI_Rec adjacency + mask)."""
        parts = {
            "prev": F.pad(h[:, :-1], (0, 0, 1, 0)),  # h_{i-1}, zero "pad" column for i = 0
            "self": h,
            "center": center[:, None, :].expand_as(h),
            "extra": extra,
        }
        context = torch.stack([parts[name] for name in self.neighbours], dim=2)
        return context * mask[:, :, None, None]

    def forward(
        self, h: torch.Tensor, center: torch.Tensor, extra: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """h [B, L, d] (already masked), center [B, d], extra [B, L, d], mask [B, L] -> (h^(L), s^(L)).

        Same maths as :meth:`forward_stacked` (the PIMI_Rec form over the stacked [B, L, 4, d] context), but
        every node is projected by K/V ONCE per layer: key(m x) = m (x W_K^T) + b_K for a 0/1 mask m, so the
        neighbour keys/values are masked bias-free projections plus the bias, and the dot products are split
        as q.k = m (q.xW_K^T) + q.b_K. The dropout falls on a [B, L, 4, heads] weight tensor laid out as the
        reference's, so a seeded training step draws the same mask.
        """
        m = mask.to(h.dtype)
        key_mask = None
        if self.mask_center:
            key_mask = torch.cat([m.new_ones(m.shape[0], 1), m], dim=1) > 0
        for attention in self.layers:
            w_k, w_v = attention.key.weight, attention.value.weight
            # Bias-free projections of each node, once per layer (separate K and V matmuls measured faster
            # than one fused [2d, d] kernel: no slice backward).
            k_h, k_c, k_e = (F.linear(x, w_k) for x in (h, center, extra))
            v_h, v_c, v_e = (F.linear(x, w_v) for x in (h, center, extra))
            # Satellite update: h_i = act(MHA(h_i, C_i)) then h * mask (PIMI_Rec: act = ReLU; GIMIRec Eq. 16-17: none).
            h_new = self._satellite(attention, h, (k_h, k_c, k_e), (v_h, v_c, v_e), m)
            h_new = self.activation(h_new) * m[:, :, None]
            # Central update with the SAME module over [s; h^(t)] of the updated items (GIMIRec Eq. 18-19).
            center = self.activation(self._central(attention, center, k_c, v_c, h_new, key_mask))
            h = h_new
        return h, center

    def _satellite(
        self,
        attention: StarMultiHeadAttention,
        h: torch.Tensor,
        keys: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        values: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        m: torch.Tensor,
    ) -> torch.Tensor:
        """MHA of each node over its 4 neighbours (before ReLU) from the bias-free (item, centre, extra) key
        and value projections ([B, L, d], [B, d], [B, L, d] each)."""
        B, L, d = h.shape
        heads = attention.num_heads
        dh = d // heads
        q = attention.query(h).view(B, L, heads, dh)
        k_h, k_c, k_e = (k.reshape(B, -1, heads, dh) for k in keys)
        v_h, v_c, v_e = (v.reshape(B, -1, heads, dh) for v in values)
        # q_i . (x W_K^T) per head for each neighbour; "prev" of node 0 is the zero vector (dot 0).
        dots = {
            "prev": F.pad((q[:, 1:] * k_h[:, :-1]).sum(-1), (0, 0, 1, 0)),
            "self": (q * k_h).sum(-1),
            "center": (q * k_c).sum(-1),
            "extra": (q * k_e).sum(-1),
        }
        q_bias = (q * attention.key.bias.view(heads, dh)).sum(-1)  # q . b_K: the key of a zero row
        stacked = torch.stack([dots[name] for name in self.neighbours], dim=2)  # [B, L, 4, heads]
        logits = (stacked * m[:, :, None, None] + q_bias[:, :, None, :]) / math.sqrt(dh)
        weights = attention.dropout(torch.softmax(logits, dim=-2))
        w = dict(zip(self.neighbours, weights.unbind(2), strict=True))  # each [B, L, heads]
        # sum_n w_n (m x_n W_V^T + b_V) = m sum_n w_n x_n W_V^T + (sum_n w_n) b_V
        mixed = w["self"][..., None] * v_h + w["center"][..., None] * v_c + w["extra"][..., None] * v_e
        mixed = mixed + F.pad(w["prev"][:, 1:, :, None] * v_h[:, :-1], (0, 0, 0, 0, 1, 0))
        out = mixed * m[:, :, None, None] + weights.sum(2)[..., None] * attention.value.bias.view(heads, dh)
        return attention.output(out.reshape(B, L, d))

    @staticmethod
    def _central(
        attention: StarMultiHeadAttention,
        center: torch.Tensor,
        k_c: torch.Tensor,
        v_c: torch.Tensor,
        h: torch.Tensor,
        key_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """MHA of the centre over [s; h_1..h_L] (before ReLU), reusing the centre's bias-free projections.

        The items are never projected: per head, q_h . (W_K,h h_l) = (W_K,h^T q_h) . h_l and
        sum_l w_l W_V,h h_l = W_V,h (sum_l w_l h_l), two [B, heads, d] x [B, d, L] batched matmuls.
        """
        B, L, d = h.shape
        heads = attention.num_heads
        dh = d // heads
        q = attention.query(center).view(B, heads, dh)
        q_items = torch.einsum("bhe,hed->bhd", q, attention.key.weight.view(heads, dh, d))
        dots = torch.cat([(q * k_c.view(B, heads, dh)).sum(-1)[..., None], torch.bmm(q_items, h.transpose(1, 2))], 2)
        q_bias = (q * attention.key.bias.view(heads, dh)).sum(-1)  # q . b_K
        logits = ((dots + q_bias[..., None]) / math.sqrt(dh)).transpose(1, 2).contiguous()  # [B, L+1, heads]
        if key_mask is not None:
            logits = logits.masked_fill(~key_mask[..., None], float("-inf"))
        weights = attention.dropout(torch.softmax(logits, dim=-2)).transpose(1, 2)  # [B, heads, L+1]
        mixed = torch.einsum("bhd,hed->bhe", torch.bmm(weights[..., 1:], h), attention.value.weight.view(heads, dh, d))
        out = (
            mixed
            + weights[..., :1] * v_c.view(B, heads, dh)
            + weights.sum(-1, keepdim=True) * attention.value.bias.view(heads, dh)
        )
        return attention.output(out.reshape(B, d))

    def forward_stacked(
        self, h: torch.Tensor, center: torch.Tensor, extra: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The straightforward form (K/V over the stacked context, as PIMI_Rec); :meth:`forward` is faster."""
        m = mask.to(h.dtype)
        key_mask = None
        if self.mask_center:
            key_mask = torch.cat([m.new_ones(m.shape[0], 1), m], dim=1) > 0
        for attention in self.layers:
            context = self.satellite_context(h, center, extra, m)  # [B, L, 4, d]
            h = self.activation(attention(h, context)) * m[:, :, None]
            center = self.activation(attention(center, torch.cat([center[:, None, :], h], dim=1), key_mask))
        return h, center
