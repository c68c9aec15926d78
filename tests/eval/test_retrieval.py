"""Exact retrieval (torch / faiss), exclusion and the ComiRec merge, against hand cases and brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mirec.eval.retrieval import ExactRetriever, merge_interests, merge_interests_full, merge_with_reserved_share


def brute_topk(interests: np.ndarray, table: np.ndarray, n: int, exclude=None):
    """Slow reference: per (user, interest) score every item 1..n_items and argsort."""
    n_users, k, _ = interests.shape
    ids = np.full((n_users, k, n), -1)
    scores = np.full((n_users, k, n), -np.inf)
    for u in range(n_users):
        for j in range(k):
            s = table[1:].astype(np.float64) @ interests[u, j].astype(np.float64)
            candidates = [i + 1 for i in np.argsort(-s, kind="stable")]
            if exclude is not None:
                candidates = [i for i in candidates if i not in set(exclude[u].tolist())]
            top = candidates[:n]
            ids[u, j, : len(top)] = top
            scores[u, j, : len(top)] = s[np.array(top, dtype=np.int64) - 1]
    return scores, ids


def assert_same_ranking(scores, ids, ref_scores, ref_ids, interests, table, atol=1e-5):
    """Same scores position by position, same ids except where two items tie (swapped equal scores)."""
    np.testing.assert_allclose(np.asarray(scores), ref_scores, atol=atol, rtol=0)
    ids, ref_ids = np.asarray(ids), np.asarray(ref_ids)
    u, j, r = np.nonzero(ids != ref_ids)
    # a differing id must score the same as the reference's item at that position
    own = np.einsum("pd,pd->p", table[ids[u, j, r]].astype(np.float64), interests[u, j].astype(np.float64))
    np.testing.assert_allclose(own, ref_scores[u, j, r], atol=atol, rtol=0)


def test_hand_case_padding_never_retrieved():
    table = torch.tensor([[100.0, 100.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [-1.0, 0.0]])
    interests = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    for backend in ("torch", "faiss"):
        scores, ids = ExactRetriever(table, backend).search(interests, 3)
        assert ids.tolist() == [[[1, 3, 2], [2, 3, 1]]]
        assert scores.tolist() == [[[1.0, 0.5, 0.0], [2.0, 1.0, 0.0]]]


def test_more_slots_than_items_are_padded():
    table = torch.tensor([[0.0], [1.0], [2.0]])
    interests = torch.tensor([[[1.0]]])
    for backend in ("torch", "faiss"):
        scores, ids = ExactRetriever(table, backend).search(interests, 4, exclude=[np.array([2])])
        assert ids.tolist() == [[[1, -1, -1, -1]]]
        assert scores[0, 0, 0] == 1.0 and torch.isneginf(scores[0, 0, 1:]).all()


@pytest.mark.parametrize("with_exclusion", [False, True])
def test_torch_faiss_and_brute_force_agree(with_exclusion):
    rng = np.random.default_rng(1)
    n_items, d, n_users, k, n = 300, 16, 23, 3, 20
    table = rng.standard_normal((n_items + 1, d)).astype(np.float32)
    interests = rng.standard_normal((n_users, k, d)).astype(np.float32)
    exclude = None
    if with_exclusion:  # histories, some of them containing the items each interest likes best
        exclude = [
            rng.choice(np.arange(1, n_items + 1), size=rng.integers(0, 40), replace=False) for _ in range(n_users)
        ]
    ref_s, ref_i = brute_topk(interests, table, n, exclude)
    t_table, t_int = torch.from_numpy(table), torch.from_numpy(interests)
    s_faiss, i_faiss = ExactRetriever(t_table, "faiss").search(t_int, n, exclude=exclude)
    s_torch, i_torch = ExactRetriever(t_table, "torch").search(t_int, n, exclude=exclude)
    # tiny blocks: 2 users per block, catalogue in blocks of 37 items
    small = ExactRetriever(t_table, "torch", block_bytes=4 * 37 * k * 2, item_block=37)
    s_small, i_small = small.search(t_int, n, exclude)
    # catalogue blocks narrower than n: the first block cannot fill the top-n alone
    s_tiny, i_tiny = ExactRetriever(t_table, "torch", block_bytes=4 * 7 * k * 5, item_block=7).search(t_int, n, exclude)
    for s, i in ((s_faiss, i_faiss), (s_torch, i_torch), (s_small, i_small), (s_tiny, i_tiny)):
        assert_same_ranking(s, i, ref_s, ref_i, interests, table)
    if with_exclusion:
        for u in range(n_users):
            assert not set(i_torch[u].flatten().tolist()) & set(exclude[u].tolist())


def test_exclusion_removes_exactly_the_history():
    rng = np.random.default_rng(2)
    n_items, d = 50, 8
    table = torch.from_numpy(rng.standard_normal((n_items + 1, d)).astype(np.float32))
    interests = torch.from_numpy(rng.standard_normal((2, 2, d)).astype(np.float32))
    history = [np.array([3, 3, 17, 42]), np.array([], dtype=np.int64)]
    for backend in ("torch", "faiss"):
        _, full = ExactRetriever(table, backend).search(interests, n_items)
        _, kept = ExactRetriever(table, backend).search(interests, n_items, exclude=history)
        for u in range(2):
            for j in range(2):
                expected = [i for i in full[u, j].tolist() if i not in set(history[u].tolist())]
                got = kept[u, j].tolist()
                assert got[: len(expected)] == expected
                assert got[len(expected) :] == [-1] * (n_items - len(expected))


def test_bad_exclusion_id_is_reported():
    table = torch.zeros(5, 2)
    with pytest.raises(ValueError, match="user row 1 lists item id 9"):
        ExactRetriever(table).search(torch.zeros(2, 1, 2), 2, exclude=[np.array([1]), np.array([9])])
    with pytest.raises(ValueError, match="backend"):
        ExactRetriever(table, "annoy")


def test_merge_hand_case_dedup_keeps_best_and_drops_padding():
    scores = torch.tensor([[[0.9, 0.5, 0.1], [0.8, 0.7, 0.6]]])
    ids = torch.tensor([[[3, 0, 5], [3, 4, 7]]])
    assert merge_interests(scores, ids, 3).tolist() == [[3, 4, 7]]
    out_ids, out_s, source = merge_interests_full(scores, ids, 6)
    assert out_ids.tolist() == [[3, 4, 7, 5, -1, -1]]
    assert out_s[0, :4].tolist() == pytest.approx([0.9, 0.7, 0.6, 0.1])
    assert source.tolist() == [[0, 1, 1, 0, -1, -1]]
    # the best score of a duplicate may come from the second interest
    scores2 = torch.tensor([[[0.2, 0.1], [0.9, 0.3]]])
    ids2 = torch.tensor([[[8, 6], [6, 8]]])
    out_ids, out_s, source = merge_interests_full(scores2, ids2, 2)
    assert out_ids.tolist() == [[6, 8]] and source.tolist() == [[1, 1]]
    assert out_s.tolist() == [pytest.approx([0.9, 0.3])]


def comirec_merge(scores: np.ndarray, ids: np.ndarray, n: int) -> list[int]:
    """Literal ComiRec evaluate_full (coef None): sort by score, skip duplicates and 0, first n."""
    pairs = sorted(zip(ids.ravel().tolist(), scores.ravel().tolist(), strict=True), key=lambda x: x[1], reverse=True)
    out: list[int] = []
    for iid, _ in pairs:
        if iid not in out and iid > 0:
            out.append(iid)
            if len(out) >= n:
                break
    return out + [-1] * (n - len(out))


def reserved_merge_loop(
    scores: np.ndarray, ids: np.ndarray, n: int, first: int, share: float, stop: int | None = None
) -> list[int]:
    """Slow reference of the reserved-share merge: the merge's head, the reserved interests' best new items,
    the merge's next items if those run out; the union ordered by the score each item was picked with."""
    q = round(share * n)
    stop = ids.shape[0] if stop is None else stop
    merged = comirec_merge(scores, ids, n)
    best = {}  # item -> best score over all interests / over the reserved ones
    best_r = {}
    for k in range(ids.shape[0]):
        for iid, sc in zip(ids[k].tolist(), scores[k].tolist(), strict=True):
            best[iid] = max(best.get(iid, -np.inf), sc)
            if first <= k < stop:
                best_r[iid] = max(best_r.get(iid, -np.inf), sc)
    head = [i for i in merged[: n - q] if i > 0]
    picks = [(i, best[i]) for i in head]
    reserved = [i for i in comirec_merge(scores[first:stop], ids[first:stop], n) if i > 0 and i not in head][:q]
    picks += [(i, best_r[i]) for i in reserved]
    fill = [i for i in merged[n - q :] if i > 0 and i not in reserved][: q - len(reserved)]
    picks += [(i, best[i]) for i in fill]
    out = [i for i, _ in sorted(picks, key=lambda p: -p[1])]
    return out + [-1] * (n - len(out))


