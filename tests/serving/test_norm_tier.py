"""Norm tiers: an index over the largest-norm share of the items, against a slow search of that share."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from mirec.serving.bundle import export_bundle, load_bundle
from mirec.serving.index import (
    FAISS_EXACT_MIN_QUERIES,
    IndexParams,
    ItemIndex,
    calibrate,
    norm_tier_ids,
    overlap,
)
from tests.conftest import assert_same_top_lists


def lognormal_table(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    vectors = torch.randn(n + 1, d, generator=g) * torch.exp(0.5 * torch.randn(n + 1, 1, generator=g))
    vectors[0] = 0
    return vectors


def slow_tier_search(table: torch.Tensor, share: float, query: torch.Tensor, n: int, banned=()) -> tuple[list, list]:
    """One query, by hand: rank the items by norm, keep ceil(share * n_items), score each, sort. (ids, scores)"""
    norms = [(float(table[i].norm()), -i) for i in range(1, len(table))]
    keep = int(np.ceil(share * (len(table) - 1)))
    tier = [-neg for _, neg in sorted(norms, reverse=True)[:keep]]
    scored = sorted(((float(query @ table[i]), i) for i in tier if i not in banned), reverse=True)[:n]
    return [i for _, i in scored], [s for s, _ in scored]


def test_tier_ids_are_the_largest_norms_ties_by_id():
    table = torch.zeros(7, 2)
    table[1:, 0] = torch.tensor([1.0, 3.0, 2.0, 3.0, 0.5, 2.0])  # items 2 and 4 tie, 3 and 6 tie
    assert norm_tier_ids(table, 1.0) is None
    assert norm_tier_ids(table, 0.3).tolist() == [2, 4]  # ceil(0.3 * 6) = 2
    assert norm_tier_ids(table, 0.5).tolist() == [2, 3, 4]  # the tie at 2.0 goes to the smaller id
    assert norm_tier_ids(table, 0.01).tolist() == [2]  # at least one item
    for bad in (-0.5, 1.5):
        with pytest.raises(ValueError, match="norm_tier must be in"):
            IndexParams(norm_tier=bad)
    with pytest.raises(ValueError, match="auto.*exact search only"):
        IndexParams(kind="hnsw", norm_tier=0.0)
    assert norm_tier_ids(table, 0.0) is None  # auto before calibration: every item


@pytest.mark.parametrize(
    "params",
    [
        IndexParams(kind="exact", norm_tier=0.25, exact_backend="torch"),
        IndexParams(kind="exact", norm_tier=0.25, exact_backend="faiss"),
        IndexParams(kind="ivf", metric="ip", ivf_nlist=4, ivf_nprobe=4, norm_tier=0.25),  # every list probed
        IndexParams(kind="faiss", metric="ip", faiss_factory="Flat", norm_tier=0.25),
    ],
    ids=["exact-torch", "exact-faiss", "ivf-exhaustive", "faiss-flat"],
)
def test_tier_search_is_exact_search_of_the_tier(params, tmp_path):
    table = lognormal_table(400, 8)
    queries = torch.randn(6, 2, 8, generator=torch.Generator().manual_seed(1))
    index = ItemIndex(table, params)
    assert index.n_indexed == 100
    scores, ids = index.search(queries, 10)
    for u in range(6):
        for k in range(2):
            assert_same_top_lists(ids[u, k], scores[u, k], *slow_tier_search(table, 0.25, queries[u, k], 10))
    torch.testing.assert_close(scores, torch.einsum("ukd,uknd->ukn", queries, table[ids]), rtol=1e-5, atol=1e-4)
    # exclusions in item ids, some inside the tier and some outside it (those are never found anyway)
    tier = set(norm_tier_ids(table, 0.25).tolist())
    outside = [j for j in range(1, 20) if j not in tier]
    banned = [np.asarray(ids[u, 0, :4].tolist() + outside) for u in range(6)]
    kept_scores, kept = index.search(queries, 10, banned)
    for u in range(6):
        slow = slow_tier_search(table, 0.25, queries[u, 0], 10, set(banned[u].tolist()))
        assert_same_top_lists(kept[u, 0], kept_scores[u, 0], *slow)
    index.save(tmp_path)
    assert torch.equal(ItemIndex.load(tmp_path, table).search(queries, 10)[1], ids)


def test_auto_exact_backend_is_faiss_for_large_calls_only(monkeypatch):
    table = lognormal_table(300, 8)
    index = ItemIndex(table, IndexParams(kind="exact", norm_tier=0.5))
    assert index.exact_backend(FAISS_EXACT_MIN_QUERIES - 1) == "torch"
    assert index.exact_backend(FAISS_EXACT_MIN_QUERIES) == "faiss"
    assert ItemIndex(table, IndexParams(exact_backend="torch")).exact_backend(10**6) == "torch"
    assert ItemIndex(table, IndexParams(exact_backend="faiss")).exact_backend(1) == "faiss"
    with pytest.raises(ValueError, match="exact_backend 'blas'"):
        IndexParams(exact_backend="blas")
    with pytest.raises(ValueError, match=r"interests must be \[users, K, 8\]"):
        index.search(torch.randn(8), 5)  # a malformed query gets the retriever's message, whatever the back-end
    # the same lists either way, at both sides of the threshold (the threshold lowered to cross it cheaply)
    queries = torch.randn(8, 2, 8, generator=torch.Generator().manual_seed(3))
    banned = [np.arange(1, 40, 3 + u) for u in range(8)]
    torch_scores, torch_ids = index.search(queries, 12, banned)
    monkeypatch.setattr("mirec.serving.index.FAISS_EXACT_MIN_QUERIES", 16)
    assert index.exact_backend(16) == "faiss"
    faiss_scores, faiss_ids = index.search(queries, 12, banned)
    assert_same_top_lists(faiss_ids, faiss_scores, torch_ids, torch_scores)


def test_a_saved_tier_index_is_refused_for_another_tier(tmp_path):
    table = lognormal_table(300, 8)
    ItemIndex(table, IndexParams(kind="hnsw", metric="ip", norm_tier=0.5)).save(tmp_path)
    values = json.loads((tmp_path / "index.json").read_text())
    (tmp_path / "index.json").write_text(json.dumps({**values, "norm_tier": 1.0}))
    with pytest.raises(ValueError, match=r"index.faiss: a Faiss index of 150 vectors for 300 indexed items"):
        ItemIndex.load(tmp_path, table)


def test_calibration_measures_an_exact_tier_against_the_whole_catalogue():
    table = lognormal_table(500, 8)
    queries = torch.randn(20, 2, 8, generator=torch.Generator().manual_seed(4))
    index, report = calibrate(table, IndexParams(kind="exact", norm_tier=0.3), queries, n=10)
    [candidate] = report["candidates"]
    assert candidate["norm_tier"] == 0.3 and report["chosen"] == candidate
    # exact search over a tier finds every exact top-10 item inside the tier: overlap = their share, no ranking
    exact = ItemIndex(table).search(queries, 10)[1]
    tier = torch.from_numpy(norm_tier_ids(table, 0.3))
    assert candidate["overlap"] == pytest.approx(float(torch.isin(exact, tier).float().mean()), abs=1e-4)
    assert 0 < candidate["overlap"] < 1  # this table's top lists reach below the tier


def test_auto_tier_is_the_smallest_share_before_the_overlap_falls_below_the_target():
    from mirec.serving.index import NORM_TIERS

    table = lognormal_table(600, 8)
    table[1:301] *= 20  # half the items long: the top lists live in that half
    queries = torch.randn(20, 2, 8, generator=torch.Generator().manual_seed(6))
    exact = ItemIndex(table).search(queries, 10)[1]
    index, report = calibrate(table, IndexParams(kind="exact", norm_tier=0.0), queries, n=10)
    tried = [c["norm_tier"] for c in report["candidates"]]
    assert tried == list(NORM_TIERS[: len(tried)])
    by_hand = {t: overlap(ItemIndex(table, IndexParams(norm_tier=t)).search(queries, 10)[1], exact) for t in tried}
    reaching = [t for t in tried if by_hand[t] >= 0.97]
    assert reaching == tried[: len(reaching)] and len(tried) in (len(reaching), len(reaching) + 1)
    assert report["chosen"]["norm_tier"] == index.params.norm_tier == min(reaching) <= 0.5
    assert by_hand[tried[-1]] < 0.97 or tried == list(NORM_TIERS)


def test_an_exported_bundle_keeps_its_tier_and_reports_its_overlap(run_dir, tmp_path):
    manifest = export_bundle(run_dir, tmp_path / "tier", index=IndexParams(kind="exact", norm_tier=0.5))
    assert manifest["index"]["norm_tier"] == 0.5
    [candidate] = manifest["index"]["calibration"]["candidates"]
    assert 0 < candidate["overlap"] <= 1
    served = load_bundle(tmp_path / "tier")
    tier = set(norm_tier_ids(served.index.item_table, 0.5).tolist())
    interests = torch.randn(3, 4, served.index.dim, generator=torch.Generator().manual_seed(0))
    found = served.index.search(interests, 5)[1]
    assert set(found.reshape(-1).tolist()) <= tier
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mirec",
            "export",
            str(run_dir),
            "--output",
            str(tmp_path / "auto"),
            "--norm-tier",
            "auto",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    calibration = json.loads(out.stdout)["index"]["calibration"]
    assert calibration["chosen"]["overlap"] >= 0.97 and calibration["candidates"][0]["norm_tier"] == 1.0
    bad = subprocess.run(
        [sys.executable, "-m", "mirec", "export", str(run_dir), "--output", str(tmp_path / "bad"), "--norm-tier", "2"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "a share in (0, 1] or auto" in bad.stderr
