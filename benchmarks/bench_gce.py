"""Benchmark GIMIRec's GCE graph build (section 4.2) at Amazon-Books scale.

    nice python benchmarks/bench_gce.py                 # 9M interactions, 600k users, 370k items, 3 hops
    python benchmarks/bench_gce.py --interactions 500000 --users 35000 --items 20000   # quick

Prints nnz (per hop and merged), wall time, peak memory of the build (tracemalloc: numpy/scipy arrays;
and process max RSS), the time of a training-batch forward and of the full E_global, and checks the
vectorised build against a plain dictionary-counting Python version on a smaller log (speed ratio).
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc
from collections import defaultdict
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from bench_support import PeakRSS

from mirec.config import GraphConfig
from mirec.data.synthetic import synthetic_log as realistic_log
from mirec.graph import BuildInfo, GlobalContext, build_cooccurrence, graph_stats
from mirec.graph.gce import SECONDS_PER_DAY


def synthetic_log(
    n_users: int, n_items: int, n_interactions: int, seed: int = 0, zipf: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR (indptr, items, days): >= 5 items per user, Zipf item popularity, exponential day gaps.

    A stand-in for mirec.data.synthetic (not present when this was written) with Amazon-Books-like
    statistics: ~15 interactions per user (long-tailed), 5-core, reviews a few weeks apart.
    """
    rng = np.random.default_rng(seed)
    extra = rng.lognormal(mean=1.5, sigma=1.1, size=n_users)
    extra = np.floor(extra * (n_interactions - 5 * n_users) / extra.sum()).astype(np.int64)
    lengths = 5 + extra
    lengths[: n_interactions - lengths.sum()] += 1  # hit the total exactly
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    n = int(indptr[-1])
    ranks = np.arange(1, n_items + 1, dtype=np.float64)
    cdf = np.cumsum(ranks**-zipf)
    cdf /= cdf[-1]
    items = (np.searchsorted(cdf, rng.random(n)) + 1).astype(np.int32)  # id 1 = most popular
    gaps = rng.exponential(scale=20.0, size=n)  # days between a user's consecutive reviews
    gaps[indptr[:-1]] = rng.uniform(0, 5000, size=n_users)  # first interaction: start day
    days = np.cumsum(gaps)
    days -= np.repeat(days[indptr[:-1]] - gaps[indptr[:-1]], lengths)  # restart the sum per user
    return indptr, items, days


def dict_reference(indptr, items, days, n_items, config: GraphConfig) -> sp.csr_matrix:
    """Straightforward Python: dictionaries of pair weights, loops over users, positions and hops."""
    a_prime: dict[tuple[int, int], float] = defaultdict(float)
    for k, hop_weight in enumerate(config.hop_weights, start=1):
        q: dict[tuple[int, int], float] = defaultdict(float)
        for user in range(len(indptr) - 1):
            seq = items[indptr[user] : indptr[user + 1]].tolist()
            ts = days[indptr[user] : indptr[user + 1]].tolist()
            for n in range(len(seq) - k):
                dt = ts[n + k] - ts[n]
                if dt <= config.l_time:
                    q[seq[n], seq[n + k]] += config.a * (config.l_time - dt) / config.l_time + config.b
        for (u, v), w in q.items():
            a_prime[u, v] += hop_weight * w
            a_prime[v, u] += hop_weight * w
    for i in range(n_items + 1):
        a_prime[i, i] += 1.0
    degree = defaultdict(float)
    for (u, _), w in a_prime.items():
        degree[u] += w
    rows, cols, vals = [], [], []
    for (u, v), w in a_prime.items():
        rows.append(u)
        cols.append(v)
        vals.append(w / (degree[u] * degree[v]) ** 0.5)
    return sp.csr_matrix((vals, (rows, cols)), shape=(n_items + 1, n_items + 1))


AMAZON_BOOKS_GRAPH = {"l_time": 64.0, "a": 0.65, "b": 0.35, "hop_weights": [4.5, 2.0, 1.0]}  # Table 2


