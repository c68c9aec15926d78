"""N days of a production loop against a live service, measured in one run; stops by itself, loopback only.

Day 0 prepares the log up to the first cut, trains from scratch, exports the bundle and starts ``mirec serve`` on
127.0.0.1 with a token. Each following day: ``mirec prepare`` of the log up to that day's cut (temporal split),
``mirec train --init-from`` yesterday's run for ``--warm-steps`` steps, ``mirec export`` over the served bundle
(replaced whole), ``POST /admin/reload``. Meanwhile clients send ``/v1/recommend`` requests without pause; every
answer must be a 200 from one whole model. Prints, per day: seconds to prepare, train, export and reload, the
test recall@50 (targets after the day's test cut), the model version served; then the requests answered and
failed across the swaps. Exits 1 if any request failed.

    python benchmarks/bench_daily.py --log interactions.tsv.gz --items items.tsv.gz --item-feature attributes:multi \\
        --days 3 --output bench/daily
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow.csv as pcsv

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serve import free_port, wait_ready  # noqa: E402

from mirec.serving.refresh import bundle_item_ids  # noqa: E402

MIREC = [sys.executable, "-m", "mirec"]


def run(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([*MIREC, *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def day_cuts(log: Path, days: int, first: float) -> list[int]:
    """Cut times: the first at the ``first`` interaction quantile, the last at the end, evenly between."""
    stamps = pcsv.read_csv(log, parse_options=pcsv.ParseOptions(delimiter="\t")).column("timestamp").to_numpy()
    return [int(np.quantile(stamps, q, method="lower")) for q in np.linspace(first, 1.0, days + 1)]


class Traffic:
    """Clients sending requests without pause until stopped; counts answers and failures."""

    def __init__(self, port: int, token: str, items: list[str], clients: int = 4):
        self.port, self.headers, self.items = port, {"Authorization": f"Bearer {token}"}, items
        self.answered, self.failures, self.versions = 0, [], set()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.loop, args=(i,), daemon=True) for i in range(clients)]

    def loop(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                history = list(rng.choice(self.items, size=int(rng.integers(3, 12)), replace=False))
                try:
                    r = client.post(
                        f"http://127.0.0.1:{self.port}/v1/recommend",
                        json={"history": history, "n": 20},
                        headers=self.headers,
                    )
                    if r.status_code != 200 or len(r.json()["items"]) != 20:
                        self.failures.append(f"{r.status_code}: {r.text[:100]}")
                    else:
                        self.answered += 1
                        self.versions.add(r.json()["model_version"])
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


def test_recall(run_dir: Path) -> float:
    return json.loads((run_dir / "metrics.json").read_text())["test"]["recall@50"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, required=True, help="TSV with header user_id, item_id, timestamp")
    parser.add_argument("--items", type=Path, default=None)
    parser.add_argument("--item-feature", action="append", default=[])
    parser.add_argument("--model", default="comirec-sa")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--first", type=float, default=0.7, help="day 0's cut, an interaction quantile")
    parser.add_argument("--full-steps", type=int, default=3000)
    parser.add_argument("--warm-steps", type=int, default=500)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    features = [f for spec in args.item_feature for f in ("--item-feature", spec)]
    items = ["--items", str(args.items), *features] if args.items else []
    sets = [f for s in [*args.set, "train.eval_every=250"] for f in ("--set", s)]
    reader = ["--format", "csv", "--reader-option", "delimiter=tab", "--reader-option", "header=true"]
    bundle, token = out / "bundle", "bench-token"
    (out / "token").write_text(token)
    days = []
    server = traffic = None
    try:
        for day, cut in enumerate(day_cuts(args.log, args.days, args.first)):
            data, run_dir = out / f"data-{day}", out / f"run-{day}"
            prepare = [str(args.log), *reader, "--output", str(data), "--overwrite", "--split", "temporal"]
            seconds = {"prepare": run(["prepare", *prepare, "--max-timestamp", str(cut), *items])}
            train = ["train", "--data", str(data), "--model", args.model, "--output", str(run_dir), "--overwrite"]
            steps = args.full_steps if day == 0 else args.warm_steps
            init = [] if day == 0 else ["--init-from", str(out / f"run-{day - 1}")]
            seconds["train"] = run([*train, "--max-steps", str(steps), "--quiet", *sets, *init])
            seconds["export"] = run(["export", str(run_dir), "--output", str(bundle), "--overwrite"])
            if server is None:
                port = free_port()
                serve = ["serve", str(bundle), "--port", str(port), "--token-file", str(out / "token")]
                server = subprocess.Popen([*MIREC, *serve], stderr=subprocess.DEVNULL)
                wait_ready(port, server)
                names = pcsv.read_csv(args.log, parse_options=pcsv.ParseOptions(delimiter="\t")).column("item_id")
                known = sorted({str(x) for x in names.to_pylist()} & set(bundle_item_ids(bundle)))
                traffic = Traffic(port, token, known).__enter__()
            else:
                started = time.perf_counter()
                r = httpx.post(
                    f"http://127.0.0.1:{port}/admin/reload", headers={"Authorization": f"Bearer {token}"}, timeout=120
                )
                r.raise_for_status()
                seconds["reload"] = time.perf_counter() - started
            catalogue = json.loads((bundle / "manifest.json").read_text())
            row = {"day": day, "cut": cut, "steps": steps, "test_recall@50": round(test_recall(run_dir), 4)}
            row |= {f"{k}_s": round(v, 1) for k, v in seconds.items()} | {"model_version": catalogue["model_version"]}
            print(json.dumps(row), flush=True)
            days.append(row)
            time.sleep(2.0)  # traffic on the new model
    finally:
        if traffic is not None:
            traffic.__exit__(None, None, None)
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
    summary = {
        "answered": traffic.answered if traffic else 0,
        "failed": len(traffic.failures) if traffic else 0,
        "versions_served": len(traffic.versions) if traffic else 0,
        "first_failures": traffic.failures[:3] if traffic else [],
    }
    print(json.dumps(summary))
    (out / "summary.json").write_text(json.dumps({"days": days, **summary}, indent=2))
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
