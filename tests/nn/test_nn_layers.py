"""Capsule routing (MIND / ComiRec-DR) and the self-attentive extractor against hand-computed numbers and
slow loop-based references of THUDM/ComiRec src/model.py."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch

from mirec.nn.capsule import (
    CapsuleRouting,
    PerPositionBilinear,
    SharedBilinear,
    label_aware_readout,
    squash,
)
from mirec.nn.embedding import RowGradEmbedding
from mirec.nn.self_attentive import MASK_LOGIT, SelfAttentiveExtractor, tf_dense


def slow_routing(item_hat: np.ndarray, mask: np.ndarray, init: np.ndarray, iterations: int) -> tuple:
    """Loop-by-loop ComiRec CapsuleNetwork.call (float64): returns capsules [B, K, d] and last c [B, K, L]."""
    B, K, L, d = item_hat.shape
    b = init.astype(np.float64).copy()
    caps = np.zeros((B, K, d))
    c = np.zeros((B, K, L))
    for it in range(iterations):
        for u in range(B):
            for i in range(L):
                e = np.exp(b[u, :, i] - b[u, :, i].max())
                c[u, :, i] = e / e.sum() if mask[u, i] != 0 else 0.0
            for j in range(K):
                z = sum(c[u, j, i] * item_hat[u, j, i] for i in range(L))
                n2 = float(z @ z)
                caps[u, j] = n2 / (1 + n2) / math.sqrt(n2 + 1e-9) * z
            if it < iterations - 1:
                for j in range(K):
                    for i in range(L):
                        b[u, j, i] += item_hat[u, j, i] @ caps[u, j]
    return caps, c


def test_squash_matches_formula():
    z = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1e-3, 0.0]], dtype=torch.float64)
    out = squash(z)
    # |z| = 5: 25/26 * z/5
    assert torch.allclose(out[0], torch.tensor([25 / 26 * 3 / 5, 25 / 26 * 4 / 5], dtype=torch.float64), atol=1e-12)
    assert torch.equal(out[1], torch.zeros(2, dtype=torch.float64))  # eps keeps 0 -> 0, no NaN
    n2 = 1e-6
    assert out[2, 0].item() == pytest.approx(n2 / (1 + n2) / math.sqrt(n2 + 1e-9) * 1e-3, rel=1e-9)


def _routing_inputs(B=3, K=4, L=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    item_hat = torch.randn(B, K, L, d, generator=g, dtype=torch.float64)
    lengths = torch.tensor([6, 3, 1])[:B]
    mask = (torch.arange(L)[None, :] < lengths[:, None]).double()
    init = torch.randn(B, K, L, generator=g, dtype=torch.float64)
    return item_hat, mask, init


@pytest.mark.parametrize("iterations", [1, 3])
@pytest.mark.parametrize("zero_init", [True, False])
def test_routing_matches_slow_reference(iterations, zero_init):
    item_hat, mask, init = _routing_inputs()
    if zero_init:
        init = torch.zeros_like(init)
    caps, c = CapsuleRouting(iterations)(item_hat, mask, init_logits=init, return_weights=True)
    ref_caps, ref_c = slow_routing(item_hat.numpy(), mask.numpy(), init.numpy(), iterations)
    np.testing.assert_allclose(caps.numpy(), ref_caps, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(c.numpy(), ref_c, rtol=1e-10, atol=1e-12)


def test_routing_softmax_is_over_interests_and_zero_on_padding():
    item_hat, mask, init = _routing_inputs()
    _, c = CapsuleRouting(3)(item_hat, mask, init_logits=init, return_weights=True)
    sums = c.sum(dim=1)  # [B, L]
    assert torch.allclose(sums, mask)  # 1 at every real behaviour, 0 at padding
    # and not over positions: some position-row sum differs from 1
    assert not torch.allclose(c.sum(dim=2), torch.ones_like(c.sum(dim=2)))


def test_routing_ignores_padded_predictions():
    item_hat, mask, init = _routing_inputs()
    other = item_hat.clone()
    other[mask[:, None, :, None].expand_as(other) == 0] = 123.0
    other_init = init.clone()
    other_init[mask[:, None, :].expand_as(init) == 0] = -7.0
    routing = CapsuleRouting(3)
    assert torch.allclose(routing(item_hat, mask, init), routing(other, mask, other_init), atol=1e-12)


def test_stop_gradient_only_last_iteration_carries_gradient():
    item_hat, mask, init = _routing_inputs()
    weights = torch.randn(3, 4, 5, dtype=torch.float64)
    x = item_hat.clone().requires_grad_(True)
    caps, c = CapsuleRouting(3, stop_gradient=True)(x, mask, init, return_weights=True)
    (grad,) = torch.autograd.grad((caps * weights).sum(), x)
    # manual: the coupling coefficients are constants, only squash(sum_i c_ij e_hat_{j|i}) is differentiated
    y = item_hat.clone().requires_grad_(True)
    manual = squash(torch.einsum("bkl,bkld->bkd", c.detach(), y))
    (expected,) = torch.autograd.grad((manual * weights).sum(), y)
    assert torch.allclose(grad, expected, atol=1e-12)
    # without the stop-gradient the routing path adds gradient
    z = item_hat.clone().requires_grad_(True)
    caps2 = CapsuleRouting(3, stop_gradient=False)(z, mask, init)
    assert torch.allclose(caps2, caps)  # same forward
    (grad2,) = torch.autograd.grad((caps2 * weights).sum(), z)
    assert not torch.allclose(grad2, expected, atol=1e-6)


def test_init_logits_get_no_gradient():
    item_hat, mask, init = _routing_inputs()
    init = init.clone().requires_grad_(True)
    caps = CapsuleRouting(3)(item_hat, mask, init)
    assert not caps.requires_grad  # item_hat is a constant here and init is stop-gradient'ed


def test_interest_mask_excludes_interests_from_the_softmax():
    item_hat, mask, init = _routing_inputs()
    active = torch.tensor([[True, True, False, False], [True, False, False, False], [True, True, True, True]])
    caps, c = CapsuleRouting(3)(item_hat, mask, init, interest_mask=active, return_weights=True)
    assert torch.all(c[~active] == 0)
    assert torch.allclose(c.sum(1), mask)
    # equals routing with only the active capsules (user 0: first 2)
    ref, _ = slow_routing(item_hat[:1, :2].numpy(), mask[:1].numpy(), init[:1, :2].numpy(), 3)
    np.testing.assert_allclose(caps[0, :2].numpy(), ref[0], rtol=1e-10, atol=1e-12)
    assert torch.all(caps[1, 1:] == 0)  # inactive capsules route nothing: squash(0) = 0


def test_shared_bilinear_is_one_dense_tiled_over_interests():
    layer = SharedBilinear(5, 3)
    x = torch.randn(2, 4, 5)
    out = layer(x)
    assert out.shape == (2, 3, 4, 5)
    expected = x @ layer.dense.weight.T + layer.dense.bias
    for k in range(3):
        assert torch.allclose(out[:, k], expected, atol=1e-6)
    assert layer.dense.bias.abs().max() <= math.sqrt(3 / 5)  # Glorot-uniform 1-D bias (TF None initializer)
    assert layer.dense.bias.abs().max() > 0
    assert sum(p.numel() for p in layer.parameters()) == 5 * 5 + 5


def test_per_position_bilinear_matches_loop():
    d, K, L = 3, 2, 4
    layer = PerPositionBilinear(d, K, L)
    x = torch.randn(2, L, d)
    out = layer(x)
    W = layer.weight.detach()  # [L, K*d, d]
    for b in range(2):
        for j in range(K):
            for i in range(L):
                expected = W[i, j * d : (j + 1) * d] @ x[b, i]
                assert torch.allclose(out[b, j, i], expected, atol=1e-5)
    assert layer(x[:, :2]).shape == (2, K, 2, d)  # shorter histories use the first rows (w[:, :seq_len])
    with pytest.raises(ValueError, match="maxlen=4"):
        layer(torch.randn(1, 5, d))
    assert sum(p.numel() for p in layer.parameters()) == L * K * d * d
    # random_normal(0, 1) init: sample std close to 1 over 96 values
    big = PerPositionBilinear(16, 4, 20)
    assert abs(big.weight.std().item() - 1.0) < 0.05


def test_self_attentive_attention_and_interests():
    torch.manual_seed(0)
    d, K, L = 4, 3, 5
    ext = SelfAttentiveExtractor(d, K)
    assert ext.w1.out_features == 4 * d  # hidden defaults to 4d
    H = torch.randn(2, L, d, dtype=torch.float64)
    ext = ext.double()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float64)
    A = ext.attention(H, mask)
    assert A.shape == (2, K, L)
    assert torch.allclose(A.sum(-1), torch.ones(2, K, dtype=torch.float64))
    assert torch.all(A[0, :, 3:] == 0)
    # hand formula for user 0: softmax over the 3 valid positions of W2 tanh(W1 h + b1) + b2
    W1, b1, W2, b2 = ext.w1.weight, ext.w1.bias, ext.w2.weight, ext.w2.bias
    logits = (W2 @ torch.tanh(W1 @ H[0, :3].T + b1[:, None]) + b2[:, None]).detach()  # [K, 3]
    assert torch.allclose(A[0, :, :3], torch.softmax(logits, dim=1), atol=1e-12)
    values = torch.randn(2, L, 7, dtype=torch.float64)
    assert torch.allclose(ext(H, mask, values), A @ values)
    assert torch.allclose(ext(H, mask), A @ H)
    # padded rows of H do not matter
    H2 = H.clone()
    H2[0, 3:] = 50.0
    assert torch.allclose(ext(H2, mask, values), ext(H, mask, values))
    # parameters: d*4d + 4d + 4d*K + K
    assert sum(p.numel() for p in ext.parameters()) == d * 4 * d + 4 * d + 4 * d * K + K
    assert MASK_LOGIT == -(2.0**32) + 1


def test_self_attentive_rejects_bad_shapes():
    ext = SelfAttentiveExtractor(4, 2)
    with pytest.raises(ValueError, match="mask"):
        ext.attention(torch.randn(2, 5, 4), torch.ones(2, 4))


def test_tf_dense_init():
    layer = tf_dense(64, 256)
    assert torch.all(layer.bias == 0)
    bound = math.sqrt(6 / (64 + 256))
    assert layer.weight.abs().max() <= bound
    assert layer.weight.abs().max() > 0.9 * bound


def test_label_aware_readout():
    interests = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]]])
    target = torch.tensor([[1.0, 0.8]])  # scores 1.0, 1.6, -1.8
    assert torch.equal(label_aware_readout(interests, target, math.inf), torch.tensor([[0.0, 2.0]]))
    w = torch.softmax(torch.tensor([1.0, 1.6, -1.8]), dim=0)
    expected = (w[:, None] * interests[0]).sum(0, keepdim=True)
    assert torch.allclose(label_aware_readout(interests, target, 1), expected)
    w2 = torch.softmax(torch.tensor([1.0, 1.6, -1.8]) ** 2, dim=0)
    assert torch.allclose(label_aware_readout(interests, target, 2), (w2[:, None] * interests[0]).sum(0))
    uniform = label_aware_readout(interests, target, 0)  # p = 0: uniform attention (MIND Fig. 3)
    assert torch.allclose(uniform, interests.mean(1))
    from mirec.config import ModelConfig

    for bad in (0.5, -1.0, -math.inf):  # checked when the config is built, for every model
        with pytest.raises(ValueError, match="readout_power"):
            ModelConfig(readout_power=bad)
    for good in (0.0, 1.0, 3.0, math.inf):
        assert ModelConfig(readout_power=good).readout_power == good


def test_self_attentive_real_positions_only_equals_the_full_masked_form():
    """The CPU path computes W_2 tanh(W_1 H) on real positions only; values and gradients must equal the
    reference form (all positions, then padding set to -2^32 + 1), also for a row with no real position."""
    torch.manual_seed(3)
    ext = SelfAttentiveExtractor(6, 3).double()
    H = torch.randn(4, 5, 6, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float64)
    fast = ext.attention(H, mask)
    logits = ext.w2(torch.tanh(ext.w1(H))).transpose(1, 2).masked_fill((mask == 0)[:, None, :], MASK_LOGIT)
    slow = torch.softmax(logits, dim=-1)
    torch.testing.assert_close(fast, slow)
    assert torch.allclose(fast[2], torch.full((3, 5), 0.2, dtype=torch.float64))  # empty row: uniform (TF)
    weights = torch.randn_like(fast)
    grads_fast = torch.autograd.grad((fast * weights).sum(), [H, ext.w1.weight, ext.w2.bias])
    grads_slow = torch.autograd.grad((slow * weights).sum(), [H, ext.w1.weight, ext.w2.bias])
    for a, b in zip(grads_fast, grads_slow, strict=True):
        torch.testing.assert_close(a, b)


def test_rows_by_flat_index_equal_boolean_indexing_and_its_gradients():
    """gather_rows / scatter_rows against x[mask] and index_put((mask,), values): values and gradients, including
    a row with no real position and a trailing feature shape."""
    from mirec.nn.rows import gather_rows, real_rows, scatter_rows

    torch.manual_seed(4)
    mask = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]]) > 0
    x = torch.randn(3, 4, 2, 5, dtype=torch.float64, requires_grad=True)
    rows = real_rows(mask)
    assert rows.tolist() == [0, 2, 3, 8, 9, 10, 11]
    picked = gather_rows(x, rows)
    torch.testing.assert_close(picked, x[mask], rtol=1e-12, atol=1e-12)  # the same entries, copied
    weights = torch.randn_like(picked)
    (fast,) = torch.autograd.grad((picked * weights).sum(), x)
    (slow,) = torch.autograd.grad((x[mask] * weights).sum(), x)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    values = torch.randn(len(rows), 3, dtype=torch.float64, requires_grad=True)
    spread = scatter_rows(values, rows, mask.shape, -7.0)
    expected = values.new_full((3, 4, 3), -7.0).index_put((mask,), values)
    torch.testing.assert_close(spread, expected, rtol=1e-12, atol=1e-12)
    out_weights = torch.randn_like(spread)
    (fast,) = torch.autograd.grad((spread * out_weights).sum(), values)
    (slow,) = torch.autograd.grad((expected * out_weights).sum(), values)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_shared_predictions_route_like_their_tiled_copies(stop_gradient):
    """MIND's untiled [B, L, d] prediction: same capsules, weights and gradients as the tiled [B, K, L, d]."""
    item_hat, mask, init = _routing_inputs()
    shared = item_hat[:, 0].clone().requires_grad_(True)  # [B, L, d]
    tiled = shared.detach().clone().requires_grad_(True)
    routing = CapsuleRouting(3, stop_gradient=stop_gradient)
    caps, c = routing(shared, mask, init, return_weights=True)
    caps_t, c_t = routing(tiled[:, None].expand(-1, init.shape[1], -1, -1), mask, init, return_weights=True)
    torch.testing.assert_close(caps, caps_t, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c, c_t, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(caps)
    (grad,) = torch.autograd.grad((caps * weights).sum(), shared)
    (grad_t,) = torch.autograd.grad((caps_t * weights).sum(), tiled)
    torch.testing.assert_close(grad, grad_t, rtol=1e-10, atol=1e-12)
    ref, _ = slow_routing(np.repeat(shared.detach().numpy()[:, None], init.shape[1], 1), mask.numpy(), init.numpy(), 3)
    np.testing.assert_allclose(caps.detach().numpy(), ref, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="needs init_logits or num_interests"):
        routing(shared.detach(), mask)
    assert routing(shared.detach(), mask, num_interests=2).shape == (shared.shape[0], 2, shared.shape[2])


@pytest.mark.parametrize("grad_first", [False, True])
def test_row_grad_embedding_accumulates_the_dense_gradient(grad_first):
    """Lookups with accumulate_rows add exactly the dense gradient into weight.grad: repeated ids, several
    lookups, a dense use of the weight in the same graph (GIMIRec's A E_item), and a grad already present."""
    torch.manual_seed(0)
    table = RowGradEmbedding(30, 5)
    reference = torch.nn.Embedding(30, 5)
    reference.weight.data.copy_(table.weight.data)
    history = torch.tensor([[3, 3, 7, 0], [29, 7, 7, 1]])
    targets = torch.tensor([3, 12])
    mix = torch.rand(4, 30)
    upstream = torch.randn(2, 4, 5), torch.randn(2, 5), torch.randn(4, 5)
    start = torch.randn(30, 5)

    def loss(module: torch.nn.Embedding) -> torch.Tensor:
        parts = module(history), module(targets), mix @ module.weight
        return sum((part * up).sum() for part, up in zip(parts, upstream, strict=True))

    table.accumulate_rows = True
    for module in (table, reference):
        module.weight.grad = start.clone() if grad_first else None
        loss(module).backward()
    torch.testing.assert_close(table.weight.grad, reference.weight.grad, rtol=1e-6, atol=1e-6)
    kept = table.weight.grad
    loss(table).backward()  # accumulates in place into the same tensor
    assert table.weight.grad is kept
    with torch.no_grad():  # evaluation lookups are plain
        torch.testing.assert_close(table(history), reference.weight[history])


def test_self_attentive_float32_cpu_logits_fold_tanh_into_the_weights():
    """float32 on CPU: (2 W_2) sigmoid((2 W_1) h + 2 b_1) + (b_2 - W_2 1) against W_2 tanh(W_1 h + b_1) + b_2,
    values and every gradient within float32 rounding; float64 takes the plain form."""
    from mirec.nn.fastpath import reference_paths

    torch.manual_seed(5)
    ext = SelfAttentiveExtractor(16, 4)
    with torch.no_grad():
        ext.w1.bias.uniform_(-1, 1)
        ext.w2.bias.uniform_(-1, 1)
    H = (3 * torch.randn(50, 16)).requires_grad_()  # pre-activations up to ~+-10: tanh saturates
    weights = torch.randn(50, 4)
    results = []
    for context in (contextlib.nullcontext, reference_paths):
        with context():
            logits = ext.position_logits(H)
        results.append((logits, torch.autograd.grad((logits * weights).sum(), [H, *ext.parameters()])))
    (fast, fast_grads), (slow, slow_grads) = results
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-5)
    for a, b in zip(fast_grads, slow_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    ext64, H64 = ext.double(), H.detach().double()
    expected = ext64.w2(torch.tanh(ext64.w1(H64)))
    assert torch.equal(ext64.position_logits(H64), expected)


def test_truncated_normal_keeps_first_draws_inside_and_redraws_only_the_rest():
    """tf.truncated_normal's distribution: N(0, std) cut at 2 std (std of the cut law 0.8796 std), entries inside
    the bounds kept from the first draw, reproducible under the global seed, quantiles equal to torch's
    trunc_normal_ (an independent implementation) within sampling error."""
    from mirec.nn.init import truncated_normal_

    std = 0.5
    torch.manual_seed(11)
    first = torch.empty(400_000).normal_(0.0, std)
    torch.manual_seed(11)
    drawn = truncated_normal_(torch.empty(400_000), std)
    inside = first.abs() <= 2 * std
    assert torch.equal(drawn[inside], first[inside])  # the same normal_ call: kept entries are the first draw's
    assert not torch.equal(drawn[~inside], first[~inside]) and drawn.abs().max() <= 2 * std
    assert abs(drawn.std().item() / std - 0.87962566) < 0.005 and abs(drawn.mean().item()) < 0.005
    torch.manual_seed(11)
    assert torch.equal(truncated_normal_(torch.empty(400_000), std), drawn)
    reference = torch.nn.init.trunc_normal_(torch.empty(400_000), 0.0, std, -2 * std, 2 * std)
    q = torch.tensor([0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99])
    torch.testing.assert_close(torch.quantile(drawn, q), torch.quantile(reference, q), rtol=0, atol=0.01)


def test_dropout_masks_from_16_bit_lanes_keep_the_law_and_the_gradient():
    """Each of the four 16-bit lanes of a draw drops at rate p (no lane biased), kept values are x / (1 - p') with
    p' = round(p 2^16) / 2^16, the gradient is the same mask and scale, eval / p = 0 / p = 1 behave as F.dropout,
    and a seed fixes the mask."""
    from mirec.nn.dropout import Dropout, dropout

    p, n = 0.2, 1_000_000
    x = torch.full((n,), 3.0, requires_grad=True)
    torch.manual_seed(4)
    y = dropout(x, p)
    kept = y.detach() != 0
    rate = round(p * 2**16) / 2**16
    sigma = math.sqrt(rate * (1 - rate) / (n / 4))
    for lane in range(4):
        assert abs((~kept[lane::4]).float().mean().item() - rate) < 4 * sigma, lane
    torch.testing.assert_close(y.detach()[kept], torch.full((int(kept.sum()),), 3.0 / (1 - rate)))
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / (1 - rate))
    torch.manual_seed(4)
    assert torch.equal(dropout(x.detach(), p), y.detach())  # the same draw under the same seed
    layer = Dropout(p)
    layer.eval()
    assert torch.equal(layer(x.detach()), x.detach())
    assert torch.equal(dropout(x.detach(), 0.0), x.detach())
    assert torch.count_nonzero(dropout(x.detach(), 1.0)) == 0
    assert Dropout(0.1)(torch.ones(5, 7)).shape == (5, 7)  # odd sizes: the last draw is cut to the tensor
