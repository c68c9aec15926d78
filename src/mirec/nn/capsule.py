"""Capsule (B2I / behaviour-to-interest) dynamic routing, as THUDM/ComiRec src/model.py ``CapsuleNetwork``.

Shared by MIND (``bilinear_type=0``: one dense d->d map tiled over the K capsules, routing logits drawn from
TruncatedNormal(0, 1)) and ComiRec-DR (``bilinear_type=2``: a separate d x d map per (position, interest),
routing logits starting at 0). Per iteration (MIND Algorithm 1; ComiRec ``CapsuleNetwork.call``)::

    c_ij = softmax_j(b_ij)   over the interests j, then c_ij = 0 at padded behaviours i
    z_j  = sum_i c_ij e_hat_{j|i};   v_j = squash(z_j) = |z_j|^2 / (1 + |z_j|^2) * z_j / sqrt(|z_j|^2 + 1e-9)
    b_ij += e_hat_{j|i}^T v_j        (all but the last iteration)

Every iteration but the last reads stop-gradient'ed predictions e_hat (``item_emb_hat_iter``), so the routing
coefficients are constants for the optimiser and gradients reach e_hat only through the last z_j.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def squash(z: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """squash(z) = |z|^2 / (1 + |z|^2) / sqrt(|z|^2 + eps) * z over the last axis (ComiRec ``scalar_factor``)."""
    norm2 = z.square().sum(dim=-1, keepdim=True)
    return norm2 / (1 + norm2) / torch.sqrt(norm2 + eps) * z


class SharedBilinear(nn.Module):
    """MIND's shared bilinear map S (ComiRec ``bilinear_type=0``): e_hat_{j|i} = S e_i + s for every j.

    ComiRec calls ``tf.layers.dense(dim, bias_initializer=None)``: the bias still exists (use_bias defaults to
    True) and a None initializer falls back to the layer default, Glorot-uniform; for a 1-D [d] variable
    fan_in = fan_out = d, so U(-sqrt(3/d), sqrt(3/d)). The kernel is Glorot-uniform.
    """

    def __init__(self, dim: int, num_interests: int):
        super().__init__()
        self.num_interests = num_interests
        self.dense = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.dense.weight)
        bound = math.sqrt(3.0 / dim)
        nn.init.uniform_(self.dense.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, d] -> predictions e_hat [B, K, L, d] (the same map tiled over K, ``tf.tile``)."""
        return self.shared_predictions(x).unsqueeze(1).expand(-1, self.num_interests, -1, -1)

    def shared_predictions(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, d] -> e_hat [B, L, d], the one prediction every interest shares (untiled; CapsuleRouting
        routes it without materialising the K copies)."""
        return self.dense(x)


class PerPositionBilinear(nn.Module):
    """ComiRec-DR's bilinear maps W_ij per (position i, interest j) (ComiRec ``bilinear_type=2``).

    One parameter [L, K*d, d] (ComiRec: ``[1, seq_len, num_interest*dim, dim]``, random_normal(0, 1) init);
    e_hat_{j|i} = W[i, j*d:(j+1)*d, :] e_i. Histories shorter than L use the first rows, as ``w[:, :seq_len]``.
    """

    def __init__(self, dim: int, num_interests: int, maxlen: int):
        super().__init__()
        self.dim, self.num_interests, self.maxlen = dim, num_interests, maxlen
        self.weight = nn.Parameter(torch.randn(maxlen, num_interests * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, d] -> predictions e_hat [B, K, L, d]."""
        B, L, d = x.shape
        if L > self.maxlen:
            raise ValueError(
                f"ComiRec-DR was built for histories of at most maxlen={self.maxlen} positions, got a batch of "
                f"length {L}; set model.maxlen to the batch length"
            )
        hat = torch.einsum("blc,lmc->blm", x, self.weight[:L])  # [B, L, K*d]
        # one copy to [B, K, L, d] here instead of one inside every routing einsum (forward and backward)
        return hat.view(B, L, self.num_interests, d).transpose(1, 2).contiguous()


