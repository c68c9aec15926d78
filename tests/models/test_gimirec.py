"""GIMIRec (paper section 4): shapes, Eq. 8-21 against a slow reference, interests = S2 E, gradient through
the global context, padding invariance, presets (Table 2)."""

from __future__ import annotations

import pytest
import scipy.sparse
import torch
from torch import nn

from mirec.config import GraphConfig, load_config
from mirec.data.batching import Batch
from mirec.models.gimirec import GIMIRec, GIMIRecConfig
from mirec.nn.star_graph import GIMIREC_NEIGHBOURS
from tests.conftest import random_dataset
from tests.models.test_pimi import random_batch, slow_interval_matrix, slow_star_graph, slow_time_attention


class DenseContext(nn.Module):
    """A GlobalContext stand-in: (ids, weight) -> A[ids] @ weight with a dense A (GIMIRec Eq. 7)."""

    def __init__(self, A: torch.Tensor):
        super().__init__()
        self.register_buffer("A", A, persistent=False)

    def forward(self, ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self.A[ids] @ weight


def make_model(n_items: int = 30, seed: int = 0, **options) -> GIMIRec:
    torch.manual_seed(seed)
    config = GIMIRecConfig(**{"embedding_dim": 16, "maxlen": 6, "time_span": 10, "num_interests": 3, **options})
    model = GIMIRec(config, n_items)
    A = torch.rand(n_items + 1, n_items + 1) * (torch.rand(n_items + 1, n_items + 1) < 0.2)
    A = A + A.T + torch.eye(n_items + 1)
    A[0, 1:] = 0
    A[1:, 0] = 0
    model.global_context = DenseContext(A / A.sum(1, keepdim=True))
    return model


def slow_gimirec(model: GIMIRec, batch: Batch, A: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 8-21 with the slow pieces and a dense A; returns (aggregation output E, interests)."""
    mask = batch.mask
    m = mask[..., None]
    A = model.global_context.A if A is None else A
    e_global = (A @ model.item_embedding.weight)[batch.items] * m  # Eq. 7, 11
    T = torch.from_numpy(slow_interval_matrix(batch.days.numpy(), mask.sum(1).long().numpy(), model.config.time_span))
    e_time = slow_time_attention(model.time_attention, T, mask)  # Eq. 8-10
    hybrid = (model.config.time_scale * e_time + e_global) * m  # Eq. 12 (time_scale 1 in the paper)
    center = hybrid.sum(1) / mask.sum(1, keepdim=True)  # Eq. 13 (over the real items)
    E, _ = slow_star_graph(model.star_graph, hybrid, center, e_global, mask)  # Eq. 14-19
    ex = model.extractor
    logits = (torch.tanh(E @ ex.w1.weight.T + ex.w1.bias) @ ex.w2.weight.T + ex.w2.bias).transpose(1, 2)
    S2 = torch.softmax(logits.masked_fill(mask[:, None, :] == 0, -(2.0**32) + 1), -1)  # Eq. 20
    return E, S2 @ E  # Eq. 21: applied to the aggregation output


def test_shapes_and_slow_reference():
    model = make_model().eval()
    assert model.star_graph.neighbours == GIMIREC_NEIGHBOURS
    batch = random_batch(4, 6, 30, seed=11)
    with torch.no_grad():
        interests = model(batch)
        E, _, center = model.encode(batch)
        ref_E, ref_interests = slow_gimirec(model, batch)
    assert interests.shape == (4, 3, 16) and center.shape == (4, 16)
    torch.testing.assert_close(E, ref_E, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(interests, ref_interests, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("time_scale", [0.25, 0.0])
def test_time_scale_weights_the_time_interval_representation_and_zero_ignores_the_days(time_scale):
    model = make_model(time_scale=time_scale).eval()
    batch = random_batch(4, 6, 30, seed=11)
    with torch.no_grad():
        interests = model(batch)
        _, ref_interests = slow_gimirec(model, batch)
        batch.days = batch.days * 3  # other intervals: only the time-interval representation can see them
        moved = model(batch)
    torch.testing.assert_close(interests, ref_interests, rtol=1e-5, atol=1e-6)
    assert torch.equal(interests, moved) == (time_scale == 0.0)


def test_interests_are_attention_over_aggregation_output():
    model = make_model(seed=1).eval()
    batch = random_batch(5, 6, 30, seed=12)
    with torch.no_grad():
        E, rows, _ = model.encode(batch)
        S2 = model.extractor.attention(E, batch.mask)
        interests = model(batch)
        raw = model.embed_items(batch.items) * batch.mask[..., None]
    torch.testing.assert_close(rows, raw)
    torch.testing.assert_close(S2.sum(-1), torch.ones(5, 3))
    torch.testing.assert_close(interests, S2 @ E)  # Eq. 21
    assert (interests - S2 @ raw).abs().max() > 1e-3  # not PIMI's values (raw item vectors)
    # The PIMI-style option: same attention, applied to the E_global rows; training uses the same path.
    pimi_style = make_model(seed=1, interest_values="embedding").eval()
    with torch.no_grad():
        torch.testing.assert_close(pimi_style(batch), S2 @ raw)
        vectors = pimi_style.training_output(batch).user_vectors
        interests_raw = S2 @ raw
        targets = pimi_style.embed_items(batch.targets)
        best = (interests_raw * targets[:, None, :]).sum(-1).argmax(1)  # Eq. 22: argmax-interest readout
    torch.testing.assert_close(vectors, interests_raw[torch.arange(5), best])
    with pytest.raises(ValueError, match="interest_values"):
        make_model(interest_values="raw")


def test_gradient_reaches_item_table_through_global_context():
    model = make_model(seed=2)
    batch = random_batch(3, 6, 30, seed=13)
    output = model.training_output(batch)
    vectors, aux = output.user_vectors, output.aux_loss
    assert aux is None and vectors.shape == (3, 16)
    (vectors * model.output_embeddings(batch.targets)).sum().backward()
    grad_rows = model.item_embedding.weight.grad.abs().sum(1) > 0
    used = torch.zeros(31, dtype=torch.bool)
    used[batch.items.flatten()] = True
    used[batch.targets] = True
    A = model.global_context.A
    reachable = (A[used] != 0).any(0)  # items mixed in by A
    assert grad_rows[reachable & ~used].any()  # rows never looked up directly still learn, via A
    assert not grad_rows[~reachable].any()


def test_readout_uses_global_context_rows_of_the_target():
    model = make_model(seed=3).eval()
    batch = random_batch(6, 6, 30, seed=14)
    with torch.no_grad():
        interests = model(batch)
        vectors = model.training_output(batch).user_vectors
        target_rows = model.global_context.A[batch.targets] @ model.item_embedding.weight  # Eq. 22
    best = torch.einsum("bkd,bd->bk", interests, target_rows).argmax(1)
    torch.testing.assert_close(vectors, interests[torch.arange(6), best])


def test_padding_invariance():
    model = make_model(seed=4, maxlen=8).eval()
    batch = random_batch(5, 6, 30, seed=15)
    pad = batch.mask == 0
    noisy = Batch(batch.items.masked_fill(pad, 9), batch.mask, batch.days.masked_fill(pad, 77))
    longer = Batch(*(torch.nn.functional.pad(t, (0, 2)) for t in (batch.items, batch.mask, batch.days)))
    with torch.no_grad():
        base = model(batch)
        torch.testing.assert_close(model(noisy), base)
        assert (model(longer) - base).abs().max() > 1e-6  # PIMI_Rec: the centre sees padded rows
        model.star_graph.mask_center = True
        torch.testing.assert_close(model(longer), model(batch), rtol=1e-5, atol=1e-6)


@pytest.fixture
def one_thread():
    """Tiny matrices: intra-op threads only add contention on the shared 2-core machine (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_with_the_real_global_context_and_a_few_training_steps(one_thread):
    from mirec.data.batching import TrainSampler
    from mirec.graph import build_global_context

    dataset = random_dataset(n_users=60, n_items=40, seed=3)
    context = build_global_context(dataset, GraphConfig())
    csr = (context.values.numpy(), context.indices.numpy(), context.indptr.numpy())
    A = torch.from_numpy(scipy.sparse.csr_matrix(csr, shape=(41, 41)).toarray())
    torch.manual_seed(8)
    model = GIMIRec(GIMIRecConfig(embedding_dim=16, maxlen=10, num_interests=2), dataset.n_items)
    model.global_context = context
    sampler = TrainSampler(dataset.train, maxlen=10, batch_size=16, seed=0)
    batch = sampler.sample()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(batch), slow_gimirec(model, batch, A)[1], rtol=1e-5, atol=1e-6)
    # Full-softmax training over E_global rows (Eq. 22-23 with all items) lowers the loss on a fixed batch.
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        vectors = model.training_output(batch).user_vectors
        loss = torch.nn.functional.cross_entropy(vectors @ model.output_embeddings().T, batch.targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def test_position_option_and_missing_context_error():
    model = make_model(seed=5)
    assert model.position_embedding is None  # Eq. 12: no position term
    with_pos = make_model(seed=5, position_embedding=True)
    assert with_pos.position_embedding.weight.shape == (6, 16)
    bare = GIMIRec(GIMIRecConfig(embedding_dim=16, maxlen=6), 30)
    with pytest.raises(RuntimeError, match="global context"):
        bare(random_batch(2, 6, 30, seed=16))


@pytest.mark.parametrize(
    "dataset,a,b,hops,k,l_time,batch,maxlen",
    [
        ("amazon-books", 0.65, 0.35, [4.5, 2.0, 1.0], 4, 64, 128, 20),
        ("amazon-hybrid", 0.5, 0.5, [5.0, 2.5, 1.0], 4, 64, 128, 20),
        ("taobao-buy", 0.6, 0.4, [5.0, 3.0, 1.0], 8, 7, 256, 50),
        ("amazon-grocery", 0.5, 0.5, [5.0, 2.5, 1.0], 4, 64, 128, 20),
        ("amazon-beauty", 0.5, 0.5, [5.0, 2.5, 1.0], 4, 64, 128, 20),
        ("yelp-b", 0.5, 0.5, [5.0, 2.5, 1.0], 4, 64, 128, 20),
        ("default", 0.5, 0.5, [5.0, 2.5, 1.0], 4, 64, 128, 20),
    ],
)
def test_presets_table2(dataset, a, b, hops, k, l_time, batch, maxlen):
    c = load_config(model="gimirec", dataset=dataset)
    assert isinstance(c.model, GIMIRecConfig)
    assert (c.graph.a, c.graph.b, c.graph.hop_weights, c.graph.l_time) == (a, b, hops, l_time)
    assert (c.model.num_interests, c.model.time_span, c.model.maxlen, c.train.batch_size) == (k, l_time, maxlen, batch)


def test_training_output_single_lookup_equals_base_path():
    """The override looks history and targets up in ONE embed_items call; result = base-class readout."""
    from mirec.models.base import MultiInterestModel

    model = make_model(seed=6)
    batch = random_batch(5, 6, 30, seed=17)
    calls = []
    inner = model.global_context.forward
    model.global_context.forward = lambda ids, w: calls.append(ids.numel()) or inner(ids, w)
    torch.manual_seed(1)
    output = model.training_output(batch)
    got, aux = output.user_vectors, output.aux_loss
    assert aux is None and calls == [5 * 6 + 5]
    torch.manual_seed(1)  # same dropout draws
    ref = MultiInterestModel.training_output(model, batch).user_vectors
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-7)
