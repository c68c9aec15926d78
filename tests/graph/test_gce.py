"""GIMIRec Global Context Extraction (section 4.2, Eq. 1-7): hand-computed graph, slow reference, module."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mirec.config import GraphConfig
from mirec.data.dataset import PreparedDataset, SplitSequences
from mirec.graph import BuildInfo, GlobalContext, build_cooccurrence, build_global_context, graph_stats

# ---------------------------------------------------------------------------------------------------------
# Hand-built log in the spirit of Figure 3. L_time = 10 days, a = b = 0.5 -> p = 1 - dt / 20.
#   user A: items 1 2 3 4 at days 0 2 4 20   hop1 <1,2> .9 <2,3> .9 (<3,4> dt 16 dropped)
#                                             hop2 <1,3> .8 (<2,4> dt 18 dropped); hop3 (<1,4> dt 20 dropped)
#   user B: items 2 1 5   at days 0 5 10      hop1 <2,1> .75 <1,5> .75; hop2 <2,5> dt 10 = L_time kept .5
#   user C: items 3 4     at days 0 1         hop1 <3,4> .95
#   user D: items 5 4 3 2 at days 0 1 2 3     hop1 <5,4> <4,3> <3,2> .95; hop2 <5,3> <4,2> .9; hop3 <5,2> .85
#   user E: items 1 2     at days 0 8         hop1 <1,2> .6  (so q1[1,2] = .9 + .6 = 1.5)
# ---------------------------------------------------------------------------------------------------------
SEQS = [
    ([1, 2, 3, 4], [0, 2, 4, 20]),
    ([2, 1, 5], [0, 5, 10]),
    ([3, 4], [0, 1]),
    ([5, 4, 3, 2], [0, 1, 2, 3]),
    ([1, 2], [0, 8]),
]
N_ITEMS = 5
CFG = GraphConfig(l_time=10.0, a=0.5, b=0.5, hop_weights=[4.0, 2.0, 1.0])


def _csr(seqs):
    lengths = [len(s[0]) for s in seqs]
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = np.concatenate([s[0] for s in seqs]).astype(np.int64)
    days = np.concatenate([s[1] for s in seqs]).astype(np.float64)
    return indptr, items, days


def _dense(pairs, size=N_ITEMS + 1):
    m = np.zeros((size, size))
    for (i, j), w in pairs.items():
        m[i, j] += w
    return m


# q^k written out by hand from the table above (Eq. 3)
Q1 = {
    (1, 2): 1.5,
    (2, 3): 0.9,
    (2, 1): 0.75,
    (1, 5): 0.75,
    (3, 4): 0.95,
    (5, 4): 0.95,
    (4, 3): 0.95,
    (3, 2): 0.95,
}
Q2 = {(1, 3): 0.8, (2, 5): 0.5, (5, 3): 0.9, (4, 2): 0.9}
Q3 = {(5, 2): 0.85}
# A' = I + 4 A1 + 2 A2 + A3 (Eq. 4-5), upper triangle by hand:
#   A1: [1,2] 1.5+.75=2.25  [2,3] .9+.95=1.85  [1,5] .75  [3,4] 1.9  [4,5] .95
#   A2: [1,3] .8  [2,5] .5  [3,5] .9  [2,4] .9;  A3: [2,5] .85
A_PRIME_UPPER = {
    (1, 2): 9.0,
    (2, 3): 7.4,
    (1, 5): 3.0,
    (3, 4): 7.6,
    (4, 5): 3.8,
    (1, 3): 1.6,
    (2, 5): 1.85,
    (3, 5): 1.8,
    (2, 4): 1.8,
}
# row sums of A': D1 = 1+9+3+1.6, D2 = 1+9+7.4+1.85+1.8, D3 = 1+7.4+7.6+1.6+1.8, D4 = 1+7.6+3.8+1.8,
# D5 = 1+3+3.8+1.85+1.8
DEGREES = [1.0, 14.6, 21.05, 19.4, 14.2, 11.45]


def _expected_a_prime():
    m = np.eye(N_ITEMS + 1)
    for (i, j), w in A_PRIME_UPPER.items():
        m[i, j] = m[j, i] = w
    return m


def test_hand_computed_figure3_graph():
    info = BuildInfo()
    a = build_cooccurrence(*_csr(SEQS), N_ITEMS, CFG, info=info)
    assert a.shape == (6, 6) and a.dtype == np.float32
    assert info.pairs_per_hop == [9, 4, 1]
    assert info.dropped_per_hop == [1, 1, 1]
    assert info.nnz_per_hop == [8, 4, 1]
    ap = _expected_a_prime()
    np.testing.assert_allclose(ap.sum(axis=1), DEGREES)  # the hand degrees are the row sums of the hand A'
    d = np.array(DEGREES)
    expected = ap / np.sqrt(np.outer(d, d))
    np.testing.assert_allclose(a.toarray(), expected, rtol=1e-6, atol=1e-7)
    # a few entries as plain numbers: 9 / sqrt(14.6 * 21.05) and 1 / 11.45
    assert a[1, 2] == pytest.approx(0.513381, abs=1e-6)
    assert a[5, 5] == pytest.approx(0.0873362, abs=1e-6)
    assert a[0, 0] == 1.0 and a[0, 1:].nnz == 0 and a[1:, 0].nnz == 0  # padding untouched
    assert info.nnz_a_prime == 6 + 2 * 9


def test_per_hop_matrices_and_normalisation_against_dense():
    indptr, items, days = _csr(SEQS)
    # one hop at a time with weight 1: A' - I = q^k + q^k^T
    for k, q in enumerate((Q1, Q2, Q3)):
        weights = [0.0, 0.0, 0.0]
        weights[k] = 1.0
        a = build_cooccurrence(indptr, items, days, N_ITEMS, replace(CFG, hop_weights=weights)).toarray()
        qk = _dense(q)
        ap = np.eye(6) + qk + qk.T
        d = ap.sum(axis=1)
        np.testing.assert_allclose(a, np.diag(d**-0.5) @ ap @ np.diag(d**-0.5), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(a, a.T)


def test_ablation_switches():
    indptr, items, days = _csr(SEQS)
    one_hop = replace(CFG, hop_weights=[1.0])

    def a_prime(cfg):  # undo Eq. 6 with the exact degrees: A' = D^{1/2} A D^{1/2}, D = row sums of A'
        a = build_cooccurrence(indptr, items, days, N_ITEMS, cfg).toarray().astype(np.float64)
        # A' has unit diagonal here (no self-pairs), so A_ii = 1 / D_i
        d = 1.0 / np.diag(a)
        return a * np.sqrt(np.outer(d, d))

    # GIMIRec-I (a=0, b=1): every kept occurrence weighs 1 -> q1[1,2] = 2, q1[2,1] = 1
    ap = a_prime(replace(one_hop, a=0.0, b=1.0))
    assert ap[1, 2] == pytest.approx(3.0, rel=1e-5) and ap[3, 4] == pytest.approx(2.0, rel=1e-5)
    # GIMIRec-IN (count_pairs False): presence -> q1[1,2] = 1, q1[2,1] = 1 -> A1[1,2] = 2
    ap = a_prime(replace(one_hop, count_pairs=False))
    assert ap[1, 2] == pytest.approx(2.0, rel=1e-5) and ap[1, 5] == pytest.approx(1.0, rel=1e-5)
    # GIMIRec-INT (no threshold): A's <3,4> (dt 16) is kept with the interval clipped: p = .5*0 + .5
    ap = a_prime(replace(one_hop, use_threshold=False))
    assert ap[3, 4] == pytest.approx(0.95 + 0.95 + 0.5, rel=1e-5)
    # hop 2 only: <2,4> (user A, dt 18) exists only without the threshold; <4,2> (user D) always
    two_hop = replace(CFG, hop_weights=[0.0, 1.0])
    assert a_prime(replace(two_hop, count_pairs=False))[2, 4] == pytest.approx(1.0, rel=1e-5)
    ap = a_prime(replace(two_hop, use_threshold=False, count_pairs=False))
    assert ap[2, 4] == pytest.approx(2.0, rel=1e-5) and ap[1, 4] == 0.0  # <1,4> is a hop-3 pair
    # default: <3,4> = .95 (user C) + <4,3> .95 (user D)
    assert a_prime(one_hop)[3, 4] == pytest.approx(1.9, rel=1e-5)


def test_self_pairs_option():
    # items 1 1 2 at days 0 1 2, one hop, weights 1: pairs <1,1>, <1,2>
    indptr, items, days = _csr([([1, 1, 2], [0, 1, 2])])
    cfg = GraphConfig(l_time=10.0, a=0.0, b=1.0, hop_weights=[1.0])
    info = BuildInfo()
    a = build_cooccurrence(indptr, items, days, 2, cfg, info=info).toarray()
    # A' = [[1,0,0],[0,1+2,1],[0,1,1]] -> D = 1, 4, 2
    np.testing.assert_allclose(a[1:, 1:], [[3 / 4, 1 / np.sqrt(8)], [1 / np.sqrt(8), 1 / 2]], rtol=1e-6)
    assert info.self_pairs_per_hop == [1]
    a = build_cooccurrence(indptr, items, days, 2, replace(cfg, self_pairs=False)).toarray()
    # A' = [[1,1],[1,1]] on items 1,2 -> D = 2, 2
    np.testing.assert_allclose(a[1:, 1:], [[0.5, 0.5], [0.5, 0.5]], rtol=1e-6)


def _slow_reference(seqs, n_items, cfg):
    """Independent dense implementation: Python loops over users, positions and hops."""
    size = n_items + 1
    a_prime = np.eye(size)
    for k, w in enumerate(cfg.hop_weights, start=1):
        q = np.zeros((size, size))
        seen = np.zeros((size, size), dtype=bool)
        for items, days in seqs:
            for n in range(len(items) - k):
                dt = days[n + k] - days[n]
                if cfg.use_threshold and dt > cfg.l_time:
                    continue
                if not cfg.self_pairs and items[n] == items[n + k]:
                    continue
                frac = min(max((cfg.l_time - dt) / cfg.l_time, 0.0), 1.0)
                q[items[n], items[n + k]] += cfg.a * frac + cfg.b
                seen[items[n], items[n + k]] = True
        if not cfg.count_pairs:
            q = seen.astype(float)
        a_prime += w * (q + q.T)
    d = a_prime.sum(axis=1)
    return a_prime / np.sqrt(np.outer(d, d))


def _random_log(rng, n_users=40, n_items=15, max_len=12):
    seqs = []
    for _ in range(n_users):
        length = int(rng.integers(0, max_len + 1))
        items = rng.integers(1, n_items + 1, size=length)
        days = np.sort(rng.choice([0.0, 0.5, 1.0, 3.0, 7.0], size=length).cumsum())
        seqs.append((items.tolist(), days.tolist()))
    return seqs


@pytest.mark.parametrize(
    "overrides",
    [{}, {"self_pairs": False}, {"count_pairs": False}, {"use_threshold": False}, {"a": 0.0, "b": 1.0}],
)
def test_vectorised_equals_slow_reference_four_hops(overrides):
    rng = np.random.default_rng(3)
    seqs = _random_log(rng)
    cfg = replace(GraphConfig(l_time=6.0, a=0.6, b=0.4, hop_weights=[5.0, 3.0, 2.0, 0.5]), **overrides)
    fast = build_cooccurrence(*_csr(seqs), 15, cfg).toarray()
    np.testing.assert_allclose(fast, _slow_reference(seqs, 15, cfg), rtol=2e-6, atol=1e-7)


def test_bad_input_is_reported():
    indptr, items, days = _csr(SEQS)
    with pytest.raises(ValueError, match="not time-sorted"):
        build_cooccurrence(indptr, items, days[::-1].copy(), N_ITEMS, CFG)
    with pytest.raises(ValueError, match=r"1\.\.5"):
        build_cooccurrence(indptr, np.where(items == 5, 6, items), days, N_ITEMS, CFG)
    with pytest.raises(ValueError, match="hop_weights"):
        build_cooccurrence(indptr, items, days, N_ITEMS, replace(CFG, hop_weights=[-1.0]))


# ------------------------------------------------- module --------------------------------------------------
@pytest.fixture()
def context():
    info = BuildInfo()
    return GlobalContext(build_cooccurrence(*_csr(SEQS), N_ITEMS, CFG, info=info), CFG, info)


def test_gradient_reaches_item_weight(context):
    torch.manual_seed(0)
    weight = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([[1, 2, 0], [5, 2, 2]])
    upstream = torch.randn(2, 3, 4, dtype=torch.float64)
    context.train()
    out = context(ids, weight)
    (out * upstream).sum().backward()
    a = torch.from_numpy(context.to_scipy().toarray()).double()
    scattered = torch.zeros(6, 4, dtype=torch.float64).index_add_(0, ids.reshape(-1), upstream.reshape(-1, 4))
    torch.testing.assert_close(weight.grad, a.T @ scattered)
    torch.testing.assert_close(out, (a @ weight.detach())[ids])


def test_row_subset_equals_full_product(context):
    weight = torch.randn(6, 3)
    full = torch.from_numpy(context.to_scipy().toarray()) @ weight
    ids = torch.tensor([4, 4, 1, 0, 3])
    torch.testing.assert_close(context.rows(ids, weight), full[ids])
    torch.testing.assert_close(context.full(weight), full)
    assert context.rows(torch.zeros(0, 7, dtype=torch.long), weight).shape == (0, 7, 3)


def test_eval_cache_reused_and_invalidated(context):
    weight = torch.nn.Parameter(torch.randn(6, 3))
    ids = torch.tensor([[1, 2], [3, 0]])
    context.eval()
    with torch.no_grad():
        first = context(ids, weight)
        cached = context._cache
        second = context(ids, weight)
        assert context._cache is cached  # computed once
        torch.testing.assert_close(first, second)
        weight.add_(1.0)  # an optimiser step is in place: _version changes
        third = context(ids, weight)
        assert context._cache is not cached
    a = torch.from_numpy(context.to_scipy().toarray())
    torch.testing.assert_close(third, (a @ weight.detach())[ids])
    # inference mode and a replaced tensor also work
    with torch.inference_mode():
        fresh = torch.randn(6, 3)
        torch.testing.assert_close(context(ids, fresh), (a @ fresh)[ids])
    # eval mode with gradients wanted still gives gradients (no stale, detached cache)
    out = context(ids, weight)
    out.sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0


def test_save_load_round_trip(context, tmp_path):
    path = context.save(tmp_path / "graph.safetensors")
    loaded = GlobalContext.load(path)
    assert (loaded.to_scipy() != context.to_scipy()).nnz == 0
    assert loaded.config == context.config and loaded.config["hop_weights"] == [4.0, 2.0, 1.0]
    assert loaded.state_dict() == {}  # buffers are non-persistent: not part of model.safetensors
    with pytest.raises(FileNotFoundError):
        GlobalContext.load(tmp_path / "missing.safetensors")


def test_graph_stats(context):
    original = np.array(["", "a", "b", "c", "d", "e"], dtype=object)
    stats = graph_stats(context, original, top_item="b", k=3)
    # neighbours by A'_{2j} / sqrt(D2 Dj): 1 -> 9/sqrt(14.6), 3 -> 7.4/sqrt(19.4), 5 -> 1.85/sqrt(11.45),
    # 4 -> 1.8/sqrt(14.2); order 1 (2.355), 3 (1.680), 5 (0.547) (times 1/sqrt(D2))
    assert [n for n, _ in stats["neighbours"]] == ["a", "c", "e"]
    assert stats["neighbours"][0][1] == pytest.approx(9.0 / np.sqrt(14.6 * 21.05), rel=1e-6)
    assert stats["degree"]["min"] == 3 and stats["degree"]["max"] == 4
    assert stats["degree"]["mean"] == pytest.approx(3.6) and stats["degree"]["median"] == 4
    assert stats["nnz_per_hop"] == [8, 4, 1] and stats["nnz"] == 24


# --------------------------------------------- no target leakage ---------------------------------------------
def _split(seqs, history_len=None):
    indptr, items, days = _csr(seqs)
    return SplitSequences(
        users=np.arange(len(seqs), dtype=np.int64),
        indptr=indptr,
        items=items,
        timestamps=(days * 86400).astype(np.int64) + 1_600_000_000,
        history_len=None if history_len is None else np.asarray(history_len, dtype=np.int64),
    )


def _dataset(test_history_len):
    train = _split([([1, 2, 3], [0, 1, 2])])
    valid = _split([([2, 3, 6], [0, 1, 2])], history_len=[2])  # target 6: <3,6> would leak
    test = _split([([4, 5, 6, 1], [0, 1, 2, 3])], history_len=[test_history_len])  # targets 6, 1 (or history)
    return PreparedDataset(
        n_items=6,
        train=train,
        valid=valid,
        test=test,
        item_original_ids=np.array(["", "a", "b", "c", "d", "e", "f"], dtype=object),
        user_original_ids=np.array(["u0", "u1", "u2"], dtype=object),
    )


def test_no_target_leakage():
    cfg = GraphConfig(l_time=10.0, a=0.0, b=1.0, hop_weights=[1.0, 1.0])
    a = build_global_context(_dataset(test_history_len=2), cfg).to_scipy()
    # targets of the valid user (6) and test user (6, 1) make no pair
    for i, j in [(5, 6), (6, 1), (5, 1), (4, 6), (3, 6), (2, 6)]:
        assert a[i, j] == 0 and a[j, i] == 0, (i, j)
    assert a[6].nnz == 1  # item 6 only ever appears as a target: isolated
    assert a[4, 5] > 0 and a[1, 2] > 0 and a[2, 3] > 0 and a[1, 3] > 0  # history and train pairs present
    # the same items as history do create the pairs
    a = build_global_context(_dataset(test_history_len=4), cfg).to_scipy()
    assert a[5, 6] > 0 and a[6, 1] > 0 and a[5, 1] > 0 and a[4, 6] > 0
    assert a[3, 6] == 0  # the valid user's target is still excluded


def test_day_threshold_from_seconds():
    # exactly L_time days apart in Unix seconds is kept (Eq. 1 uses <=), one second more is dropped
    cfg = GraphConfig(l_time=64.0, a=0.0, b=1.0, hop_weights=[1.0])
    base = 1_400_000_000
    train = SplitSequences(
        users=np.arange(2),
        indptr=np.array([0, 2, 4]),
        items=np.array([1, 2, 3, 4]),
        timestamps=np.array([base + 7, base + 7 + 64 * 86400, base + 3, base + 4 + 64 * 86400]),
    )
    empty = SplitSequences(
        users=np.zeros(0, np.int64),
        indptr=np.zeros(1, np.int64),
        items=np.zeros(0, np.int64),
        timestamps=np.zeros(0, np.int64),
        history_len=np.zeros(0, np.int64),
    )
    ds = PreparedDataset(
        n_items=4,
        train=train,
        valid=empty,
        test=empty,
        item_original_ids=np.array(["", "a", "b", "c", "d"], dtype=object),
        user_original_ids=np.array(["u0", "u1"], dtype=object),
    )
    ctx = build_global_context(ds, cfg)
    a = ctx.to_scipy()
    assert a[1, 2] > 0 and a[3, 4] == 0
    assert ctx.info["pairs_per_hop"] == [1] and ctx.info["dropped_per_hop"] == [1]
    assert sp.issparse(a)
