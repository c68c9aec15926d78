"""Benchmark the time-interval matrix (PIMI periodicity / GIMIRec Eq. 8) and the time-interval attention.

    python benchmarks/bench_time_interval.py              # batch 128/256 x L 20/50, 1 thread
    python benchmarks/bench_time_interval.py --repeats 50

1. Matrix: ``mirec.nn.time_interval.time_interval_matrix`` (batched torch) against the reference's
   per-sample Python (PIMI_Rec ``data_iterator``: loops over samples, then over i, j of the valid items).
   Both outputs are checked equal; prints milliseconds per batch and the speed ratio.
2. Attention forward+backward: the histogram formulation of ``TimeIntervalAttention`` against the direct
   one that materialises the [B, L, L, d] interval embeddings (as the TF code does); checked equal.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch
from bench_support import PeakRSS

from mirec.nn.time_interval import MASK_LOGIT, TimeIntervalAttention, time_interval_matrix


def per_sample_matrix(days: np.ndarray, lengths: np.ndarray, time_span: int) -> np.ndarray:
    """PIMI_Rec data_iterator style: one Python loop per sample, then over the pairs of valid items."""
    batch, length = days.shape
    out = np.zeros((batch, length, length), dtype=np.int64)
    for b in range(batch):
        n = int(lengths[b])
        row = days[b].tolist()
        for i in range(n):
            for j in range(n):
                out[b, i, j] = min(abs(row[i] - row[j]), time_span)
    return out


def per_sample_time_interval(days: torch.Tensor, mask: torch.Tensor, time_span: int) -> torch.Tensor:
    """Drop-in for ``time_interval_matrix`` computed as the reference does (per-sample Python on the host);
    items are left-aligned, so a row's valid items are its first ``mask.sum()`` positions."""
    lengths = (mask > 0).sum(1).cpu().numpy()
    return torch.from_numpy(per_sample_matrix(days.cpu().numpy(), lengths, time_span)).to(days.device)


def example_batch(batch: int, length: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(days [B, L] int64, lengths [B]): half the users fill the window, the rest 1..L items, days in 1..399."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, length + 1, size=batch)
    lengths[: batch // 2] = length  # half the users fill the window, as in practice
    valid = np.arange(length)[None] < lengths[:, None]
    days = np.where(valid, np.sort(rng.integers(1, 400, size=(batch, length)), axis=1), 0)
    return days, lengths


def measure_matrix(
    batch: int = 128,
    length: int = 20,
    *,
    time_span: int = 64,
    repeats: int = 20,
    device: str = "cpu",
    naive: bool = False,
    check: bool = True,
) -> dict[str, Any]:
    """Time-interval matrices per second: batched torch (on ``device``) or, with ``naive``, the reference's
    per-sample Python (numpy in and out). ``check``: the two outputs are compared once (outside the timing)."""
    days, lengths = example_batch(batch, length)
    on = torch.device(device)
    days_t = torch.from_numpy(days).to(on)
    mask_t = torch.from_numpy((np.arange(length)[None] < lengths[:, None]).astype(np.float32)).to(on)
    if check:
        expected = per_sample_matrix(days, lengths, time_span)
        if not np.array_equal(time_interval_matrix(days_t, mask_t, time_span).cpu().numpy(), expected):
            raise AssertionError("batched and per-sample time-interval matrices differ")

    def once() -> None:
        if naive:
            per_sample_matrix(days, lengths, time_span)
        else:
            time_interval_matrix(days_t, mask_t, time_span)

    once()  # warm-up
    if on.type == "cuda":
        torch.cuda.synchronize(on)
    with PeakRSS() as peak:
        start = time.perf_counter()
        for _ in range(repeats):
            once()
        if on.type == "cuda":
            torch.cuda.synchronize(on)
        seconds = (time.perf_counter() - start) / repeats
    return {
        "batch": batch,
        "length": length,
        "time_span": time_span,
        "repeats": repeats,
        "device": str(on) if not naive else "cpu (python)",
        "ms_per_batch": seconds * 1e3,
        "samples_per_s": batch / seconds,
        **peak.as_dict(),
    }


def dense_attention(module: TimeIntervalAttention, T: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    tau = module.time_embedding(T)  # [B, L, L, d] as the reference
    s = (tau @ module.w_t).masked_fill(mask[:, None, :] <= 0, MASK_LOGIT)
    return (torch.softmax(s, dim=-1)[..., None] * tau).sum(2)


def train_step(fn, module: TimeIntervalAttention, T: torch.Tensor, mask: torch.Tensor) -> None:
    module.zero_grad(set_to_none=True)
    fn(module, T, mask).square().sum().backward()


def timed(fn, repeats: int, *args) -> float:
    fn(*args)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn(*args)
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--time-span", type=int, default=64)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (shared machine: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"threads={args.threads} time_span={args.time_span} d={args.dim} repeats={args.repeats}")
    print(
        f"{'batch':>5} {'L':>3} | {'python ms':>9} {'torch ms':>8} {'ratio':>7} | "
        f"{'dense f+b ms':>12} {'hist f+b ms':>11} {'ratio':>6}"
    )
    for batch in (128, 256):
        for length in (20, 50):
            days, lengths = example_batch(batch, length, seed=int(rng.integers(2**31)))
            valid = np.arange(length)[None] < lengths[:, None]
            days_t, mask_t = torch.from_numpy(days), torch.from_numpy(valid.astype(np.float32))

            expected = per_sample_matrix(days, lengths, args.time_span)
            T = time_interval_matrix(days_t, mask_t, args.time_span)
            assert np.array_equal(T.numpy(), expected), "batched and per-sample matrices differ"
            slow = timed(per_sample_matrix, max(1, args.repeats // 10), days, lengths, args.time_span)
            fast = timed(time_interval_matrix, args.repeats, days_t, mask_t, args.time_span)

            module = TimeIntervalAttention(args.dim, args.time_span)
            torch.testing.assert_close(module(T, mask_t), dense_attention(module, T, mask_t), rtol=1e-5, atol=1e-6)

            dense = timed(train_step, args.repeats, dense_attention, module, T, mask_t)
            hist = timed(train_step, args.repeats, TimeIntervalAttention.forward, module, T, mask_t)
            print(
                f"{batch:>5} {length:>3} | {slow:>9.2f} {fast:>8.3f} {slow / fast:>6.0f}x |"
                f" {dense:>12.2f} {hist:>11.2f} {dense / hist:>5.1f}x"
            )


if __name__ == "__main__":
    main()
