"""Preparation on Spark against the embedded engine, on synthetic Amazon-Books-like logs (Zipf popularity, users
with several interest clusters, real timestamps; 15 rows a user, 370 items per 9,000 rows).

    nice python benchmarks/bench_spark_prepare.py [--rows 9000000] [--spark-only-rows 50000000]
        [--memory-rows 1000000,3000000] [--master local[2]] [--workdir /tmp/mirec-bench-spark]

Each measurement is `mirec prepare` in its own process tree (the Spark engine's JVM included), timed end to end
(JVM start, read, clean, filter, split, write); memory is the peak over the run of the summed resident set of
the tree, sampled every 0.2 s. At ``--rows`` the three engines run on one log and their prepared datasets are
compared array by array; ``--memory-rows`` adds embedded-only points for the peak-memory-against-rows line;
``--spark-only-rows`` runs the Spark engine with the Parquet layout alone on a bigger log. The generated logs
and prepared folders live under ``--workdir`` (outside the repository) and are removed unless ``--keep``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from bench_prepare import books_like_shape
from bench_support import describe_machine, machine_info

from mirec.data.dataset import SPLITS, load_dataset
from mirec.data.synthetic import write_synthetic_csv

ENGINES = {
    "embedded": [],
    "spark (arrays)": ["--engine", "spark", "--layout", "arrays"],
    "spark (parquet)": ["--engine", "spark", "--layout", "parquet"],
}


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(parent, []).append(int(entry))
    return tree


def tree_rss_mib(pid: int) -> float:
    """Summed VmRSS of ``pid`` and all its descendants (MiB)."""
    tree, total, stack = _children(), 0.0, [pid]
    while stack:
        current = stack.pop()
        stack.extend(tree.get(current, []))
        try:
            with open(f"/proc/{current}/status") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0) / 1024
        except OSError:
            continue
    return total


def run_prepare(log: Path, output: Path, extra: list[str], master: str) -> dict[str, float]:
    """`mirec prepare` in a child process: wall seconds and the process tree's peak summed RSS."""
    if "--engine" in extra:
        extra = [*extra, "--spark-master", master]
    command = [sys.executable, "-m", "mirec.cli", "prepare", str(log), "--format", "csv", "--output", str(output)]
    start = time.perf_counter()
    child = subprocess.Popen([*command, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while child.poll() is None:
        peak = max(peak, tree_rss_mib(child.pid))
        time.sleep(0.2)
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command + extra)} failed: {child.stderr.read()[-2000:]}")
    return {"seconds": seconds, "peak_mib": peak}


def same_dataset(a_dir: Path, b_dir: Path) -> bool:
    a, b = load_dataset(a_dir), load_dataset(b_dir)
    arrays = all(
        np.array_equal(getattr(a.split(s), attr), getattr(b.split(s), attr))
        for s in SPLITS
        for attr in ("users", "indptr", "items", "timestamps")
    )
    return arrays and np.array_equal(a.item_original_ids, b.item_original_ids) and a.n_users == b.n_users


def make_log(workdir: Path, rows: int) -> Path:
    users, items = books_like_shape(rows)
    path = workdir / f"books-like-{rows}.tsv"
    if not path.exists():
        start = time.perf_counter()
        write_synthetic_csv(path, users, items, rows, seed=1, n_clusters=2000)
        print(f"  generated {rows:,} rows ({path.stat().st_size / 1e6:,.0f} MB) in {time.perf_counter() - start:.0f} s")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=9_000_000, help="all three engines, outputs compared")
    parser.add_argument("--spark-only-rows", type=int, default=50_000_000, help="0 = skip")
    parser.add_argument("--memory-rows", default="1000000,3000000", help="embedded-only points ('' = none)")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mirec-bench-spark"))
    parser.add_argument("--keep", action="store_true", help="keep the generated logs and prepared folders")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"{describe_machine(machine_info())} | spark master {args.master}")
    results: list[tuple[int, str, dict[str, float]]] = []
    try:
        for rows in [int(r) for r in args.memory_rows.split(",") if r]:
            log = make_log(args.workdir, rows)
            results.append((rows, "embedded", run_prepare(log, args.workdir / f"emb-{rows}", [], args.master)))
        log = make_log(args.workdir, args.rows)
        outputs = {}
        for engine, extra in ENGINES.items():
            outputs[engine] = args.workdir / f"{engine.split()[0]}-{engine.split()[-1].strip('()')}-{args.rows}"
            results.append((args.rows, engine, run_prepare(log, outputs[engine], extra, args.master)))
        reference = outputs["embedded"]
        for engine, folder in outputs.items():
            if engine != "embedded":
                verdict = "identical" if same_dataset(reference, folder) else "DIFFERENT"
                print(f"  {args.rows:,} rows: {engine} output vs embedded: {verdict}")
        if args.spark_only_rows:
            log = make_log(args.workdir, args.spark_only_rows)
            folder = args.workdir / f"spark-parquet-{args.spark_only_rows}"
            measured = run_prepare(log, folder, ENGINES["spark (parquet)"], args.master)
            results.append((args.spark_only_rows, "spark (parquet)", measured))
    finally:
        print("\n| rows | engine | wall s | rows/s | peak RSS of the process tree (GiB) |")
        print("|---|---|---|---|---|")
        for rows, engine, m in results:
            gib = m["peak_mib"] / 1024
            print(f"| {rows:,} | {engine} | {m['seconds']:.0f} | {rows / m['seconds']:,.0f} | {gib:.2f} |")
        base = {engine: m for rows, engine, m in results if rows == args.rows}
        if "embedded" in base:
            for engine, m in base.items():
                if engine != "embedded":
                    time_ratio = m["seconds"] / base["embedded"]["seconds"]
                    memory_ratio = m["peak_mib"] / base["embedded"]["peak_mib"]
                    print(
                        f"{args.rows:,} rows, {engine} / embedded: time x{time_ratio:.2f}, memory x{memory_ratio:.2f}"
                    )
        emb = [(rows, m["peak_mib"]) for rows, engine, m in results if engine == "embedded"]
        if len(emb) >= 2:
            slope = np.polyfit([r for r, _ in emb], [p for _, p in emb], 1)
            print(
                f"embedded peak memory ~ {slope[1] / 1024:.2f} GiB + {slope[0] * 1e6 / 1024:.3f} GiB per million rows"
            )
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
