"""ComiRec's controllable diversity aggregation (docs/models.md section 3.2; Diversity@N is a registered metric
in :mod:`mirec.eval.metrics`), and
interest-collapse diagnostics for K > 1 models (docs/models.md section 5.3).

Categories: ``item_categories`` is [n_items + 1] int64 indexed by item id, -1 = unknown. An unknown category
is treated as one more category (all unknown items share it), so it neither escapes the diversity penalty
nor inflates Diversity@N.
"""

from __future__ import annotations

import numpy as np
import torch

from mirec.config import check_diversity_lambda
from mirec.eval.retrieval import dedup_candidates
from mirec.nn import regularizers


class NoCategoriesError(ValueError):
    pass


def _categories(item_categories: np.ndarray | torch.Tensor | None, what: str) -> np.ndarray:
    if item_categories is None:
        raise NoCategoriesError(
            f"{what} needs item categories, but this dataset has none (items.parquet has no 'category' "
            "column); prepare the dataset with categories or set eval.diversity_lambda = 0"
        )
    cats = np.asarray(item_categories.cpu() if isinstance(item_categories, torch.Tensor) else item_categories)
    if cats.ndim != 1:
        raise ValueError(f"item_categories must be a 1-D array indexed by item id, got shape {cats.shape}")
    return cats.astype(np.int64)


