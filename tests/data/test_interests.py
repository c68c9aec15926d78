"""Model-free interest clusters and the novel-interest metrics: hand-computed cases, a slow reference, no
valid/test target in the clustering, determinism, storage beside the dataset, the evaluator's keys."""

from __future__ import annotations

import numpy as np
import pytest

from mirec.data.dataset import PreparedDataset, load_dataset
from mirec.data.interests import compute_item_clusters, item_clusters
from mirec.eval.metrics import compute_metrics, per_user_metrics
from tests.conftest import make_split, random_dataset


def test_novel_recall_and_interest_coverage_by_hand():
    clusters = np.array([-1, 0, 0, 1, 1, 2, 2, -1])  # item 7 has no cluster
    history = [np.array([1, 3]), np.array([5])]
    # user 0 knows clusters {0, 1}: targets 5 (cluster 2) is novel, 2 and 4 familiar, 7 neither
    # user 1 knows {2}: targets 1 (cluster 0) and 3 (cluster 1) novel
    targets = [np.array([5, 2, 4, 7]), np.array([1, 3])]
    recs = np.array([[5, 4, 6, 1], [2, 3, 3, -1]])
    out = per_user_metrics(recs, targets, [1, 4], clusters=clusters, history=history)
    assert out["novel_recall@1"].tolist() == [1.0, 0.0]  # 5 at rank 0 | 2 is no target
    assert out["novel_recall@4"].tolist() == [1.0, 0.5]  # user 1: 3 yes, 1 no
    assert out["interest_coverage@1"].tolist() == [1.0, 1.0]
    assert out["interest_coverage@4"].tolist() == [3.0, 2.0]  # {2, 1, 0} | {1, 0}
    # a user without novel targets is left out of the mean, not counted as 0
    summary = compute_metrics(
        np.array([[1, 2], [5, 6]]), [np.array([2]), np.array([3])], [2], clusters=clusters, history=[[1], [6]]
    )
    assert summary["novel_recall@2"] == 0.0 and np.isfinite(summary["novel_recall@2"])
    summary = compute_metrics(
        np.array([[1, 2], [3, 6]]), [np.array([2]), np.array([3])], [2], clusters=clusters, history=[[1], [6]]
    )
    assert summary["novel_recall@2"] == 1.0  # user 0's only target is familiar: only user 1 counts


def test_novel_metrics_equal_a_slow_loop():
    rng = np.random.default_rng(4)
    n_items, users = 50, 40
    clusters = np.concatenate([[-1], rng.integers(-1, 6, n_items)])
    recs = np.stack([rng.permutation(np.arange(1, n_items + 1))[:12] for _ in range(users)])
    recs[rng.random(recs.shape) < 0.1] = -1
    targets = [rng.integers(1, n_items + 1, rng.integers(1, 6)) for _ in range(users)]
    history = [rng.integers(1, n_items + 1, rng.integers(1, 8)) for _ in range(users)]
    out = per_user_metrics(recs, targets, [5, 12], clusters=clusters, history=history)
    for u in range(users):
        known = {clusters[i] for i in history[u] if clusters[i] >= 0}
        novel = [t for t in targets[u] if clusters[t] >= 0 and clusters[t] not in known]
        for k in (5, 12):
            top = [i for i in recs[u, :k] if i > 0]
            expected = sum(t in top for t in novel) / len(novel) if novel else np.nan
            assert out[f"novel_recall@{k}"][u] == pytest.approx(expected, nan_ok=True)
            assert out[f"interest_coverage@{k}"][u] == len({clusters[i] for i in top if clusters[i] >= 0})


