"""evaluate()/recommend() against a slow numpy-loop evaluator; diversity greedy and collapse diagnostics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from mirec.config import EvalConfig, ModelConfig
from mirec.data.batching import Batch
from mirec.data.dataset import PreparedDataset, SplitSequences
from mirec.eval.diversity import (
    NoCategoriesError,
    diverse_aggregate,
    interest_cosine,
    interest_shares,
    topk_jaccard,
)
from mirec.eval.evaluator import evaluate
from mirec.eval.metrics import compute_metrics, per_user_metrics
from mirec.eval.retrieval import merge_interests
from mirec.models.base import MultiInterestModel

D, K, N_ITEMS, MAXLEN = 8, 3, 60, 6


class MeanPlusOffsets(MultiInterestModel):
    """Interest k = mean of the window's item vectors * (k + 1) + offset_k: easy to recompute by hand."""

    name = "test-mean-offsets"

    def __init__(self, config: ModelConfig, n_items: int):
        super().__init__(config, n_items)
        self.offsets = nn.Parameter(torch.randn(config.num_interests, config.embedding_dim))

    def forward(self, batch: Batch) -> torch.Tensor:
        e = self.embed_items(batch.items) * batch.mask[..., None]
        mean = e.sum(1) / batch.mask.sum(1, keepdim=True).clamp(min=1)
        scale = torch.arange(1, self.num_interests + 1, dtype=mean.dtype)
        return mean[:, None, :] * scale[None, :, None] + self.offsets[None]


def make_split(rng: np.random.Generator, users: np.ndarray, with_cut: bool) -> SplitSequences:
    lengths = rng.integers(2, 16, size=len(users))
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    items = rng.integers(1, N_ITEMS + 1, size=indptr[-1])
    start = rng.integers(1_600_000_000, 1_700_000_000, size=len(users))
    gaps = rng.integers(0, 5 * 86400, size=indptr[-1])
    timestamps = np.concatenate(
        [s + np.cumsum(gaps[a:b]) for s, a, b in zip(start, indptr[:-1], indptr[1:], strict=True)]
    )
    history_len = (0.8 * lengths).astype(np.int64) if with_cut else None
    if with_cut:
        history_len[0] = lengths[0]  # one user without targets: skipped by the evaluation
    return SplitSequences(users, indptr, items, timestamps, history_len)


def make_dataset(seed: int = 0, categories: bool = True) -> PreparedDataset:
    rng = np.random.default_rng(seed)
    cats = np.concatenate([[-1], rng.integers(0, 5, size=N_ITEMS)])
    cats[rng.random(N_ITEMS + 1) < 0.1] = -1
    return PreparedDataset(
        n_items=N_ITEMS,
        train=make_split(rng, np.arange(0, 20), False),
        valid=make_split(rng, np.arange(20, 45), True),
        test=make_split(rng, np.arange(45, 60), True),
        item_original_ids=np.array([""] + [f"it{i * 7}" for i in range(1, N_ITEMS + 1)], dtype=object),
        user_original_ids=np.array([f"user-{u}" for u in range(60)], dtype=object),
        item_categories=cats if categories else None,
    )


def make_model(seed: int = 0, k: int = K) -> MeanPlusOffsets:
    torch.manual_seed(seed)
    return MeanPlusOffsets(ModelConfig(embedding_dim=D, num_interests=k, maxlen=MAXLEN), N_ITEMS)


def recommend(model, history, n, exclude_history=False, diversity_lambda=0.0, categories=None):
    """Internal ids in, internal ids and scores out, through the serving path (ServingModel, exact index)."""
    from mirec.config import RunConfig
    from mirec.serving.index import ItemIndex
    from mirec.serving.model import RecommendRequest, ServingModel

    names = np.array([""] + [f"it{i * 7}" for i in range(1, N_ITEMS + 1)], dtype=object)
    with torch.no_grad():
        table = model.output_embeddings()
    serving = ServingModel(model, RunConfig(model=model.config), names, ItemIndex(table), item_categories=categories)
    (result,) = serving.recommend(
        [
            RecommendRequest(
                [names[i] for i in history], n=n, exclude_history=exclude_history, diversity_lambda=diversity_lambda
            )
        ]
    )
    position = {name: i for i, name in enumerate(names)}
    return np.array([position[i] for i in result.items]), np.array(result.scores, dtype=np.float32)


