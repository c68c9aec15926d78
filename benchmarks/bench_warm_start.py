"""Warm start against training from scratch on a time-sliced log, measured in one run.

Model A is trained on the log up to T1 (``--old``, a prepared folder); then, on the log up to T2 (``--new``,
a prepared folder with ``--split temporal``, so its test targets come after T2):
(i) ``mirec train --init-from A`` for ``--warm-steps`` steps, (ii) from scratch at the full budget.
Printed per seed: test recall@50 / ndcg@50 of both, wall seconds (training + its validations), and the ratios
warm / scratch (the goal: accuracy >= 0.98 at time <= 0.25).

    mirec prepare amazon-beauty --split temporal --max-timestamp 1388102400 --items ITEMS --item-feature \\
        attributes:multi --output prep/beauty-t1
    mirec prepare amazon-beauty --split temporal --items ITEMS --item-feature attributes:multi --output prep/beauty-t2
    python benchmarks/bench_warm_start.py --old prep/beauty-t1 --new prep/beauty-t2 --seeds 1 --output bench/warm
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mirec.api import preset_of  # noqa: E402
from mirec.config import load_config  # noqa: E402
from mirec.training.trainer import train_run  # noqa: E402


def timed_run(data: Path, overrides: list[str], out: Path, model: str, init_from: Path | None = None) -> dict:
    """Train (or reuse a finished run of the same settings): metrics.json + the wall seconds of the whole call,
    setup and warm start included."""
    record = out.with_name(out.name + ".json")
    if record.exists() and json.loads(record.read_text())["overrides"] == overrides:
        return json.loads(record.read_text())["metrics"]
    config = load_config(model=model, dataset=preset_of(data), overrides=overrides)
    started = time.perf_counter()
    metrics = train_run(data, config, out, progress=False, overwrite=True, init_from=init_from)
    metrics["wall_seconds"] = time.perf_counter() - started
    record.write_text(json.dumps({"overrides": overrides, "metrics": metrics}))
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="prepared log up to T1 (model A)")
    parser.add_argument("--new", type=Path, required=True, help="prepared log up to T2, temporal split")
    parser.add_argument("--model", default="comirec-sa")
    parser.add_argument("--set", action="append", default=[], help="override for every run, e.g. model.X=...")
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--full-steps", type=int, default=6000)
    parser.add_argument("--warm-steps", type=int, default=1500)
    parser.add_argument("--warm-set", action="append", default=[], help="overrides of the warm start only")
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    base = [*args.set, f"train.eval_every={args.eval_every}"]
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        full = [*base, f"train.seed={seed}", f"train.max_steps={args.full_steps}"]
        warm = [*base, f"train.seed={seed}", f"train.max_steps={args.warm_steps}", *args.warm_set]
        out = args.output / f"seed{seed}"
        old = out / "old"
        timed_run(args.old, full, old, args.model)
        scratch = timed_run(args.new, full, out / "scratch", args.model)
        warmed = timed_run(
            args.new,
            warm,
            out / ("warm-" + "-".join([str(args.warm_steps), *args.warm_set]).replace("=", "_")),
            args.model,
            init_from=old,
        )
        row = {"seed": seed}
        for name, metrics in (("scratch", scratch), ("warm", warmed)):
            row[name] = {k: metrics["test"][k] for k in ("recall@50", "ndcg@50")} | {
                "valid_recall@50": metrics["valid"]["recall@50"],
                "seconds": round(metrics["wall_seconds"], 1),
                "steps": metrics["train"]["steps"],
            }
        row["accuracy_ratio"] = row["warm"]["recall@50"] / row["scratch"]["recall@50"]
        row["time_ratio"] = row["warm"]["seconds"] / row["scratch"]["seconds"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    for key in ("accuracy_ratio", "time_ratio"):
        values = np.array([r[key] for r in rows])
        print(
            f"{key}: mean {values.mean():.3f} (min {values.min():.3f}, max {values.max():.3f}) over {len(rows)} seeds"
        )
    (args.output / "summary.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
