"""The rows of a [B, L, ...] batch that a [B, L] mask picks, addressed by flat indices.

``x[mask]`` and ``out.index_put((mask,), values)`` give the same values, but the gradient of a boolean gather is a
boolean ``index_put_(accumulate=True)``, which torch's CPU kernel runs as a sorted, parallel scatter: 2-6x slower
than the ``index_add_`` behind ``index_select`` for a training batch's rows, most of all at two threads
(docs/experiments/08-training-throughput.md, 8f). CPU paths use these; CUDA keeps the boolean forms, whose
accumulation is deterministic there.
"""

from __future__ import annotations

import torch


def real_rows(mask: torch.Tensor) -> torch.Tensor:
    """Flat indices (into B * L) of the nonzero entries of a [B, L] mask, in row-major order (as ``x[mask]``)."""
    return mask.reshape(-1).nonzero().squeeze(1)


def gather_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``x[mask]`` for ``rows = real_rows(mask)``: [B, L, *rest] -> [R, *rest]."""
    return x.reshape(-1, *x.shape[2:]).index_select(0, rows)


def scatter_rows(values: torch.Tensor, rows: torch.Tensor, shape: torch.Size, fill: float) -> torch.Tensor:
    """[B, L, *rest] filled with ``fill``, and ``values`` [R, *rest] at ``rows = real_rows(mask)`` (the inverse of
    :func:`gather_rows`); the gradient reaches ``values`` only."""
    out = values.new_full((shape[0] * shape[1], *values.shape[1:]), fill)
    return out.index_copy(0, rows, values).view(shape[0], shape[1], *values.shape[1:])
