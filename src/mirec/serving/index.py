"""Item indexes for serving: exact search or a Faiss ANN index (HNSW, IVF-Flat), one contract for all.

Every index answers ``search(queries [U, K, d], n, exclude) -> (scores [U, K, n], ids [U, K, n])`` with
internal item ids 1..n_items and exact inner-product scores, as :class:`mirec.eval.retrieval.ExactRetriever`,
so the ComiRec merge and the diversity aggregation apply unchanged.

Inner product on un-normalised vectors is not a metric, and graph indexes are built for metrics. Two answers
are offered: Faiss's own inner-product indexes (``metric = "ip"``) and the inner-product-to-L2 transform
(Bachrach et al., RecSys 2014; ``metric = "l2"``): x' = [x, sqrt(M^2 - |x|^2)] with M the largest item norm,
q' = [q, 0], so |q' - x'|^2 = |q|^2 + M^2 - 2 q.x and the nearest neighbours in L2 are the largest inner
products. Measured (benchmarks/bench_ann.py, docs/performance.md), neither wins everywhere: on some trained tables
HNSW on raw inner product misses much of the exact top-50 (the known trap) and the transform does not; on others
it is the other way round.
So the default, ``metric = "auto"``, is decided when a bundle is exported, on the run's own validation users:
both are built, each is searched with their interests, and the one whose top-n agrees more with exact search
is kept (with the smallest ``efSearch`` that reaches the target overlap, 0.97), the measured overlaps recorded in the
manifest. Candidates are re-scored exactly (q.x) before they are returned, so scores are comparable across a
user's interests. Indexes are saved with Faiss's own writer/reader (never pickle).

Any kind can hold only a norm tier, the share of items with the largest norms (``norm_tier``): since
q.x <= |q| |x|, on some tables the top lists hardly leave it; its overlap with exact search is calibrated too.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from mirec.choices import EXACT_BACKENDS, INDEX_KINDS, INDEX_METRICS
from mirec.eval.retrieval import ExactRetriever, check_interest_shape, exclusion_pairs

IndexKind = Literal[INDEX_KINDS]
INDEX_KINDS: tuple[str, ...] = ("exact", "hnsw", "ivf", "faiss")
# From this many interest queries per call Faiss's flat search beats the torch back-end on one CPU thread
# (10k-400k items, d 64, n 50: docs/experiments/11-retrieval-stage.md 11h); below it torch is faster.
FAISS_EXACT_MIN_QUERIES = 2048


@dataclass
class IndexParams:
    """Index settings; 0 = chosen from the catalogue size by :meth:`resolved` (the defaults measured in
    benchmarks/bench_ann.py)."""

    kind: IndexKind = "exact"
    # ip: Faiss's inner-product index; l2: the inner-product-to-L2 transform; auto: measured at export (l2 without
    # validation queries)
    metric: Literal[INDEX_METRICS] = "auto"
    hnsw_m: int = 32  # graph degree
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 0  # 0 = max(128, 2 * candidates)
    ivf_nlist: int = 0  # 0 = 4 * sqrt(n_items) (at most n_items / 39, at least 1)
    ivf_nprobe: int = 0  # 0 = max(8, nlist // 16)
    candidates_factor: int = 2  # ANN candidates per interest = factor * n (then exact re-scoring keeps n)
    # kind "faiss": any Faiss index_factory string (e.g. "IVF4096_HNSW32,PQ32x4fs,RFlat") and its search-time
    # settings as Faiss's ParameterSpace reads them (e.g. "nprobe=32,k_factor_rf=4")
    faiss_factory: str = ""
    faiss_search: str = ""
    # the share of items, largest norms first, that the index holds (1 = all; 0 = auto, exact kind: measured at
    # export). Inner-product top lists favour long vectors (q.x <= |q| |x|), on some tables almost entirely
    norm_tier: float = 1.0
    # exact kind: torch's blocked matmul + topk, Faiss's flat search, or auto: Faiss for calls of at least
    # FAISS_EXACT_MIN_QUERIES interest queries (batch scoring), torch below (the service's small batches)
    exact_backend: Literal[EXACT_BACKENDS] = "auto"

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"index kind {self.kind!r}; expected one of {list(INDEX_KINDS)}")
        if self.kind == "faiss" and not self.faiss_factory:
            raise ValueError("index kind 'faiss' needs a factory string (--faiss-factory, e.g. IVF1024,Flat)")
        if self.metric not in ("auto", "ip", "l2"):
            raise ValueError(f"index metric {self.metric!r}; expected auto, ip or l2")
        for name in ("hnsw_m", "hnsw_ef_construction", "candidates_factor"):
            if getattr(self, name) < 1:
                raise ValueError(f"index {name} must be >= 1, got {getattr(self, name)}")
        for name in ("hnsw_ef_search", "ivf_nlist", "ivf_nprobe"):
            if getattr(self, name) < 0:
                raise ValueError(f"index {name} must be >= 0, got {getattr(self, name)}")
        if self.exact_backend not in EXACT_BACKENDS:
            raise ValueError(f"index exact_backend {self.exact_backend!r}; expected one of {list(EXACT_BACKENDS)}")
        if not 0 <= self.norm_tier <= 1:
            raise ValueError(f"index norm_tier must be in (0, 1] (0: auto), got {self.norm_tier}")
        if self.norm_tier == 0 and self.kind != "exact":
            raise ValueError("index norm_tier 0 (auto) is measured for exact search only; give ANN kinds a share")

    def resolved(self, n_items: int) -> IndexParams:
        # 4 sqrt(n) lists, but at least 39 items per list (Faiss's k-means warns below that)
        nlist = self.ivf_nlist or max(1, min(int(4 * math.sqrt(n_items)), n_items // 39))
        return IndexParams(
            kind=self.kind,
            metric=self.metric,
            hnsw_m=self.hnsw_m,
            hnsw_ef_construction=self.hnsw_ef_construction,
            hnsw_ef_search=self.hnsw_ef_search,
            ivf_nlist=min(nlist, n_items),
            ivf_nprobe=self.ivf_nprobe or max(8, nlist // 16),
            candidates_factor=self.candidates_factor,
            faiss_factory=self.faiss_factory,
            faiss_search=self.faiss_search,
            norm_tier=self.norm_tier,
            exact_backend=self.exact_backend,
        )


def norm_tier_ids(item_table: torch.Tensor, share: float) -> np.ndarray | None:
    """Item ids (ascending) of the ``share`` of items with the largest norms, ties by id; None for all items
    (share 1, or 0: auto, all items until calibration chooses)."""
    n_items = int(item_table.shape[0]) - 1
    if share >= 1 or share == 0:
        return None
    norms = item_table[1:].float().norm(dim=1).numpy()
    keep = max(1, math.ceil(share * n_items))
    return np.sort(np.argsort(-norms, kind="stable")[:keep]) + 1


def augment_items(vectors: np.ndarray) -> tuple[np.ndarray, float]:
    """Inner product -> L2: append sqrt(M^2 - |x|^2) (M = the largest norm). Returns (x' [n, d+1], M)."""
    squared = np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64)
    top = float(squared.max()) if len(squared) else 0.0
    extra = np.sqrt(np.maximum(top - squared, 0.0)).astype(np.float32)
    return np.ascontiguousarray(np.hstack([vectors.astype(np.float32), extra[:, None]])), math.sqrt(top)


