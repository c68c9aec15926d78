"""Top-N metrics of the ComiRec protocol, vectorised over users (docs/models.md sections 3.3 and 6).

Inputs: ``recs`` [U, N] int recommended ids in rank order (-1 = empty slot) and each user's targets (time
order, repeats kept), as a list of per-user arrays or a :class:`CSRTargets`. All metrics of several
cut-offs are computed from one ranked list of length max(ks); cut-off N uses its first N entries.

Definitions (per user u, T_u = the target list, S_N = set of the first N recommendations):

- ``recall@N``: ComiRec ``paper`` branch (variant (a)): #{j : T_u[j] in S_N} / len(T_u); repeated targets
  count once per occurrence, in the numerator and the denominator.
- ``hit_rate@N``: [#hits > 0] (ComiRec).
- ``ndcg@N``: textbook NDCG: DCG = sum_{r<N} [rec_r in set(T_u)] / log2(r+2) over the recommended list,
  IDCG = sum_{r < min(|set(T_u)|, N)} 1/log2(r+2) (our decision, docs/models.md section 6).
- ``ndcg_comirec@N``: ComiRec ``paper`` branch = PIMI_Rec HEAD (variant (a)): iterate the ground-truth list
  in time order; DCG = sum over hit positions ``no`` of 1/log2(no+2), IDCG = sum_{r<#hits} 1/log2(r+2),
  0 without hits. This is the variant the published ComiRec / PIMI / GIMIRec NDCG tables used.

Users are identified by their row; averages are plain means over rows (ComiRec divides by the user count).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

METRIC_NAMES = ("recall", "ndcg", "ndcg_comirec", "hit_rate")


class CSRTargets(NamedTuple):
    """Targets of U users in CSR form: user u's list is ``items[indptr[u]:indptr[u+1]]`` (time order)."""

    indptr: np.ndarray
    items: np.ndarray


Targets = Sequence[np.ndarray] | CSRTargets


def to_csr(targets: Targets) -> CSRTargets:
    """A list of per-user arrays (or a CSRTargets) -> CSRTargets with int64 arrays."""
    if isinstance(targets, CSRTargets):
        indptr = np.asarray(targets.indptr, dtype=np.int64)
        items = np.asarray(targets.items, dtype=np.int64)
        if indptr.ndim != 1 or len(indptr) == 0 or indptr[0] != 0 or indptr[-1] != len(items):
            raise ValueError("CSRTargets: indptr must start at 0 and end at len(items)")
        return CSRTargets(indptr, items)
    lengths = np.fromiter((len(t) for t in targets), dtype=np.int64, count=len(targets))
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = (
        np.concatenate([np.asarray(t, dtype=np.int64).ravel() for t in targets])
        if len(targets)
        else np.zeros(0, dtype=np.int64)
    )
    return CSRTargets(indptr, items)


