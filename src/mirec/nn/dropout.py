"""Dropout whose CPU mask is cut from 64-bit random draws, four elements per draw.

Why: torch's CPU ``bernoulli_`` (behind ``nn.Dropout``) draws one Mersenne Twister number per element, serially;
in a SASRec training step it was the largest op that a second thread does not split (docs/experiments 8e). One
full-range 64-bit draw viewed as four uniform 16-bit values gives four mask entries: 3.8-5x faster. The drop rate
becomes p rounded to a multiple of 2^-16 (0.2 -> 0.19999695), and the kept values are scaled by 1 / (1 - that
rate), so the expectation is kept exactly. Other devices take ``F.dropout``. Seeded runs draw other masks than
torch's dropout would (same law up to that rounding).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

LEVELS = 2**16  # one mask entry per 16 random bits


def keep_mask(like: torch.Tensor, p: float) -> tuple[torch.Tensor, float]:
    """A boolean mask shaped like ``like`` keeping each entry with probability 1 - round(p 2^16) / 2^16, drawn from
    the global torch generator; and the scale of the kept values."""
    dropped = round(p * LEVELS)
    n = like.numel()
    draws = torch.empty((n + 3) // 4, dtype=torch.int64, device=like.device).random_(-(2**63), None)
    lanes = draws.view(torch.int16)[:n].view(like.shape)  # four independent uniform 16-bit values per draw
    return lanes >= dropped - LEVELS // 2, LEVELS / (LEVELS - dropped)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)``, with the mask of :func:`keep_mask` on CPU."""
    if not training or p == 0 or p >= 1 or x.device.type != "cpu":  # CUDA's bernoulli_ is fast (Philox)
        return F.dropout(x, p, training)
    keep, scale = keep_mask(x, p)
    return x * keep.to(x.dtype).mul_(scale)


class Dropout(nn.Dropout):
    """``nn.Dropout`` with :func:`dropout`'s CPU mask."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