def test_reserved_share_merge_by_hand():
    # interests 0-1 = base, 2 = reserved; the base's scores beat the reserved interest's everywhere
    scores = torch.tensor([[[0.9, 0.8, 0.7], [0.85, 0.75, 0.65], [0.3, 0.2, 0.1]]])
    ids = torch.tensor([[[1, 2, 3], [4, 5, 6], [1, 7, 8]]])
    assert merge_interests_full(scores, ids, 4)[0].tolist() == [[1, 4, 2, 5]]  # max merge: no reserved item
    out_ids, out_s, source = merge_with_reserved_share(scores, ids, 4, slice(2, None), 0.5)
    # head = 1, 4; reserved merge = 1 (taken), 7, 8 -> 7, 8; ordered by score
    assert out_ids.tolist() == [[1, 4, 7, 8]]
    assert out_s[0].tolist() == pytest.approx([0.9, 0.85, 0.2, 0.1])
    assert source.tolist() == [[0, 1, 2, 2]]
    assert torch.equal(
        merge_with_reserved_share(scores, ids, 4, slice(2, None), 0.0)[0], merge_interests_full(scores, ids, 4)[0]
    )
    # the reserved interest has one new item only: the merge's next item fills the second reserved slot
    ids_few = torch.tensor([[[1, 2, 3], [4, 5, 6], [1, 4, 9]]])
    assert merge_with_reserved_share(scores, ids_few, 4, slice(2, None), 0.5)[0].tolist() == [[1, 4, 2, 9]]