def comirec_greedy(pairs: list[tuple[int, float]], n: int, cats: np.ndarray, coef: float) -> list[int]:
    """Literal ComiRec evaluate_full(coef=...) greedy with its early break; pairs are dedup'ed, score-sorted."""
    pairs = list(pairs)
    count: dict[int, int] = {}
    out: list[int] = []
    for _ in range(min(n, len(pairs))):
        best, best_score = 0, pairs[0][1] - coef * count.get(cats[pairs[0][0]], 0)
        for j in range(1, len(pairs)):
            adjusted = pairs[j][1] - coef * count.get(cats[pairs[j][0]], 0)
            if adjusted > best_score:
                best, best_score = j, adjusted
            elif pairs[j][1] < best_score:
                break
        out.append(pairs[best][0])
        count[cats[pairs[best][0]]] = count.get(cats[pairs[best][0]], 0) + 1
        pairs.pop(best)
    return out


def slow_evaluate(model, dataset, split, ks, exclude_history=False, coef=0.0):
    """Independent reference: Python loops per user, numpy float64 scores, literal ComiRec loops."""
    table = model.output_embeddings().detach().double().numpy()
    offsets = model.offsets.detach().double().numpy()
    seq = dataset.split(split)
    sums = {f"{m}@{n}": 0.0 for n in ks for m in ("recall", "ndcg", "ndcg_comirec", "hit_rate", "diversity")}
    users = 0
    for row in range(len(seq)):
        items = np.asarray(seq.items[seq.indptr[row] : seq.indptr[row + 1]])
        cut = seq.history_len[row]
        if cut == 0 or cut == len(items):
            continue
        users += 1
        history, targets = items[:cut], items[cut:].tolist()
        window = history[-MAXLEN:]
        interests = [table[window].mean(0) * (k + 1) + offsets[k] for k in range(model.num_interests)]
        for n in ks:
            pairs = []
            for v in interests:
                s = table[1:] @ v
                ranked = [int(i) + 1 for i in np.argsort(-s, kind="stable")]
                if exclude_history:
                    ranked = [i for i in ranked if i not in set(history.tolist())]
                pairs += [(i, s[i - 1]) for i in ranked[:n]]
            pairs.sort(key=lambda x: x[1], reverse=True)
            unique: list[tuple[int, float]] = []
            for iid, score in pairs:
                if iid not in {u for u, _ in unique}:
                    unique.append((iid, score))
            if coef > 0:
                rec = comirec_greedy(unique, n, dataset.item_categories, coef)
            else:
                rec = [iid for iid, _ in unique[:n]]
            hits = [no for no, iid in enumerate(targets) if iid in set(rec)]
            sums[f"recall@{n}"] += len(hits) / len(targets)
            sums[f"hit_rate@{n}"] += float(len(hits) > 0)
            if hits:
                dcg = sum(1 / math.log2(no + 2) for no in hits)
                sums[f"ndcg_comirec@{n}"] += dcg / sum(1 / math.log2(r + 2) for r in range(len(hits)))
            truth = set(targets)
            dcg = sum(1 / math.log2(r + 2) for r, iid in enumerate(rec) if iid in truth)
            sums[f"ndcg@{n}"] += dcg / sum(1 / math.log2(r + 2) for r in range(min(len(truth), n)))
            cats = dataset.item_categories[rec]
            diff = sum(cats[a] != cats[b] for a in range(len(rec)) for b in range(a + 1, len(rec)))
            sums[f"diversity@{n}"] += diff / (len(rec) * (len(rec) - 1) / 2)
    return {name: value / users for name, value in sums.items()}, users


@pytest.mark.parametrize(
    "backend,exclude,coef",
    [("torch", False, 0.0), ("faiss", True, 0.0), ("torch", False, 0.5), ("torch", True, 2.0)],
)
def test_evaluate_matches_slow_reference(backend, exclude, coef):
    dataset, model = make_dataset(), make_model()
    config = EvalConfig(topk=[5, 10], backend=backend, exclude_history=exclude, diversity_lambda=coef, batch_size=7)
    got = evaluate(model, dataset, "valid", config, maxlen=MAXLEN)
    ref, users = slow_evaluate(model, dataset, "valid", [5, 10], exclude_history=exclude, coef=coef)
    assert got["users"] == users == len(dataset.valid) - 1
    for name, value in ref.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name
    assert set(got["collapse"]) == {"interest_cosine", "topk_jaccard", "interest_share", "dead_dims", "item_cosine"}
    assert sum(got["collapse"]["interest_share"]) == pytest.approx(1.0)
    assert model.training  # mode restored


