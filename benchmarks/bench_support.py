"""Helpers shared by the benchmark scripts: peak-memory probe, one process per measurement, result table,
log-log growth fit, machine description, atomic JSON.

Pure functions (``speedup``, ``format_quantity``, ``format_table``, ``loglog_fit``) are tested in
tests/benchmarks/test_benchmarks_support.py. Nothing here imports torch: a driver that imports only this module stays
light, and the measurement modules it preloads are shared by the forked children.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------------------------- memory


def _status_mib(key: str) -> float | None:
    """A ``VmRSS`` / ``VmHWM`` line of /proc/self/status in MiB (None where /proc is not available)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        return None
    return None


def rss_mib() -> float:
    """Current resident set size of this process (MiB)."""
    value = _status_mib("VmRSS")
    return value if value is not None else peak_rss_mib()


def peak_rss_mib() -> float:
    """Peak resident set size of this process (MiB): VmHWM, else ru_maxrss (KiB on Linux)."""
    value = _status_mib("VmHWM")
    return value if value is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Reset the peak-RSS watermark to the current RSS (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``).

    Returns False where that is not possible; the peak then covers the whole process life.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakRSS:
    """``with PeakRSS() as p: work()`` -> ``p.peak_mib`` (process peak RSS during the block, everything already
    resident included), ``p.baseline_mib`` (RSS when the block began), ``p.reset`` (watermark was reset)."""

    def __enter__(self) -> PeakRSS:
        self.reset = reset_peak_rss()
        self.baseline_mib = rss_mib()
        self.peak_mib = float("nan")
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak_mib = peak_rss_mib()

    def as_dict(self) -> dict[str, float | bool]:
        return {"peak_mib": self.peak_mib, "baseline_mib": self.baseline_mib, "peak_reset": self.reset}


# ------------------------------------------------------------------------------------- process isolation


def _set_threads(threads: int) -> None:
    if threads <= 0:
        return
    import torch

    torch.set_num_threads(threads)
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:  # faiss is optional for most measurements
        pass


def _child(module: str, function: str, kwargs: dict[str, Any], threads: int, conn: Any) -> None:
    try:
        _set_threads(threads)
        import importlib

        result = dict(getattr(importlib.import_module(module), function)(**kwargs))
        if "torch" in sys.modules:
            result.setdefault("torch_threads", sys.modules["torch"].get_num_threads())
        conn.send(("ok", result))
    except BaseException as exc:  # report any failure to the parent, which goes on with the other items
        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}"))
    finally:
        conn.close()


def set_thread_env(threads: int) -> None:
    """Thread counts for OpenMP/BLAS in this process and its children; call before numpy/torch start."""
    if threads > 0:
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[key] = str(threads)


def run_isolated(
    module: str, function: str, kwargs: dict[str, Any], *, threads: int = 0, timeout: float = 600.0
) -> dict[str, Any]:
    """Run ``module.function(**kwargs)`` in a forked child (its own address space, so its peak RSS is its own)
    and return its dict, plus ``wall_s``; on failure ``{"error": ...}``.

    Fork, not spawn: the driver has imported the heavy modules once (never run torch ops or touched CUDA),
    so a child starts in milliseconds instead of re-importing torch (seconds on a loaded machine).
    """
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    start = time.perf_counter()
    process = ctx.Process(target=_child, args=(module, function, kwargs, threads, child), daemon=True)
    process.start()
    child.close()
    outcome: tuple[str, Any] = ("error", f"timed out after {timeout:.0f} s")
    try:
        if parent.poll(timeout):
            outcome = parent.recv()
    except EOFError:
        outcome = ("error", "child exited without a result (killed? out of memory?)")
    process.join(5.0)
    if process.is_alive():
        process.kill()  # only the child this call started
        process.join()
    if outcome[0] == "ok" and process.exitcode not in (0, None):
        outcome = ("error", f"child exit code {process.exitcode}")
    wall = time.perf_counter() - start
    if outcome[0] != "ok":
        return {"error": str(outcome[1]), "wall_s": wall}
    result = dict(outcome[1])
    result["wall_s"] = wall
    return result


def preload(modules: Iterable[str]) -> dict[str, str]:
    """Import ``modules`` in the driver so forked children share them; returns {module: error} of failures."""
    import importlib

    failed = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # the item that needs it reports the error when it runs
            failed[name] = f"{type(exc).__name__}: {exc}"
    return failed


# ---------------------------------------------------------------------------------------------- results


@dataclass
class Result:
    """One table row. ``ours`` / ``naive`` in ``unit``; ``lower_is_better`` for times (s, ms)."""

    benchmark: str
    scale: str
    unit: str
    ours: float | None
    naive: float | None = None
    lower_is_better: bool = False
    peak_mib: float | None = None
    naive_peak_mib: float | None = None
    note: str = ""
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        return speedup(self.ours, self.naive, self.lower_is_better)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ratio"] = self.ratio
        return out


def speedup(ours: float | None, naive: float | None, lower_is_better: bool = False) -> float | None:
    """How many times faster ours is: naive / ours for times, ours / naive for rates; None if not comparable."""
    if ours is None or naive is None or not (ours > 0 and naive > 0):
        return None
    if not (math.isfinite(ours) and math.isfinite(naive)):
        return None
    return naive / ours if lower_is_better else ours / naive