def grouped_dataset(seed: int = 0) -> PreparedDataset:
    """Three disjoint item groups (1-10, 11-20, 21-30); every user stays inside one group."""
    rng = np.random.default_rng(seed)
    seqs = []
    for u in range(90):
        group = u % 3
        seqs.append((rng.integers(1, 11, rng.integers(6, 15)) + 10 * group).tolist())
    splits = [make_split(seqs[:70], users=range(70))]
    for lo, hi in ((70, 80), (80, 90)):
        splits.append(make_split(seqs[lo:hi], users=range(lo, hi), history_len=[4] * (hi - lo)))
    return PreparedDataset(
        n_items=30,
        train=splits[0],
        valid=splits[1],
        test=splits[2],
        item_original_ids=np.array([""] + [f"i{i}" for i in range(1, 31)], dtype=object),
        user_original_ids=np.array([f"u{u}" for u in range(90)], dtype=object),
        meta={"name": "grouped"},
    )


def test_clusters_recover_co_occurrence_groups_and_are_deterministic():
    dataset = grouped_dataset()
    clusters = compute_item_clusters(dataset, n_clusters=3, seed=0)
    assert clusters[0] == -1
    groups = [set(clusters[1 + 10 * g : 11 + 10 * g]) for g in range(3)]
    assert all(len(g) == 1 for g in groups) and len(set().union(*groups)) == 3
    assert np.array_equal(clusters, compute_item_clusters(dataset, n_clusters=3, seed=0))


def test_clusters_read_no_valid_or_test_target():
    dataset = random_dataset(n_users=80, n_items=40, seed=2)
    before = compute_item_clusters(dataset, n_clusters=5, seed=1)
    rng = np.random.default_rng(0)
    for split in (dataset.valid, dataset.test):
        targets = ~split.history_mask()
        items = np.array(split.items)
        items[targets] = rng.integers(1, 41, targets.sum())  # every target replaced
        split.items = items
    assert np.array_equal(before, compute_item_clusters(dataset, n_clusters=5, seed=1))
    items = np.array(dataset.train.items)
    items[: len(items) // 2] = rng.integers(1, 41, len(items) // 2)  # training data does count
    dataset.train.items = items
    assert not np.array_equal(before, compute_item_clusters(dataset, n_clusters=5, seed=1))


def test_clusters_are_stored_beside_the_prepared_dataset(tmp_path):
    grouped_dataset().save(tmp_path / "grouped")
    dataset = load_dataset(tmp_path / "grouped")
    clusters = item_clusters(dataset, n_clusters=3)
    stored = tmp_path / "grouped" / "interests-v2-k3-s0.npy"
    assert stored.exists() and np.array_equal(np.load(stored), clusters)
    np.save(stored, np.full_like(clusters, 7))  # a later load reads the file, it does not recompute
    assert (item_clusters(load_dataset(tmp_path / "grouped"), n_clusters=3) == 7).all()


def test_the_evaluator_reports_novel_interest_metrics_and_their_share():
    from mirec.config import EvalConfig
    from mirec.eval.evaluator import evaluate
    from tests.eval.test_evaluator import MAXLEN, make_dataset, make_model

    dataset, model = make_dataset(4), make_model(4)
    result = evaluate(model, dataset, "valid", EvalConfig(topk=[5], interest_clusters=3), maxlen=MAXLEN, per_user=True)
    assert {"novel_recall@5", "interest_coverage@5", "novel_target_share"} <= set(result)
    clusters = item_clusters(dataset, n_clusters=3)
    sequences = dataset.valid
    rows = result["per_user"]["rows"]
    shares = []
    for row in rows:  # slow reference of the share: per target entry, its cluster against the read window
        cut = sequences.history_len[row]
        items = np.asarray(sequences.items[sequences.indptr[row] : sequences.indptr[row + 1]])
        known = {clusters[i] for i in items[:cut][-MAXLEN:] if clusters[i] >= 0}
        shares += [clusters[t] >= 0 and clusters[t] not in known for t in items[cut:]]
    assert result["novel_target_share"] == pytest.approx(np.mean(shares))
    plain = evaluate(model, dataset, "valid", EvalConfig(topk=[5], interest_clusters=0), maxlen=MAXLEN)
    assert "novel_recall@5" not in plain and "novel_target_share" not in plain
