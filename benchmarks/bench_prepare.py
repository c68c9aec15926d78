"""Benchmark `mirec.data.prepare` on a 9M-row synthetic log with Amazon-Books-like statistics.

    nice python benchmarks/bench_prepare.py [--rows 9000000 --users 600000 --items 370000 --workdir /tmp/mirec-bench]

Generates the log (outside the repository), writes it as TSV, times prepare (read + clean + filter + remap +
split + save) and prints rows/s, wall time, peak RSS and the machine; then compares with a naive
pure-Python preparation (dict counting, per-row loops) on a 200k-row log and prints the speed ratio.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import random
import resource
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench_support import PeakRSS

from mirec.data.prepare import prepare
from mirec.data.synthetic import write_synthetic_csv


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def naive_prepare(path: Path, seed: int = 1230) -> dict[str, int]:
    """What a straightforward pure-Python script does (ComiRec preprocess/data.py style)."""
    rows = []
    with open(path, newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        next(reader)
        for user, item, ts in reader:
            rows.append((user, item, int(ts)))
    item_count: dict[str, int] = defaultdict(int)
    for _, item, _ in rows:
        item_count[item] += 1
    user_seq: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for user, item, ts in rows:
        if item_count[item] >= 5 and ts > 0:
            user_seq[user].append((ts, item))
    users = [u for u, seq in user_seq.items() if len(seq) >= 5]
    for u in users:
        user_seq[u].sort(key=lambda x: x[0])
    random.Random(seed).shuffle(users)
    n = len(users)
    train, valid, test = users[: int(n * 0.8)], users[int(n * 0.8) : int(n * 0.9)], users[int(n * 0.9) :]
    counts: dict[str, int] = defaultdict(int)
    for u in train:
        for _, item in user_seq[u]:
            counts[item] += 1
    for u in valid + test:
        seq = user_seq[u]
        for _, item in seq[: int(len(seq) * 0.8)]:
            counts[item] += 1
    items = {item for u in users for _, item in user_seq[u]}
    ranked = sorted(items, key=lambda i: -counts.get(i, 0))
    item_id = {item: k + 1 for k, item in enumerate(ranked)}
    out = {
        name: [[item_id[i] for _, i in user_seq[u]] for u in part]
        for name, part in (("train", train), ("valid", valid), ("test", test))
    }
    return {"users": n, "items": len(item_id), "train_users": len(out["train"])}


def books_like_shape(rows: int) -> tuple[int, int]:
    """(users, items) with Amazon-Books-like ratios: 9M rows over 600k users and 370k items."""
    return max(1, rows // 15), max(10, rows * 370 // 9000)


def _write_log(workdir: Path, rows: int, seed: int, n_clusters: int) -> Path:
    users, items = books_like_shape(rows)
    path = workdir / f"log-{rows}-{seed}.tsv"
    write_synthetic_csv(path, users, items, rows, seed=seed, n_clusters=n_clusters)
    return path


def measure_prepare(
    rows: int, *, seed: int = 1, n_clusters: int = 2000, workdir: str | Path | None = None, naive: bool = False
) -> dict[str, Any]:
    """Time ``mirec.data.prepare`` (read + clean + filter + remap + split + save) -- or, with ``naive``, the
    pure-Python :func:`naive_prepare` (no save) -- on a freshly generated Books-like TSV of ``rows`` rows.

    Generation is not timed; peak RSS covers the timed call only (reset before it; imports included).
    """
    base = Path(workdir) if workdir is not None else None
    tmp = Path(tempfile.mkdtemp(prefix="mirec-bench-prepare-", dir=base))
    try:
        path = _write_log(tmp, rows, seed, n_clusters)
        size = path.stat().st_size
        with PeakRSS() as peak:
            start = time.perf_counter()
            if naive:
                summary: dict[str, Any] = naive_prepare(path)
                stages: dict[str, float] = {}
            else:
                report = prepare([path], "csv", tmp / "prepared", name="books-like")
                summary = {"users": report.n_users, "items": report.n_items, "kept_rows": report.n_interactions}
                stages = dict(report.seconds)
            seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    users, items = books_like_shape(rows)
    return {
        "rows": rows,
        "users_generated": users,
        "items_generated": items,
        "file_mb": size / 1e6,
        "seconds": seconds,
        "rows_per_s": rows / seconds,
        "stages": stages,
        "summary": summary,
        **peak.as_dict(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=9_000_000)
    parser.add_argument("--users", type=int, default=600_000)
    parser.add_argument("--items", type=int, default=370_000)
    parser.add_argument("--small-rows", type=int, default=200_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mirec-bench"))
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
        f"cpu_count={os.cpu_count()} | python {platform.python_version()}"
    )

    big = args.workdir / "books_like.tsv"
    t = time.perf_counter()
    write_synthetic_csv(big, args.users, args.items, args.rows, seed=1, n_clusters=2000)
    print(
        f"generated + wrote {args.rows:,} rows in {time.perf_counter() - t:.1f} s ({big.stat().st_size / 1e6:.0f} MB)"
    )

    t = time.perf_counter()
    report = prepare([big], "csv", args.workdir / "books_like_prepared", name="books-like")
    wall = time.perf_counter() - t
    print(
        f"prepare: {wall:.1f} s wall, {args.rows / wall:,.0f} rows/s, peak RSS {peak_rss_gb():.2f} GB "
        f"(incl. generation)"
    )
    print("  stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report.seconds.items()))
    print(
        f"  kept {report.n_interactions:,} rows, {report.n_users:,} users, {report.n_items:,} items; "
        f"splits {report.splits}"
    )
    print(f"  target < 60 s and < 6 GB: {'OK' if wall < 60 and peak_rss_gb() < 6 else 'MISSED'}")

    # The comparison on the same small log, each side in this process one after the other.
    fast = measure_prepare(args.small_rows, seed=2, n_clusters=100, workdir=args.workdir)
    slow = measure_prepare(args.small_rows, seed=2, n_clusters=100, workdir=args.workdir, naive=True)
    print(
        f"{args.small_rows:,} rows: mirec prepare {fast['seconds']:.2f} s (incl. save) vs naive pure Python "
        f"{slow['seconds']:.2f} s (no save) -> {slow['seconds'] / fast['seconds']:.1f}x faster "
        f"({slow['summary']})"
    )
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
