"""A GRU over packed sequences with a hand-written backward (the CPU fast path of GRU4Rec).

The same recurrence as ``torch.nn.GRU`` (torch's gate order reset, update, new; the reset gate applied after the
recurrent matmul: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (1 - z) n + z h), over a PackedSequence's
rows (time-major, each step's rows a prefix of the previous step's). torch runs it as ~15 recorded operations a
step whose backward re-slices the input projection with a zero-filled copy per step; here the input projection
is one matrix product for every row, the loop records nothing, and backward gathers each step's gradients
into one matrix for the weight products (tested against ``nn.GRU``: states and every gradient).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.utils.rnn import PackedSequence


def _tanh(x: torch.Tensor) -> torch.Tensor:
    # float32 tanh as 2 sigmoid(2x) - 1: torch's CPU tanh kernel is slower than its sigmoid (nn/self_attentive.py)
    return torch.sigmoid(x * 2).mul_(2).sub_(1) if x.dtype == torch.float32 else torch.tanh(x)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x @ weight.T if bias is None else torch.addmm(bias, x, weight.T)


class _PackedGRULayer(torch.autograd.Function):
    """One GRU layer: packed input rows [N, d_in] -> every step's state in the same rows [N, h]."""

    @staticmethod
    def forward(ctx, x, steps, w_ih, w_hh, b_ih, b_hh):  # type: ignore[override]
        h = w_hh.shape[1]
        gi = _linear(x, w_ih, b_ih)  # [N, 3h], the input projection of every row at once
        prev = x.new_zeros(steps[0][1], h)
        states, kept = [], []
        for offset, size in steps:
            gh = _linear(prev[:size], w_hh, b_hh)  # [size, 3h]
            g = gi[offset : offset + size]
            rz = torch.sigmoid(g[:, : 2 * h] + gh[:, : 2 * h])  # reset and update gates
            n = _tanh(torch.addcmul(g[:, 2 * h :], rz[:, :h], gh[:, 2 * h :]))
            prev = torch.addcmul(n, rz[:, h:], prev[:size] - n)  # (1 - z) n + z h
            states.append(prev)
            kept.append((rz, n, gh))
        ctx.steps, ctx.kept, ctx.has_bias = steps, kept, b_ih is not None
        out = torch.cat(states)
        ctx.save_for_backward(x, w_ih, w_hh, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, d_states):  # type: ignore[override]
        x, w_ih, w_hh, states = ctx.saved_tensors
        steps, h = ctx.steps, w_hh.shape[1]
        d_gi, d_gh = [], []  # per step, last step first
        carry = None  # dL/dh of the step after, for its (fewer) rows
        for t in range(len(steps) - 1, -1, -1):
            offset, size = steps[t]
            rz, n, gh = ctx.kept[t]
            dh = d_states[offset : offset + size]
            if carry is not None:
                dh = torch.cat([dh[: len(carry)] + carry, dh[len(carry) :]])
            prev = states[steps[t - 1][0] : steps[t - 1][0] + size] if t else torch.zeros_like(n)
            z = rz[:, h:]
            da_n = dh * (1 - z) * (1 - n * n)
            d_rz = torch.cat([da_n * gh[:, 2 * h :], dh * (prev - n)], 1) * (rz * (1 - rz))
            d_gi.append(torch.cat([d_rz, da_n], 1))
            d_gh.append(torch.cat([d_rz, da_n * rz[:, :h]], 1))
            carry = torch.addmm(dh * z, d_gh[-1], w_hh)  # through z h and through W_hh h
        d_gi, d_gh = torch.cat(d_gi[::-1]), torch.cat(d_gh[::-1])
        first = steps[0][1]  # the first step's previous state is zero: no recurrent-weight gradient from it
        d_w_hh = d_gh[first:].T @ states[_previous_rows(steps)]
        grads = [d_gi @ w_ih, None, d_gi.T @ x, d_w_hh]
        grads += [d_gi.sum(0), d_gh.sum(0)] if ctx.has_bias else [None, None]
        return tuple(grads)


def _previous_rows(steps: list[tuple[int, int]]) -> torch.Tensor:
    """For every row of steps 1.., the row holding the same sequence's state one step earlier."""
    parts = [np.arange(steps[t - 1][0], steps[t - 1][0] + size) for t, (_, size) in enumerate(steps) if t]
    return torch.from_numpy(np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64))


def packed_gru_last_states(gru: nn.GRU, sequences: PackedSequence) -> torch.Tensor:
    """The top layer's state after each sequence's last step, [B, hidden] in the sequences' original order:
    ``gru(sequences)[1][-1]`` computed by :class:`_PackedGRULayer` (unidirectional, batch-first or not)."""
    if gru.bidirectional or gru.proj_size or (gru.dropout and gru.training and gru.num_layers > 1):
        raise ValueError("packed_gru_last_states: a unidirectional GRU without projections or inter-layer dropout")
    sizes = sequences.batch_sizes.tolist()
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()
    steps = list(zip(offsets, sizes, strict=True))
    rows = sequences.data
    for layer in range(gru.num_layers):
        weights = [getattr(gru, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh")]
        biases = [getattr(gru, f"{name}_l{layer}") for name in ("bias_ih", "bias_hh")] if gru.bias else [None, None]
        rows = _PackedGRULayer.apply(rows, steps, *weights, *biases)
    # sorted sequence i (longest first) has length = the number of steps with more than i rows
    lengths = (sequences.batch_sizes[None, :] > torch.arange(sizes[0])[:, None]).sum(1)
    last = torch.as_tensor(offsets)[lengths - 1] + torch.arange(sizes[0])
    final = rows[last.to(rows.device)]
    return final if sequences.unsorted_indices is None else final[sequences.unsorted_indices]
