"""Load test of the HTTP service: the real server (``mirec serve``) on a loopback port, driven by a bounded
number of concurrent clients for a bounded time; it stops by itself and only ever targets 127.0.0.1.

    python benchmarks/bench_serve.py BUNDLE --seconds 60 --clients 32

Each client holds one keep-alive connection and loops: POST /v1/recommend with a history drawn from the
bundle's items (5-20 items, n = 50). Prints requests/s, latency p50/p95/p99 (client-side, end to end), errors,
the mean micro-batch size, and the server's RSS at start, after the first 10% of the run and at the end (flat
after warm-up = no leak). Exits 1 if any request failed. The clients run on the same machine as the server.
``--poison-every K``: every K-th request of each client carries a timestamp above int64 (it must get 422 and fail
no other request batched with it); those are counted apart from the valid requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import subprocess
import sys
import threading
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


async def post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int, body: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 keep-alive POST on an open connection (a minimal client: httpx's own overhead capped the
    measured rate at ~350 requests/s even on /healthz, so it measured the client, not the server)."""
    writer.write(
        b"POST /v1/recommend HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (port, len(body), body)
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    return status, await reader.readexactly(length)


POISON = {"timestamps_of": lambda k: [1] * (k - 1) + [2**64]}  # a history whose last timestamp is above int64


async def client_loop(
    port: int,
    items: list[str],
    deadline: float,
    rng: random.Random,
    latencies: list[float],
    errors: list[str],
    n: int,
    poison_every: int = 0,
    poisoned: list[int] | None = None,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    try:
        while time.perf_counter() < deadline:
            history = rng.sample(items, rng.randint(5, 20))
            sent += 1
            if poison_every and sent % poison_every == 0 and poisoned is not None:
                body = json.dumps({"history": history, "timestamps": POISON["timestamps_of"](len(history))}).encode()
                status, _ = await post(reader, writer, port, body)
                poisoned.append(status)
                continue
            body = json.dumps({"history": history, "n": n}).encode()
            started = time.perf_counter()
            try:
                status, payload = await post(reader, writer, port, body)
                if status != 200 or len(json.loads(payload)["items"]) != n:
                    errors.append(f"{status}: {payload[:100]!r}")
                    continue
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                errors.append(repr(exc))
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()


async def drive(
    port: int, items: list[str], seconds: float, clients: int, n: int, seed: int, poison_every: int = 0
) -> tuple[list[float], list[str], float, list[int]]:
    latencies: list[float] = []
    errors: list[str] = []
    warm: list[float] = []
    poisoned: list[int] = []
    await client_loop(port, items, time.perf_counter() + 1.0, random.Random(seed - 1), warm, errors, n)  # warm-up
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(
        *(
            client_loop(port, items, deadline, random.Random(seed + i), latencies, errors, n, poison_every, poisoned)
            for i in range(clients)
        )
    )
    return latencies, errors, time.perf_counter() - started, poisoned


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("-n", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra `mirec serve` flags, e.g. --microbatch-wait-ms=1"
    )
    parser.add_argument("--poison-every", type=int, default=0, help="every K-th request of a client is poisoned")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not 0 < args.seconds <= 600 or not 0 < args.clients <= 512:
        raise SystemExit("--seconds must be in (0, 600] and --clients in (0, 512]: the test stops by itself")
    items = pq.read_table(Path(args.bundle) / "items.parquet").column("original_id").to_pylist()
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mirec",
            "serve",
            args.bundle,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *args.server_arg,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
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
        samples: list[float] = []
        stop = threading.Event()

        def sample_rss() -> None:  # every second: growth after warm-up is what a leak would show
            while not stop.wait(1.0):
                samples.append(rss_mib(server.pid))

        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        latencies, errors, elapsed, poisoned = asyncio.run(
            drive(port, items, args.seconds, args.clients, args.n, args.seed, args.poison_every)
        )
        stop.set()
        sampler.join()
        rss_end = rss_mib(server.pid)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        server.terminate()
        server.wait(timeout=30)
    lat = np.array(latencies) * 1000
    batches = {
        line.split()[0]: float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith("mirec_batch_size_sum") or line.startswith("mirec_batch_size_count")
    }
    result = {
        "bundle": args.bundle,
        "seconds": round(elapsed, 1),
        "clients": args.clients,
        "n": args.n,
        "requests": len(latencies),
        "requests_per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p95_ms": round(float(np.percentile(lat, 95)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "errors": len(errors),
        "poisoned_requests": len(poisoned),
        "poisoned_answered_422": sum(1 for status in poisoned if status == 422),
        "mean_batch": round(
            batches.get("mirec_batch_size_sum", 0) / max(batches.get("mirec_batch_size_count", 1), 1), 1
        ),
        "server_rss_mib_start": round(rss_start, 1),
        "server_rss_mib_after_10pct": round(samples[len(samples) // 10], 1) if samples else None,
        "server_rss_mib_end": round(rss_end, 1),
    }
    print(json.dumps(result, indent=2))
    if errors:
        print("first errors:", errors[:3], file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 1 if errors or any(status != 422 for status in poisoned) else 0


if __name__ == "__main__":
    sys.exit(main())
