"""How time and memory grow with the data: preparation and GCE build versus the number of interactions,
exact retrieval versus the catalogue size. Fits the growth exponent p of y ~ c n^p (least squares in
log-log) and draws the curves.

    python benchmarks/scaling.py                          # 1M, 3M, 9M interactions; 10k..370k items (~6 min)
    python benchmarks/scaling.py --quick                  # 100k..900k interactions; 10k..100k items (< 1 min)
    python benchmarks/scaling.py --output bench-out/ --json bench-out/scaling.json

Logs come from ``mirec.data.synthetic`` with Amazon-Books ratios (15 interactions per user, 370k items per
9M interactions; clustered interests, Zipf popularity, bursty whole-day timestamps). Each point runs in its
own forked process: peak MiB is that process's peak RSS during the timed call; "extra MiB" subtracts the RSS
just before the call (interpreter, torch and, for the GCE build, the input log), and is what the memory
exponent is fitted on. Each point is run ``--repeats`` times (3 at default scale), each in a fresh process,
and the fastest run is kept: on a shared machine the others measure the neighbours as much as the code.
Retrieval: fixed users x 4 interests, d = 64, top-50 per interest + merge, torch
(ours) and faiss IndexFlatIP. Timings are wall-clock on a possibly shared machine: the header says how busy.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

from bench_support import (
    auto_threads,
    busy_processes,
    describe_machine,
    format_plain_table,
    format_quantity,
    loglog_fit,
    machine_info,
    preload,
    run_isolated,
    set_thread_env,
    write_json,
)

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "out"
SIZES = {
    "default": {
        "interactions": [1_000_000, 3_000_000, 9_000_000],
        "items": [10_000, 30_000, 100_000, 370_000],
        "users": 500,
        "timeout": 600.0,
        "repeats": 3,
    },
    "quick": {
        "interactions": [100_000, 300_000, 900_000],
        "items": [10_000, 30_000, 100_000],
        "users": 100,
        "timeout": 120.0,
        "repeats": 1,
    },
}


def series_plan(sizes: dict[str, Any]) -> list[tuple[str, str, str, str, str, dict[str, Any]]]:
    """(series, x name, module, function, size kwarg, fixed kwargs) of every curve."""
    retrieval = {"users": sizes["users"], "matmul_size": 0}
    return [
        ("prepare", "interactions", "bench_prepare", "measure_prepare", "rows", {}),
        ("GCE build", "interactions", "bench_gce", "measure_build", "n_interactions", {}),
        (
            "retrieval torch",
            "items",
            "bench_retrieval",
            "measure_retrieval",
            "items",
            {"backend": "torch", **retrieval},
        ),
        (
            "retrieval faiss",
            "items",
            "bench_retrieval",
            "measure_retrieval",
            "items",
            {"backend": "faiss", **retrieval},
        ),
    ]


def best_of(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of repeated runs of one point (the least disturbed on a shared machine), with every run's
    seconds kept and the largest peak and extra memory of them all (memory is not helped by repeating)."""
    best = dict(min(points, key=lambda p: p["seconds"]))
    best["seconds_all"] = [p["seconds"] for p in points]
    worst_memory = max(points, key=extra_mib)
    best["peak_mib"], best["baseline_mib"] = worst_memory["peak_mib"], worst_memory["baseline_mib"]
    return best


def fit_or_none(x: list[float], y: list[float]) -> float | None:
    try:
        return loglog_fit(x, y)[0]
    except ValueError:
        return None


def extra_mib(point: dict[str, Any]) -> float:
    """Peak RSS of the timed call above the RSS when it began (>= 0)."""
    return max(0.0, float(point["peak_mib"]) - float(point["baseline_mib"]))


