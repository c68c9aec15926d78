"""Every mirec benchmark in one run, one table: ours | the naive or reference version measured in the same
run | speed-up | peak memory.

    python benchmarks/run_all.py                     # default scale, ~4 min on 2 busy cores
    python benchmarks/run_all.py --quick             # small sizes, < 1 min: does everything still run?
    python benchmarks/run_all.py --only prepare,gce --json bench-out/perf.json
    python benchmarks/run_all.py --only train,retrieval,time-interval --device cuda

Items (``--only`` names):

* ``prepare``  ``mirec.data.prepare`` (read TSV + clean + 5-core + remap + split + save) on a Books-like
  synthetic log (``mirec.data.synthetic``), rows/s; against a naive pure-Python preparation (dict counting,
  per-row loops, no save; bench_prepare.naive_prepare) on a smaller log, where both are measured.
* ``gce``  GIMIRec's global-context graph build (3 hops, Amazon-Books settings), interactions/s; against
  the dictionary-counting Python version (bench_gce.dict_reference) on a smaller log, outputs checked equal.
* ``train``  training samples/s (forward + sampled softmax + backward + Adam) of every registered model;
  PIMI and GIMIRec also run as the official PIMI_Rec code computes them (per-sample Python time-interval
  matrix, [B, L, L, d] interval embeddings, stacked star graph); other models have no naive counterpart (—).
* ``retrieval``  exact full-catalogue top-50 per interest + merge (torch), users/s and share of this
  machine's float32 matmul rate (measured in the same process just before); against faiss IndexFlatIP.
* ``time-interval``  time-interval matrices (PIMI / GIMIRec Eq. 8), samples/s; against per-sample Python.

Every measurement runs in its own forked process (the driver imports the modules once and never computes),
so each peak RSS is that measurement's own: the process's peak resident memory during the timed call,
reset just before it (/proc/self/clear_refs), the interpreter and libraries already loaded included.
Timings are wall-clock on whatever else the machine is running: the header says how busy it was.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_support import (
    Result,
    auto_threads,
    busy_processes,
    describe_machine,
    format_table,
    machine_info,
    preload,
    run_isolated,
    set_thread_env,
    write_json,
)

ITEMS = ("prepare", "gce", "train", "retrieval", "time-interval")
MODULES = ("bench_prepare", "bench_gce", "bench_retrieval", "bench_time_interval", "bench_train_throughput")

SCALES: dict[str, dict[str, Any]] = {
    "default": {
        "prepare_rows": 9_000_000,
        "prepare_pair_rows": 200_000,
        "gce_rows": 9_000_000,
        "gce_pair_rows": 200_000,
        "train_users": 5000,
        "train_items": 10000,
        "train_steps": 50,
        "train_warmup": 5,
        "retrieval_users": 1000,
        "retrieval_items": 370_000,
        "matmul_size": 2048,
        "ti_shapes": [(128, 20), (256, 50)],
        "ti_repeats": 50,
        "ti_naive_repeats": 3,
        "timeout": 600.0,
    },
    "quick": {
        "prepare_rows": 200_000,
        "prepare_pair_rows": 20_000,
        "gce_rows": 200_000,
        "gce_pair_rows": 20_000,
        "train_users": 1000,
        "train_items": 3000,
        "train_steps": 4,
        "train_warmup": 1,
        "retrieval_users": 100,
        "retrieval_items": 30_000,
        "matmul_size": 1024,
        "ti_shapes": [(128, 20)],
        "ti_repeats": 10,
        "ti_naive_repeats": 1,
        "timeout": 120.0,
    },
}

PIMI_REF_NOTE = "ref: PIMI_Rec forms (a)"


def count(n: int) -> str:
    """3000000 -> '3M', 200000 -> '200k', 1234 -> '1,234'."""
    for factor, suffix in ((1_000_000, "M"), (1_000, "k")):
        if n >= factor and n % (factor // 10) == 0:
            return f"{n / factor:g}{suffix}"
    return f"{n:,}"


def percent(share: float) -> str:
    """0.288 -> '28.8%', 0.000191 -> '0.0191%' (3 significant digits)."""
    return f"{share * 100:.3g}%"


@dataclass
class Comparison:
    """One table row: a job for ours, optionally one for the naive/reference version, and how to read them."""

    item: str
    benchmark: str
    scale: str
    unit: str
    key: str  # the value in the job's result dict
    ours: tuple[str, str, dict[str, Any]]  # (module, function, kwargs)
    naive: tuple[str, str, dict[str, Any]] | None = None
    note: Callable[[dict[str, Any], dict[str, Any] | None], str] | None = None
    extra_rows: Callable[[dict[str, Any]], list[Result]] | None = None
    lower_is_better: bool = False
    results: dict[str, Any] = field(default_factory=dict)


def plan(items: list[str], scale: dict[str, Any], device: str, models: list[str]) -> list[Comparison]:
    out: list[Comparison] = []
    if "prepare" in items:
        rows, pair = scale["prepare_rows"], scale["prepare_pair_rows"]
        out.append(
            Comparison(
                "prepare",
                "data preparation",
                f"{count(rows)} rows TSV",
                "rows/s",
                "rows_per_s",
                ("bench_prepare", "measure_prepare", {"rows": rows}),
                note=lambda o, _n: f"{o['seconds']:.1f} s; {o['summary']['users']:,} users kept",
            )
        )
        out.append(
            Comparison(
                "prepare",
                "data preparation",
                f"{count(pair)} rows TSV",
                "rows/s",
                "rows_per_s",
                ("bench_prepare", "measure_prepare", {"rows": pair, "seed": 2}),
                ("bench_prepare", "measure_prepare", {"rows": pair, "seed": 2, "naive": True}),
                note=lambda o, n: (
                    "naive: pure Python, no save"
                    + (
                        ""
                        if n is None or n.get("summary", {}).get("users") == o["summary"]["users"]
                        else " (user counts differ!)"
                    )
                ),
            )
        )
    if "gce" in items:
        rows, pair = scale["gce_rows"], scale["gce_pair_rows"]
        out.append(
            Comparison(
                "gce",
                "GCE graph build (3 hops)",
                f"{count(rows)} interactions",
                "inter./s",
                "interactions_per_s",
                ("bench_gce", "measure_build", {"n_interactions": rows}),
                note=lambda o, _n: f"{o['seconds']:.2f} s; nnz(A) {o['nnz']:,}",
            )
        )
        out.append(
            Comparison(
                "gce",
                "GCE graph build (3 hops)",
                f"{count(pair)} interactions",
                "inter./s",
                "interactions_per_s",
                ("bench_gce", "measure_build", {"n_interactions": pair, "seed": 1}),
                ("bench_gce", "measure_build", {"n_interactions": pair, "seed": 1, "naive": True, "check": True}),
                note=lambda _o, n: (
                    "naive: Python dicts"
                    + ("" if n is None else f"; max |diff| {n['max_abs_diff']:.1e}, same nnz {n['same_nonzeros']}")
                ),
            )
        )
    if "train" in items:
        common = {
            "users": scale["train_users"],
            "items": scale["train_items"],
            "steps": scale["train_steps"],
            "warmup": scale["train_warmup"],
            "device": device,
        }
        train_scale = f"B128 L20 d64 K4, {count(scale['train_items'])} items"
        for name in models:
            naive = None
            if name in ("pimi", "gimirec"):
                naive = ("bench_train_throughput", "measure_throughput", {"name": name, **common, "reference": True})
            out.append(
                Comparison(
                    "train",
                    f"train {name}",
                    train_scale,
                    "samples/s",
                    "samples_per_s",
                    ("bench_train_throughput", "measure_throughput", {"name": name, **common}),
                    naive,
                    note=lambda o, n: (
                        (PIMI_REF_NOTE + "; " if n is not None else "")
                        + f"{o['ms_per_step']:.0f} ms/step"
                        + (f"; GPU {o['cuda_peak_mib']:,.0f} MiB" if "cuda_peak_mib" in o else "")
                    ),
                )
            )
    if "retrieval" in items:
        users, n_items = scale["retrieval_users"], scale["retrieval_items"]
        matmul_size = scale["matmul_size"] if device == "cpu" else 8192  # a GPU needs larger products to peak
        kwargs = {"users": users, "items": n_items, "matmul_size": matmul_size}

        def retrieval_note(o: dict[str, Any], n: dict[str, Any] | None) -> str:
            text = f"{percent(o['share_of_matmul'])} of matmul peak ({o['scoring_gflops']:.3g} GFLOP/s)"
            if n is not None:
                text += f"; ref: faiss IndexFlatIP, {percent(n['share_of_matmul'])}"
            if "cuda_peak_mib" in o:
                text += f"; GPU {o['cuda_peak_mib']:,.0f} MiB"
            return text

        def matmul_row(o: dict[str, Any]) -> list[Result]:
            return [
                Result(
                    f"float32 matmul ({o['device']})",
                    f"{matmul_size} x {matmul_size} matrices",
                    "GFLOP/s",
                    o["matmul_gflops"],
                    note="the peak the retrieval share refers to (measured in the retrieval process)",
                )
            ]

        out.append(
            Comparison(
                "retrieval",
                "exact retrieval top-50 + merge",
                f"{count(users)} users x 4 x {count(n_items)} items, d64",
                "users/s",
                "users_per_s",
                ("bench_retrieval", "measure_retrieval", {"backend": "torch", "device": device, **kwargs}),
                ("bench_retrieval", "measure_retrieval", {"backend": "faiss", **kwargs}),
                note=retrieval_note,
                extra_rows=matmul_row,
            )
        )
    if "time-interval" in items:
        for batch, length in scale["ti_shapes"]:
            out.append(
                Comparison(
                    "time-interval",
                    "time-interval matrix",
                    f"B{batch} L{length}, span 64",
                    "samples/s",
                    "samples_per_s",
                    (
                        "bench_time_interval",
                        "measure_matrix",
                        {"batch": batch, "length": length, "repeats": scale["ti_repeats"], "device": device},
                    ),
                    (
                        "bench_time_interval",
                        "measure_matrix",
                        {"batch": batch, "length": length, "repeats": scale["ti_naive_repeats"], "naive": True},
                    ),
                    note=lambda o, n: (
                        f"{o['ms_per_batch']:.3f} ms/batch; naive: per-sample Python, {n['ms_per_batch']:.1f} ms"
                        if n
                        else f"{o['ms_per_batch']:.3f} ms/batch"
                    ),
                )
            )
    return out


def best_run(runs: list[dict[str, Any]], key: str, lower_is_better: bool = False) -> dict[str, Any]:
    """The best of repeated runs by ``key`` (the least disturbed on a shared machine), with every run's value
    in ``<key>_all`` and the largest peak RSS of them all (repeating does not help memory)."""
    best = dict((min if lower_is_better else max)(runs, key=lambda r: r[key]))
    best[f"{key}_all"] = [r[key] for r in runs]
    best["peak_mib"] = max(r["peak_mib"] for r in runs)
    return best


def run_plan(comparisons: list[Comparison], threads: int, timeout: float, repeats: int = 1) -> list[Result]:
    jobs = sum(1 + (c.naive is not None) for c in comparisons)
    done = 0
    results: list[Result] = []
    for c in comparisons:
        outcome: dict[str, dict[str, Any]] = {}
        for role, job in (("ours", c.ours), ("naive", c.naive)):
            if job is None:
                continue
            done += 1
            module, function, kwargs = job
            print(f"[{done:>2}/{jobs}] {c.benchmark} | {c.scale} | {role} ...", end=" ", flush=True)
            runs = []
            for _ in range(repeats):
                runs.append(run_isolated(module, function, kwargs, threads=threads, timeout=timeout))
                if "error" in runs[-1]:
                    break
            outcome[role] = runs[-1] if "error" in runs[-1] else best_run(runs, c.key, c.lower_is_better)
            error = outcome[role].get("error")
            walls = " / ".join(f"{r['wall_s']:.1f}" for r in runs)
            print(f"{walls} s" + (f" FAILED: {error.splitlines()[0]}" if error else ""), flush=True)
        ours, naive = outcome["ours"], outcome.get("naive")
        error = ours.get("error")
        naive_ok = naive is not None and "error" not in naive
        note = ""
        if not error and c.note is not None:
            try:
                note = c.note(ours, naive if naive_ok else None)
            except (KeyError, TypeError) as exc:
                note = f"(note unavailable: {exc})"
        if naive is not None and not naive_ok:
            note = (note + "; " if note else "") + "naive FAILED: " + naive["error"].splitlines()[0][:80]
        results.append(
            Result(
                c.benchmark,
                c.scale,
                c.unit,
                None if error else ours.get(c.key),
                naive.get(c.key) if naive_ok else None,
                lower_is_better=c.lower_is_better,
                peak_mib=None if error else ours.get("peak_mib"),
                naive_peak_mib=naive.get("peak_mib") if naive_ok else None,
                note=note,
                error=error,
                extra={"ours": ours, "naive": naive},
            )
        )
        if not error and c.extra_rows is not None:
            results.extend(c.extra_rows(ours))
    return results


def git_revision() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return rev + ("+dirty" if dirty else "") if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (< 1 min): a smoke run, not numbers")
    parser.add_argument("--only", default=",".join(ITEMS), help=f"comma-separated subset of {','.join(ITEMS)}")
    parser.add_argument("--models", default=None, help="comma-separated models for 'train' (default: all)")
    parser.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="for train, retrieval (torch), time-interval; prepare and GCE are CPU code",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch/OpenMP threads per measurement; 0 = auto: the cores left free by the other busy processes "
        "(at least 1), since OpenMP threads that outnumber the free cores spin-wait (10-40x slower steps)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write machine-readable results here")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per measurement process")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs per measurement, each in a fresh process; the best is kept (shared machines)",
    )
    args = parser.parse_args(argv)
    items = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(items) - set(ITEMS))
    if unknown:
        parser.error(f"unknown --only item(s) {unknown}; choose from {ITEMS}")
    scale_name = "quick" if args.quick else "default"
    scale = SCALES[scale_name]

    start = time.perf_counter()
    busy = busy_processes()
    threads = args.threads if args.threads > 0 else auto_threads(busy)
    set_thread_env(threads)  # before numpy / torch load their thread pools
    failed_imports = preload(MODULES)
    import torch  # loaded by the preload already; only read here (no ops: children are forked)

    from mirec.models import available_models

    models = [m.strip() for m in args.models.split(",")] if args.models else available_models()
    info = machine_info()
    print(describe_machine(info))
    print(
        f"scale={scale_name} device={args.device} threads={threads}"
        f"{'' if args.threads > 0 else ' (auto)'} repeats={max(1, args.repeats)} (best kept) torch {torch.__version__} "
        f"git {git_revision()}; {busy} other process(es) were using >= half a core at the start"
        + (
            " -- the machine is SHARED, timings are noisy (indicative, not reproducible to better than tens of percent)"
            if busy
            else ""
        )
    )
    for module, error in failed_imports.items():
        print(f"warning: could not preload {module}: {error}")

    comparisons = plan(items, scale, args.device, models)
    results = run_plan(comparisons, threads, args.timeout or scale["timeout"], max(1, args.repeats))
    elapsed = time.perf_counter() - start

    print()
    print(format_table(results))
    print()
    baselines = [r.extra["ours"]["baseline_mib"] for r in results if r.extra.get("ours", {}).get("baseline_mib")]
    print(
        "ratio = how many times faster ours is (ours / naive for rates), both measured in this run on the same "
        "input; '—' = no naive counterpart, or not measured at that scale (the naive version would take too "
        "long). Peak MiB = the measuring process's peak RSS during the timed call, with the interpreter, torch "
        "and the inputs already resident included"
        + (f" ({min(baselines):,.0f}-{max(baselines):,.0f} MiB before the call)." if baselines else ".")
    )
    if any(PIMI_REF_NOTE in r.note for r in results):
        print(
            "(a) reference = the official PIMI_Rec code's formulation of the same maths: time-interval matrix by "
            "per-sample Python loops per batch, interval embeddings materialised as [B, L, L, d], star graph over "
            "the stacked [B, L, 4, d] neighbour context (StarGraph.forward_stacked)."
        )
    print(
        f"load average at the end: {', '.join(f'{v:.2f}' for v in machine_info()['loadavg'] or [])}; "
        f"total {elapsed:.0f} s"
    )

    if args.json is not None:
        write_json(
            args.json,
            {
                "meta": {
                    **info,
                    "scale": scale_name,
                    "scale_parameters": scale,
                    "device": args.device,
                    "threads": threads,
                    "repeats": max(1, args.repeats),
                    "torch": torch.__version__,
                    "git": git_revision(),
                    "busy_processes_at_start": busy,
                    "loadavg_end": machine_info()["loadavg"],
                    "seconds": elapsed,
                },
                "results": [r.as_dict() for r in results],
            },
        )
        print(f"wrote {args.json}")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
