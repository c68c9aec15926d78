"""Data-parallel training throughput: samples/s of 1 process against N processes (torchrun + DDP) for dnn,
comirec-sa and gimirec on the same prepared dataset, same per-process batch, same step count.

    python benchmarks/bench_ddp.py --data prep/amazon-grocery-comirec [--nproc 2] [--steps 300] [--models dnn,...]

Each process gets ``cores / nproc`` torch threads (the whole machine either way). The global samples/s of an
N-process run is N * batch * steps / rank 0's training seconds (evaluation excluded). On a GPU machine with
N cards the same script measures NCCL (``--device cuda``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def run(data: str, model: str, nproc: int, steps: int, device: str, threads: int, workdir: Path) -> float:
    out = workdir / f"{model}-{nproc}"
    argv = [sys.executable, "-m", "mirec.cli", "--threads", str(threads), "train", "--data", data, "--model", model]
    argv += ["--output", str(out), "--quiet", "--nproc", str(nproc), "--set", f"train.max_steps={steps}"]
    argv += [
        "--set",
        f"train.eval_every={steps}",
        "--set",
        f'train.device="{device}"',
        "--set",
        "eval.interest_clusters=0",
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
    metrics = json.loads((out / "metrics.json").read_text())
    return metrics["train"]["samples_per_second"] * nproc  # rank 0's batch rate, times the ranks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a prepared dataset folder")
    parser.add_argument("--models", default="dnn,comirec-sa,gimirec")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} cores; {args.steps} steps per run; per-process batch from the presets")
    print(f"| model | 1 process samples/s | {args.nproc} processes samples/s | ratio |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="mirec-bench-ddp-") as tmp:
        for model in args.models.split(","):
            one = run(args.data, model, 1, args.steps, args.device, cores, Path(tmp))
            many = run(args.data, model, args.nproc, args.steps, args.device, max(1, cores // args.nproc), Path(tmp))
            print(f"| {model} | {one:,.0f} | {many:,.0f} | {many / one:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