def _discount_cumsum(length: int) -> np.ndarray:
    """c[h] = sum_{r<h} 1/log2(r+2), h = 0..length (the ideal DCG of h hits)."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(length) + 2.0))])


def per_user_metrics(recs: np.ndarray, targets: Targets, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-user metric arrays ``{"recall@20": [U], ...}`` for every N in ``ks`` (see the module docstring)."""
    recs = np.asarray(recs)
    if recs.ndim != 2:
        raise ValueError(f"recs must be [users, N], got shape {recs.shape}")
    if not np.issubdtype(recs.dtype, np.integer):
        raise ValueError(f"recs must hold integer item ids, got dtype {recs.dtype}")
    recs = recs.astype(np.int64)
    n_users, depth = recs.shape
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1 or max(ks) > depth:
        raise ValueError(f"cut-offs {ks} must lie in 1..{depth} (the length of the recommended lists)")
    csr = to_csr(targets)
    if len(csr.indptr) - 1 != n_users:
        raise ValueError(f"{len(csr.indptr) - 1} target lists for {n_users} recommended lists")
    lengths = np.diff(csr.indptr)
    if n_users and lengths.min() == 0:
        raise ValueError(f"user row {int(np.argmin(lengths))} has no targets; recall is undefined for it")

    # Encode (user, item) pairs as int64 keys; ids < 0 (empty slots) never match.
    base = int(max(recs.max(initial=0), csr.items.max(initial=0))) + 1
    t_user = np.repeat(np.arange(n_users, dtype=np.int64), lengths)
    t_pos = np.arange(len(csr.items), dtype=np.int64) - np.repeat(csr.indptr[:-1], lengths)
    t_key = t_user * base + csr.items
    rank = np.broadcast_to(np.arange(depth, dtype=np.int64), recs.shape)
    r_valid = recs >= 0
    r_key = (np.arange(n_users, dtype=np.int64)[:, None] * base + recs)[r_valid]
    r_rank = rank[r_valid]

    # Best (smallest) rank of each (user, item) among the recommendations.
    order = np.lexsort((r_rank, r_key))
    r_key, r_rank = r_key[order], r_rank[order]
    first = np.ones(len(r_key), dtype=bool)
    first[1:] = r_key[1:] != r_key[:-1]
    u_key, u_rank = r_key[first], r_rank[first]
    # Rank at which each target entry is recommended (depth = not recommended).
    where = np.searchsorted(u_key, t_key)
    found = where < len(u_key)
    found[found] = u_key[where[found]] == t_key[found]
    t_rank = np.full(len(t_key), depth, dtype=np.int64)
    t_rank[found] = u_rank[where[found]]

    # Textbook NDCG: relevance of each recommendation = item in set(targets).
    t_unique = np.unique(t_key)
    n_unique = np.bincount(t_unique // base, minlength=n_users)
    pos = np.searchsorted(t_unique, r_key)
    rel = pos < len(t_unique)
    rel[rel] = t_unique[pos[rel]] == r_key[rel]
    # Only the first occurrence of a recommended item is relevant (a repeated id adds no gain).
    rel &= first
    r_user = r_key // base

    cum = _discount_cumsum(max(depth, int(lengths.max(initial=0))))
    out: dict[str, np.ndarray] = {}
    for k in ks:
        hit = t_rank < k
        n_hits = np.bincount(t_user, weights=hit, minlength=n_users)
        out[f"recall@{k}"] = n_hits / lengths
        out[f"hit_rate@{k}"] = (n_hits > 0).astype(np.float64)
        # Variant (a): DCG over ground-truth positions, IDCG over #hits.
        dcg_a = np.bincount(t_user, weights=hit / np.log2(t_pos + 2.0), minlength=n_users)
        idcg_a = cum[n_hits.astype(np.int64)]
        out[f"ndcg_comirec@{k}"] = np.divide(dcg_a, idcg_a, out=np.zeros(n_users), where=idcg_a > 0)
        # Textbook: DCG over recommended ranks, IDCG over min(|set(targets)|, N).
        gain = rel & (r_rank < k)
        dcg = np.bincount(r_user, weights=gain / np.log2(r_rank + 2.0), minlength=n_users)
        idcg = cum[np.minimum(n_unique, k)]
        out[f"ndcg@{k}"] = np.divide(dcg, idcg, out=np.zeros(n_users), where=idcg > 0)
    return {name: out[name] for k in ks for name in (f"{m}@{k}" for m in METRIC_NAMES)}


def compute_metrics(
    recs: np.ndarray, targets: Targets, ks: Sequence[int] = (20, 50), per_user: bool = False
) -> dict[str, float] | tuple[dict[str, float], dict[str, np.ndarray]]:
    """Mean over users of every metric at every cut-off (fractions, not percentages).

    Returns ``{"recall@20": .., "ndcg@20": .., "ndcg_comirec@20": .., "hit_rate@20": .., ...}``; with
    ``per_user=True`` also the per-user arrays, as ``(summary, per_user)``.
    """
    arrays = per_user_metrics(recs, targets, ks)
    summary = {name: float(values.mean()) if len(values) else 0.0 for name, values in arrays.items()}
    return (summary, arrays) if per_user else summary
