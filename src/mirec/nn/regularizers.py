"""Pairwise cosines of a user's K interest vectors, differentiable: the diversity penalty, and the arithmetic the
collapse report reads (mirec.eval.diversity) from the same two functions."""

from __future__ import annotations

import torch


def cosine_gram(interests: torch.Tensor) -> torch.Tensor:
    """Per user: the K x K cosine similarities of its interest vectors: [B, K, d] -> [B, K, K]."""
    unit = torch.nn.functional.normalize(interests, dim=2)
    return unit @ unit.transpose(1, 2)


def mean_above_diagonal(gram: torch.Tensor) -> torch.Tensor:
    """Per user: the mean of a [B, K, K] gram's K(K-1)/2 entries above the diagonal (K >= 2) -> [B]."""
    k = gram.shape[1]
    upper = torch.triu_indices(k, k, offset=1, device=gram.device)
    return gram[:, upper[0], upper[1]].mean(1)


def mean_pairwise_cosine(interests: torch.Tensor) -> torch.Tensor:
    """Per user: the mean cosine similarity over the K(K-1)/2 pairs of its interest vectors, differentiable:
    [B, K, d] -> [B] (K = 1: zeros, no pair to penalise)."""
    if interests.shape[1] < 2:
        return interests.new_zeros(interests.shape[0])
    return mean_above_diagonal(cosine_gram(interests))


def routing_penalty(attention: torch.Tensor, dim: int) -> torch.Tensor:
    """REMI's routing regulariser (Tokkiu/REMI src/REMI.py ``calculate_atten_loss``): with A [B, K, L] the
    attention over positions and C = A - its mean over L, the diagonal of C C^T / d is each interest's spread
    over positions; the penalty is its squared norm over K, summed over the batch (padding positions count, as
    there)."""
    centred = attention - attention.mean(dim=2, keepdim=True)
    spread = (centred * centred).sum(2) / dim  # the diagonal of C C^T / d, [B, K]
    return (spread * spread).sum()


__all__ = ["cosine_gram", "mean_above_diagonal", "mean_pairwise_cosine", "routing_penalty"]
