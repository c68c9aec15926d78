"""Batch recommendation throughput and memory: ``mirec recommend BUNDLE --input histories.parquet`` for N
synthetic users (histories of 5-30 of the bundle's items, Zipf-popular), in a child process.

    python benchmarks/bench_batch_recommend.py BUNDLE --users 100000 1000000

Prints users/s, output rows and the child's peak RSS per size; memory should stay flat as N grows (the file is
streamed in chunks).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def write_histories(path: Path, items: list[str], users: int, seed: int = 0, chunk: int = 100_000) -> None:
    rng = np.random.default_rng(seed)
    names = np.asarray(items, dtype=object)
    ranks = np.arange(1, len(names) + 1, dtype=np.float64)
    popularity = ranks**-1.0 / (ranks**-1.0).sum()  # Zipf over the catalogue
    schema = pa.schema([("user", pa.string()), ("history", pa.list_(pa.string()))])
    with pq.ParquetWriter(path, schema) as writer:
        for lo in range(0, users, chunk):
            n = min(chunk, users - lo)
            lengths = rng.integers(5, 31, size=n)
            flat = names[rng.choice(len(names), size=int(lengths.sum()), p=popularity)]
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
            history = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat.astype(str)))
            writer.write_table(
                pa.table({"user": pa.array([f"s{i}" for i in range(lo, lo + n)]), "history": history}, schema=schema)
            )


def vm_hwm_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--users", type=int, nargs="+", default=[100_000])
    parser.add_argument("-n", type=int, default=50)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    items = pq.read_table(Path(args.bundle) / "items.parquet").column("original_id").to_pylist()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mirec-batch-") as tmp:
        for users in args.users:
            histories, out = Path(tmp) / f"h{users}.parquet", Path(tmp) / f"r{users}.parquet"
            write_histories(histories, items, users)
            cmd = [
                sys.executable,
                "-m",
                "mirec",
                "recommend",
                args.bundle,
                "--input",
                str(histories),
                "--output",
                str(out),
                "-n",
                str(args.n),
                "--quiet",
            ]
            if args.threads:
                cmd[3:3] = ["--threads", str(args.threads)]
            started = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            peak = 0.0
            while proc.poll() is None:  # the child's own high-water mark (VmHWM), read while it runs
                peak = max(peak, vm_hwm_mib(proc.pid))
                time.sleep(0.2)
            seconds = time.perf_counter() - started
            stdout, stderr = proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(stderr[-2000:])
            report = json.loads(stdout)
            row = {
                "users": users,
                "seconds": round(seconds, 1),
                "users_per_second": round(users / seconds),
                "rows": report["rows"],
                "peak_rss_mib": round(peak),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
