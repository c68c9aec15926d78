"""Synthetic interaction logs with realistic statistics, fully vectorised (9M rows in a few seconds).

Model: items have a random popularity rank and fall into ``n_clusters`` interest clusters of skewed sizes;
inside a cluster (and globally) the k-th most popular item is drawn with probability ~ k^-a (Zipf, sampled
by inverting the continuous power-law CDF, O(1) per draw); every user holds 2-5 clusters (chosen in
proportion to the clusters' appeal) with Dirichlet(1) preferences; user activity is lognormal (long tail, at
least ``min_user_len``); a share ``global_share`` of the interactions comes from the global popularity
distribution instead of the user's clusters. Timestamps are whole days (as Amazon's) spread over ``years``
years: each user has a start day (more users in later years, as growing platforms), an active span
(lognormal) and a few bursts (sessions) around which the interactions cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from mirec.data.dataset import SECONDS_PER_DAY  # noqa: E402
from mirec.utils import atomic_path

DAY = SECONDS_PER_DAY
EPOCH_2000 = 946684800  # 2000-01-01 UTC


class SyntheticLog(NamedTuple):
    user: np.ndarray  # int64
    item: np.ndarray  # int64
    timestamp: np.ndarray  # int64 Unix seconds, whole days
    category: np.ndarray  # int64 cluster of the item


def synthetic_log(
    n_users: int,
    n_items: int,
    n_interactions: int,
    seed: int = 0,
    n_clusters: int = 200,
    *,
    zipf_a: float = 0.7,
    activity_sigma: float = 1.0,
    min_user_len: int = 5,
    global_share: float = 0.2,
    years: float = 14.0,
    start: int = EPOCH_2000,
    shuffle: bool = True,
) -> SyntheticLog:
    """A log of exactly ``n_interactions`` rows over ``n_users`` users and (up to) ``n_items`` items."""
    if n_users <= 0 or n_items <= 0 or n_clusters <= 0:
        raise ValueError("n_users, n_items and n_clusters must be positive")
    if n_interactions < n_users * min_user_len:
        raise ValueError(f"n_interactions {n_interactions} < n_users * min_user_len = {n_users * min_user_len}")
    rng = np.random.default_rng(seed)
    n_clusters = min(n_clusters, n_items)

    # Items: a random popularity rank; clusters of skewed sizes; within a cluster, and globally, the k-th
    # most popular item is drawn with probability ~ k^-a (continuous inverse CDF: O(1) per draw).
    rank_to_item = rng.permutation(n_items)
    cluster_size_w = rng.lognormal(0.0, 0.7, n_clusters)
    cluster_of_rank = rng.choice(n_clusters, size=n_items, p=cluster_size_w / cluster_size_w.sum())
    by_cluster = np.argsort(cluster_of_rank, kind="stable")  # global ranks grouped by cluster, ascending
    size = np.bincount(cluster_of_rank, minlength=n_clusters)
    first = np.concatenate([[0], np.cumsum(size)[:-1]])
    # a cluster's appeal grows with the popularity of its items (sum of k^-a over its global ranks)
    appeal = np.bincount(cluster_of_rank, weights=1.0 / np.arange(1, n_items + 1) ** zipf_a, minlength=n_clusters)
    cluster_p = appeal / appeal.sum()

    def zipf_rank(n: np.ndarray | int, count: int) -> np.ndarray:
        """0-based ranks in [0, n) with P(k) ~ (k+1)^-a, by inverting the continuous power-law CDF."""
        e = 1.0 - zipf_a if abs(1.0 - zipf_a) > 1e-9 else 1e-9
        x = (1.0 + rng.random(count) * (np.power(np.asarray(n, dtype=np.float64) + 1.0, e) - 1.0)) ** (1.0 / e)
        return np.minimum(x.astype(np.int64) - 1, np.asarray(n) - 1)

    # Users: lognormal activity summing exactly to n_interactions.
    act = rng.lognormal(0.0, activity_sigma, n_users)
    lengths = min_user_len + rng.multinomial(n_interactions - n_users * min_user_len, act / act.sum())
    user = np.repeat(np.arange(n_users, dtype=np.int64), lengths)

    # Interests: 2..5 clusters per user (popularity-skewed) with Dirichlet(1) preferences.
    n_int = rng.integers(2, 6, size=n_users)
    user_clusters = rng.choice(n_clusters, size=(n_users, 5), p=cluster_p)
    prefs = rng.gamma(1.0, 1.0, size=(n_users, 5)) * (np.arange(5)[None, :] < n_int[:, None])
    prefs_cum = np.cumsum(prefs, axis=1)
    prefs_cum = prefs_cum / prefs_cum[:, -1:] + np.arange(n_users)[:, None]  # row u spans (u, u + 1]
    slot = np.searchsorted(prefs_cum.ravel(), user + rng.random(n_interactions))  # queries ~sorted: fast
    chosen = user_clusters.ravel()[np.minimum(slot, n_users * 5 - 1)]
    rank = by_cluster[first[chosen] + zipf_rank(size[chosen], n_interactions)]
    from_global = rng.random(n_interactions) < global_share
    rank[from_global] = zipf_rank(n_items, int(from_global.sum()))
    item = rank_to_item[rank]
    cluster = np.empty(n_items, dtype=np.int64)
    cluster[rank_to_item] = cluster_of_rank

    # Time: user start (later years more likely), active span, bursts.
    total_days = int(years * 365)
    start_day = (total_days * rng.beta(2.5, 1.2, n_users)).astype(np.int64)
    span = np.minimum(rng.lognormal(5.0, 1.2, n_users).astype(np.int64) + 1, total_days - start_day + 1)
    n_bursts = 1 + rng.poisson(lengths / 6.0)
    burst_ptr = np.concatenate([[0], np.cumsum(n_bursts)])
    burst_day = np.repeat(start_day, n_bursts) + (rng.random(burst_ptr[-1]) * np.repeat(span, n_bursts)).astype(
        np.int64
    )
    which = burst_ptr[user] + (rng.random(n_interactions) * n_bursts[user]).astype(np.int64)
    day = burst_day[which] + rng.geometric(0.5, n_interactions) - 1
    day = np.minimum(day, total_days)
    timestamp = start + day * DAY

    category = cluster[item]
    if shuffle:
        perm = rng.permutation(n_interactions)
        user, item, timestamp, category = user[perm], item[perm], timestamp[perm], category[perm]
    return SyntheticLog(user, item.astype(np.int64), timestamp.astype(np.int64), category)


def write_synthetic_csv(
    path: str | Path,
    n_users: int,
    n_items: int,
    n_interactions: int,
    seed: int = 0,
    *,
    delimiter: str = "\t",
    with_category: bool = False,
    **kwargs: object,
) -> Path:
    """Write a synthetic log as CSV/TSV with header ``user_id item_id timestamp [category]`` (atomic; gzip
    when the name ends in .gz). Returns the path."""
    path = Path(path)
    log = synthetic_log(n_users, n_items, n_interactions, seed, **kwargs)  # type: ignore[arg-type]
    columns = {"user_id": log.user, "item_id": log.item, "timestamp": log.timestamp}
    if with_category:
        columns["category"] = log.category
    table = pa.table(columns)
    options = pacsv.WriteOptions(delimiter=delimiter, include_header=True, quoting_style="none")
    with atomic_path(path) as tmp:
        if path.name.endswith(".gz"):
            with pa.CompressedOutputStream(str(tmp), "gzip") as out:
                pacsv.write_csv(table, out, write_options=options)
        else:
            pacsv.write_csv(table, str(tmp), write_options=options)
    return path
