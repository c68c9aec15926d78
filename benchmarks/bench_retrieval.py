"""Exact full-catalogue retrieval benchmark: users x K interests against n_items, torch and faiss back-ends.

Default scale = the Amazon Books evaluation: 60k users x 4 interests x 370k items, d = 64, top-50 per
interest, then the ComiRec merge. Prints users/s, total time, peak resident memory, and this machine's
measured float32 matmul GFLOP/s (torch.matmul 4096 x 4096) with retrieval's share of it.

    nice python benchmarks/bench_retrieval.py                      # full scale
    python benchmarks/bench_retrieval.py --users 2000 --items 50000  # quick look
"""

from __future__ import annotations

import argparse
import resource
import time
from typing import Any

import numpy as np
import torch
from bench_support import PeakRSS

from mirec.eval.retrieval import ExactRetriever, merge_interests


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(size: int = 4096, repeats: int = 5, device: str | torch.device = "cpu") -> float:
    device = torch.device(device)
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    torch.matmul(a, b)  # warm-up
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b)
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def run(
    backend: str, interests: torch.Tensor, table: torch.Tensor, n: int, batch: int, progress: int = 10
) -> tuple[float, np.ndarray]:
    """Evaluator-like loop: one index, batches of users, per-interest top-n then merge. Returns (s, ids)."""
    start = time.perf_counter()
    retriever = ExactRetriever(table, backend)
    merged = []
    for number, lo in enumerate(range(0, len(interests), batch), 1):
        scores, ids = retriever.search(interests[lo : lo + batch], n)
        merged.append(merge_interests(scores, ids, n).cpu().numpy())  # to host: ends the GPU work too
        if number % progress == 0:
            done, elapsed = min(lo + batch, len(interests)), time.perf_counter() - start
            print(f"  {backend}: {done} users in {elapsed:.0f} s ({done / elapsed:.1f} users/s)", flush=True)
    return time.perf_counter() - start, np.concatenate(merged)


def measure_matmul(device: str = "cpu", size: int = 4096, repeats: int = 5) -> dict[str, Any]:
    """This machine's float32 matmul rate (GFLOP/s, size x size, after one warm-up) with peak RSS."""
    with PeakRSS() as peak:
        gflops = matmul_gflops(size, repeats, device)
    return {"gflops": gflops, "size": size, "repeats": repeats, "device": str(device), **peak.as_dict()}


def measure_retrieval(
    backend: str = "torch",
    *,
    users: int = 60_000,
    interests: int = 4,
    items: int = 370_000,
    dim: int = 64,
    topn: int = 50,
    batch: int = 1024,
    device: str = "cpu",
    seed: int = 0,
    matmul_size: int = 4096,
) -> dict[str, Any]:
    """Exact retrieval (per-interest top-n over the whole catalogue, then merge) of random users against a
    random catalogue; users/s, GFLOP/s of the scoring and its share of the matmul rate measured just before
    in the same process (on the scoring device; ``matmul_size`` 0 skips it). Peak RSS covers the retrieval loop
    (inputs included)."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(items + 1, dim, generator=gen)
    vectors = torch.randn(users, interests, dim, generator=gen)
    on = torch.device(device) if backend == "torch" else torch.device("cpu")  # faiss-cpu scores on the host
    gflops = matmul_gflops(matmul_size, 5, on) if matmul_size > 0 else None
    vectors = vectors.to(on)
    if on.type == "cuda":
        torch.cuda.reset_peak_memory_stats(on)
    with PeakRSS() as peak:
        seconds, _ = run(backend, vectors, table, topn, batch, progress=10**9)
    work = 2.0 * users * interests * items * dim / 1e9  # GFLOP of the exact scoring
    out = {
        "backend": backend,
        "device": str(on),
        "users": users,
        "interests": interests,
        "items": items,
        "dim": dim,
        "topn": topn,
        "seconds": seconds,
        "users_per_s": users / seconds,
        "scoring_gflops": work / seconds,
        "matmul_gflops": gflops,
        "share_of_matmul": None if gflops is None else work / seconds / gflops,
        **peak.as_dict(),
    }
    if on.type == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated(on) / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=60_000)
    parser.add_argument("--interests", type=int, default=4)
    parser.add_argument("--items", type=int, default=370_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--topn", type=int, default=50)
    parser.add_argument("--batch", type=int, default=1024, help="users per evaluator batch")
    parser.add_argument("--backends", default="torch,faiss")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="where the torch back-end scores (cpu | cuda)")
    parser.add_argument("--progress", type=int, default=10, help="print progress every this many batches")
    args = parser.parse_args()

    gen = torch.Generator().manual_seed(args.seed)
    table = torch.randn(args.items + 1, args.dim, generator=gen)
    interests = torch.randn(args.users, args.interests, args.dim, generator=gen)
    device = torch.device(args.device)
    gflops = matmul_gflops(device=device)
    work = 2.0 * args.users * args.interests * args.items * args.dim / 1e9  # GFLOP of the exact scoring
    print(
        f"device={device} threads={torch.get_num_threads()} matmul 4096x4096 float32: {gflops:.1f} GFLOP/s",
        flush=True,
    )
    print(
        f"scale: {args.users} users x {args.interests} interests x {args.items} items, d={args.dim}, "
        f"top-{args.topn}; scoring work {work:.0f} GFLOP"
    )
    results = {}
    for backend in args.backends.split(","):
        on = device if backend == "torch" else torch.device("cpu")  # faiss-cpu scores on the host
        seconds, ids = run(backend, interests.to(on), table, args.topn, args.batch, args.progress)
        results[backend] = ids
        rate = work / seconds
        print(
            f"{backend:6s} total {seconds:8.1f} s  {args.users / seconds:9.1f} users/s  "
            f"{rate:7.1f} GFLOP/s = {rate / gflops:5.1%} of matmul peak  peak RSS {peak_rss_mib():.0f} MiB"
        )
    if len(results) == 2:
        a, b = results.values()
        print(f"merged top-{args.topn} lists identical between back-ends for {np.mean((a == b).all(1)):.4%} of users")


if __name__ == "__main__":
    main()
