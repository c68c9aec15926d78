"""Differentiable penalties on a user's K interest vectors."""

from __future__ import annotations

import torch


def mean_pairwise_cosine(interests: torch.Tensor) -> torch.Tensor:
    """Per user: the mean cosine similarity over the K(K-1)/2 pairs of its interest vectors, differentiable:
    [B, K, d] -> [B] (K = 1: zeros, no pair to penalise)."""
    k = interests.shape[1]
    if k < 2:
        return interests.new_zeros(interests.shape[0])
    unit = torch.nn.functional.normalize(interests, dim=2)
    upper = torch.triu_indices(k, k, offset=1, device=interests.device)
    return (unit[:, upper[0]] * unit[:, upper[1]]).sum(2).mean(1)


__all__ = ["mean_pairwise_cosine"]