def test_max_users_per_user_and_batching_invariance():
    dataset, model = make_dataset(1), make_model(1)
    full = evaluate(model, dataset, "test", EvalConfig(topk=[5], batch_size=4), maxlen=MAXLEN, per_user=True)
    one = evaluate(model, dataset, "test", EvalConfig(topk=[5], batch_size=100), maxlen=MAXLEN)
    assert full["recall@5"] == pytest.approx(one["recall@5"])
    part = evaluate(
        model, dataset, "test", EvalConfig(topk=[5], batch_size=4), maxlen=MAXLEN, max_users=6, per_user=True
    )
    assert part["users"] == 6
    assert part["recall@5"] == pytest.approx(full["per_user"]["recall@5"][:6].mean())
    np.testing.assert_array_equal(part["per_user"]["rows"], full["per_user"]["rows"][:6])


def test_dump_in_original_ids(tmp_path):
    dataset, model = make_dataset(2), make_model(2)
    path = tmp_path / "recs.jsonl"
    evaluate(model, dataset, "valid", EvalConfig(topk=[3, 4]), maxlen=MAXLEN, dump_path=path, per_user=True)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    seq = dataset.valid
    assert len(lines) == len(seq) - 1
    for record, row in zip(lines, range(1, len(seq)), strict=True):
        items = seq.items[seq.indptr[row] : seq.indptr[row + 1]]
        cut = seq.history_len[row]
        assert record["user"] == f"user-{seq.users[row]}"
        assert record["history"] == [f"it{i * 7}" for i in items[:cut]]
        assert record["targets"] == [f"it{i * 7}" for i in items[cut:]]
        ids, _ = recommend(model, items[:cut].tolist(), n=4)
        assert record["recommendations"] == [f"it{i * 7}" for i in ids]


def test_recommend_scores_and_exclusion():
    dataset, model = make_dataset(3), make_model(3)
    history = [4, 9, 9, 17, 2, 33, 51, 8]
    ids, scores = recommend(model, history, n=N_ITEMS)
    with torch.no_grad():
        table = model.output_embeddings()
        window = torch.tensor([history[-MAXLEN:]])
        interests = model(Batch(window, torch.ones(1, MAXLEN), torch.ones(1, MAXLEN, dtype=torch.long)))
    per_interest = table[1:] @ interests[0].T  # [n_items, K]
    best = per_interest.max(1).values
    expected = (torch.argsort(-best, stable=True) + 1).numpy()
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, best[ids - 1].numpy(), rtol=1e-5)
    kept, _ = recommend(model, history, n=N_ITEMS, exclude_history=True)
    np.testing.assert_array_equal(kept, [i for i in expected if i not in set(history)])
    div, _ = recommend(model, history, n=10, diversity_lambda=1.0, categories=dataset.item_categories)
    pairs = []
    for k in range(K):
        top = torch.argsort(-per_interest[:, k], stable=True)[:10]
        pairs += [(int(i) + 1, float(per_interest[i, k])) for i in top]
    pairs.sort(key=lambda x: -x[1])
    unique = []
    for iid, sc in pairs:
        if iid not in {i for i, _ in unique}:
            unique.append((iid, sc))
    assert div.tolist() == comirec_greedy(unique, 10, dataset.item_categories, 1.0)
    from mirec.serving.model import UnknownItemsError

    with pytest.raises(UnknownItemsError):  # id 0 is padding: no item has its name
        recommend(model, [0], n=5)


def test_diversity_greedy_hand_case():
    # interest 0: items 1, 2, 3; interest 1: items 4, 1, 5. Categories 1:A 2:A 3:B 4:A 5:C.
    scores = torch.tensor([[[1.0, 0.9, 0.5], [0.95, 0.3, 0.2]]])
    ids = torch.tensor([[[1, 2, 3], [4, 1, 5]]])
    cats = np.array([-1, 0, 0, 1, 0, 2])
    assert diverse_aggregate(scores, ids, 3, cats, 0.0)[0].tolist() == [[1, 4, 2]]
    assert diverse_aggregate(scores, ids, 3, cats, 0.0)[0].tolist() == merge_interests(scores, ids, 3).tolist()
    # lambda 0.3: step 2 picks 4 (0.95-0.3 = 0.65 > 0.9-0.3); step 3: 2 scores 0.9-0.6 = 0.3 < 3's 0.5
    got, raw, source = diverse_aggregate(scores, ids, 3, cats, 0.3)
    assert got.tolist() == [[1, 4, 3]]
    assert raw.tolist() == [pytest.approx([1.0, 0.95, 0.5])] and source.tolist() == [[0, 1, 0]]
    # lambda 1: every further A is worse than B (0.5) and C (0.2)
    assert diverse_aggregate(scores, ids, 3, cats, 1.0)[0].tolist() == [[1, 3, 5]]
    assert diversity_per_user(np.array([[1, 3, 5], [1, 4, 3], [1, 4, 2]]), cats) == pytest.approx([1, 2 / 3, 0])


