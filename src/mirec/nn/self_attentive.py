"""Self-attentive multi-interest extractor (ComiRec-SA; reused by PIMI and GIMIRec Eq. 20-21).

A = softmax_L( W_2 tanh(W_1 H^T + b_1) + b_2 ) in R^{K x L}, padded positions set to -2^32 + 1 before the
softmax over positions (THUDM/ComiRec src/model.py ``Model_ComiRec_SA``: ``tf.layers.dense(hidden_size*4,
tanh)`` then ``tf.layers.dense(num_heads)``, both with bias); interests = A V with V the values (ComiRec-SA and
PIMI: the masked item embeddings without position; GIMIRec: the aggregation output).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mirec.nn.fastpath import use_cpu_fast_path
from mirec.nn.rows import gather_rows, real_rows, scatter_rows

# TF reference's mask value for attention logits (ComiRec / PIMI_Rec model.py: -2**32 + 1).
MASK_LOGIT = -(2.0**32) + 1.0


def tf_dense(in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
    """``tf.layers.dense`` initialisation: Glorot-uniform kernel, zero bias (PyTorch defaults to Kaiming)."""
    layer = nn.Linear(in_features, out_features, bias=bias)
    nn.init.xavier_uniform_(layer.weight)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


class SelfAttentiveExtractor(nn.Module):
    """K attention distributions over the L positions and the K attention-weighted sums of the values."""

    def __init__(self, d: int, num_interests: int, hidden: int | None = None):
        super().__init__()
        hidden = 4 * d if hidden is None else hidden  # d_a = 4d (ComiRec ``hidden_size * 4``)
        self.num_interests = num_interests
        self.w1 = tf_dense(d, hidden)  # W_1, b_1 (with tanh)
        self.w2 = tf_dense(hidden, num_interests)  # W_2, b_2

    def position_logits(self, H: torch.Tensor) -> torch.Tensor:
        """W_2 tanh(W_1 h + b_1) + b_2 per row of ``H`` [..., d] -> [..., K]. On CPU in float32 with tanh(a) =
        2 sigmoid(2a) - 1 folded into the weights, (2 W_2) sigmoid((2 W_1) h + 2 b_1) + (b_2 - W_2 1): one
        sigmoid pass replaces torch's CPU tanh kernel, several times slower (equal up to float rounding)."""
        if use_cpu_fast_path(H) and H.dtype == torch.float32:
            gates = torch.sigmoid(F.linear(H, self.w1.weight * 2, self.w1.bias * 2))
            return F.linear(gates, self.w2.weight * 2, self.w2.bias - self.w2.weight.sum(1))
        return self.w2(torch.tanh(self.w1(H)))

    def attention(self, H: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """A [B, K, L] = softmax over positions of W_2 tanh(W_1 H + b_1) + b_2; 0 on padding (mask == 0).

        A row with no valid position (empty history) is uniform over the padding, as in the TF code; its
        interests are then A @ (masked, i.e. zero) values = 0.
        """
        if H.dim() != 3 or mask.shape != H.shape[:2]:
            raise ValueError(f"H must be [B, L, d] and mask [B, L]; got {tuple(H.shape)} and {tuple(mask.shape)}")
        valid = mask != 0
        if use_cpu_fast_path(H) and not bool(valid.all()):
            # CPU: W_1, tanh, W_2 on the real positions only (training windows are ~30% filled; tanh is
            # the costliest op here); padded logits are the mask value either way, so the result is the same
            rows = real_rows(valid)
            logits = scatter_rows(self.position_logits(gather_rows(H, rows)), rows, H.shape, MASK_LOGIT)
            return torch.softmax(logits.transpose(1, 2), dim=-1)
        logits = self.position_logits(H).transpose(1, 2)  # [B, K, L]
        logits = logits.masked_fill(~valid[:, None, :], MASK_LOGIT)
        return torch.softmax(logits, dim=-1)

    def forward(self, H: torch.Tensor, mask: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        """Interests [B, K, d_v] = A(H, mask) @ values (values default to H)."""
        A = self.attention(H, mask)
        return torch.matmul(A, H if values is None else values)
