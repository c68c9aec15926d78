"""Metrics against hand-computed cases and a literal port of ComiRec's evaluation loops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mirec.eval.metrics import CSRTargets, compute_metrics, per_user_metrics

L2 = math.log2


def test_repeats_in_targets_hand_computed():
    # targets in time order with a repeat: [3, 7, 3, 5]; recommended [5, 3, 9, 1]
    recs = np.array([[5, 3, 9, 1]])
    out = per_user_metrics(recs, [np.array([3, 7, 3, 5])], [2, 4])
    # N=2, top set {5, 3}: ground-truth positions 0, 2, 3 hit (the repeat counts twice)
    assert out["recall@2"][0] == pytest.approx(3 / 4)
    assert out["hit_rate@2"][0] == 1.0
    dcg_a = 1 / L2(2) + 1 / L2(4) + 1 / L2(5)
    idcg_a = 1 / L2(2) + 1 / L2(3) + 1 / L2(4)
    assert out["ndcg_comirec@2"][0] == pytest.approx(dcg_a / idcg_a)  # 0.9060...
    # textbook: ranks 0 and 1 relevant, IDCG over min(|{3,5,7}|, 2) = 2
    assert out["ndcg@2"][0] == pytest.approx(1.0)
    # N=4: same hits; textbook IDCG now over min(3, 4) = 3 ideal positions
    assert out["recall@4"][0] == pytest.approx(3 / 4)
    assert out["ndcg_comirec@4"][0] == pytest.approx(dcg_a / idcg_a)
    assert out["ndcg@4"][0] == pytest.approx((1 + 1 / L2(3)) / (1 + 1 / L2(3) + 1 / L2(4)))  # 0.7654


def test_ndcg_vs_ndcg_comirec_worked_example():
    # target 4 is the first ground-truth item but is recommended only at rank 2 (0-based)
    recs = np.array([[9, 8, 4]])
    out = per_user_metrics(recs, [np.array([4, 6])], [3])
    # ComiRec 'paper': DCG = 1/log2(0+2) (ground-truth position 0), IDCG over 1 hit = 1 -> 1.0
    assert out["ndcg_comirec@3"][0] == pytest.approx(1.0)
    # textbook: DCG = 1/log2(2+2) = 0.5, IDCG = 1 + 1/log2(3) (two distinct targets) -> 0.3066
    assert out["ndcg@3"][0] == pytest.approx(0.5 / (1 + 1 / L2(3)))
    assert out["recall@3"][0] == pytest.approx(0.5)


def test_no_hits_and_fewer_than_n_hits_with_empty_slots():
    recs = np.array([[1, 2, 3], [2, -1, -1]])
    targets = [np.array([7]), np.array([2, 2])]
    summary, arrays = compute_metrics(recs, targets, [3], per_user=True)
    for name in ("recall@3", "ndcg@3", "ndcg_comirec@3", "hit_rate@3"):
        assert arrays[name][0] == 0.0
    # user 2: one recommended item, which is both (repeated) targets
    assert arrays["recall@3"][1] == 1.0
    assert arrays["ndcg_comirec@3"][1] == pytest.approx(1.0)  # DCG 1 + 1/log2 3 over IDCG of 2 hits
    assert arrays["ndcg@3"][1] == pytest.approx(1.0)  # |set(targets)| = 1
    assert summary["recall@3"] == pytest.approx(0.5)
    assert summary["hit_rate@3"] == pytest.approx(0.5)
    assert list(summary) == ["recall@3", "ndcg@3", "ndcg_comirec@3", "hit_rate@3"]


def test_csr_input_equals_list_input():
    targets = [np.array([1, 2]), np.array([3]), np.array([4, 4, 5])]
    csr = CSRTargets(np.array([0, 2, 3, 6]), np.array([1, 2, 3, 4, 4, 5]))
    recs = np.array([[2, 9], [3, 1], [5, 4]])
    a = compute_metrics(recs, targets, [1, 2])
    b = compute_metrics(recs, csr, [1, 2])
    assert a == b
    assert a["recall@1"] == pytest.approx((1 / 2 + 1 + 1 / 3) / 3)


def test_bad_input_is_reported():
    with pytest.raises(ValueError, match="cut-offs"):
        per_user_metrics(np.array([[1, 2]]), [np.array([1])], [3])
    with pytest.raises(ValueError, match="user row 1 has no targets"):
        per_user_metrics(np.array([[1], [2]]), [np.array([1]), np.array([], dtype=np.int64)], [1])
    with pytest.raises(ValueError, match="target lists"):
        per_user_metrics(np.array([[1], [2]]), [np.array([1])], [1])


def comirec_paper_branch(rec: list[int], targets: list[int], n: int) -> dict[str, float]:
    """Literal port of ComiRec `paper` branch / PIMI_Rec HEAD evaluate_full (variant (a)) + textbook NDCG."""
    rec_set = set(rec[:n]) - {-1}
    recall = 0
    dcg = 0.0
    for no, iid in enumerate(targets):
        if iid in rec_set:
            recall += 1
            dcg += 1.0 / math.log(no + 2, 2)
    idcg = sum(1.0 / math.log(no + 2, 2) for no in range(recall))
    truth = set(targets)
    tdcg = sum(1.0 / math.log2(r + 2) for r, iid in enumerate(rec[:n]) if iid in truth)
    tidcg = sum(1.0 / math.log2(r + 2) for r in range(min(len(truth), n)))
    return {
        "recall": recall / len(targets),
        "ndcg_comirec": dcg / idcg if recall > 0 else 0.0,
        "hit_rate": float(recall > 0),
        "ndcg": tdcg / tidcg,
    }


def test_matches_literal_reference_on_random_lists():
    rng = np.random.default_rng(0)
    n_users, depth = 200, 12
    recs = np.stack([rng.permutation(30)[:depth] + 1 for _ in range(n_users)])
    recs[rng.random(recs.shape) < 0.05] = -1
    targets = [rng.integers(1, 31, size=rng.integers(1, 15)) for _ in range(n_users)]
    out = per_user_metrics(recs, targets, [5, 12])
    for n in (5, 12):
        for u in range(n_users):
            ref = comirec_paper_branch(recs[u].tolist(), targets[u].tolist(), n)
            for name, value in ref.items():
                assert out[f"{name}@{n}"][u] == pytest.approx(value), (name, n, u)


def test_a_registered_metric_is_reported_and_accepted_as_the_early_stop_metric(monkeypatch):
    from mirec.config import ConfigError, EvalConfig
    from mirec.eval.metrics import METRICS, Metric, register_metric

    # precision@k = recommended target entries / k: user 0 has targets 3 and 9, list [3, 5] -> 1/2
    monkeypatch.setitem(METRICS, "precision", Metric("precision", lambda lists, k: lists.hits(k) / k))
    out = per_user_metrics(np.array([[3, 5], [7, 9]]), [np.array([3, 9]), np.array([1])], [2])
    assert list(out) == ["recall@2", "ndcg@2", "ndcg_comirec@2", "hit_rate@2", "precision@2"]
    assert out["precision@2"].tolist() == [0.5, 0.0]
    assert EvalConfig(topk=[2], early_stop_metric="precision@2").early_stop_metric == "precision@2"
    with pytest.raises(ConfigError, match="precision"):
        EvalConfig(topk=[2], early_stop_metric="precison@2")
    with pytest.raises(ValueError, match="registered twice"):
        register_metric("recall")(lambda lists, k: lists.hits(k))