def diversity_per_user(recs: np.ndarray, cats: np.ndarray) -> np.ndarray:
    """The registered diversity metric at the lists' full length (targets are irrelevant to it)."""
    recs = np.asarray(recs)
    return per_user_metrics(recs, [np.array([1])] * len(recs), [recs.shape[1]], categories=cats, names=["diversity"])[
        f"diversity@{recs.shape[1]}"
    ]


def test_diversity_random_equals_literal_greedy():
    rng = np.random.default_rng(5)
    cats = rng.integers(0, 4, size=41)
    ids = torch.from_numpy(np.stack([rng.permutation(40)[:24].reshape(3, 8) + 1 for _ in range(30)]))
    ids[:, 1, :4] = ids[:, 0, 2:6]  # shared items between interests
    scores = torch.from_numpy(rng.standard_normal((30, 3, 8)).astype(np.float32)).sort(dim=2, descending=True).values
    got = diverse_aggregate(scores, ids, 8, cats, 0.4)[0]
    for u in range(30):
        pairs = sorted(zip(ids[u].flatten().tolist(), scores[u].flatten().tolist(), strict=True), key=lambda x: -x[1])
        unique = []
        for iid, s in pairs:
            if iid not in {i for i, _ in unique}:
                unique.append((iid, s))
        assert got[u].tolist() == comirec_greedy(unique, 8, cats, 0.4)


def test_diversity_metric_unknown_category_and_empty_slots():
    cats = np.array([-1, 0, 0, -1, -1, 1])
    # row 0: items 3, 4 share the unknown category; row 1: two filled slots of different categories
    recs = np.array([[1, 3, 4, 5], [2, 5, -1, -1], [2, -1, -1, -1]])
    assert diversity_per_user(recs, cats) == pytest.approx([5 / 6, 1.0, 0.0])
    summary = compute_metrics(recs, [np.array([1])] * 3, [4], categories=cats)
    assert summary["diversity@4"] == pytest.approx((5 / 6 + 1) / 3)


def test_missing_categories_give_a_clear_error():
    dataset, model = make_dataset(4, categories=False), make_model(4)
    with pytest.raises(NoCategoriesError, match="has none"):
        evaluate(model, dataset, "valid", EvalConfig(topk=[5], diversity_lambda=1.0), maxlen=MAXLEN)
    with pytest.raises(ValueError, match="diversity needs categories"):
        per_user_metrics(np.array([[1, 2]]), [np.array([1])], [2], names=["diversity"])
    plain = evaluate(model, dataset, "valid", EvalConfig(topk=[5]), maxlen=MAXLEN)
    assert "diversity@5" not in plain and "recall@5" in plain


def test_collapse_diagnostics_hand_cases():
    same = torch.tensor([[[1.0, 2.0], [1.0, 2.0], [2.0, 4.0]]])
    assert interest_cosine(same) == pytest.approx([1.0])
    assert interest_cosine(torch.tensor([[[1.0, 0.0], [0.0, 3.0]]])) == pytest.approx([0.0])
    ids = torch.tensor([[[1, 2, 3], [1, 2, 3]], [[1, 2, 3], [2, 3, 4]], [[1, 2, -1], [5, 6, 7]]])
    assert topk_jaccard(ids) == pytest.approx([1.0, 0.5, 0.0])
    # identical interests: every item's best score comes from interest 0 (first in score order)
    scores = torch.tensor([[[3.0, 2.0, 1.0]] * 3])
    from mirec.eval.retrieval import merge_interests_full

    _, _, source = merge_interests_full(scores, torch.tensor([[[1, 2, 3]] * 3]), 3)
    assert interest_shares(source, 3).tolist() == [[1.0, 0.0, 0.0]]
    assert interest_shares(torch.tensor([[2, 0, 2, -1]]), 3).tolist() == [pytest.approx([2 / 3, 1 / 3, 0.0])]


