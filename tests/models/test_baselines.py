"""ComiRec-family baselines (YouTube DNN, GRU4Rec, MIND, ComiRec-DR, ComiRec-SA) against hand computations
and slow loop references of THUDM/ComiRec src/model.py."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
from torch import nn

from mirec.config import load_config
from mirec.data.batching import Batch
from mirec.models import get_model_class
from mirec.models.comirec_dr import ComiRecDR, ComiRecDRConfig
from mirec.models.comirec_sa import ComiRecSA, ComiRecSAConfig
from mirec.models.dnn import DNNConfig, YouTubeDNN
from mirec.models.gru4rec import GRU4Rec, GRU4RecConfig
from mirec.models.mind import MIND, MINDConfig
from tests.nn.test_nn_layers import slow_routing

N_ITEMS, D, K, L = 30, 8, 4, 6
NAMES = ["dnn", "gru4rec", "mind", "comirec-dr", "comirec-sa"]


def make_model(name: str, maxlen: int = L, **options):
    cls = get_model_class(name)
    config = cls.config_class(embedding_dim=D, num_interests=K, maxlen=maxlen, **options)
    torch.manual_seed(0)
    return cls(config, N_ITEMS).double()


def make_batch(lengths, maxlen: int = L, seed: int = 0, targets: bool = False) -> Batch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.as_tensor(lengths)
    mask = (torch.arange(maxlen)[None, :] < lengths[:, None]).to(torch.float32)
    items = torch.randint(1, N_ITEMS + 1, (len(lengths), maxlen), generator=g) * mask.long()
    t = torch.randint(1, N_ITEMS + 1, (len(lengths),), generator=g) if targets else None
    return Batch(items=items, mask=mask, days=mask.long(), targets=t)


def run(model, batch, logits=None):
    if isinstance(model, MIND):
        return model(batch, init_logits=logits)
    return model(batch)


def mind_logits(batch_size: int, maxlen: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch_size, K, maxlen, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("name", NAMES)
def test_config_class_and_registry(name):
    cls = get_model_class(name)
    assert cls.name == name
    assert cls.paper and "20" in cls.paper
    config = load_config(model=name)
    assert isinstance(config.model, cls.config_class)
    assert config.model.name == name


@pytest.mark.parametrize("name", NAMES)
def test_padding_invariance(name):
    lengths = [6, 3, 1, 0]
    short = make_batch(lengths, maxlen=L)
    model = make_model(name, maxlen=L)
    logits = mind_logits(4, L + 4)
    out = run(model, short, logits[:, :, :L])
    expected_k = 1 if name in ("dnn", "gru4rec") else K
    assert out.shape == (4, expected_k, D)
    assert torch.isfinite(out).all()
    # 1) other ids (and other routing noise) under mask = 0 change nothing
    noisy = Batch(short.items.clone(), short.mask, short.days)
    noisy.items[short.mask == 0] = 7
    noisy_logits = logits[:, :, :L].clone()
    noisy_logits[(short.mask == 0)[:, None, :].expand_as(noisy_logits)] = 5.0
    assert torch.allclose(run(model, noisy, noisy_logits), out, atol=1e-12)
    # 2) appending padding (a larger maxlen, the extra positional parameters copied) changes nothing
    big = make_model(name, maxlen=L + 4)
    state = model.state_dict()
    for key, value in big.state_dict().items():
        if value.shape == state[key].shape:
            value.copy_(state[key])
        else:  # position-indexed tables: [maxlen, ...]
            value[:L].copy_(state[key])
    long = Batch(
        torch.cat([short.items, torch.zeros(4, 4, dtype=torch.long)], 1),
        torch.cat([short.mask, torch.zeros(4, 4)], 1),
        torch.cat([short.days, torch.zeros(4, 4, dtype=torch.long)], 1),
    )
    assert torch.allclose(run(big, long, logits), out, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_items_go_through_embed_items(name):
    """A global context replaces the lookup (GIMIRec Eq. 7): here E_global = 2 E_item for every id."""
    model = make_model(name)
    batch = make_batch([6, 2])
    logits = mind_logits(2, L)
    base = run(model, batch, logits)

    class Double(nn.Module):
        def forward(self, ids, weight):
            return 2 * weight[ids]

    model.global_context = Double()
    doubled = run(model, batch, logits)
    assert not torch.allclose(doubled, base)
    with torch.no_grad():
        model.item_embedding.weight.mul_(2)
    model.global_context = None
    assert torch.allclose(run(model, batch, logits), doubled, atol=1e-12)


def test_dnn_is_masked_mean_then_dense():
    model = make_model("dnn")
    batch = make_batch([6, 3, 0])
    out = model(batch)
    E = model.item_embedding.weight.detach()
    W, b = model.dense.weight.detach(), model.dense.bias.detach()
    for u, n in enumerate([6, 3, 0]):
        mean = E[batch.items[u, :n]].sum(0) / (n + 1e-9)
        assert torch.allclose(out[u, 0], W @ mean + b, atol=1e-12)
    assert torch.all(model.dense.bias == 0)  # tf.layers.dense: zero bias, no activation
    assert (out < 0).any()  # no ReLU


def test_gru4rec_returns_state_after_last_valid_item():
    model = make_model("gru4rec")
    batch = make_batch([6, 3, 1, 0])
    out = model(batch)
    E = model.item_embedding.weight.detach()
    for u, n in enumerate([6, 3, 1]):
        _, h = model.gru(E[batch.items[u, :n]].unsqueeze(0))  # the unpadded sequence alone
        assert torch.allclose(out[u, 0], h[0, 0], atol=1e-12)
    assert torch.all(out[3] == 0)  # dynamic_rnn: zero initial state for an empty history
    # an independent GRU recurrence (torch gate convention) for user 0
    g = model.gru
    h = torch.zeros(D, dtype=torch.float64)
    for i in range(6):
        x = E[batch.items[0, i]]
        gi = g.weight_ih_l0 @ x + g.bias_ih_l0
        gh = g.weight_hh_l0 @ h + g.bias_hh_l0
        r = torch.sigmoid(gi[:D] + gh[:D])
        z = torch.sigmoid(gi[D : 2 * D] + gh[D : 2 * D])
        n = torch.tanh(gi[2 * D :] + r * gh[2 * D :])
        h = (1 - z) * n + z * h
    assert torch.allclose(out[0, 0], h.detach(), atol=1e-12)


def test_gru4rec_tf_initialisation():
    model = GRU4Rec(GRU4RecConfig(embedding_dim=64), 10)
    g = model.gru
    assert torch.all(g.bias_ih_l0[:128] == 1) and torch.all(g.bias_ih_l0[128:] == 0)
    assert torch.all(g.bias_hh_l0 == 0)
    assert g.weight_ih_l0[:128].abs().max() <= math.sqrt(6 / (128 + 128))
    assert g.weight_ih_l0[128:].abs().max() <= math.sqrt(6 / (128 + 64))
    assert g.weight_ih_l0[128:].abs().max() > math.sqrt(6 / (128 + 128))


def test_gru4rec_remi_variant_is_a_stacked_gru_then_dense():
    # REMI's GRU4Rec: 3 bias-free layers of hidden 2d, input dropout, Linear(2d, d) on the last valid state
    model = make_model(
        "gru4rec", gru_layers=3, gru_hidden=2 * D, gru_bias=False, embedding_dropout=0.1, output_dense=True
    )
    g = model.gru
    assert g.num_layers == 3 and g.hidden_size == 2 * D and g.bias is False
    params = sum(p.numel() for p in model.parameters())
    h = 2 * D  # 3 gates x (input + recurrent) per layer; layer 0 reads d, layers 1-2 read 2d; dense 2d x d + d
    assert params == (N_ITEMS + 1) * D + 3 * h * (D + h) + 2 * 3 * h * (h + h) + h * D + D
    model.eval()  # dropout off: the output is dense(top-layer state after the last valid item)
    batch = make_batch([6, 2, 0])
    out = model(batch)
    E = model.item_embedding.weight.detach()
    W = [(getattr(g, f"weight_ih_l{i}").detach(), getattr(g, f"weight_hh_l{i}").detach()) for i in range(3)]
    for u, n in enumerate([6, 2]):
        states = [torch.zeros(h, dtype=torch.float64) for _ in range(3)]
        for t in range(n):  # an independent bias-free stacked recurrence
            x = E[batch.items[u, t]]
            for layer, (wi, wh) in enumerate(W):
                gi, gh = wi @ x, wh @ states[layer]
                r, z = torch.sigmoid(gi[:h] + gh[:h]), torch.sigmoid(gi[h : 2 * h] + gh[h : 2 * h])
                states[layer] = (1 - z) * torch.tanh(gi[2 * h :] + r * gh[2 * h :]) + z * states[layer]
                x = states[layer]
        expected = model.dense.weight.detach() @ x + model.dense.bias.detach()
        assert torch.allclose(out[u, 0], expected, atol=1e-10)
    assert torch.all(out[2] == 0)
    model.train()  # dropout on: the same batch gives another output
    assert not torch.allclose(model(batch), out)


@pytest.mark.parametrize("layers,hidden", [(1, D), (3, 2 * D)])
def test_gru4rec_packed_cpu_path_equals_the_full_recurrence(layers, hidden):
    """CPU runs the GRU on a PackedSequence of the valid steps: same states and gradients as over every position."""
    model = make_model("gru4rec", gru_layers=layers, gru_hidden=hidden, output_dense=hidden != D)
    batch = make_batch([6, 2, 0, 1])
    mask = batch.mask.to(model.item_embedding.weight.dtype)
    x1 = (model.embed_items(batch.items) * mask.unsqueeze(-1)).detach().requires_grad_(True)
    x2 = x1.detach().clone().requires_grad_(True)
    length = mask.sum(1).long()
    packed, full = model.last_states(x1, length, packed=True), model.last_states(x2, length, packed=False)
    valid = length > 0  # an empty history's state is zeroed by forward either way
    torch.testing.assert_close(packed[valid], full[valid], rtol=1e-10, atol=1e-12)
    weights = torch.randn_like(packed) * valid[:, None]
    (g1,) = torch.autograd.grad((packed * weights).sum(), x1)
    (g2,) = torch.autograd.grad((full * weights).sum(), x2)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)


def test_gru4rec_option_errors():
    with pytest.raises(ValueError, match="output_dense"):
        make_model("gru4rec", gru_hidden=2 * D)
    with pytest.raises(ValueError, match="gru_layers"):
        make_model("gru4rec", gru_layers=0)


def test_dnn_kaiming_init_as_remi():
    torch.manual_seed(0)
    d, n = 64, 5000
    glorot = YouTubeDNN(DNNConfig(embedding_dim=d), n)
    remi = YouTubeDNN(DNNConfig(embedding_dim=d, init="kaiming", dense_bias=False), n)
    assert remi.dense.bias is None
    # kaiming_normal_ on [n, d]: std sqrt(2 / d); Glorot-uniform: std sqrt(2 / (n + d))
    assert remi.item_embedding.weight.std().item() == pytest.approx(math.sqrt(2 / d), rel=0.02)
    assert glorot.item_embedding.weight.std().item() == pytest.approx(math.sqrt(2 / (n + 1 + d)), rel=0.02)
    assert remi.dense.weight.std().item() == pytest.approx(math.sqrt(2 / d), rel=0.05)
    with pytest.raises(ValueError, match="init"):
        YouTubeDNN(DNNConfig(init="normal"), n)


def test_comirec_sa_kaiming_init_as_pytorch_ports():
    torch.manual_seed(0)
    d, n, length = 64, 5000, 20
    model = ComiRecSA(ComiRecSAConfig(embedding_dim=d, maxlen=length, init="kaiming"), n)
    # kaiming_normal_ std sqrt(2 / fan_in): fan_in d for the table and W1, 4d for W2, L * d for a [1, L, d] tensor
    assert model.item_embedding.weight.std().item() == pytest.approx(math.sqrt(2 / d), rel=0.02)
    assert model.extractor.w1.weight.std().item() == pytest.approx(math.sqrt(2 / d), rel=0.05)
    assert model.extractor.w2.weight.std().item() == pytest.approx(math.sqrt(2 / (4 * d)), rel=0.1)
    assert model.position_embedding.std().item() == pytest.approx(math.sqrt(2 / (length * d)), rel=0.05)
    assert not model.extractor.w1.bias.any() and not model.extractor.w2.bias.any()
    default = ComiRecSA(ComiRecSAConfig(embedding_dim=d, maxlen=length), n)
    assert default.item_embedding.weight.std().item() == pytest.approx(math.sqrt(2 / (n + 1 + d)), rel=0.02)
    with pytest.raises(ValueError, match="init"):
        ComiRecSA(ComiRecSAConfig(init="normal"), n)


def test_comirec_sa_position_init_scale():
    d, length = 64, 20
    torch.manual_seed(5)
    default = ComiRecSA(ComiRecSAConfig(embedding_dim=d, maxlen=length), 100)
    torch.manual_seed(5)
    scaled = ComiRecSA(ComiRecSAConfig(embedding_dim=d, maxlen=length, position_init_scale=0.1), 100)
    # TF Glorot on [1, L, d]: uniform +-sqrt(6 / (L + d)); the option scales that draw and nothing else
    assert default.position_embedding.abs().max().item() <= math.sqrt(6 / (length + d))
    torch.testing.assert_close(scaled.position_embedding, 0.1 * default.position_embedding)
    torch.testing.assert_close(scaled.item_embedding.weight, default.item_embedding.weight)


def slow_mind(model: MIND, batch: Batch, logits: torch.Tensor) -> np.ndarray:
    E = model.item_embedding.weight.detach().numpy()
    W, b = model.bilinear.dense.weight.detach().numpy(), model.bilinear.dense.bias.detach().numpy()
    m = batch.mask.numpy()
    x = E[batch.items.numpy()] * m[..., None]
    hat = np.repeat((x @ W.T + b)[:, None], K, axis=1)  # shared map tiled over K
    caps, _ = slow_routing(hat, m, logits.numpy(), 3)
    if model.proj is not None:
        caps = np.maximum(caps @ model.proj.weight.detach().numpy().T + model.proj.bias.detach().numpy(), 0)
    return caps


@pytest.mark.parametrize("relu_layer", [True, False])
def test_mind_matches_slow_reference(relu_layer):
    model = make_model("mind", relu_layer=relu_layer)
    batch = make_batch([6, 4, 2])
    logits = mind_logits(3, L)
    out = model(batch, init_logits=logits)
    np.testing.assert_allclose(out.detach().numpy(), slow_mind(model, batch, logits), rtol=1e-9, atol=1e-12)
    assert (model.proj is not None) == relu_layer


def test_mind_real_rows_path_has_the_reference_gradients():
    """The CPU path maps real history rows only (zeros on padding): capsules and every parameter's gradient
    equal the reference form's (the map on every row, padding rows holding the bias)."""
    from mirec.nn.fastpath import reference_paths

    model = make_model("mind")
    batch = make_batch([6, 4, 2])
    logits = mind_logits(3, L)
    weights = torch.randn(3, K, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    results = []
    for context in (contextlib.nullcontext, reference_paths):
        model.zero_grad()
        with context():
            out = model(batch, init_logits=logits)
        (out * weights).sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (fast, fast_grads), (slow, slow_grads) = results
    torch.testing.assert_close(fast, slow)
    assert len(fast_grads) == len(slow_grads) >= 3  # item table, map weight and bias
    for a, b in zip(fast_grads, slow_grads, strict=True):
        torch.testing.assert_close(a, b)


def test_mind_draws_fresh_truncated_normal_logits():
    model = make_model("mind")
    batch = make_batch([6, 5])
    torch.manual_seed(3)
    a = model(batch)
    b = model(batch)
    assert not torch.allclose(a, b)  # a new draw at every forward (tf.truncated_normal in the graph)
    torch.manual_seed(3)
    assert torch.allclose(model(batch), a)  # reproducible under the global seed
    draws = model.draw_routing_logits(200, 50, torch.device("cpu"))
    assert draws.shape == (200, K, 50)
    assert draws.abs().max() <= 2.0  # truncated at 2 std
    assert abs(draws.std().item() - 0.8796) < 0.02  # std of N(0,1) truncated to [-2, 2]
    zero = make_model("mind", routing_init_std=0.0)
    assert torch.all(zero.draw_routing_logits(2, 3, torch.device("cpu")) == 0)


def test_mind_dynamic_interest_number():
    model = make_model("mind", dynamic_interests=True)
    lengths = [1, 2, 3, 4, 5, 6]
    batch = make_batch(lengths)
    active = model.active_interests(batch.mask)
    # K'_u = max(1, min(K, floor(log2 n))): 1, 1, 1, 2, 2, 2
    assert active.sum(1).tolist() == [1, 1, 1, 2, 2, 2]
    assert torch.all(active[:, 0])
    big = make_batch([16, 20, 8], maxlen=20)
    assert model.active_interests(big.mask).sum(1).tolist() == [4, 4, 3]
    logits = mind_logits(6, L)
    out = model(batch, init_logits=logits)
    # unused slots repeat interest 0
    for u, k_user in enumerate(active.sum(1).tolist()):
        for k in range(k_user, K):
            assert torch.equal(out[u, k], out[u, 0])
    # the active interests equal a K'-interest MIND with the same weights and logits (users with K' = 2)
    small_cls = MIND(MINDConfig(embedding_dim=D, num_interests=2, maxlen=L), N_ITEMS).double()
    small_cls.load_state_dict(model.state_dict())
    rows = [3, 4, 5]
    sub = Batch(batch.items[rows], batch.mask[rows], batch.days[rows])
    ref = small_cls(sub, init_logits=logits[rows, :2])
    assert torch.allclose(out[rows, :2], ref, atol=1e-12)
    # hard readout over K slots = hard readout over the K' active interests
    targets = torch.randn(6, D, dtype=torch.float64)
    chosen = model.readout(out, targets)
    for u, k_user in enumerate(active.sum(1).tolist()):
        best = (out[u, :k_user] @ targets[u]).argmax()
        assert torch.equal(chosen[u], out[u, best])
    # without the option all K capsules are used
    plain = make_model("mind")
    assert plain.active_interests(batch.mask).all()


def slow_dr(model: ComiRecDR, batch: Batch) -> np.ndarray:
    E = model.item_embedding.weight.detach().numpy()
    Wt = model.bilinear.weight.detach().numpy()  # [L, K*d, d]
    m = batch.mask.numpy()
    x = E[batch.items.numpy()] * m[..., None]
    B, Lb = m.shape
    hat = np.zeros((B, K, Lb, D))
    for u in range(B):
        for j in range(K):
            for i in range(Lb):
                hat[u, j, i] = Wt[i, j * D : (j + 1) * D] @ x[u, i]
    caps, _ = slow_routing(hat, m, np.zeros((B, K, Lb)), 3)
    return caps


def test_comirec_dr_matches_slow_reference():
    model = make_model("comirec-dr")
    batch = make_batch([6, 4, 1])
    out = model(batch)
    np.testing.assert_allclose(out.detach().numpy(), slow_dr(model, batch), rtol=1e-9, atol=1e-12)
    assert model.proj is None
    # deterministic: zero initial logits
    assert torch.equal(model(batch), out)


def test_comirec_sa_matches_hand_computation():
    model = make_model("comirec-sa")
    batch = make_batch([6, 3])
    out = model(batch)
    E = model.item_embedding.weight.detach()
    P = model.position_embedding.detach()
    ext = model.extractor
    for u, n in enumerate([6, 3]):
        x = E[batch.items[u, :n]]
        h = x + P[:n]
        logits = ext.w2.weight @ torch.tanh(ext.w1.weight @ h.T + ext.w1.bias[:, None]) + ext.w2.bias[:, None]
        A = torch.softmax(logits.detach(), dim=1)  # [K, n] over valid positions only
        assert torch.allclose(out[u], A @ x, atol=1e-12)  # values WITHOUT the position term
    A = ext.attention(E[batch.items] * batch.mask.double()[..., None] + P, batch.mask)
    assert torch.allclose(A.sum(-1), torch.ones(2, K, dtype=torch.float64))
    assert torch.all(A[1, :, 3:] == 0)


def test_comirec_sa_without_position():
    model = make_model("comirec-sa", add_pos=False)
    assert model.position_embedding is None
    batch = make_batch([5])
    x = model.item_embedding.weight[batch.items] * batch.mask.double()[..., None]
    assert torch.allclose(model(batch), model.extractor(x, batch.mask))


def test_parameter_counts():
    n, d, k, length = 100, 64, 4, 20
    rows = (n + 1) * d

    def count(model):
        return sum(p.numel() for p in model.parameters())

    assert count(YouTubeDNN(DNNConfig(embedding_dim=d), n)) == rows + d * d + d
    # torch GRU: 3 gates x (input + recurrent kernels) + two bias vectors (TF GRUCell has 6d^2 + 3d)
    assert count(GRU4Rec(GRU4RecConfig(embedding_dim=d), n)) == rows + 6 * d * d + 6 * d
    assert count(MIND(MINDConfig(embedding_dim=d, relu_layer=True), n)) == rows + 2 * (d * d + d)
    assert count(MIND(MINDConfig(embedding_dim=d, relu_layer=False), n)) == rows + d * d + d
    assert count(ComiRecDR(ComiRecDRConfig(embedding_dim=d, num_interests=k, maxlen=length), n)) == (
        rows + length * k * d * d
    )
    assert count(ComiRecSA(ComiRecSAConfig(embedding_dim=d, num_interests=k, maxlen=length), n)) == (
        rows + length * d + d * 4 * d + 4 * d + 4 * d * k + k
    )


@pytest.mark.parametrize("name", ["mind", "comirec-dr", "comirec-sa"])
def test_soft_readout_option(name):
    model = make_model(name, readout_power=1.0)
    batch = make_batch([6, 4], targets=True)
    torch.manual_seed(0)
    output = model.training_output(batch)
    vectors, aux = output.user_vectors, output.aux_loss
    torch.manual_seed(0)
    interests = model(batch)
    t = model.output_embeddings(batch.targets)
    w = torch.softmax(torch.einsum("bkd,bd->bk", interests, t), dim=1)
    assert aux is None
    assert torch.allclose(vectors, torch.einsum("bk,bkd->bd", w, interests), atol=1e-12)
    with pytest.raises(ValueError, match="readout_power"):
        make_model(name, readout_power=0.5)


@pytest.mark.parametrize("name", NAMES)
def test_hard_readout_training_output(name):
    model = make_model(name)
    batch = make_batch([6, 4, 2], targets=True)
    torch.manual_seed(0)
    vectors = model.training_output(batch).user_vectors
    torch.manual_seed(0)
    interests = model(batch)
    scores = torch.einsum("bkd,bd->bk", interests, model.output_embeddings(batch.targets))
    assert torch.allclose(vectors, interests[torch.arange(3), scores.argmax(1)], atol=1e-12)
    vectors.sum().backward()
    assert model.item_embedding.weight.grad is not None


@pytest.mark.parametrize("name", ["comirec-dr", "comirec-sa"])
def test_too_long_batch_is_a_clear_error(name):
    model = make_model(name, maxlen=4)
    with pytest.raises(ValueError, match="maxlen=4"):
        model(make_batch([6], maxlen=6))


PRESET_DATASETS = [
    "default",
    "amazon-grocery",
    "amazon-beauty",
    "yelp-b",
    "amazon-books",
    "amazon-hybrid",
    "taobao",
    "taobao-buy",
]


@pytest.mark.parametrize("dataset", PRESET_DATASETS)
@pytest.mark.parametrize("name", NAMES)
def test_presets_have_a_model_layer_and_a_dataset_layer(dataset, name):
    """The values themselves are compared with the old per-pair files in tests/test_config.py."""
    from mirec.config import preset_layers

    layers = preset_layers(dataset, name)
    assert [p.parent.name for p in layers[:2]] == ["models", "datasets"]
    assert load_config(model=name, dataset=dataset).model.name == name
