"""Load test of the HTTP service: the real server (``mirec serve``) on a loopback port, driven by a bounded
number of concurrent clients for a bounded time; it stops by itself and only ever targets 127.0.0.1.

    python benchmarks/bench_serve.py BUNDLE --seconds 60 --clients 32

Each client loops: POST /v1/recommend with a history drawn from the bundle's items (5-20 items, n = 50).
Prints requests/s, latency p50/p95/p99 (client-side, end to end), errors, and the server's RSS at start and
end (flat RSS = no leak over the run). Exits 1 if any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def client_loop(client: httpx.AsyncClient, url: str, items: list[str], deadline: float, rng: random.Random,
                      latencies: list[float], errors: list[str], n: int) -> None:
    while time.perf_counter() < deadline:
        history = rng.sample(items, rng.randint(5, 20))
        started = time.perf_counter()
        try:
            response = await client.post(url, json={"history": history, "n": n})
            if response.status_code != 200 or len(response.json()["items"]) != n:
                errors.append(f"{response.status_code}: {response.text[:100]}")
                continue
        except httpx.HTTPError as exc:
            errors.append(repr(exc))
            continue
        latencies.append(time.perf_counter() - started)


async def drive(port: int, items: list[str], seconds: float, clients: int, n: int, seed: int) -> tuple[list[float], list[str], float]:
    latencies: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        url = f"http://127.0.0.1:{port}/v1/recommend"
        for _ in range(20):  # warm-up (not counted)
            await client.post(url, json={"history": items[:5], "n": n})
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(*(client_loop(client, url, items, deadline, random.Random(seed + i), latencies, errors, n)
                               for i in range(clients)))
        elapsed = time.perf_counter() - started
    return latencies, errors, elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("-n", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--server-arg", action="append", default=[], help="extra `mirec serve` flags, e.g. --microbatch-wait-ms=1")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not 0 < args.seconds <= 600 or not 0 < args.clients <= 512:
        raise SystemExit("--seconds must be in (0, 600] and --clients in (0, 512]: the test stops by itself")
    items = pq.read_table(Path(args.bundle) / "items.parquet").column("original_id").to_pylist()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mirec", "serve", args.bundle, "--host", "127.0.0.1", "--port",
                               str(port), *args.server_arg], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if server.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"the server did not start: {server.stderr.read().decode()[-2000:]}") from None
                time.sleep(0.2)
        rss_start = rss_mib(server.pid)
        latencies, errors, elapsed = asyncio.run(drive(port, items, args.seconds, args.clients, args.n, args.seed))
        rss_end = rss_mib(server.pid)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        server.terminate()
        server.wait(timeout=30)
    lat = np.array(latencies) * 1000
    batches = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
               if line.startswith("mirec_batch_size_sum") or line.startswith("mirec_batch_size_count")}
    result = {
        "bundle": args.bundle, "seconds": round(elapsed, 1), "clients": args.clients, "n": args.n,
        "requests": len(latencies), "requests_per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2), "p95_ms": round(float(np.percentile(lat, 95)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2), "errors": len(errors),
        "mean_batch": round(batches.get("mirec_batch_size_sum", 0) / max(batches.get("mirec_batch_size_count", 1), 1), 1),
        "server_rss_mib_start": round(rss_start, 1), "server_rss_mib_end": round(rss_end, 1),
    }
    print(json.dumps(result, indent=2))
    if errors:
        print("first errors:", errors[:3], file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
