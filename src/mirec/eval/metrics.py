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

- ``novel_recall@N`` (needs interest clusters and the history window): recall over the targets whose
  cluster occurs nowhere in the items the model read, averaged over the users that have such targets.
- ``cold_recall@N`` / ``warm_recall@N`` (needs cold items: a catalogue with items that have no id row): recall
  over the targets that are cold items / all other targets, each averaged over the users that have such targets.
- ``interest_coverage@N`` (needs interest clusters): distinct clusters among the first N recommendations.
- ``diversity@N`` (needs item categories): ComiRec ``compute_diversity``, the share of pairs among the
  filled slots whose categories differ; an unknown category (-1) counts as one more category.

Users are identified by their row; averages are plain means over rows (ComiRec divides by the user count).

Each metric is a small function of a :class:`RankedLists` (one shared, lazily computed vectorised pre-pass
over the lists and targets: the rank at which each target is recommended, the relevance of each slot) and a
cut-off, registered in :data:`METRICS` with the dataset facts it needs; adding a metric = one function with
``@register_metric`` + one test. ``eval.early_stop_metric``, ``mirec bench`` and the plots read the names here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np


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


class RankedLists:
    """U users' ranked lists and targets, with the pre-pass every metric reads (each part computed on first use).

    ``recs`` [U, N] int ids in rank order (-1 = empty slot); ``categories`` [n_items + 1] int64 indexed by item
    id (-1 = unknown) where the dataset has them; ``clusters`` the same for the model-free interest clusters
    (:mod:`mirec.data.interests`) and ``history`` each user's history window (the items the model read)."""

    def __init__(
        self,
        recs: np.ndarray,
        targets: Targets,
        *,
        categories: np.ndarray | None = None,
        clusters: np.ndarray | None = None,
        history: Targets | None = None,
        cold: np.ndarray | None = None,
    ):
        recs = np.asarray(recs)
        if recs.ndim != 2:
            raise ValueError(f"recs must be [users, N], got shape {recs.shape}")
        if not np.issubdtype(recs.dtype, np.integer):
            raise ValueError(f"recs must hold integer item ids, got dtype {recs.dtype}")
        self.recs = recs.astype(np.int64)
        self.n_users, self.depth = self.recs.shape
        self.targets = to_csr(targets)
        if len(self.targets.indptr) - 1 != self.n_users:
            raise ValueError(f"{len(self.targets.indptr) - 1} target lists for {self.n_users} recommended lists")
        self.lengths = np.diff(self.targets.indptr)
        if self.n_users and self.lengths.min() == 0:
            raise ValueError(f"user row {int(np.argmin(self.lengths))} has no targets; recall is undefined for it")
        self.categories = None if categories is None else np.asarray(categories, dtype=np.int64)
        self.clusters = None if clusters is None else np.asarray(clusters, dtype=np.int64)
        self.cold = None if cold is None else np.asarray(cold, dtype=bool)
        self.history = None if history is None else to_csr(history)
        if self.history is not None and len(self.history.indptr) - 1 != self.n_users:
            raise ValueError(f"{len(self.history.indptr) - 1} histories for {self.n_users} recommended lists")
        self._hits: dict[int, np.ndarray] = {}

    # ------------------------------------------------------------ the shared pre-pass
    @cached_property
    def _keys(self) -> tuple[int, np.ndarray, np.ndarray]:
        """(base, target keys, target users): (user, item) pairs encoded as user * base + item."""
        base = int(max(self.recs.max(initial=0), self.targets.items.max(initial=0))) + 1
        t_user = np.repeat(np.arange(self.n_users, dtype=np.int64), self.lengths)
        return base, t_user * base + self.targets.items, t_user

    @cached_property
    def _slots(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Filled slots sorted by (user, item), then rank: (keys, ranks, first occurrence of the pair)."""
        base = self._keys[0]
        valid = self.recs >= 0  # empty slots never match
        rank = np.broadcast_to(np.arange(self.depth, dtype=np.int64), self.recs.shape)[valid]
        key = (np.arange(self.n_users, dtype=np.int64)[:, None] * base + self.recs)[valid]
        order = np.lexsort((rank, key))
        key, rank = key[order], rank[order]
        first = np.ones(len(key), dtype=bool)
        first[1:] = key[1:] != key[:-1]
        return key, rank, first

    @property
    def target_users(self) -> np.ndarray:
        """[T] the user row of each target entry."""
        return self._keys[2]

    @cached_property
    def target_positions(self) -> np.ndarray:
        """[T] each target entry's position in its user's (time-ordered) target list."""
        return np.arange(len(self.targets.items), dtype=np.int64) - np.repeat(self.targets.indptr[:-1], self.lengths)

    @cached_property
    def target_rank(self) -> np.ndarray:
        """[T] the best rank at which each target entry is recommended (``depth`` = not recommended)."""
        key, rank, first = self._slots
        u_key, u_rank = key[first], rank[first]
        t_key = self._keys[1]
        where = np.searchsorted(u_key, t_key)
        found = where < len(u_key)
        found[found] = u_key[where[found]] == t_key[found]
        t_rank = np.full(len(t_key), self.depth, dtype=np.int64)
        t_rank[found] = u_rank[where[found]]
        return t_rank

    @cached_property
    def relevant_slots(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user, rank, relevant) per filled slot: relevant = the item is in set(targets) and it is the first
        occurrence of the item in the list (a repeated id adds no gain)."""
        base = self._keys[0]
        key, rank, first = self._slots
        t_unique = self._distinct_target_keys
        pos = np.searchsorted(t_unique, key)
        rel = pos < len(t_unique)
        rel[rel] = t_unique[pos[rel]] == key[rel]
        return key // base, rank, rel & first

    @cached_property
    def _distinct_target_keys(self) -> np.ndarray:
        return np.unique(self._keys[1])

    @cached_property
    def distinct_targets(self) -> np.ndarray:
        """[U] |set(targets)| per user."""
        return np.bincount(self._distinct_target_keys // self._keys[0], minlength=self.n_users)

    @cached_property
    def ideal_dcg(self) -> np.ndarray:
        """c[h] = sum_{r<h} 1/log2(r+2), h = 0..max(depth, longest target list): the ideal DCG of h hits."""
        length = max(self.depth, int(self.lengths.max(initial=0)))
        return np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(length) + 2.0))])

    @cached_property
    def novel_targets(self) -> np.ndarray:
        """[T] bool: the target's interest cluster occurs nowhere in the user's history window (targets without
        a cluster are neither novel nor familiar: False)."""
        assert self.clusters is not None and self.history is not None
        n_clusters = int(self.clusters.max(initial=0)) + 2
        h_user = np.repeat(np.arange(self.n_users, dtype=np.int64), np.diff(self.history.indptr))
        h_cluster = self.clusters[self.history.items]
        known = np.unique((h_user * n_clusters + h_cluster + 1)[h_cluster >= 0])
        t_cluster = self.clusters[self.targets.items]
        t_key = self.target_users * n_clusters + t_cluster + 1
        pos = np.minimum(np.searchsorted(known, t_key), max(len(known) - 1, 0))
        seen = (known[pos] == t_key) if len(known) else np.zeros(len(t_key), dtype=bool)
        return (t_cluster >= 0) & ~seen

    def hits(self, k: int) -> np.ndarray:
        """[U] float: target entries recommended within the first ``k`` slots (repeats counted)."""
        if k not in self._hits:
            self._hits[k] = np.bincount(self.target_users, weights=self.target_rank < k, minlength=self.n_users)
        return self._hits[k]