class CapsuleRouting(nn.Module):
    """Dynamic routing of predictions e_hat [B, K, L, d] into K interest capsules [B, K, d] (no parameters)."""

    def __init__(self, iterations: int = 3, stop_gradient: bool = True):
        super().__init__()
        if iterations < 1:
            raise ValueError(f"routing needs at least 1 iteration, got {iterations}")
        self.iterations = iterations
        self.stop_gradient = stop_gradient

    def forward(
        self,
        item_hat: torch.Tensor,
        mask: torch.Tensor,
        init_logits: torch.Tensor | None = None,
        interest_mask: torch.Tensor | None = None,
        return_weights: bool = False,
        num_interests: int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Route e_hat [B, K, L, d] (padded positions: ``mask`` [B, L] == 0) into capsules [B, K, d].

        A 3-D ``item_hat`` [B, L, d] is one prediction shared by all K interests (MIND's ``tf.tile``d map);
        K then comes from ``init_logits`` or ``num_interests``; same result as the tiled [B, K, L, d] input.

        ``init_logits`` [B, K, L]: the initial routing logits b (zeros when None; MIND passes its random draw);
        they are constants (``tf.stop_gradient``). ``interest_mask`` [B, K] (bool): interests outside it get
        no behaviour (their logits are -inf before the softmax over interests; MIND's dynamic interest number).
        With ``return_weights`` also returns the last iteration's coupling coefficients c [B, K, L].
        """
        if item_hat.dim() == 3:  # shared prediction
            K = num_interests if init_logits is None else init_logits.shape[1]
            if K is None:
                raise ValueError("CapsuleRouting: a shared [B, L, d] item_hat needs init_logits or num_interests")
            B, L, _ = item_hat.shape
        else:
            B, K, L, _ = item_hat.shape
        if mask.shape != (B, L):
            raise ValueError(f"mask must be [B, L] = {(B, L)}, got {tuple(mask.shape)}")
        logits = item_hat.new_zeros(B, K, L) if init_logits is None else init_logits.detach()
        if logits.shape != (B, K, L):
            raise ValueError(f"init_logits must be [B, K, L] = {(B, K, L)}, got {tuple(logits.shape)}")
        hat_iter = item_hat.detach() if self.stop_gradient else item_hat  # ComiRec ``item_emb_hat_iter``
        padded = (mask == 0)[:, None, :]  # [B, 1, L]
        inactive = None if interest_mask is None else ~interest_mask.bool()[:, :, None]  # [B, K, 1]
        for i in range(self.iterations):
            b = logits if inactive is None else logits.masked_fill(inactive, float("-inf"))
            c = torch.softmax(b, dim=1).masked_fill(padded, 0.0)  # softmax over interests; 0 on padding
            if i < self.iterations - 1:
                capsules = squash(_weighted_sum(c, hat_iter))
                logits = logits + _agreement(hat_iter, capsules)
            else:
                capsules = squash(_weighted_sum(c, item_hat))
        return (capsules, c) if return_weights else capsules


def _weighted_sum(c: torch.Tensor, item_hat: torch.Tensor) -> torch.Tensor:
    """s_j = sum_i c_ij e_hat_{j|i}: [B, K, L] x ([B, K, L, d] or shared [B, L, d]) -> [B, K, d]."""
    if item_hat.dim() == 3:
        return torch.bmm(c, item_hat)
    return torch.einsum("bkl,bkld->bkd", c, item_hat)


def _agreement(item_hat: torch.Tensor, capsules: torch.Tensor) -> torch.Tensor:
    """e_hat_{j|i} . v_j: ([B, K, L, d] or shared [B, L, d]) x [B, K, d] -> [B, K, L]."""
    if item_hat.dim() == 3:
        return torch.bmm(capsules, item_hat.transpose(1, 2))
    return torch.einsum("bkld,bkd->bkl", item_hat, capsules)


def label_aware_readout(interests: torch.Tensor, target_vectors: torch.Tensor, power: float) -> torch.Tensor:
    """MIND label-aware attention v = V softmax(pow(V^T e_target, p)) [B, d]; p = inf is the hard argmax.

    ComiRec's ``hard_readout=False`` branch is p = 1. A finite p must be a non-negative integer (a fractional
    power of a negative inner product is undefined).
    """
    scores = torch.einsum("bkd,bd->bk", interests, target_vectors)
    if math.isinf(power):
        best = scores.argmax(dim=1)
        return interests[torch.arange(len(best), device=best.device), best]
    weights = torch.softmax(scores.pow(power), dim=1)
    return torch.einsum("bk,bkd->bd", weights, interests)
