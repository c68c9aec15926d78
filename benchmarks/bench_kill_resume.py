"""Fault injection: kill -9 a training run at random moments, resume it each time, and check that the final run
equals one that was never interrupted (same history, same metrics, bit-identical best weights).

    python benchmarks/bench_kill_resume.py --data prep/amazon-grocery-comirec --model comirec-sa --rounds 20

Each round trains the same config from scratch: one uninterrupted reference run, then the interrupted run,
which is killed (SIGKILL, no chance to clean up) after a random delay, resumed with ``--resume``, killed again,
... until it finishes. Kills land anywhere: mid-step, mid-evaluation, mid-checkpoint (the checkpoint is written
at every evaluation, so a short evaluation interval puts many kills inside the swap). Prints, per round, the
number of kills and whether the final run matched; exits 1 on any mismatch. It stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file


def train_command(args: argparse.Namespace, run: Path, resume: bool) -> list[str]:
    sets = [
        f"train.max_steps={args.steps}",
        f"train.eval_every={args.eval_every}",
        "train.patience=1000",
        "train.log_every=50",
        'train.device="cpu"',
        *args.set,
    ]
    cmd = [
        sys.executable,
        "-m",
        "mirec",
        "--threads",
        "1",
        "train",
        "--data",
        args.data,
        "--model",
        args.model,
        "--output",
        str(run),
        "--quiet",
        *[a for s in sets for a in ("--set", s)],
    ]
    return [*cmd, "--resume"] if resume else cmd


def comparable(run: Path) -> tuple[list[dict], dict, dict]:
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    history = [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]
    metrics = json.loads((run / "metrics.json").read_text())
    return history, {s: metrics[s] for s in ("valid", "test")}, load_file(str(run / "model.safetensors"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a prepared dataset folder")
    parser.add_argument("--model", default="dnn")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--max-delay", type=float, default=None, help="seconds; default: the reference run's time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    work = Path(tempfile.mkdtemp(prefix="mirec-kill-"))
    try:
        reference = work / "reference"
        started = time.perf_counter()
        subprocess.run(train_command(args, reference, False), check=True, env=env, capture_output=True)
        reference_seconds = time.perf_counter() - started
        expected = comparable(reference)
        max_delay = args.max_delay or reference_seconds
        print(
            f"reference: {args.model}, {args.steps} steps, {reference_seconds:.1f} s; kills after U(0.5, "
            f"{max_delay:.1f}) s"
        )
        mismatches = kills_total = 0
        for round_number in range(1, args.rounds + 1):
            run = work / f"round{round_number}"
            kills = 0
            while True:
                resume = (run / "checkpoints").exists() or (run / "config.toml").exists()
                proc = subprocess.Popen(
                    train_command(args, run, resume),
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                try:
                    proc.wait(timeout=rng.uniform(0.5, max_delay))
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    kills += 1
                    continue
                if proc.returncode != 0:
                    error = proc.stderr.read().strip().splitlines()[-1:] if proc.stderr else []
                    if "found no checkpoint" in "".join(error):  # killed before its first checkpoint
                        shutil.rmtree(run)
                        continue
                    raise SystemExit(f"round {round_number}: run failed after {kills} kills: {error}")
                break
            history, metrics, best = comparable(run)
            same = (
                history == expected[0]
                and metrics == expected[1]
                and best.keys() == expected[2].keys()
                and all((best[k] == expected[2][k]).all() for k in best)
            )
            mismatches += not same
            kills_total += kills
            print(f"round {round_number}: {kills} kills, final run {'identical' if same else 'DIFFERENT'}")
            shutil.rmtree(run)
        print(f"{args.rounds} rounds, {kills_total} kills, {mismatches} mismatches")
        return 1 if mismatches else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