def diverse_aggregate(
    scores: torch.Tensor,
    ids: torch.Tensor,
    n: int,
    item_categories: np.ndarray | torch.Tensor | None,
    diversity_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ComiRec ``evaluate_full(coef=lambda)`` greedy: (ids [U, n], raw scores [U, n], interest [U, n]).

    Candidates = union of the K per-interest lists (scores/ids [U, K, n']) with the best score f(u, i);
    n steps each pick argmax_i [f(u, i) - lambda * cnt[cat(i)]] (first maximum in score order, as the
    reference's strict '>' scan), cnt = selected items per category. lambda = 0 equals the plain merge.
    Vectorised over users; the loop is over the n steps only.
    """
    cats_np = _categories(item_categories, "diversity-controlled aggregation")
    diversity_lambda = check_diversity_lambda(diversity_lambda)
    if scores.shape != ids.shape or scores.ndim != 3:
        raise ValueError(f"scores and ids must both be [U, K, n'], got {tuple(scores.shape)} and {tuple(ids.shape)}")
    if int(ids.max()) >= len(cats_np):
        raise ValueError(f"item id {int(ids.max())} has no entry in item_categories (length {len(cats_np)})")
    n_users, _, per = scores.shape
    s_sorted, id_sorted, keep, order = dedup_candidates(scores.reshape(n_users, -1), ids.reshape(n_users, -1))
    cats = torch.from_numpy(cats_np).to(ids.device)[id_sorted.clamp(min=0)]
    raw = torch.where(keep, s_sorted, torch.full_like(s_sorted, float("-inf")))
    cand = raw.double()  # float64: a large lambda times a count must not swamp the score differences
    count = torch.zeros_like(cand)
    rows = torch.arange(n_users, device=ids.device)
    out_ids = torch.full((n_users, n), -1, dtype=torch.int64, device=ids.device)
    out_s = torch.full((n_users, n), float("-inf"), device=ids.device)
    source = torch.full((n_users, n), -1, dtype=torch.int64, device=ids.device)
    for step in range(n):
        j = (cand - diversity_lambda * count).argmax(dim=1)
        ok = torch.isfinite(cand[rows, j])
        out_ids[:, step] = torch.where(ok, id_sorted[rows, j], -1)
        out_s[:, step] = torch.where(ok, raw[rows, j], float("-inf"))
        source[:, step] = torch.where(ok, order[rows, j] // per, -1)
        count += ((cats == cats[rows, j][:, None]) & ok[:, None]).to(count.dtype)
        cand[rows, j] = float("-inf")
    return out_ids, out_s, source


# ----------------------------------------------------------------------------------------------------------
# Interest-collapse diagnostics (K > 1)


def cosine_gram(interests: torch.Tensor) -> torch.Tensor:
    """Per user: the K x K cosine similarities of its interest vectors (no gradient, float32) -> [U, K, K]."""
    return regularizers.cosine_gram(interests.detach().float())


def _mean_over_pairs(gram: torch.Tensor) -> np.ndarray:
    """Per user: the mean of a cosine gram's entries above the diagonal (1 where there is no pair)."""
    if gram.shape[1] < 2:
        return np.ones(gram.shape[0])
    return regularizers.mean_above_diagonal(gram).cpu().numpy().astype(np.float64)


def interest_cosine(interests: torch.Tensor) -> np.ndarray:
    """Per user: mean pairwise cosine similarity of its K interest vectors (1 = fully collapsed)."""
    return _mean_over_pairs(cosine_gram(interests))


def item_cosine(item_vectors: torch.Tensor) -> float:
    """Mean cosine over all pairs of distinct catalogue items ([n, d], padding row excluded by the caller): the
    similarity two unrelated interests share through the item space alone, the floor to read interest_cosine
    against. Exact in O(n d): sum over pairs = (|sum of unit vectors|^2 - sum of their squared norms) / 2."""
    n = item_vectors.shape[0]
    if n < 2:
        return 0.0
    unit = torch.nn.functional.normalize(item_vectors.detach().double(), dim=1)
    total = unit.sum(0)
    return float((total @ total - (unit * unit).sum()) / (n * (n - 1)))


def topk_jaccard(ids: torch.Tensor) -> np.ndarray:
    """Per user: mean Jaccard overlap |A ∩ B| / |A ∪ B| over pairs of its per-interest top-n lists ([U, K, n],
    -1 = empty slot; each list holds distinct ids)."""
    n_users, k, _ = ids.shape
    if k < 2:
        return np.ones(n_users)
    upper = torch.triu_indices(k, k, offset=1, device=ids.device)
    a, b = ids[:, upper[0]], ids[:, upper[1]]  # [U, P, n]
    both = torch.cat([a, b], dim=2).sort(dim=2).values
    inter = ((both[..., 1:] == both[..., :-1]) & (both[..., 1:] > 0)).sum(2).double()
    union = (a > 0).sum(2) + (b > 0).sum(2) - inter
    jac = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))
    return jac.mean(1).cpu().numpy()


def interest_shares(source: torch.Tensor, k: int) -> np.ndarray:
    """Per user: share of the final list contributed by each interest (the interest that gave the item its
    max score), sorted largest first -> [U, K]. ``source`` is [U, N], -1 = empty slot."""
    n_users = source.shape[0]
    valid = source >= 0
    counts = torch.zeros(n_users, k, dtype=torch.float64, device=source.device)
    counts.scatter_add_(1, source.clamp(min=0), valid.double())
    total = valid.sum(1, keepdim=True).double()
    shares = torch.where(total > 0, counts / total.clamp(min=1), torch.zeros_like(counts))
    return shares.sort(dim=1, descending=True).values.cpu().numpy()


def collapse_per_user(
    interests: torch.Tensor, ids: torch.Tensor, source: torch.Tensor, first_generated: int | None = None
) -> dict[str, np.ndarray]:
    """The diagnostics per user: interest_cosine [U], topk_jaccard [U], interest_share [U, K], and
    active_dims [U, d] (True where any of the user's interests is non-zero in that dimension); with
    ``first_generated`` (GemiRec over a base) also generated_list_share [U], the final list's share from the
    generated interests (index >= first_generated)."""
    out = {
        "interest_cosine": interest_cosine(interests),
        "topk_jaccard": topk_jaccard(ids),
        "interest_share": interest_shares(source, interests.shape[1]),
        "active_dims": (interests != 0).any(dim=1).cpu().numpy(),
    }
    if first_generated is not None:
        filled = (source >= 0).sum(1).clamp(min=1).double()
        out["generated_list_share"] = ((source >= first_generated).sum(1).double() / filled).cpu().numpy()
        out.update(group_cosines(interests, first_generated))
    return out


def generated_collapse_keys(first_generated: int, num_interests: int) -> list[str]:
    """The per-user collapse entries of a model serving generated interests from ``first_generated`` on."""
    keys = ["generated_list_share", "interest_cosine_cross"]
    keys += ["interest_cosine_base"] if first_generated > 1 else []
    keys += ["interest_cosine_generated"] if num_interests - first_generated > 1 else []
    return keys


def group_cosines(interests: torch.Tensor, first_generated: int) -> dict[str, np.ndarray]:
    """Per user: the mean pairwise interest cosine within the base's interests (index < first_generated),
    within the generated ones, and across the two groups (each base x generated pair), all from one gram; a
    group of one interest has no within-group pair and no entry (``generated_collapse_keys`` decides).
    Says where a GemiRec-over-base user's interest similarity sits."""
    gram, g = cosine_gram(interests), first_generated
    values = {
        "interest_cosine_base": _mean_over_pairs(gram[:, :g, :g]),
        "interest_cosine_generated": _mean_over_pairs(gram[:, g:, g:]),
        "interest_cosine_cross": gram[:, :g, g:].flatten(1).mean(1).cpu().numpy().astype(np.float64),
    }
    return {key: values[key] for key in generated_collapse_keys(g, interests.shape[1]) if key in values}
