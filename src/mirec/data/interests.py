"""Item interest clusters: a definition of "an interest" that depends on no model, for the novel-interest metrics.

An item's interest is its cluster in an embedding of item co-occurrence (docs/models.md section 6):

1. co-occurrence counts of item pairs at most ``window`` positions apart in the same sequence, over
   :meth:`~mirec.data.dataset.PreparedDataset.context_sequences` (never a valid/test target);
2. positive PMI of those counts, a truncated SVD (``dim`` components, scaled by sqrt of the singular values),
   rows L2-normalised (the usual SVD-of-PPMI item embedding, as word2vec's matrix view);
3. k-means (Faiss's: seeded random initial centres, Lloyd iterations) into ``n_clusters`` clusters.

Items that never occur in those sequences have no cluster (-1), as has the padding id 0. The assignment is
computed once per (dataset, n_clusters, seed) and stored beside the prepared dataset
(``interests-v2-k{n}-s{seed}.npy``, written atomically under a lock; v2: Faiss's k-means); in-memory datasets
compute it each time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from mirec.data.dataset import PreparedDataset

DEFAULT_CLUSTERS = 64
WINDOW = 5
DIM = 32


def cooccurrence(indptr: np.ndarray, items: np.ndarray, n_items: int, window: int = WINDOW) -> sp.csr_matrix:
    """Symmetric [n_items + 1]^2 counts of (a, b) at most ``window`` positions apart in one sequence (a != b
    positions; a pair of equal ids counts on the diagonal)."""
    user = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    rows, cols = [], []
    for gap in range(1, window + 1):  # one vectorised pass per gap (window is small)
        same = user[gap:] == user[:-gap]
        rows.append(items[:-gap][same])
        cols.append(items[gap:][same])
    a, b = np.concatenate(rows), np.concatenate(cols)
    counts = sp.coo_matrix(
        (np.ones(2 * len(a)), (np.concatenate([a, b]), np.concatenate([b, a]))), shape=(n_items + 1, n_items + 1)
    )
    return counts.tocsr()


def ppmi_embedding(counts: sp.csr_matrix, dim: int, seed: int) -> np.ndarray:
    """Rows of U sqrt(S) from a truncated SVD of PPMI(counts), L2-normalised; zero rows for unseen items."""
    total = counts.sum()
    row = np.asarray(counts.sum(1)).ravel()
    coo = counts.tocoo()
    pmi = np.log(coo.data * total / (row[coo.row] * row[coo.col]))
    keep = pmi > 0
    ppmi = sp.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=counts.shape)
    u, s = randomized_svd(ppmi.astype(np.float64), dim, seed)
    vectors = u * np.sqrt(s)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def randomized_svd(matrix: sp.csr_matrix, rank: int, seed: int, power: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(U [n, rank], singular values) of a sparse matrix by a seeded randomized range finder with power
    iterations (Halko, Martinsson and Tropp 2011, Alg. 4.4); ARPACK took 9 s on Grocery's 8.7k items, this 0.1 s."""
    rank = max(1, min(rank, min(matrix.shape)))
    sketch = matrix @ np.random.default_rng(seed).standard_normal((matrix.shape[1], rank + 10))
    q, _ = np.linalg.qr(sketch)
    for _ in range(power):  # re-orthonormalised each time, so small singular directions survive
        q, _ = np.linalg.qr(matrix.T @ q)
        q, _ = np.linalg.qr(matrix @ q)
    u_small, s, _ = np.linalg.svd((matrix.T @ q).T, full_matrices=False)
    return (q @ u_small)[:, :rank], s[:rank]


def kmeans(x: np.ndarray, k: int, seed: int, iters: int = 25) -> np.ndarray:
    """Cluster labels of the rows of ``x``: Faiss's k-means (seeded random initial centres, Lloyd iterations,
    empty clusters split from large ones), on every row (no subsampling)."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    k = min(k, len(x))
    clustering = faiss.Kmeans(
        x.shape[1], k, niter=iters, seed=seed, min_points_per_centroid=1, max_points_per_centroid=len(x)
    )
    clustering.train(x)
    return clustering.index.search(x, 1)[1].ravel().astype(np.int64)


def compute_item_clusters(dataset: PreparedDataset, n_clusters: int = DEFAULT_CLUSTERS, seed: int = 0) -> np.ndarray:
    """[n_items + 1] int64 cluster of every item id (-1: padding, or never seen outside valid/test targets)."""
    indptr, items, _ = dataset.context_sequences()
    counts = cooccurrence(indptr, items, dataset.n_items)
    seen = np.flatnonzero(np.asarray(counts.sum(1)).ravel() > 0)
    seen = seen[seen > 0]
    clusters = np.full(dataset.n_items + 1, -1, dtype=np.int64)
    if len(seen) == 0:
        return clusters
    vectors = ppmi_embedding(counts, DIM, seed)[seen]
    clusters[seen] = kmeans(vectors, n_clusters, seed)
    return clusters


def item_clusters(dataset: PreparedDataset, n_clusters: int = DEFAULT_CLUSTERS, seed: int = 0) -> np.ndarray:
    """The dataset's item clusters, from its folder when computed before, else computed (and stored there)."""
    cache = getattr(dataset, "_interest_clusters", {})
    if (n_clusters, seed) in cache:
        return cache[(n_clusters, seed)]
    path = None if dataset.path is None else Path(dataset.path) / f"interests-v2-k{n_clusters}-s{seed}.npy"
    if path is not None and path.exists():
        clusters = np.load(path)
    else:
        clusters = compute_item_clusters(dataset, n_clusters, seed)
        if path is not None:
            _store(path, clusters)
    cache[(n_clusters, seed)] = clusters
    dataset._interest_clusters = cache  # type: ignore[attr-defined]
    return clusters


def _store(path: Path, clusters: np.ndarray) -> None:
    """Write the assignment beside the dataset (atomically, one writer at a time); a read-only folder only warns."""
    import warnings

    from mirec.utils import atomic_path, exclusive_lock

    try:
        with exclusive_lock(path.with_name(path.name + ".lock"), f"interest clusters {path}", wait=True):
            if not path.exists():
                with atomic_path(path) as tmp, open(tmp, "wb") as out:
                    np.save(out, clusters)
    except OSError as exc:
        warnings.warn(f"{path}: interest clusters not stored ({exc}); they are recomputed next time", stacklevel=3)


__all__ = ["item_clusters", "compute_item_clusters", "cooccurrence", "DEFAULT_CLUSTERS"]