def plot(curves: dict[str, dict[str, Any]], path: Path, title: str) -> bool:
    """Three log-log panels (time vs interactions, extra memory vs interactions, retrieval time vs items) with
    the fitted lines; written atomically. False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    import numpy as np

    from mirec.utils import atomic_path

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    panels = [
        (axes[0], "interactions", "seconds", "time (s)", "time vs interactions"),
        (axes[1], "interactions", "extra_mib", "peak RSS above the start (MiB)", "memory vs interactions"),
        (axes[2], "items", "seconds", "time (s)", "retrieval time vs catalogue"),
    ]
    for ax, x_name, key, ylabel, panel_title in panels:
        for name, curve in curves.items():
            if curve["x_name"] != x_name or len(curve["x"]) < 1:
                continue
            x = np.asarray(curve["x"], dtype=float)
            y = np.asarray(curve[key], dtype=float)
            (line,) = ax.plot(x, y, "o-", label=name)
            exponent = curve["fits"].get(key)
            if exponent is not None:
                p, c = loglog_fit(x, y)
                grid = np.geomspace(x.min(), x.max(), 50)
                ax.plot(grid, c * grid**p, "--", color=line.get_color(), alpha=0.6, label=f"{name} fit n^{p:.2f}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(x_name)
        ax.set_ylabel(ylabel)
        ax.set_title(panel_title)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (< 1 min)")
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="folder for scaling.png (or a path ending in .png); default benchmarks/out/",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the points and fits here")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch/OpenMP threads; 0 = auto (the cores the other busy processes leave, >= 1)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=0,
        help="runs per point, the fastest kept (0 = 3 at default scale, 1 with --quick)",
    )
    parser.add_argument(
        "--only", default="prepare,GCE build,retrieval torch,retrieval faiss", help="comma-separated series"
    )
    args = parser.parse_args(argv)
    scale_name = "quick" if args.quick else "default"
    sizes = SIZES[scale_name]
    repeats = args.repeats if args.repeats > 0 else sizes["repeats"]

    start = time.perf_counter()
    busy = busy_processes()
    threads = args.threads if args.threads > 0 else auto_threads(busy)
    set_thread_env(threads)
    failed = preload(("bench_prepare", "bench_gce", "bench_retrieval"))
    info = machine_info()
    print(describe_machine(info))
    print(
        f"scale={scale_name} threads={threads}{'' if args.threads > 0 else ' (auto)'} repeats={repeats} (fastest "
        f"kept); {busy} other process(es) "
        "were using >= half a core at the start" + (" -- the machine is SHARED, timings are noisy" if busy else "")
    )
    for module, error in failed.items():
        print(f"warning: could not preload {module}: {error}")

    wanted = {s.strip() for s in args.only.split(",")}
    curves: dict[str, dict[str, Any]] = {}
    rows: list[tuple[str, ...]] = []
    for series, x_name, module, function, size_arg, fixed in series_plan(sizes):
        if series not in wanted:
            continue
        curve: dict[str, Any] = {
            "x_name": x_name,
            "x": [],
            "seconds": [],
            "peak_mib": [],
            "extra_mib": [],
            "points": [],
            "fits": {},
        }
        for n in sizes[x_name]:
            print(f"{series} {x_name}={n:,} ...", end=" ", flush=True)
            runs = []
            for _ in range(repeats):
                point = run_isolated(
                    module, function, {**fixed, size_arg: n}, threads=threads, timeout=sizes["timeout"]
                )
                if "error" in point:
                    break
                runs.append(point)
            if "error" in point:
                print(f"FAILED: {point['error'].splitlines()[0]}", flush=True)
                rows.append((series, f"{n:,}", "FAILED", "—", "—", "—"))
                continue
            point = best_of(runs)
            print(" / ".join(f"{t:.2f}" for t in point["seconds_all"]) + " s", flush=True)
            curve["x"].append(n)
            curve["seconds"].append(point["seconds"])
            curve["peak_mib"].append(point["peak_mib"])
            curve["extra_mib"].append(extra_mib(point))
            curve["points"].append(point)
            per_s = n / point["seconds"] if x_name == "interactions" else point["users_per_s"]
            unit = "inter./s" if x_name == "interactions" else "users/s"
            rows.append(
                (
                    series,
                    f"{n:,}",
                    f"{point['seconds']:.2f}",
                    format_quantity(per_s, unit),
                    f"{point['peak_mib']:,.0f}",
                    f"{extra_mib(point):,.0f}",
                )
            )
        curve["fits"] = {
            "seconds": fit_or_none(curve["x"], curve["seconds"]),
            "extra_mib": fit_or_none(curve["x"], curve["extra_mib"]),
        }
        curves[series] = curve

    print()
    print(format_plain_table(("series", "size", "seconds (fastest)", "rate", "peak MiB", "extra MiB"), rows))
    print()

    def show(value: float | None) -> str:
        return "—" if value is None or not math.isfinite(value) else f"{value:.2f}"

    fits = [
        (
            name,
            c["x_name"],
            f"{c['x'][0]:,}-{c['x'][-1]:,}" if c["x"] else "—",
            show(c["fits"]["seconds"]),
            show(c["fits"]["extra_mib"]),
        )
        for name, c in curves.items()
    ]
    print(format_plain_table(("series", "versus", "range", "time exponent", "memory exponent"), fits))
    print()
    print(
        "exponent p = least-squares slope of log(y) on log(n): y ~ c n^p (1 = linear). Memory exponent on the "
        "extra MiB (peak RSS of the timed call minus the RSS when it began), the largest of the repeats. "
        f"Seconds = the fastest of {repeats} run(s) per point, each in a fresh process. Retrieval: "
        f"{sizes['users']} users x 4 interests, d 64, top-50 + merge, threads {threads}."
    )
    elapsed = time.perf_counter() - start
    load = machine_info()["loadavg"]
    print(f"load average at the end: {', '.join(f'{v:.2f}' for v in load or [])}; total {elapsed:.0f} s")

    png = args.output if args.output.suffix == ".png" else args.output / "scaling.png"
    title = (
        f"mirec scaling ({scale_name}), {info['cpu']}, {info['cpu_count']} CPUs, threads {threads}, "
        f"{busy} other busy process(es): shared machine, noisy timings"
    )
    if plot(curves, png, title):
        print(f"wrote {png}")
    else:
        print("matplotlib not installed (pip install 'mirec[plot]'): no plot written")
    if args.json is not None:
        write_json(
            args.json,
            {
                "meta": {
                    **info,
                    "scale": scale_name,
                    "threads": threads,
                    "repeats": repeats,
                    "busy_processes": busy,
                    "loadavg_end": load,
                    "seconds": elapsed,
                },
                "curves": curves,
            },
        )
        print(f"wrote {args.json}")
    return 1 if any(r[2] == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
