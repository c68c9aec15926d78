"""The packed GRU with a hand-written backward against torch's ``nn.GRU``: final states and every gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from mirec.nn.gru import packed_gru_last_states


def reference(gru: nn.GRU, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """torch's own packed GRU: the top layer's final state per sequence, in batch order."""
    _, final = gru(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    return final[-1]


@pytest.mark.parametrize("layers,hidden,bias", [(1, 6, True), (1, 8, False), (3, 5, False), (2, 4, True)])
def test_states_and_every_gradient_equal_torch_gru(layers, hidden, bias):
    torch.manual_seed(layers * 10 + hidden)
    gru = nn.GRU(3, hidden, num_layers=layers, bias=bias, batch_first=True).double()
    lengths = torch.tensor([4, 1, 6, 6, 2])  # unsorted, a tie, a one-step sequence
    x = torch.randn(5, 6, 3, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(5, hidden, dtype=torch.float64)  # a loss reading every state differently

    expected = reference(gru, x, lengths)
    expected_grads = torch.autograd.grad((expected * weights).sum(), [x, *gru.parameters()])
    sequences = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    got = packed_gru_last_states(gru, sequences)
    got_grads = torch.autograd.grad((got * weights).sum(), [x, *gru.parameters()])

    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    for name, g, e in zip(["x", *(n for n, _ in gru.named_parameters())], got_grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12, msg=name)
    assert x.grad is None and got_grads[0][1, 1:].abs().max() == 0  # padding steps get no gradient


def test_gradcheck_on_a_small_case():
    """Finite differences, independent of torch's GRU (the input's gradient through three steps)."""
    gru = nn.GRU(2, 3, bias=True, batch_first=True).double()
    lengths = torch.tensor([2, 4, 3])
    x = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)

    def last(inputs: torch.Tensor) -> torch.Tensor:
        return packed_gru_last_states(
            gru, pack_padded_sequence(inputs, lengths, batch_first=True, enforce_sorted=False)
        )

    assert torch.autograd.gradcheck(last, (x,))


def test_float32_matches_within_the_fast_tanh_tolerance():
    torch.manual_seed(0)
    gru = nn.GRU(16, 32, batch_first=True)
    x = torch.randn(64, 20, 16, requires_grad=True)
    lengths = torch.randint(1, 21, (64,))
    expected = reference(gru, x, lengths)
    got = packed_gru_last_states(gru, pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)  # tanh as 2 sigmoid(2x) - 1 in float32
    (gx,) = torch.autograd.grad(got.sum(), x)
    (ex,) = torch.autograd.grad(expected.sum(), x)
    torch.testing.assert_close(gx, ex, rtol=0, atol=1e-5)


def test_refuses_what_it_does_not_compute():
    sequences = pack_padded_sequence(torch.randn(2, 3, 4), torch.tensor([3, 2]), batch_first=True)
    with pytest.raises(ValueError, match="unidirectional"):
        packed_gru_last_states(nn.GRU(4, 5, bidirectional=True, batch_first=True), sequences)