# ---------------------------------------------------------------- the registry
MetricFunction = Callable[[RankedLists, int], np.ndarray]


@dataclass(frozen=True)
class Metric:
    """A registered metric: ``per_user(lists, k) -> [U]`` values, and the :class:`RankedLists` attributes
    beyond lists and targets it needs (e.g. ``categories``); it is skipped where they are missing."""

    name: str
    per_user: MetricFunction
    needs: tuple[str, ...] = ()

    def available(self, lists: RankedLists) -> bool:
        return all(getattr(lists, need) is not None for need in self.needs)


METRICS: dict[str, Metric] = {}


def register_metric(name: str, *, needs: tuple[str, ...] = ()) -> Callable[[MetricFunction], MetricFunction]:
    """Register ``fn(lists, k) -> [U] per-user values`` as ``name@k`` for every cut-off."""

    def register(fn: MetricFunction) -> MetricFunction:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is registered twice")
        METRICS[name] = Metric(name, fn, needs)
        return fn

    return register


@register_metric("recall")
def recall(lists: RankedLists, k: int) -> np.ndarray:
    """ComiRec ``paper`` branch: recommended target entries / target entries (repeats count each time)."""
    return lists.hits(k) / lists.lengths


@register_metric("ndcg")
def ndcg(lists: RankedLists, k: int) -> np.ndarray:
    """Textbook NDCG: DCG over the recommended ranks, IDCG over min(|set(targets)|, k)."""
    user, rank, relevant = lists.relevant_slots
    gain = relevant & (rank < k)
    dcg = np.bincount(user, weights=gain / np.log2(rank + 2.0), minlength=lists.n_users)
    idcg = lists.ideal_dcg[np.minimum(lists.distinct_targets, k)]
    return np.divide(dcg, idcg, out=np.zeros(lists.n_users), where=idcg > 0)