def test_reserved_share_merge_matches_the_slow_loop_on_random_lists():
    rng = np.random.default_rng(8)
    n_users, k, per = 30, 6, 12
    ids = rng.integers(0, 30, size=(n_users, k, per))
    scores = rng.permutation(n_users * k * per).reshape(n_users, k, per).astype(np.float32)
    for n, first, share in [(12, 3, 0.25), (10, 3, 0.5), (8, 5, 1.0), (12, 2, 0.1)]:
        s, i = scores[:, :, :n], ids[:, :, :n]
        got = merge_with_reserved_share(torch.from_numpy(s), torch.from_numpy(i), n, slice(first, None), share)[0]
        for u in range(n_users):
            assert got[u].tolist() == reserved_merge_loop(s[u], i[u], n, first, share), (n, share, u)
        # the same slots for the first interests instead (eval.base_share: GemiRec's base)
        got = merge_with_reserved_share(torch.from_numpy(s), torch.from_numpy(i), n, slice(0, first), share)[0]
        for u in range(n_users):
            assert got[u].tolist() == reserved_merge_loop(s[u], i[u], n, 0, share, stop=first), (n, share, u)


def test_merge_matches_literal_loop_on_random_lists():
    rng = np.random.default_rng(3)
    n_users, k, per, n = 40, 4, 10, 15
    ids = rng.integers(0, 25, size=(n_users, k, per))
    scores = rng.permutation(n_users * k * per).reshape(n_users, k, per).astype(np.float32)  # distinct
    merged = merge_interests(torch.from_numpy(scores), torch.from_numpy(ids), n)
    for u in range(n_users):
        assert merged[u].tolist() == comirec_merge(scores[u], ids[u], n)