_PREFIXES = ((1e9, "G"), (1e6, "M"), (1e3, "k"))


def format_quantity(value: float | None, unit: str = "") -> str:
    """1234567 -> '1.23M', 0.01234 -> '0.0123', None -> '—'; 3 significant digits, unit appended."""
    if value is None or not math.isfinite(value):
        return "—"
    suffix = ""
    scaled = value
    if unit not in ("s", "ms", "GFLOP/s", "%"):  # keep times and GFLOP/s in their own unit
        for factor, prefix in _PREFIXES:
            if abs(value) >= factor:
                scaled, suffix = value / factor, prefix
                break
    if scaled == 0:
        text = "0"
    elif abs(scaled) >= 100:
        text = f"{scaled:.0f}"
    elif abs(scaled) >= 10:
        text = f"{scaled:.1f}"
    elif abs(scaled) >= 1:
        text = f"{scaled:.2f}"
    else:
        text = f"{scaled:.3g}"
    return f"{text}{suffix} {unit}".strip()


def format_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "—"
    return f"{ratio:.0f}x" if ratio >= 100 else f"{ratio:.1f}x" if ratio >= 10 else f"{ratio:.2f}x"


def format_mib(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:,.0f}"


TABLE_HEADER = ("benchmark", "scale", "ours", "naive / reference", "ratio", "peak MiB (ours / naive)", "notes")


def table_rows(results: Sequence[Result]) -> list[tuple[str, ...]]:
    """The cells of :func:`format_table` (strings), header excluded."""
    rows = []
    for r in results:
        if r.error:
            first = r.error.strip().splitlines()[0] if r.error.strip() else "error"
            rows.append((r.benchmark, r.scale, "FAILED", "—", "—", "—", first[:100]))
            continue
        peak = format_mib(r.peak_mib)
        if r.naive_peak_mib is not None:
            peak = f"{peak} / {format_mib(r.naive_peak_mib)}"
        rows.append(
            (
                r.benchmark,
                r.scale,
                format_quantity(r.ours, r.unit),
                format_quantity(r.naive, r.unit) if r.naive is not None else "—",
                format_ratio(r.ratio),
                peak,
                r.note,
            )
        )
    return rows


def format_table(results: Sequence[Result], header: Sequence[str] = TABLE_HEADER) -> str:
    """A Markdown table (pipes, padded columns) of the results."""
    cells = [tuple(header), *table_rows(results)]
    widths = [max(len(row[c]) for row in cells) for c in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def format_plain_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table of arbitrary string cells."""
    cells = [tuple(header), *(tuple(r) for r in rows)]
    widths = [max(len(row[c]) for row in cells) for c in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ fits


def loglog_fit(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Least-squares line through (log x, log y): y ~ c x^p. Returns (p, c). Needs >= 2 positive points."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-d of the same length, got {x.shape} and {y.shape}")
    keep = (x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 2 or np.unique(x[keep]).size < 2:
        raise ValueError("loglog_fit needs at least two positive points with distinct x")
    slope, intercept = np.polyfit(np.log(x[keep]), np.log(y[keep]), 1)
    return float(slope), float(math.exp(intercept))


# ---------------------------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    """Platform, CPU, cores, load average and memory: printed with every table (measurements depend on them)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        # read by OpenMP when torch loads; it moves two-thread timings on a 2-core VM (study 8d)
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
    }
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * page_size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return info


def describe_machine(info: dict[str, Any]) -> str:
    load = info.get("loadavg")
    load_text = "n/a" if not load else ", ".join(f"{v:.2f}" for v in load)
    return (
        f"machine: {info['cpu']} | {info['cpu_count']} logical CPUs | {info.get('memory_gib', '?')} GiB | "
        f"{info['platform']} | python {info['python']} | load average (1/5/15 min) {load_text} | "
        f"OMP_WAIT_POLICY {info.get('omp_wait_policy', 'unset')}"
    )


def auto_threads(busy: int) -> int:
    """Threads for ``--threads 0``: the logical CPUs not used by ``busy`` other processes, at least 1."""
    return max(1, (os.cpu_count() or 1) - busy)


def busy_processes(min_cpu_percent: float = 50.0) -> int:
    """How many OTHER processes are using >= ``min_cpu_percent`` of a core right now (Linux /proc; 0 elsewhere).

    Sampled over 0.5 s from /proc/<pid>/stat, so the printout can say how shared the machine was.
    """

    def ticks() -> dict[int, int]:
        out = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                out[int(entry)] = int(fields[11]) + int(fields[12])  # utime + stime
            except (OSError, IndexError, ValueError):
                continue
        return out

    if not os.path.isdir("/proc"):
        return 0
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    first = ticks()
    time.sleep(0.5)
    second = ticks()
    return sum(1 for pid, t in second.items() if pid in first and (t - first[pid]) / hz / 0.5 * 100 >= min_cpu_percent)


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON through mirec.utils.atomic_write_text (never a half-written file)."""
    from mirec.utils import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