@register_metric("ndcg_comirec")
def ndcg_comirec(lists: RankedLists, k: int) -> np.ndarray:
    """ComiRec / PIMI_Rec: DCG over the hit positions of the time-ordered targets, IDCG over #hits."""
    hit = lists.target_rank < k
    dcg = np.bincount(lists.target_users, weights=hit / np.log2(lists.target_positions + 2.0), minlength=lists.n_users)
    idcg = lists.ideal_dcg[lists.hits(k).astype(np.int64)]
    return np.divide(dcg, idcg, out=np.zeros(lists.n_users), where=idcg > 0)


@register_metric("hit_rate")
def hit_rate(lists: RankedLists, k: int) -> np.ndarray:
    """1 when any target is among the first k recommendations (ComiRec)."""
    return (lists.hits(k) > 0).astype(np.float64)


@register_metric("diversity", needs=("categories",))
def diversity(lists: RankedLists, k: int) -> np.ndarray:
    """ComiRec ``compute_diversity``: sum_{i<j} [cat(i) != cat(j)] / (n(n-1)/2) over the n filled slots among
    the first k (ids >= 1); 0 for fewer than 2 items."""
    assert lists.categories is not None
    recs = lists.recs[:, :k]
    valid = recs > 0
    cats = lists.categories[np.where(valid, recs, 0)][valid] + 1  # unknown -1 -> category 0
    user = np.broadcast_to(np.arange(lists.n_users)[:, None], recs.shape)[valid]
    base = int(cats.max(initial=0)) + 1
    groups, counts = np.unique(user * base + cats, return_counts=True)
    same = np.bincount(groups // base, weights=counts * (counts - 1) / 2.0, minlength=lists.n_users)
    size = valid.sum(1)
    pairs = size * (size - 1) / 2.0
    return np.divide(pairs - same, pairs, out=np.zeros(lists.n_users), where=pairs > 0)


@register_metric("novel_recall", needs=("clusters", "history"))
def novel_recall(lists: RankedLists, k: int) -> np.ndarray:
    """Recall over the targets whose interest cluster is absent from the user's history window (interest
    evolution); NaN for users without such targets (averaged over the users that have them)."""
    return _recall_over(lists, k, lists.novel_targets)


def _recall_over(lists: RankedLists, k: int, chosen: np.ndarray) -> np.ndarray:
    """Recall over the targets where ``chosen`` [T] is True; NaN for users without one."""
    hits = np.bincount(lists.target_users, weights=chosen & (lists.target_rank < k), minlength=lists.n_users)
    count = np.bincount(lists.target_users, weights=chosen, minlength=lists.n_users)
    return np.divide(hits, count, out=np.full(lists.n_users, np.nan), where=count > 0)


@register_metric("cold_recall", needs=("cold",))
def cold_recall(lists: RankedLists, k: int) -> np.ndarray:
    """Recall over the targets that are cold items (no id row: held out of training or only in the item
    table); averaged over the users that have such targets."""
    assert lists.cold is not None
    return _recall_over(lists, k, lists.cold[lists.targets.items])


@register_metric("warm_recall", needs=("cold",))
def warm_recall(lists: RankedLists, k: int) -> np.ndarray:
    """Recall over the targets that are not cold items; averaged over the users that have such targets."""
    assert lists.cold is not None
    return _recall_over(lists, k, ~lists.cold[lists.targets.items])


@register_metric("interest_coverage", needs=("clusters",))
def interest_coverage(lists: RankedLists, k: int) -> np.ndarray:
    """Distinct interest clusters among the first k recommendations (items without a cluster not counted)."""
    assert lists.clusters is not None
    recs = lists.recs[:, :k]
    cluster = np.where(recs > 0, lists.clusters[np.maximum(recs, 0)], -1)
    n_clusters = int(lists.clusters.max(initial=0)) + 1
    user = np.broadcast_to(np.arange(lists.n_users)[:, None], recs.shape)
    keys = np.unique((user * n_clusters + cluster)[cluster >= 0])
    return np.bincount(keys // n_clusters, minlength=lists.n_users).astype(np.float64)


def mean_over_users(values: np.ndarray) -> float:
    """The mean over users, skipping those a metric is undefined for (NaN); 0.0 when it is undefined for all."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if len(defined) else 0.0


METRIC_NAMES = tuple(name for name, m in METRICS.items() if not m.needs)  # the ones every dataset reports


# ---------------------------------------------------------------- entry points
def per_user_metrics(
    recs: np.ndarray,
    targets: Targets,
    ks: Sequence[int],
    *,
    categories: np.ndarray | None = None,
    clusters: np.ndarray | None = None,
    history: Targets | None = None,
    names: Sequence[str] | None = None,
    cold: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-user arrays ``{"recall@20": [U], ...}``: every registered metric whose needs are met (or the ``names``
    given; one whose needs are missing is an error) at every N in ``ks`` (see the module docstring)."""
    lists = RankedLists(recs, targets, categories=categories, clusters=clusters, history=history, cold=cold)
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1 or max(ks) > lists.depth:
        raise ValueError(f"cut-offs {ks} must lie in 1..{lists.depth} (the length of the recommended lists)")
    if names is None:
        chosen = [m for m in METRICS.values() if m.available(lists)]
    else:
        unknown = [n for n in names if n not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; registered: {list(METRICS)}")
        chosen = [METRICS[n] for n in names]
        missing = [f"{m.name} needs {', '.join(m.needs)}" for m in chosen if not m.available(lists)]
        if missing:
            raise ValueError("; ".join(missing))
    return {f"{m.name}@{k}": m.per_user(lists, k) for k in ks for m in chosen}


def compute_metrics(
    recs: np.ndarray,
    targets: Targets,
    ks: Sequence[int] = (20, 50),
    per_user: bool = False,
    *,
    categories: np.ndarray | None = None,
    clusters: np.ndarray | None = None,
    history: Targets | None = None,
) -> dict[str, float] | tuple[dict[str, float], dict[str, np.ndarray]]:
    """Mean over users of every metric at every cut-off (fractions, not percentages).

    Returns ``{"recall@20": .., "ndcg@20": .., "ndcg_comirec@20": .., "hit_rate@20": .., ...}`` (and
    ``diversity@N`` with ``categories``); with ``per_user=True`` also the per-user arrays, as ``(summary, per_user)``.
    """
    arrays = per_user_metrics(recs, targets, ks, categories=categories, clusters=clusters, history=history)
    summary = {name: mean_over_users(values) for name, values in arrays.items()}
    return (summary, arrays) if per_user else summary