def books_like_csr(n_interactions: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(indptr, items 1..n, days, n_items) from ``mirec.data.synthetic`` (clusters, bursts, whole days) with
    Amazon-Books ratios (15 interactions per user, 370k items per 9M rows), time-sorted per user."""
    n_users, n_items = max(1, n_interactions // 15), max(10, n_interactions * 370 // 9000)
    log = realistic_log(n_users, n_items, n_interactions, seed=seed, n_clusters=2000, shuffle=False)
    order = np.lexsort((log.timestamp, log.user))  # stable: ties keep input order
    lengths = np.bincount(log.user, minlength=n_users)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = (log.item[order] + 1).astype(np.int32)  # ids 1..n_items, 0 = padding
    days = log.timestamp[order] / SECONDS_PER_DAY
    return indptr, items, days, n_items


def measure_build(n_interactions: int, *, seed: int = 0, naive: bool = False, check: bool = False) -> dict[str, Any]:
    """Time the vectorised GCE build (3 hops, Amazon-Books settings) -- or, with ``naive``, the dictionary
    version -- on a Books-like log of ``n_interactions``. Peak RSS covers the timed call (input log included).
    ``check`` (with ``naive``): afterwards compare with the vectorised matrix (max |diff| and non-zeros)."""
    config = GraphConfig(**AMAZON_BOOKS_GRAPH)
    indptr, items, days, n_items = books_like_csr(n_interactions, seed)
    with PeakRSS() as peak:
        start = time.perf_counter()
        if naive:
            matrix = dict_reference(indptr, items, days, n_items, config)
        else:
            matrix = build_cooccurrence(indptr, items, days, n_items, config)
        seconds = time.perf_counter() - start
    out: dict[str, Any] = {
        "interactions": n_interactions,
        "users": len(indptr) - 1,
        "items": n_items,
        "nnz": int(matrix.nnz),
        "seconds": seconds,
        "interactions_per_s": n_interactions / seconds,
        **peak.as_dict(),
    }
    if naive and check:
        fast = build_cooccurrence(indptr, items, days, n_items, config)
        diff = abs(fast.astype(np.float64) - matrix)
        out["max_abs_diff"] = float(diff.max()) if diff.nnz else 0.0
        out["same_nonzeros"] = bool((fast != 0).nnz == (matrix != 0).nnz)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interactions", type=int, default=9_000_000)
    parser.add_argument("--users", type=int, default=600_000)
    parser.add_argument("--items", type=int, default=370_000)
    parser.add_argument("--small", type=int, default=200_000, help="interactions for the dict comparison")
    parser.add_argument("--l-time", type=float, default=64.0)
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()
    # Amazon-Books preset of Table 2 (a=.65, b=.35, alpha=4.5, beta=2, gamma=1, L_time=64)
    config = GraphConfig(l_time=args.l_time, a=0.65, b=0.35, hop_weights=[4.5, 2.0, 1.0])

    if not args.skip_reference:
        small_users = max(1, args.small // 15)
        log = synthetic_log(small_users, max(10, args.items * small_users // args.users), args.small, seed=1)
        n_small = int(log[1].max())
        t0 = time.perf_counter()
        fast = build_cooccurrence(*log, n_small, config)
        t_fast = time.perf_counter() - t0
        t0 = time.perf_counter()
        slow = dict_reference(*log, n_small, config)
        t_slow = time.perf_counter() - t0
        diff = abs(fast.astype(np.float64) - slow)
        same_pattern = (fast != 0).astype(np.int8).nnz == (slow != 0).astype(np.int8).nnz
        print(
            f"[reference] {args.small:,} interactions, {small_users:,} users: vectorised {t_fast:.3f} s, "
            f"dict {t_slow:.2f} s, ratio {t_slow / t_fast:.0f}x; max |diff| {diff.max():.2e}, "
            f"same non-zeros {same_pattern} ({fast.nnz:,})"
        )
        assert diff.max() < 1e-6 and same_pattern, "vectorised and dictionary versions disagree"

    t0 = time.perf_counter()
    indptr, items, days = synthetic_log(args.users, args.items, args.interactions, seed=0)
    print(
        f"[log] {len(items):,} interactions, {len(indptr) - 1:,} users, {args.items:,} items "
        f"(generated in {time.perf_counter() - t0:.1f} s)"
    )
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    tracemalloc.start()
    info = BuildInfo()
    t0 = time.perf_counter()
    matrix = build_cooccurrence(indptr, items, days, args.items, config, info=info)
    wall = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"[build] 3 hops, L_time {config.l_time:g}: {wall:.1f} s wall; peak traced memory during the "
        f"build {peak / 2**30:.2f} GiB; process max RSS {rss_before:.2f} GiB before, {rss_after:.2f} GiB after"
    )
    print(
        f"[graph] nnz(A) {matrix.nnz:,}; per hop: kept pairs {info.pairs_per_hop}, dropped "
        f"{info.dropped_per_hop}, self-pairs {info.self_pairs_per_hop}, distinct directed pairs "
        f"{info.nnz_per_hop}"
    )
    del indptr, items, days
    context = GlobalContext(matrix, config, info)
    stats = graph_stats(context, None, top_item=1, k=5)
    print(f"[degree] {stats['degree']}")
    print(f"[top] neighbours of item 1: {[(i, round(w, 4)) for i, w in stats['neighbours']]}")

    generator = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(args.items + 1, 64, generator=generator) * 0.05)
    ids = torch.randint(1, args.items + 1, (128, 20), generator=generator)
    t0 = time.perf_counter()
    out = context(ids, weight)
    out.sum().backward()
    t_rows = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        context(ids, weight)
    t_full = time.perf_counter() - t0
    print(
        f"[forward] training rows for a 128x20 batch + backward: {t_rows * 1000:.0f} ms; "
        f"full E_global (eval, cached afterwards): {t_full * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
