"""Load test of the HTTP service: the real server (``mirec serve``) on a loopback port, driven by a bounded
number of concurrent clients for a bounded time; it stops by itself and only ever targets 127.0.0.1.

    python benchmarks/bench_serve.py BUNDLE --seconds 60 --clients 16                    # closed loop, wrk
    python benchmarks/bench_serve.py BUNDLE --seconds 60 --rate 500                      # constant rate
    python benchmarks/bench_serve.py BUNDLE --server-arg=--workers=2 ...                 # two worker processes

Requests: POST /v1/recommend with a history drawn from the bundle's items (5-20 items, n = 50).
Clients: ``--client wrk`` (the default where ``wrk`` is installed: an independent C client, closed loop, each of
``--clients`` connections sends its next request when the last one is answered; latencies from wrk's own
histogram), ``--client python`` (the same closed loop in asyncio), or ``--rate R`` (open loop: request i is due at
start + i / R whatever the server does, sent on a free connection, and its latency counts from when it was due,
so a stalled server cannot hide its queue: no coordinated omission). Prints requests/s, latency p50/p99, errors,
the mean micro-batch size, the CPU the server (all its processes) and the client used (in cores), and the
server's RSS at start, after the first 10% of the run and at the end (flat after warm-up = no leak). Exits 1 if
any request failed. The client runs on the same machine as the server, against 127.0.0.1 only.
``--poison-every K``: every K-th request of each client carries a timestamp above int64 (it must get 422 and fail
no other request batched with it); those are counted apart from the valid requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
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


def wait_ready(port: int, server: subprocess.Popen, seconds: float = 120) -> None:
    """Poll /readyz of the server started on loopback until 200; exit with its stderr if it dies or never is."""
    deadline = time.time() + seconds
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            if server.poll() is not None or time.time() > deadline:
                err = server.stderr.read().decode()[-2000:] if server.stderr else ""
                raise SystemExit(f"the server did not start: {err}") from None
            time.sleep(0.2)


def family(pid: int) -> list[int]:
    """``pid`` and its descendants (a multi-worker server's processes)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        out.append(todo.pop())
        todo.extend(children.get(out[-1], []))
    return out


def rss_mib(pid: int) -> float:
    """Resident memory of the server, all its processes together."""
    total = 0.0
    for member in family(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the server's processes so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for member in family(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


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


WRK_SCRIPT = """
local bodies = {}
for line in io.lines(os.getenv("MIREC_BODIES")) do bodies[#bodies + 1] = line end
local i = math.random(#bodies)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i % #bodies + 1
  return wrk.format(nil, "/v1/recommend", nil, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("MIREC %d %d %d %d %.1f %.1f %.1f\\n", summary.requests, summary.duration, e.status,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def bodies_file(items: list[str], n: int, seed: int, folder: Path, count: int = 2000) -> Path:
    rng = random.Random(seed)
    path = folder / "bodies.jsonl"
    lines = (json.dumps({"history": rng.sample(items, rng.randint(5, 20)), "n": n}) for _ in range(count))
    path.write_text("\n".join(lines) + "\n")
    return path


def run_wrk(port: int, bodies: Path, seconds: float, clients: int, folder: Path) -> dict:
    """wrk, closed loop: requests/s, p50/p99 from its histogram, errors (non-2xx and socket), its CPU."""
    script = folder / "mirec.lua"
    script.write_text(WRK_SCRIPT)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    threads = str(min(2, clients))
    command = ["wrk", "-t", threads, "-c", str(clients), "-d", f"{seconds:g}s", "-s", str(script)]
    out = subprocess.run(
        [*command, f"http://127.0.0.1:{port}/"],
        env={**os.environ, "MIREC_BODIES": str(bodies)},
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((x for x in out.stdout.splitlines() if x.startswith("MIREC ")), None)
    if line is None:
        raise SystemExit(f"wrk failed: {out.stdout[-1000:]} {out.stderr[-1000:]}")
    requests, duration_us, status_errors, socket_errors, p50, p99, worst = (float(x) for x in line.split()[1:])
    used = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {
        "client": "wrk",
        "seconds": round(duration_us / 1e6, 1),
        "requests": int(requests),
        "requests_per_second": round(requests / (duration_us / 1e6), 1),
        "p50_ms": round(p50 / 1000, 2),
        "p99_ms": round(p99 / 1000, 2),
        "max_ms": round(worst / 1000, 2),
        "errors": int(status_errors + socket_errors),
        "client_cpu_cores": round(used / (duration_us / 1e6), 2),
    }


async def open_loop(port: int, bodies: list[bytes], rate: float, seconds: float, max_connections: int) -> dict:
    """Constant rate: request i is due at start + i / rate; latency counts from when it was due."""
    free: asyncio.Queue = asyncio.Queue()
    opened = 0
    latencies: list[float] = []
    errors: list[str] = []

    async def one(due: float, body: bytes) -> None:
        nonlocal opened
        if free.empty() and opened < max_connections:
            opened += 1
            free.put_nowait(await asyncio.open_connection("127.0.0.1", port))
        reader, writer = await free.get()
        try:
            status, payload = await post(reader, writer, port, body)
            if status != 200:
                errors.append(f"{status}: {payload[:100]!r}")
            else:
                latencies.append(time.perf_counter() - due)
            free.put_nowait((reader, writer))
        except (OSError, asyncio.IncompleteReadError) as exc:
            errors.append(repr(exc))
            opened -= 1

    used = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter() + 0.05
    tasks = []
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(start + i / rate, bodies[i % len(bodies)])))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    return latency_report(f"open loop at {rate:g}/s", latencies, errors, elapsed, used) | {"connections": opened}


def run_python(port: int, items: list[str], args: argparse.Namespace) -> dict:
    used = resource.getrusage(resource.RUSAGE_SELF)
    latencies, errors, elapsed, poisoned = asyncio.run(
        drive(port, items, args.seconds, args.clients, args.n, args.seed, args.poison_every)
    )
    return latency_report("python closed loop", latencies, errors, elapsed, used) | {
        "poisoned_requests": len(poisoned),
        "poisoned_answered_422": sum(1 for status in poisoned if status == 422),
    }


def latency_report(client: str, latencies: list[float], errors: list[str], elapsed: float, used) -> dict:
    """Requests/s, latency percentiles (ms) and this process's CPU since ``used`` (a getrusage) of a Python client."""
    after = resource.getrusage(resource.RUSAGE_SELF)
    lat = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {
        "client": client,
        "seconds": round(elapsed, 1),
        "requests": len(latencies),
        "requests_per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "max_ms": round(float(lat.max()), 2),
        "errors": len(errors),
        "client_cpu_cores": round((after.ru_utime + after.ru_stime - used.ru_utime - used.ru_stime) / elapsed, 2),
        "first_errors": errors[:3],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=16, help="connections of the closed loop (at most, open loop)")
    parser.add_argument("--client", choices=("wrk", "python"), default="wrk" if shutil.which("wrk") else "python")
    parser.add_argument("--rate", type=float, default=0.0, help="open loop at this many requests/s (0: closed loop)")
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
        wait_ready(port, server)
        rss_start = rss_mib(server.pid)
        samples: list[float] = []
        stop = threading.Event()

        def sample_rss() -> None:  # every second: growth after warm-up is what a leak would show
            while not stop.wait(1.0):
                samples.append(rss_mib(server.pid))

        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        warm_up = client_loop(port, items, time.perf_counter() + 2.0, random.Random(args.seed - 1), [], [], args.n)
        asyncio.run(warm_up)  # first requests pay for lazy imports and allocations
        cpu_before = cpu_seconds(server.pid)
        with tempfile.TemporaryDirectory() as folder:
            if args.rate > 0:
                bodies = bodies_file(items, args.n, args.seed, Path(folder)).read_bytes().splitlines()
                load = asyncio.run(open_loop(port, bodies, args.rate, args.seconds, max(args.clients, 64)))
            elif args.client == "wrk" and not args.poison_every:
                load = run_wrk(
                    port, bodies_file(items, args.n, args.seed, Path(folder)), args.seconds, args.clients, Path(folder)
                )
            else:
                load = run_python(port, items, args)
        server_cores = (cpu_seconds(server.pid) - cpu_before) / load["seconds"]
        stop.set()
        sampler.join()
        rss_end = rss_mib(server.pid)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        server.terminate()
        server.wait(timeout=30)
    batches = {
        line.split()[0]: float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith("mirec_batch_size_sum") or line.startswith("mirec_batch_size_count")
    }
    result = {
        "bundle": args.bundle,
        "server_args": args.server_arg,
        **{k: v for k, v in load.items() if k != "first_errors"},
        "server_cpu_cores": round(server_cores, 2),
        "mean_batch": round(
            batches.get("mirec_batch_size_sum", 0) / max(batches.get("mirec_batch_size_count", 1), 1), 1
        ),
        "server_rss_mib_start": round(rss_start, 1),
        "server_rss_mib_after_10pct": round(samples[len(samples) // 10], 1) if samples else None,
        "server_rss_mib_end": round(rss_end, 1),
    }
    print(json.dumps(result, indent=2))
    if load.get("first_errors"):
        print("first errors:", load["first_errors"], file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 1 if result["errors"] or result.get("poisoned_answered_422", 0) != result.get("poisoned_requests", 0) else 0


if __name__ == "__main__":
    sys.exit(main())
