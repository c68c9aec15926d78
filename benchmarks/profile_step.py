"""Where a training step's time goes at one and at two threads: per-op self-times from ``torch.profiler``.

    python benchmarks/profile_step.py --data prep/grocery --model comirec-sa \\
        --set train.negative_sampler=uniform --set train.negatives_unique=false --set train.remove_accidental_hits=false

Times the trainer's own step (batch drawing, forward, loss, backward, Adam) at each thread count in one process,
then profiles ``--steps`` steps at each and prints the ops with the largest one-thread self-time per step, their
self-time at the other count and the speed-up, so the ops that do not split across threads stand out.
Profiler self-times include its own overhead; the plain timings above the table do not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_support import describe_machine, machine_info  # noqa: E402
from bench_train_throughput import measure_throughput, training_setup  # noqa: E402

from mirec.data.dataset import load_dataset  # noqa: E402


def op_self_us(trainer, steps: int) -> dict[str, float]:
    """Profiler self CPU time per step of each op name, in microseconds."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            trainer.train_step()
    return {event.key: event.self_cpu_time_total / steps for event in prof.key_averages()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a prepared dataset")
    parser.add_argument("--model", default="comirec-sa")
    parser.add_argument("--threads", default="1,2", help="two thread counts: the first is the table's base")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--top", type=int, default=30, help="ops listed")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    base, other = (int(t) for t in args.threads.split(","))
    print(describe_machine(machine_info()))
    dataset = load_dataset(args.data)
    for threads in (base, other):
        torch.set_num_threads(threads)
        timed = measure_throughput(args.model, dataset=dataset, steps=args.steps, warmup=20, overrides=args.overrides)
        print(f"{args.model} at {threads} thread(s): {timed['ms_per_step']:.2f} ms a step")
    trainer = training_setup(args.model, dataset, overrides=args.overrides)
    profiles = {}
    for threads in (base, other):
        torch.set_num_threads(threads)
        for _ in range(20):  # warm-up at this thread count
            trainer.train_step()
        profiles[threads] = op_self_us(trainer, args.steps)
    print(f"{'op':48s} {f'{base}t us':>9s} {f'{other}t us':>9s} {'speed-up':>9s}")
    for key in sorted(profiles[base], key=lambda k: -profiles[base][k])[: args.top]:
        mine, theirs = profiles[base][key], profiles[other].get(key, 0.0)
        print(f"{key[:48]:48s} {mine:9.0f} {theirs:9.0f} {mine / theirs if theirs else float('nan'):8.2f}x")
    print(f"{'all ops':48s} {sum(profiles[base].values()):9.0f} {sum(profiles[other].values()):9.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
