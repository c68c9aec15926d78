"""An embedding table whose backward can add its rows' gradients straight into the weight's dense ``.grad``.

Why: the CPU trainer keeps one dense gradient buffer for the item table. torch's ``sparse=True`` lookups give a
sparse gradient per lookup, which autograd first sums (sparse + sparse: a coalescing merge) and then adds into
the buffer; a model that looks the table up three times a step (history, targets, negatives) paid ~1 ms for
that on two cores under load. Here each lookup's backward is one ``index_add_`` into ``weight.grad``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable


class _GatherRows(torch.autograd.Function):
    """rows = weight[ids]; backward: weight.grad.index_add_(ids, grad) (created zero-filled if None)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(ids)
        ctx.weight = weight
        return weight.index_select(0, ids.reshape(-1)).view(*ids.shape, weight.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[None, None]:  # type: ignore[override]
        (ids,) = ctx.saved_tensors
        weight: torch.Tensor = ctx.weight
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        weight.grad.index_add_(0, ids.reshape(-1), grad.reshape(-1, weight.shape[1]).to(weight.grad.dtype))
        return None, None  # already accumulated: autograd has nothing to add for the weight


class RowGradEmbedding(nn.Embedding):
    """``nn.Embedding`` with ``accumulate_rows``: when True (set by the CPU trainer), training lookups add their
    row gradients into ``weight.grad`` in place (:class:`_GatherRows`); the update Adam sees is the same."""

    accumulate_rows: bool = False

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        plain = self.padding_idx is not None or self.max_norm is not None or self.sparse
        if not self.accumulate_rows or plain or not (torch.is_grad_enabled() and self.weight.requires_grad):
            return super().forward(ids)
        return _GatherRows.apply(self.weight, ids)