def augment_queries(queries: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.hstack([queries.astype(np.float32), np.zeros((len(queries), 1), np.float32)]))


class ItemIndex:
    """Top-n inner-product search over item ids 1..n_items, exact or approximate (build once, search often)."""

    def __init__(self, item_table: torch.Tensor, params: IndexParams | None = None, faiss_index=None):
        self.params = (params or IndexParams()).resolved(int(item_table.shape[0]) - 1)
        if self.params.metric == "auto":  # no validation queries here (see calibrate): the transform
            self.params.metric = "l2"
        self.item_table = item_table.detach().float().cpu().contiguous()  # [n_items + 1, d], row 0 padding
        self.n_items, self.dim = int(item_table.shape[0]) - 1, int(item_table.shape[1])
        tier = norm_tier_ids(self.item_table, self.params.norm_tier)
        # the searched table holds local ids 1..n_indexed: local_to_id maps them to item ids, id_to_local back (0
        # for items outside the tier)
        self.local_to_id = self.id_to_local = None
        indexed = self.item_table
        if tier is not None:
            self.local_to_id = torch.from_numpy(np.concatenate([[0], tier]))
            self.id_to_local = np.zeros(self.n_items + 1, dtype=np.int64)
            self.id_to_local[tier] = np.arange(1, len(tier) + 1)
            indexed = self.item_table[self.local_to_id]
        self.n_indexed = int(indexed.shape[0]) - 1
        self.exact = {backend: ExactRetriever(indexed, backend) for backend in ("torch", "faiss")}  # one table
        self.faiss_index = faiss_index
        if self.params.kind != "exact" and faiss_index is not None:
            if faiss_index.d != self.index_dim:
                raise ValueError(
                    f"a Faiss index of dimension {faiss_index.d} for {self.dim}-d items ({self.params.metric})"
                )
            if faiss_index.ntotal != self.n_indexed:
                raise ValueError(f"a Faiss index of {faiss_index.ntotal} vectors for {self.n_indexed} indexed items")
        if self.params.kind != "exact" and faiss_index is None:
            self.faiss_index = self._build(indexed[1:].numpy())
        self._configure()

    @property
    def index_dim(self) -> int:
        return self.dim + (self.params.metric == "l2")

    def _build(self, items: np.ndarray):
        import faiss

        p = self.params
        if p.metric == "l2":
            vectors, _ = augment_items(items)
            metric, flat = faiss.METRIC_L2, faiss.IndexFlatL2
        else:
            vectors = np.ascontiguousarray(items, dtype=np.float32)
            metric, flat = faiss.METRIC_INNER_PRODUCT, faiss.IndexFlatIP
        if p.kind == "faiss":
            index = faiss.index_factory(self.index_dim, p.faiss_factory, metric)
            if not index.is_trained:
                index.train(vectors)
        elif p.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.index_dim, p.hnsw_m, metric)
            index.hnsw.efConstruction = p.hnsw_ef_construction
        else:
            index = faiss.IndexIVFFlat(flat(self.index_dim), self.index_dim, p.ivf_nlist, metric)
            index.train(vectors)
        index.add(vectors)
        return index

    def _configure(self) -> None:
        if self.params.kind == "ivf":
            self.faiss_index.nprobe = self.params.ivf_nprobe
        if self.params.kind == "faiss" and self.params.faiss_search:
            import faiss

            faiss.ParameterSpace().set_index_parameters(self.faiss_index, self.params.faiss_search)

    def search(
        self, queries: torch.Tensor, n: int, exclude: Sequence[np.ndarray] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [U, K, n], ids [U, K, n]) best first; -1 / -inf where fewer than n items are left."""
        check_interest_shape(queries, self.dim)  # before the exclusions are read against its user count
        if self.params.kind == "exact":
            exact = self.exact[self.exact_backend(math.prod(queries.shape[:-1]))]
            pairs = self._local_exclusion_pairs(exclude, len(queries))
            scores, ids = exact.search_pairs(queries.float().cpu(), n, *pairs)
            return scores, self._global_ids(ids)
        n_users, k, _ = queries.shape
        flat = queries.detach().float().cpu().reshape(-1, self.dim)
        width = candidate_width(n, self.n_indexed, self.params.candidates_factor, exclude)
        if self.params.kind == "hnsw":
            self.faiss_index.hnsw.efSearch = self.params.hnsw_ef_search or max(128, 2 * width)
        query = augment_queries(flat.numpy()) if self.params.metric == "l2" else np.ascontiguousarray(flat.numpy())
        _, positions = self.faiss_index.search(query, width)
        ids = self._global_ids(torch.from_numpy(positions).long() + 1)  # faiss position p = local id p + 1
        return rescore_candidates(flat, ids, self.item_table, n, exclude, n_users, k)

    def exact_backend(self, n_queries: int) -> str:
        """The exact back-end a call with ``n_queries`` interest queries uses."""
        if self.params.exact_backend != "auto":
            return self.params.exact_backend
        return "faiss" if n_queries >= FAISS_EXACT_MIN_QUERIES else "torch"

    def _global_ids(self, local: torch.Tensor) -> torch.Tensor:
        if self.local_to_id is None:
            return local
        return torch.where(local > 0, self.local_to_id[local.clamp(min=0)], local)

    def _local_exclusion_pairs(
        self, exclude: Sequence[np.ndarray] | None, n_users: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Excluded (user row, item id) pairs, checked as for exact search, with the ids in the searched table's
        local ids; items outside the tier are dropped (never found anyway)."""
        users, items = exclusion_pairs(exclude, n_users, self.n_items)
        if self.id_to_local is None:
            return users, items
        local = self.id_to_local[items]
        return users[local > 0], local[local > 0]

    def save(self, folder: str | Path) -> list[str]:
        """Write ``index.json`` (+ ``index.faiss`` for ANN kinds) into ``folder``; returns the file names."""
        folder = Path(folder)
        (folder / "index.json").write_text(json.dumps(asdict(self.params), indent=2))
        if self.faiss_index is None:
            return ["index.json"]
        import faiss

        faiss.write_index(self.faiss_index, str(folder / "index.faiss"))
        return ["index.json", "index.faiss"]

    @classmethod
    def load(cls, folder: str | Path, item_table: torch.Tensor) -> ItemIndex:
        folder = Path(folder)
        values = json.loads((folder / "index.json").read_text())
        faiss_index = None
        if values.get("kind", "exact") != "exact":
            import faiss

            faiss_index = faiss.read_index(str(folder / "index.faiss"))
            # index.json written before the metric option: the dimension tells (d + 1 = the L2 transform)
            values.setdefault("metric", "l2" if faiss_index.d == int(item_table.shape[1]) + 1 else "ip")
        params = IndexParams(**values)
        try:
            return cls(item_table, params, faiss_index)
        except ValueError as error:
            raise ValueError(f"{folder / 'index.faiss'}: {error}") from None


