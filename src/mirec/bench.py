"""`mirec bench`: a resumable grid of training runs (variants x datasets x seeds) and paper-style tables.

Each cell trains in its own process and run folder; a cell whose metrics.json exists is skipped on rerun,
a failed or timed-out cell is recorded in failures.json and the grid goes on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mirec.utils import atomic_write_text

METRICS = ["recall", "ndcg", "ndcg_comirec", "hit_rate"]


@dataclass
class Variant:
    """A named model configuration: ``name=model[:key=value;key=value]`` on the command line."""

    name: str
    model: str
    overrides: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> Variant:
        if "=" in text.split(":")[0]:
            name, rest = text.split("=", 1)
        else:
            name, rest = text.split(":")[0], text
        model, _, sets = rest.partition(":")
        return cls(name=name, model=model, overrides=[s for s in sets.split(";") if s])


@dataclass
class Cell:
    dataset: str
    data_dir: str
    variant: Variant
    seed: int
    run_dir: Path

    @property
    def done(self) -> bool:
        return (self.run_dir / "metrics.json").exists()


def plan(output: Path, datasets: dict[str, str], variants: list[Variant], seeds: list[int]) -> list[Cell]:
    return [
        Cell(ds, path, v, s, output / ds / v.name / f"seed{s}")
        for ds, path in datasets.items()
        for v in variants
        for s in seeds
    ]


def run_cell(cell: Cell, common: list[str], budget_minutes: float, threads: int) -> dict[str, Any]:
    """Train one cell in a subprocess with a soft (train.max_minutes) and a hard (timeout) budget."""
    cmd = [sys.executable, "-m", "mirec.cli", "train", "--data", cell.data_dir, "--model", cell.variant.model,
           "--output", str(cell.run_dir), "--seed", str(cell.seed), "--quiet"]
    for text in [*common, *cell.variant.overrides] + ([f"train.max_minutes={budget_minutes}"] if budget_minutes else []):
        cmd += ["--set", text]
    if (cell.run_dir / "checkpoint").exists():
        cmd.append("--resume")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    started = time.time()
    timeout = budget_minutes * 60 * 1.5 + 600 if budget_minutes else None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        ok = proc.returncode == 0 and cell.done
        reason = "" if ok else (proc.stderr.strip().splitlines() or ["failed"])[-1]
    except subprocess.TimeoutExpired:
        ok, reason = False, f"timed out after {timeout:.0f} s"
    return {"cell": str(cell.run_dir), "ok": ok, "reason": reason, "seconds": time.time() - started}


def run_grid(cells: list[Cell], common: list[str], budget_minutes: float, jobs: int, output: Path) -> list[dict]:
    todo = [c for c in cells if not c.done]
    print(f"{len(cells)} cells, {len(cells) - len(todo)} already done, {len(todo)} to run", file=sys.stderr)
    threads = max(1, (os.cpu_count() or 1) // max(jobs, 1))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(lambda c: run_cell(c, common, budget_minutes, threads), todo))
    failures = [r for r in results if not r["ok"]]
    failure_file = output / "failures.json"
    old = json.loads(failure_file.read_text()) if failure_file.exists() else []
    still = [f for f in old if not (Path(f["cell"]) / "metrics.json").exists()]
    atomic_write_text(failure_file, json.dumps(still + failures, indent=2))
    for r in results:
        print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['cell']} ({r['seconds']:.0f} s) {r['reason']}", file=sys.stderr)
    return results


def collect(cells: list[Cell]) -> list[dict[str, Any]]:
    rows = []
    for c in cells:
        if not c.done:
            continue
        m = json.loads((c.run_dir / "metrics.json").read_text())
        for split in ("valid", "test"):
            row = {"dataset": c.dataset, "variant": c.variant.name, "model": c.variant.model, "seed": c.seed,
                   "split": split, "train_seconds": m.get("train", {}).get("seconds"),
                   "samples_per_second": m.get("train", {}).get("samples_per_second")}
            row.update({k: v for k, v in m[split].items() if isinstance(v, int | float)})
            rows.append(row)
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("dataset", "variant", "model", "seed", "split"), k))
    lines = [",".join(keys)] + [",".join("" if r.get(k) is None else str(r.get(k)) for k in keys) for r in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def markdown_tables(rows: list[dict[str, Any]], ks: list[int], split: str = "test") -> str:
    """Per dataset: mean ± std over seeds, best in bold, improvement of best over second, paired t-test."""
    from scipy import stats

    out = []
    rows = [r for r in rows if r["split"] == split]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        sub = [r for r in rows if r["dataset"] == dataset]
        variants = list(dict.fromkeys(r["variant"] for r in sub))
        cols = [f"{m}@{k}" for k in ks for m in METRICS]
        values = {v: {c: {r["seed"]: r.get(c) for r in sub if r["variant"] == v and r.get(c) is not None}
                      for c in cols} for v in variants}
        out.append(f"### {dataset} ({split}, mean ± std over seeds; n = seeds per row)\n")
        out.append("| model | n | " + " | ".join(cols) + " | train s |")
        out.append("|---|---|" + "---|" * len(cols) + "---|")
        best = {c: max(variants, key=lambda v: np.mean(list(values[v][c].values())) if values[v][c] else -1)
                for c in cols}
        for v in variants:
            cells = []
            for c in cols:
                xs = list(values[v][c].values())
                if not xs:
                    cells.append("-")
                    continue
                text = f"{np.mean(xs):.4f} ± {np.std(xs, ddof=1):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"
                cells.append(f"**{text}**" if best[c] == v else text)
            secs = [r["train_seconds"] for r in sub if r["variant"] == v and r.get("train_seconds")]
            n = max((len(values[v][c]) for c in cols), default=0)
            out.append(f"| {v} | {n} | " + " | ".join(cells) + f" | {np.mean(secs):.0f} |" if secs else
                       f"| {v} | {n} | " + " | ".join(cells) + " | - |")
        if len(variants) > 1:
            notes = []
            for c in (f"recall@{ks[-1]}", f"ndcg@{ks[-1]}"):
                ranked = sorted(variants, key=lambda v: -np.mean(list(values[v][c].values())) if values[v][c] else 1)
                first, second = ranked[0], ranked[1]
                a, b = values[first][c], values[second][c]
                gain = (np.mean(list(a.values())) / max(np.mean(list(b.values())), 1e-12) - 1) * 100
                seeds = sorted(set(a) & set(b))
                if len(seeds) > 1:
                    p = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue
                    test = f"paired t-test over {len(seeds)} seeds, p = {p:.3g}"
                else:
                    test = "one seed: no significance test"
                notes.append(f"{c}: best {first} over {second} {gain:+.1f}% ({test})")
            out.append("\n" + "; ".join(notes))
        out.append("")
    return "\n".join(out)


def main_bench(args: Any) -> None:
    output = Path(args.output)
    datasets = dict(text.split("=", 1) for text in args.data)
    variants = [Variant.parse(t) for t in args.variant] + [Variant(m, m) for m in (args.models.split(",") if args.models else [])]
    seeds = [int(s) for s in args.seeds.split(",")]
    cells = plan(output, datasets, variants, seeds)
    if not args.tables_only:
        run_grid(cells, list(args.set), args.budget_minutes, args.jobs, output)
    rows = collect(cells)
    write_csv(rows, output / "results.csv")
    ks = [int(k) for k in args.topk.split(",")]
    text = markdown_tables(rows, ks)
    atomic_write_text(output / "results.md", text)
    print(text)
