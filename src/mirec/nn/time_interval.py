"""Time-interval matrix and time-interval-aware attention (PIMI's periodicity module; GIMIRec Eq. 8-10).

``days`` are whole days since the user's first interaction (+1), 0 at padding (PIMI_Rec ``data_iterator``).
T_ij = min(|t_i - t_j|, time_span) for valid i, j and 0 elsewhere; each interval is embedded
(tau_ij = W_T[T_ij]), scored by a vector w_t (s_ij = w_t^T tau_ij, invalid columns j masked), normalised
over the column axis j, and p_i = sum_j alpha_ij tau_ij is item i's time-interval representation.
"""

from __future__ import annotations

import torch
from torch import nn

from mirec.nn.init import glorot_embedding

# TF reference's mask value for attention logits (PIMI_Rec model.py: -2**32 + 1).
MASK_LOGIT = -(2.0**32) + 1.0


def time_interval_matrix(days: torch.Tensor, mask: torch.Tensor, time_span: int) -> torch.Tensor:
    """Batched T [B, L, L] (int64): min(|t_i - t_j|, time_span) where i and j are both real items, else 0.

    PIMI_Rec ``data_iterator`` (per-sample Python loop there); GIMIRec Eq. 8 with time_span = L_time.
    """
    if days.shape != mask.shape or days.dim() != 2:
        raise ValueError(f"days {tuple(days.shape)} and mask {tuple(mask.shape)} must both be [B, L]")
    if time_span < 0:
        raise ValueError(f"time_span must be >= 0, got {time_span}")
    valid = mask > 0
    days = days.long()
    diff = (days[:, :, None] - days[:, None, :]).abs().clamp_(max=int(time_span))
    pair = valid[:, :, None] & valid[:, None, :]
    return diff.masked_fill_(~pair, 0)


class TimeIntervalAttention(nn.Module):
    """p_i = sum_j softmax_j(w_t^T W_T[T_ij]) W_T[T_ij] (PIMI_Rec model.py periodicity module; GIMIRec Eq. 9-10).

    The [B, L, L, d] tensor of interval embeddings is never built: the score of a pair only depends on its
    interval value v (s = (W_T w_t)[T]), and p_i = sum_v (sum_{j: T_ij = v} alpha_ij) W_T[v], computed as a
    [B, L, time_span+1] histogram of attention mass times W_T. Mathematically identical to the reference.
    """

    def __init__(self, dim: int, time_span: int):
        super().__init__()
        if time_span < 0:
            raise ValueError(f"time_span must be >= 0, got {time_span}")
        self.time_span = int(time_span)
        self.time_embedding = glorot_embedding(self.time_span + 1, dim)  # W_T, Glorot as tf.get_variable
        w_t = torch.empty(dim, 1)
        nn.init.xavier_uniform_(w_t)  # a [d, 1] tf.get_variable: Glorot-uniform by default
        self.w_t = nn.Parameter(w_t.squeeze(1))

    def attention(self, intervals: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """alpha [B, L, L]: softmax over the column j of s_ij, invalid columns masked (PIMI ``axis=-2``)."""
        value_scores = self.time_embedding.weight @ self.w_t  # [V]: w_t^T W_T[v]
        scores = value_scores[intervals]  # [B, L, L] = s_ij
        scores = scores.masked_fill(mask[:, None, :] <= 0, MASK_LOGIT)
        return torch.softmax(scores, dim=-1)

    def forward(self, intervals: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Time-interval representation p [B, L, d] from T [B, L, L] (int) and mask [B, L]."""
        if intervals.dim() != 3 or intervals.shape[1] != intervals.shape[2]:
            raise ValueError(f"intervals must be [B, L, L], got {tuple(intervals.shape)}")
        intervals = intervals.long()
        alpha = self.attention(intervals, mask)
        weight = self.time_embedding.weight
        mass = alpha.new_zeros(*alpha.shape[:2], weight.shape[0]).scatter_add_(-1, intervals, alpha)
        return mass @ weight