def rescore_candidates(
    flat: torch.Tensor,
    ids: torch.Tensor,
    item_table: torch.Tensor,
    n: int,
    exclude: Sequence[np.ndarray] | None,
    n_users: int,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates of an approximate search (ids [U*K, width], <= 0 where none) -> the exact top n per query:
    re-scored as q.x from the item table (scores comparable across a user's interests whatever found them),
    excluded items dropped, padded with -1 / -inf. Returns (scores [U, K, n], ids [U, K, n])."""
    width = ids.shape[1]
    ids = torch.where(ids > 0, ids, torch.zeros_like(ids))
    scores = torch.einsum("qd,qwd->qw", flat, item_table[ids])
    scores = torch.where(ids > 0, scores, torch.full_like(scores, float("-inf")))
    extra = max((len(e) for e in exclude), default=0) if exclude is not None else 0
    if extra:
        padded = np.zeros((n_users, extra), dtype=np.int64)  # 0 never matches a real id
        for user, items in enumerate(exclude):
            padded[user, : len(items)] = items
        rows = torch.from_numpy(padded).repeat_interleave(k, dim=0)  # [U*K, E]
        banned = (ids[:, :, None] == rows[:, None, :]).any(-1)
        scores = scores.masked_fill(banned, float("-inf"))
    top = torch.topk(scores, min(n, width), dim=1)
    out_i = ids.gather(1, top.indices)
    out_i = torch.where(torch.isfinite(top.values), out_i, torch.full_like(out_i, -1))
    out_s = top.values
    if out_s.shape[1] < n:
        pad = n - out_s.shape[1]
        out_s = torch.cat([out_s, out_s.new_full((len(out_s), pad), float("-inf"))], 1)
        out_i = torch.cat([out_i, out_i.new_full((len(out_i), pad), -1)], 1)
    return out_s.reshape(n_users, k, n), out_i.reshape(n_users, k, n)


def candidate_width(n: int, n_items: int, factor: int, exclude: Sequence[np.ndarray] | None) -> int:
    """How many candidates to ask an approximate search for: ``factor * n`` plus room for excluded items."""
    extra = max((len(e) for e in exclude), default=0) if exclude is not None else 0
    return min(n_items, factor * n + extra)


def overlap(found: torch.Tensor, exact: torch.Tensor) -> float:
    """Mean share of the exact top-n ids (per query row) that ``found`` also returns."""
    a, b = found.reshape(-1, found.shape[-1]), exact.reshape(-1, exact.shape[-1])
    hits = (a[:, :, None] == b[:, None, :]).any(-1) & (a > 0)
    return float(hits.sum(1).float().mean() / b.shape[1])


def calibrate(
    item_table: torch.Tensor,
    params: IndexParams,
    queries: torch.Tensor,
    n: int = 50,
    target: float = 0.97,
    tolerance: float = 0.002,
) -> tuple[ItemIndex, dict]:
    """Build the ANN index for real queries (e.g. validation users' interests [U, K, d]). Candidates: both
    metrics with ``metric = "auto"``; for HNSW with ``hnsw_ef_search = 0`` efSearch 64, 128, ... up to 1024, each
    metric stopping at the first that reaches ``target`` overlap with exact search (0.97: at 0.95 a measured test
    recall@50 lost more than the 1% we allow, docs/performance.md). Each candidate's overlap and queries/s are
    measured; the fastest candidate whose overlap is within ``tolerance`` of the best is kept, so a more expensive
    index is never chosen for a gain below it. Exact search over a norm tier: :func:`_calibrate_norm_tier`.
    Returns the index and the calibration table."""
    params = params.resolved(int(item_table.shape[0]) - 1)
    if params.kind == "exact" and params.norm_tier >= 1:
        return ItemIndex(item_table, params), {}
    exact = ItemIndex(item_table, IndexParams(kind="exact")).search(queries, n)[1]
    report: dict = {
        "queries": int(queries.shape[0] * queries.shape[1]),
        "n": n,
        "target": target,
        "tolerance": tolerance,
        "candidates": [],
    }
    if params.kind == "exact":
        return _calibrate_norm_tier(item_table, params, queries, exact, report)
    indexes: dict[str, ItemIndex] = {}
    for metric in ("ip", "l2") if params.metric == "auto" else (params.metric,):
        index = indexes[metric] = ItemIndex(item_table, IndexParams(**{**params.__dict__, "metric": metric}))
        searches = (
            [params.hnsw_ef_search] if params.kind != "hnsw" or params.hnsw_ef_search else [64, 128, 256, 512, 1024]
        )
        for ef in searches:
            index.params.hnsw_ef_search = ef
            found, seconds = _timed_search(index, queries, n)
            value = overlap(found, exact)
            report["candidates"].append(
                {
                    "metric": metric,
                    "hnsw_ef_search": ef,
                    "norm_tier": params.norm_tier,
                    "overlap": round(value, 4),
                    "queries_per_s": seconds,
                }
            )
            if value >= target:
                break
    chosen = _cheapest_within(report["candidates"], tolerance)
    index = indexes[chosen["metric"]]
    index.params.hnsw_ef_search = chosen["hnsw_ef_search"]
    report["chosen"] = chosen
    return index, report


NORM_TIERS = (1.0, 0.5, 0.3, 0.2, 0.1, 0.05)  # norm_tier = 0 (auto) tries these, largest first


def _calibrate_norm_tier(
    item_table: torch.Tensor, params: IndexParams, queries: torch.Tensor, exact: torch.Tensor, report: dict
) -> tuple[ItemIndex, dict]:
    """Exact search over a norm tier: the given share, or (``norm_tier = 0``) the smallest of :data:`NORM_TIERS`
    before the first whose overlap falls below the target (the whole catalogue always reaches it)."""
    n, target = report["n"], report["target"]
    chosen = index = None
    for tier in NORM_TIERS if params.norm_tier == 0 else (params.norm_tier,):
        candidate_index = ItemIndex(item_table, IndexParams(**{**params.__dict__, "norm_tier": tier}))
        found, speed = _timed_search(candidate_index, queries, n)
        value = overlap(found, exact)
        candidate = {"norm_tier": tier, "overlap": round(value, 4), "queries_per_s": speed}
        report["candidates"].append(candidate)
        if params.norm_tier == 0 and value < target:
            break
        chosen, index = candidate, candidate_index
    report["chosen"] = chosen
    return index, report


def _timed_search(index: ItemIndex, queries: torch.Tensor, n: int, repeats: int = 3) -> tuple[torch.Tensor, float]:
    """The search's ids and its speed in interest queries per second (best of ``repeats``: the least disturbed)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        found = index.search(queries, n)[1]
        best = min(best, time.perf_counter() - started)
    return found, round(queries.shape[0] * queries.shape[1] / max(best, 1e-9), 1)


def _cheapest_within(candidates: list[dict], tolerance: float) -> dict:
    """The fastest candidate whose overlap is within ``tolerance`` of the best one's."""
    best = max(c["overlap"] for c in candidates)
    return max((c for c in candidates if c["overlap"] >= best - tolerance), key=lambda c: c["queries_per_s"])


__all__ = [
    "IndexParams",
    "ItemIndex",
    "INDEX_KINDS",
    "augment_items",
    "augment_queries",
    "calibrate",
    "candidate_width",
    "norm_tier_ids",
    "overlap",
    "rescore_candidates",
]
