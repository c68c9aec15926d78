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

import numpy as np
import torch

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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
        print(
            f"merged top-{args.topn} lists identical between back-ends for {np.mean((a == b).all(1)):.4%} of users"
        )


if __name__ == "__main__":
    main()
