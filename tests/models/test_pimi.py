"""PIMI: time-interval matrix/attention, star graph (weight sharing), parameter count, padding, end to end.

The slow references below loop per sample / per node in plain Python, written from the notes' description
of PIMI_Rec @330017b (section 2), independently of the vectorised code; test_gimirec.py reuses them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mirec.config import load_config
from mirec.data.batching import Batch
from mirec.models.pimi import PIMI, PIMIConfig
from mirec.nn.star_graph import PIMI_NEIGHBOURS, StarGraph, StarMultiHeadAttention
from mirec.nn.time_interval import TimeIntervalAttention, time_interval_matrix

# ----------------------------------------------------------------------------------- slow references


def parameter_count_reference(
    item_count: int, dim: int = 64, maxlen: int = 20, time_span: int = 64, num_layers: int = 3, num_interests: int = 4
) -> int:
    """Trainable parameters of PIMI_Rec's TF graph (notes 2.3); ``item_count`` = rows of its item table."""
    return (
        item_count * dim  # item embedding
        + maxlen * dim  # position embedding
        + (time_span + 1) * dim  # time-interval embedding
        + dim  # w_t
        + num_layers * 4 * (dim * dim + dim)  # shared Q/K/V/O dense per layer
        + dim * 4 * dim
        + 4 * dim
        + 4 * dim * num_interests
        + num_interests  # self-attentive extractor
    )


def slow_interval_matrix(days: np.ndarray, lengths: np.ndarray, time_span: int) -> np.ndarray:
    """PIMI_Rec data_iterator: per sample, T[i][j] = min(|t_i - t_j|, span) for i, j < item_num."""
    out = np.zeros((days.shape[0], days.shape[1], days.shape[1]), dtype=np.int64)
    for b in range(days.shape[0]):
        n = int(lengths[b])
        for i in range(n):
            for j in range(n):
                out[b, i, j] = min(abs(int(days[b, i]) - int(days[b, j])), time_span)
    return out