def test_item_cosine_against_every_pair_and_in_the_collapse_report():
    from mirec.eval.diversity import item_cosine

    vectors = torch.randn(7, 3, generator=torch.Generator().manual_seed(4)) + torch.tensor([1.0, 0.0, 0.0])
    pairs = [(i, j) for i in range(7) for j in range(7) if i != j]
    v = vectors.double()
    slow = np.mean([float(v[i] @ v[j] / (v[i].norm() * v[j].norm())) for i, j in pairs])
    assert item_cosine(vectors) == pytest.approx(slow, abs=1e-9)
    assert item_cosine(torch.tensor([[1.0, 0.0], [2.0, 0.0]])) == pytest.approx(1.0)
    assert item_cosine(torch.tensor([[1.0, 0.0], [-3.0, 0.0]])) == pytest.approx(-1.0)
    model, dataset = make_model(k=2), make_dataset()
    report = evaluate(model, dataset, "valid", EvalConfig(topk=[5]), maxlen=MAXLEN)["collapse"]
    with torch.no_grad():  # the catalogue without the padding row
        assert report["item_cosine"] == pytest.approx(item_cosine(model.output_embeddings()[1:]))


def test_dead_dims_counts_dimensions_zero_for_every_user_and_interest():
    from mirec.eval.collectors import CollapseCollector, reduce_collectors
    from mirec.eval.diversity import collapse_per_user

    # dimension 1 is zero everywhere; dimension 2 only in user 0; dimension 0 never
    interests = torch.tensor([[[1.0, 0.0, 0.0], [0.5, 0.0, 0.0]], [[0.0, 0.0, 2.0], [-1.0, 0.0, 0.0]]])
    ids = torch.tensor([[[1, 2], [2, 3]], [[1, 4], [4, 5]]])
    per_user = collapse_per_user(interests, ids, torch.tensor([[0, 1], [1, 0]]))
    assert per_user["active_dims"].tolist() == [[True, False, False], [True, False, True]]
    collector = CollapseCollector(2, {"interests": slice(0, 2)}, 3)
    collector.batches.append(per_user)
    summary = reduce_collectors([collector], None)["collapse"]
    assert summary["dead_dims"] == 1
    assert summary["interest_cosine"] == pytest.approx(per_user["interest_cosine"].mean())
    assert summary["interest_share"] == pytest.approx(per_user["interest_share"].mean(0).tolist())


def test_group_cosines_against_a_slow_loop_and_the_overall_mean():
    from mirec.eval.diversity import collapse_per_user, generated_collapse_keys, group_cosines

    interests = torch.randn(5, 6, 4, generator=torch.Generator().manual_seed(0))
    first = 2  # 2 base interests, 4 generated

    def cos(a, b):
        return float(a @ b / (a.norm() * b.norm()))

    for user in range(5):
        u = interests[user]
        slow_base = cos(u[0], u[1])
        slow_generated = np.mean([cos(u[i], u[j]) for i in range(2, 6) for j in range(i + 1, 6)])
        slow_cross = np.mean([cos(u[i], u[j]) for i in range(2) for j in range(2, 6)])
        got = group_cosines(interests, first)
        assert got["interest_cosine_base"][user] == pytest.approx(slow_base, abs=1e-6)
        assert got["interest_cosine_generated"][user] == pytest.approx(slow_generated, abs=1e-6)
        assert got["interest_cosine_cross"][user] == pytest.approx(slow_cross, abs=1e-6)
        # the 15 pairs of the overall mean are the 1 base, 6 generated and 8 cross pairs
        overall = (slow_base + 6 * slow_generated + 8 * slow_cross) / 15
        assert interest_cosine(interests)[user] == pytest.approx(overall, abs=1e-6)
    # one generated interest: no within-generated pair, so no entry; the summary reports exactly the keys made
    assert sorted(group_cosines(interests[:, :3], 2)) == ["interest_cosine_base", "interest_cosine_cross"]
    assert sorted(generated_collapse_keys(2, 3)) == sorted(
        ["generated_list_share", "interest_cosine_base", "interest_cosine_cross"]
    )
    ids = torch.arange(1, 5 * 6 * 2 + 1).reshape(5, 6, 2)
    per_user = collapse_per_user(interests, ids, torch.zeros(5, 2, dtype=torch.long), first)
    assert sorted(k for k in per_user if k.startswith("interest_cosine_")) == [
        "interest_cosine_base",
        "interest_cosine_cross",
        "interest_cosine_generated",
    ]