def slow_time_attention(module: TimeIntervalAttention, T: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """tau = W_T[T] ([B, L, L, d]), s = tau w_t, invalid columns -2^32+1, softmax over j, p_i = sum_j a_ij tau_ij."""
    tau = module.time_embedding.weight[T]
    s = (tau @ module.w_t).clone()
    s[(mask[:, None, :] == 0).expand_as(s)] = -(2.0**32) + 1
    alpha = torch.softmax(s, dim=2)  # the column axis j (TF axis=-2 of [B, L, L, 1])
    return (alpha[..., None] * tau).sum(2)


def slow_mha(att: StarMultiHeadAttention, q: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    """One query vector q [d] over context rows ctx [n, d], head by head (eval mode: no dropout)."""
    d = q.shape[0]
    h = att.num_heads
    dh = d // h
    Q = att.query.weight @ q + att.query.bias
    K = ctx @ att.key.weight.T + att.key.bias
    V = ctx @ att.value.weight.T + att.value.bias
    heads = []
    for k in range(h):
        sl = slice(k * dh, (k + 1) * dh)
        w = torch.softmax(K[:, sl] @ Q[sl] / math.sqrt(dh), dim=0)
        heads.append(w @ V[:, sl])
    return att.output.weight @ torch.cat(heads) + att.output.bias


def slow_star_graph(graph: StarGraph, h: torch.Tensor, s: torch.Tensor, extra: torch.Tensor, mask: torch.Tensor):
    """Per sample, per node: C_i = neighbours (zero prev for i = 0; zero rows for padded i), ReLU, mask;
    then the centre over [s; h_1..h_L] (unmasked) with the SAME layer weights."""
    B, L, d = h.shape
    hs, ss = [], []
    for b in range(B):
        hb, sb = h[b], s[b]
        for att in graph.layers:
            new = []
            for i in range(L):
                parts = {
                    "prev": hb[i - 1] if i > 0 else torch.zeros(d),
                    "self": hb[i],
                    "center": sb,
                    "extra": extra[b, i],
                }
                ctx = torch.stack([parts[n] for n in graph.neighbours]) * mask[b, i]
                new.append(torch.relu(slow_mha(att, hb[i], ctx)) * mask[b, i])
            hb = torch.stack(new)
            sb = torch.relu(slow_mha(att, sb, torch.cat([sb[None], hb])))
        hs.append(hb)
        ss.append(sb)
    return torch.stack(hs), torch.stack(ss)


def random_batch(B: int, L: int, n_items: int, seed: int, min_len: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, L + 1, (B,), generator=g)
    lengths[0] = L  # one full row
    mask = (torch.arange(L)[None] < lengths[:, None]).float()
    items = torch.randint(1, n_items + 1, (B, L), generator=g) * mask.long()
    days = (torch.randint(0, 40, (B, L), generator=g).sort(1).values + 1) * mask.long()
    targets = torch.randint(1, n_items + 1, (B,), generator=g)
    return Batch(items, mask, days, targets)


# ----------------------------------------------------------------------------------- time interval


def test_interval_matrix_hand_case():
    days = torch.tensor([[1, 3, 10, 0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    expected = [[0, 2, 5, 0], [2, 0, 5, 0], [5, 5, 0, 0], [0, 0, 0, 0]]
    assert time_interval_matrix(days, mask, 5).tolist() == [expected]


@pytest.mark.parametrize("span", [0, 3, 64])
def test_interval_matrix_matches_per_sample_reference(span):
    rng = np.random.default_rng(span)
    B, L = 17, 12
    lengths = rng.integers(0, L + 1, size=B)
    days = rng.integers(1, 200, size=(B, L))  # unsorted, large gaps, as well as ties
    valid = np.arange(L)[None] < lengths[:, None]
    days = np.where(valid, days, 0)
    got = time_interval_matrix(torch.from_numpy(days), torch.from_numpy(valid.astype(np.float32)), span)
    np.testing.assert_array_equal(got.numpy(), slow_interval_matrix(days, lengths, span))


def test_time_attention_hand_case():
    """d = 1, W_T = [1, 2, 3], w_t = 1: s_ij = W_T[T_ij], softmax over j, p_i = sum_j a_ij W_T[T_ij]."""
    module = TimeIntervalAttention(1, 2)
    with torch.no_grad():
        module.time_embedding.weight.copy_(torch.tensor([[1.0], [2.0], [3.0]]))
        module.w_t.fill_(1.0)
    days = torch.tensor([[1, 2, 4, 0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    T = time_interval_matrix(days, mask, 2)  # [[0,1,2,0],[1,0,2,0],[2,2,0,0],[0,0,0,0]]
    p = module(T, mask)[0, :, 0]

    def expect(values):  # the three valid columns' embeddings = scores
        w = [math.exp(v) for v in values]
        return sum(wi * v for wi, v in zip(w, values, strict=True)) / sum(w)

    assert p[0].item() == pytest.approx(expect([1, 2, 3]), rel=1e-6)
    assert p[1].item() == pytest.approx(expect([2, 1, 3]), rel=1e-6)
    assert p[2].item() == pytest.approx(expect([3, 3, 1]), rel=1e-6)
    # a padded row i sees T = 0 on the valid columns: p = W_T[0] = 1
    assert p[3].item() == pytest.approx(1.0, rel=1e-6)


def test_time_attention_is_column_softmax_and_masked():
    torch.manual_seed(0)
    module = TimeIntervalAttention(8, 10)
    batch = random_batch(6, 9, 50, seed=1)
    T = time_interval_matrix(batch.days, batch.mask, 10)
    alpha = module.attention(T, batch.mask)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(6, 9))  # each row i normalised over columns j
    assert alpha.masked_select((batch.mask[:, None, :] == 0).expand_as(alpha)).abs().max() < 1e-12
    torch.testing.assert_close(module(T, batch.mask), slow_time_attention(module, T, batch.mask))


# ----------------------------------------------------------------------------------- star graph


def test_star_graph_matches_slow_reference_and_shares_weights():
    torch.manual_seed(3)
    d, B, L = 8, 3, 5
    graph = StarGraph(d, num_layers=3, num_heads=2, dropout=0.1, neighbours=PIMI_NEIGHBOURS).eval()
    mask = torch.tensor([[1.0] * 5, [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    h = torch.randn(B, L, d) * mask[..., None]
    s = torch.randn(B, d)
    extra = torch.randn(B, L, d) * mask[..., None]
    got_h, got_s = graph(h, s, extra, mask)
    ref_h, ref_s = slow_star_graph(graph, h, s, extra, mask)
    torch.testing.assert_close(got_h, ref_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_s, ref_s, rtol=1e-5, atol=1e-6)
    assert got_h[1, 2:].abs().max() == 0  # padded nodes stay zero

    # One attention module per layer, 4 dense layers each, nothing else (PIMI_Rec: 4 kernel/bias pairs per block).
    assert len(graph.layers) == 3
    assert sum(p.numel() for p in graph.parameters()) == 3 * 4 * (d * d + d)
    # Each layer's query projection runs twice per forward: satellite then centre.
    calls: list[int] = []
    hooks = [m.query.register_forward_hook(lambda m, i, o, k=k: calls.append(k)) for k, m in enumerate(graph.layers)]
    graph(h, s, extra, mask)
    for hook in hooks:
        hook.remove()
    assert calls == [0, 0, 1, 1, 2, 2]


def test_satellite_and_center_gradients_land_in_the_same_tensors():
    torch.manual_seed(4)
    d = 8
    graph = StarGraph(d, num_layers=1, num_heads=2, dropout=0.0)
    att = graph.layers[0]
    mask = torch.ones(2, 4)
    h, s, extra = torch.randn(2, 4, d), torch.randn(2, d), torch.randn(2, 4, d)

    def grads(loss_of):
        graph.zero_grad()
        out_h, out_s = graph(h, s, extra, mask)
        loss_of(out_h, out_s).backward()
        return [p.grad.clone() for p in att.parameters()]

    g_sat = grads(lambda oh, os: oh.pow(2).sum())  # h^(1): satellite call only
    g_both = grads(lambda oh, os: oh.pow(2).sum() + os.pow(2).sum())
    # The query kernel gets a gradient from the satellite path, and the centre call adds to the SAME tensor.
    assert all(g.abs().sum() > 0 for g in g_sat)
    assert all((gb - gs).abs().sum() > 0 for gb, gs in zip(g_both, g_sat, strict=True))


# ----------------------------------------------------------------------------------- PIMI model


def test_parameter_count_equals_reference():
    # PIMI_Rec's item table has item_count = #items + 1 rows (padding id 0 included, notes 2.1), the same
    # rows as ours (n_items + 1): the notes' "n_items = 1000" graph (137,092) is item_count = 1000.
    assert parameter_count_reference(1000) == 137_092
    model = PIMI(PIMIConfig(), n_items=999)
    assert sum(p.numel() for p in model.parameters()) == 137_092
    model = PIMI(PIMIConfig(maxlen=50, num_interests=8, time_span=7), n_items=321)
    assert sum(p.numel() for p in model.parameters()) == parameter_count_reference(
        322, maxlen=50, num_interests=8, time_span=7
    )


def slow_pimi(model: PIMI, batch: Batch) -> torch.Tensor:
    """PIMI_Rec forward from the module weights with the slow pieces above."""
    mask = batch.mask
    m = mask[..., None]
    L = batch.items.shape[1]
    x = model.item_embedding.weight[batch.items] * m
    P = model.position_embedding.weight[:L]
    e = (x + P) * m
    T = torch.from_numpy(slow_interval_matrix(batch.days.numpy(), mask.sum(1).long().numpy(), model.config.time_span))
    p = slow_time_attention(model.time_attention, T, mask)
    h0 = (x + P + p) * m
    s0 = h0.sum(1) / mask.sum(1, keepdim=True)
    h, _ = slow_star_graph(model.star_graph, h0, s0, e, mask)
    ex = model.extractor
    logits = (torch.tanh(h @ ex.w1.weight.T + ex.w1.bias) @ ex.w2.weight.T + ex.w2.bias).transpose(1, 2)
    logits = logits.masked_fill(mask[:, None, :] == 0, -(2.0**32) + 1)
    return torch.softmax(logits, -1) @ x  # attention from h^(3), values = raw masked item vectors


def test_pimi_forward_matches_slow_reference():
    torch.manual_seed(5)
    model = PIMI(PIMIConfig(embedding_dim=16, maxlen=6, time_span=10, num_interests=3), n_items=30).eval()
    batch = random_batch(4, 6, 30, seed=2)
    with torch.no_grad():
        got = model(batch)
        ref = slow_pimi(model, batch)
    assert got.shape == (4, 3, 16)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_pimi_padding_invariance():
    torch.manual_seed(6)
    model = PIMI(PIMIConfig(embedding_dim=16, maxlen=8, time_span=10), n_items=30).eval()
    batch = random_batch(5, 6, 30, seed=3)
    pad = batch.mask == 0
    noisy = Batch(batch.items.masked_fill(pad, 7), batch.mask, batch.days.masked_fill(pad, 99))
    with torch.no_grad():
        base = model(batch)
        torch.testing.assert_close(model(noisy), base)  # padded ids/days never read
        # Appending padding columns: the reference's central node attends over padded rows (key = bias),
        # so the result moves; with the mask_center deviation it does not.
        longer = Batch(*(torch.nn.functional.pad(t, (0, 2)) for t in (batch.items, batch.mask, batch.days)))
        assert (model(longer) - base).abs().max() > 1e-6
        model.star_graph.mask_center = True
        torch.testing.assert_close(model(longer), model(batch), rtol=1e-5, atol=1e-6)


def test_pimi_training_output_and_errors():
    torch.manual_seed(7)
    model = PIMI(PIMIConfig(embedding_dim=16, maxlen=6), n_items=30)
    batch = random_batch(4, 6, 30, seed=4)
    output = model.training_output(batch)
    vectors, aux = output.user_vectors, output.aux_loss
    assert aux is None and vectors.shape == (4, 16)
    interests = model.eval()(batch)
    with torch.no_grad():
        vectors = model.training_output(batch).user_vectors
    best = torch.einsum("bkd,bd->bk", interests, model.item_embedding.weight[batch.targets]).argmax(1)
    torch.testing.assert_close(vectors, interests[torch.arange(4), best])
    too_long = random_batch(2, 7, 30, seed=5)
    with pytest.raises(ValueError, match="exceeds maxlen"):
        model(too_long)


def test_pimi_presets():
    books = load_config(model="pimi", dataset="amazon-books")
    assert isinstance(books.model, PIMIConfig)
    assert (books.model.time_span, books.model.maxlen, books.train.batch_size) == (64, 20, 128)
    taobao = load_config(model="pimi", dataset="taobao-buy")
    assert (taobao.model.maxlen, taobao.train.batch_size, taobao.model.num_interests) == (50, 256, 4)
    for ds in ["default", "amazon-grocery", "amazon-beauty", "yelp-b", "amazon-hybrid"]:
        assert load_config(model="pimi", dataset=ds).model.name == "pimi"


def test_empty_history_gives_zero_interests_and_finite_gradients():
    torch.manual_seed(9)
    model = PIMI(PIMIConfig(embedding_dim=16, maxlen=5), n_items=10)
    batch = Batch(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 5), torch.zeros(2, 5, dtype=torch.long))
    batch.items[1, :2], batch.mask[1, :2], batch.days[1, :2] = torch.tensor([3, 4]), 1.0, torch.tensor([1, 9])
    batch.targets = torch.tensor([1, 2])
    assert model.eval()(batch)[0].abs().max() == 0  # A @ (masked, zero) item vectors
    vectors = model.train().training_output(batch).user_vectors
    vectors.square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize(
    "neighbours,mask_center,activation",
    [
        (PIMI_NEIGHBOURS, False, "relu"),
        (("prev", "center", "self", "extra"), True, "relu"),
        (PIMI_NEIGHBOURS, False, "none"),
    ],
)
def test_fast_star_graph_equals_stacked_form_in_training(neighbours, mask_center, activation):
    """forward (per-node projections) == forward_stacked (K/V over [B, L, 4, d]) with dropout ON and the same
    seed: same dropout masks, same outputs and same parameter/input gradients."""
    torch.manual_seed(10)
    d, B, L = 16, 5, 7
    graph = StarGraph(
        d, num_layers=3, num_heads=4, dropout=0.3, neighbours=neighbours, mask_center=mask_center, activation=activation
    )
    for p in graph.parameters():  # non-zero biases, so the bias split (m xW + b) is exercised
        torch.nn.init.normal_(p, std=0.3)
    mask = (torch.arange(L)[None] < torch.tensor([7, 3, 1, 5, 2])[:, None]).float()
    inputs = [torch.randn(B, L, d) * mask[..., None], torch.randn(B, d), torch.randn(B, L, d) * mask[..., None]]
    results = []
    for forward in (graph.forward_stacked, graph.forward):
        graph.zero_grad()
        h, s, e = (t.clone().requires_grad_() for t in inputs)
        torch.manual_seed(99)
        out_h, out_s = forward(h, s, e, mask)
        (out_h.pow(2).sum() + out_s.pow(3).sum()).backward()
        # b_K adds the same q.b_K to every logit of a softmax row: its true gradient is 0 (rounding noise only)
        grads = [p.grad.clone() for name, p in graph.named_parameters() if not name.endswith("key.bias")]
        results.append([out_h, out_s, h.grad, s.grad, e.grad, *grads])
    for ref, got in zip(*results, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * max(1.0, ref.abs().max().item()))


def test_star_activation_none_is_the_plain_attention_of_eq_17_and_19():
    """activation="none": one layer's satellite output is the attention itself (signed); "relu" clips it at 0,
    and both are the same layer otherwise (relu(none) == relu)."""
    torch.manual_seed(3)
    d, B, L = 8, 4, 6
    mask = (torch.arange(L)[None] < torch.tensor([6, 4, 2, 5])[:, None]).float()
    h, s, e = torch.randn(B, L, d) * mask[..., None], torch.randn(B, d), torch.randn(B, L, d) * mask[..., None]
    plain = StarGraph(d, num_layers=1, num_heads=2, dropout=0.0, activation="none").eval()
    relu = StarGraph(d, num_layers=1, num_heads=2, dropout=0.0, activation="relu").eval()
    relu.load_state_dict(plain.state_dict())
    context = plain.satellite_context(h, s, e, mask)
    expected_h = plain.layers[0](h, context) * mask[..., None]  # Eq. 16-17 without an activation
    out_plain, _ = plain(h, s, e, mask)
    out_relu, _ = relu(h, s, e, mask)
    torch.testing.assert_close(out_plain, expected_h, rtol=1e-5, atol=1e-6)
    assert (out_plain < 0).any() and (out_relu >= 0).all()
    torch.testing.assert_close(out_relu, torch.relu(out_plain))
    with pytest.raises(ValueError, match="activation"):
        StarGraph(d, activation="tanh")
