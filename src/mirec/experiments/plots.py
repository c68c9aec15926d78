"""Plots of a `mirec bench` grid (matplotlib, Agg canvas; ``pip install 'mirec[plot]'``).

The ``plot_*`` functions take plain data (per-seed values keyed by variant), write one PNG atomically and
return the numbers they drew, so tests can check them. :func:`plot_grid` reads the run folders of a grid
(``history.jsonl``, ``metrics.json``) and writes every figure into one folder.

Means are over seeds; error bars are the sample standard deviation over seeds (0 for a single seed). A
training curve averages, at each evaluation step, the seeds that reached that step (early stopping ends
seeds at different steps).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mirec.config.toml import parse_toml_literal
from mirec.utils import atomic_path

INSTALL_HINT = "plots need matplotlib: pip install 'mirec[plot]'"


def require_matplotlib() -> None:
    """Raise a one-line error naming the extra to install when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise RuntimeError(INSTALL_HINT) from None


def _figure(width: float = 7.0, height: float = 4.5) -> Any:
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # non-interactive Agg canvas; no pyplot state
    return fig


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample std or 0 for one value, n); (nan, 0, 0) for none."""
    xs = np.asarray(values, dtype=np.float64)
    if len(xs) == 0:
        return float("nan"), 0.0, 0
    return float(xs.mean()), float(xs.std(ddof=1)) if len(xs) > 1 else 0.0, len(xs)


def safe_name(text: str) -> str:
    """A file-name-safe version of a dataset, variant or key name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


# ----------------------------------------------------------------------------------------------------------
# (a) validation metric over training steps


def mean_curve(runs: Sequence[tuple[Sequence[int], Sequence[float]]]) -> dict[str, list]:
    """Mean over seeds at each step; ``n`` = seeds that reached the step."""
    steps = np.unique(np.concatenate([np.asarray(s, dtype=np.int64) for s, _ in runs]))
    total = np.zeros(len(steps))
    count = np.zeros(len(steps), dtype=np.int64)
    for s, v in runs:
        pos = np.searchsorted(steps, np.asarray(s, dtype=np.int64))
        np.add.at(total, pos, np.asarray(v, dtype=np.float64))
        np.add.at(count, pos, 1)
    return {"steps": steps.tolist(), "mean": (total / count).tolist(), "n": count.tolist()}


def plot_training_curves(
    curves: dict[str, list[tuple[Sequence[int], Sequence[float]]]],
    path: str | Path,
    *,
    metric: str = "recall@50",
    title: str = "",
) -> dict[str, dict[str, list]]:
    """One line per variant: the validation ``metric`` (mean over seeds) against the training step."""
    fig = _figure()
    ax = fig.add_subplot()
    drawn = {}
    for variant, runs in curves.items():
        if not runs:
            continue
        curve = mean_curve(runs)
        # only steps every seed reached: a mean over fewer seeds jumps (runs stop at different steps)
        keep = [i for i, n in enumerate(curve["n"]) if n == len(runs)]
        drawn[variant] = {key: [values[i] for i in keep] for key, values in curve.items()}
        ax.plot(drawn[variant]["steps"], drawn[variant]["mean"], marker=".", markersize=3, label=variant)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"valid {metric} (mean over seeds)")
    ax.set_title(title or f"valid {metric}")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize="small")
    _save(fig, Path(path))
    return drawn


# ----------------------------------------------------------------------------------------------------------
# (b) test metrics per variant


def plot_metric_bars(
    values: dict[str, dict[str, Sequence[float]]],
    path: str | Path,
    *,
    metrics: Sequence[str] = ("recall@50", "ndcg@50"),
    title: str = "",
) -> dict[str, dict[str, dict[str, float]]]:
    """Grouped bars: for each variant, one bar per metric (mean over seeds) with std error bars."""
    fig = _figure(max(6.0, 1.0 + 0.9 * len(values) * len(metrics) / 2), 4.5)
    ax = fig.add_subplot()
    variants = list(values)
    width = 0.8 / max(len(metrics), 1)
    drawn: dict[str, dict[str, dict[str, float]]] = {v: {} for v in variants}
    for j, metric in enumerate(metrics):
        means, stds = [], []
        for v in variants:
            mean, std, n = _mean_std(values[v].get(metric, []))
            drawn[v][metric] = {"mean": mean, "std": std, "n": n}
            means.append(mean)
            stds.append(std)
        ax.bar(
            np.arange(len(variants)) + (j - (len(metrics) - 1) / 2) * width,
            means,
            width,
            yerr=stds,
            capsize=3,
            label=metric,
        )
    ax.set_xticks(np.arange(len(variants)), variants, rotation=30, ha="right", fontsize="small")
    ax.set_ylabel("test (mean ± std over seeds)")
    ax.set_title(title or "test metrics")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, Path(path))
    return drawn


Summary = tuple[float, float, int]  # (mean, std, n) over seeds
SummaryPanels = dict[str, dict[str, dict[str, Summary]]]  # {panel: {variant: {metric: Summary}}}


def plot_tradeoff(
    panels: dict[str, dict[str, dict[str, Sequence[float]]]],
    path: str | Path,
    *,
    x: str = "recall@50",
    y: str = "novel_recall@50",
    title: str = "",
) -> SummaryPanels:
    """One scatter panel per dataset or split: each variant at (mean x, mean y) over seeds, std as error bars,
    labelled; variants lacking either metric are left out. Returns {panel: {variant: {x|y: (mean, std, n)}}}."""
    summaries = {
        panel: {
            v: {x: _mean_std(vals[x]), y: _mean_std(vals[y])}
            for v, vals in variants.items()
            if vals.get(x) and vals.get(y)
        }
        for panel, variants in panels.items()
    }
    return plot_tradeoff_summaries(summaries, path, x=x, y=y, title=title)


def plot_tradeoff_summaries(
    panels: SummaryPanels,
    path: str | Path,
    *,
    x: str = "recall@50",
    y: str = "novel_recall@50",
    title: str = "",
) -> SummaryPanels:
    """:func:`plot_tradeoff` from figures already summarised over seeds (e.g. a study's published table)."""
    fig = _figure(4.2 * max(len(panels), 1), 4.2)
    from matplotlib import colormaps

    # one colour per variant on every panel
    names = list(dict.fromkeys(v for variants in panels.values() for v in variants))
    colour = {v: colormaps["tab20" if len(names) > 10 else "tab10"](i % 20) for i, v in enumerate(names)}
    for i, (panel, variants) in enumerate(panels.items()):
        ax = fig.add_subplot(1, max(len(panels), 1), i + 1)
        for variant, point in variants.items():
            (mx, sx, _), (my, sy, _) = point[x], point[y]
            ax.errorbar(mx, my, xerr=sx, yerr=sy, fmt="o", capsize=2, color=colour[variant])
            ax.annotate(variant, (mx, my), fontsize="x-small", xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(f"test {x}")
        ax.set_ylabel(f"test {y}")
        ax.locator_params(nbins=4)  # narrow panels: fewer ticks, no overlapping labels
        ax.set_title(panel, fontsize="small")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    _save(fig, Path(path))
    return panels


def read_tradeoff_table(path: str | Path, *, x: str = "recall@50", y: str = "novel_recall@50") -> SummaryPanels:
    """Panels for :func:`plot_tradeoff_summaries` from a CSV with columns panel, variant, seeds, X, X std, Y,
    Y std (an empty std draws no bar). Raises ValueError naming the file and line of a bad row."""
    panels: SummaryPanels = {}
    with open(path, newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            try:
                n = int(row["seeds"])
                point = {m: (float(row[m]), float(row[f"{m} std"] or 0.0), n) for m in (x, y)}
                panels.setdefault(row["panel"], {})[row["variant"]] = point
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{path}:{line}: bad tradeoff row ({err!r})") from None
    return panels


# ----------------------------------------------------------------------------------------------------------
# (c) sweeps


def _sweep_axis(labels: Sequence[str]) -> tuple[list[str], list[float] | None]:
    """Numeric swept values are sorted and placed at their value; others stay in order, evenly spaced."""
    parsed = [parse_toml_literal(label) for label in labels]
    if all(isinstance(p, int | float) and not isinstance(p, bool) for p in parsed):
        order = sorted(range(len(labels)), key=lambda i: parsed[i])
        return [labels[i] for i in order], [float(parsed[i]) for i in order]
    return list(labels), None


def plot_sweep(
    values: dict[str, dict[str, dict[str, Sequence[float]]]],
    path: str | Path,
    *,
    key: str,
    metrics: Sequence[str] = ("recall@50", "ndcg@50"),
    title: str = "",
) -> dict[str, dict[str, dict[str, list]]]:
    """``values[base][swept value label][metric]`` = per-seed values -> one panel per metric, one line per
    base variant, metric (mean ± std over seeds) against the swept value."""
    fig = _figure(5.0 * len(metrics), 4.2)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    drawn: dict[str, dict[str, dict[str, list]]] = {}
    for base, per_value in values.items():
        labels, xs = _sweep_axis(list(per_value))
        drawn[base] = {}
        for ax, metric in zip(axes, metrics, strict=True):
            stats = [_mean_std(per_value[label].get(metric, [])) for label in labels]
            drawn[base][metric] = {
                "values": labels,
                "mean": [s[0] for s in stats],
                "std": [s[1] for s in stats],
                "n": [s[2] for s in stats],
            }
            x = xs if xs is not None else list(range(len(labels)))
            ax.errorbar(
                x, drawn[base][metric]["mean"], yerr=drawn[base][metric]["std"], marker="o", capsize=3, label=base
            )
            if xs is None:
                ax.set_xticks(x, labels, rotation=30, ha="right", fontsize="small")
    for ax, metric in zip(axes, metrics, strict=True):
        ax.set_xlabel(key)
        ax.set_ylabel(f"test {metric} (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title or f"sweep of {key}")
    _save(fig, Path(path))
    return drawn


# ----------------------------------------------------------------------------------------------------------
# (d) interest-collapse diagnostics


def plot_collapse(
    values: dict[str, list[dict[str, Any]]], path: str | Path, *, title: str = ""
) -> dict[str, dict[str, Any]]:
    """``values[variant]`` = per-seed ``metrics.json`` ``test.collapse`` dicts -> left: mean pairwise interest
    cosine and per-interest top-N Jaccard (mean ± std over seeds); right: mean sorted share of the final list
    contributed by each interest (stacked, largest first). Variants without diagnostics (K = 1) are left out."""
    variants = [v for v, runs in values.items() if runs]
    fig = _figure(max(9.0, 1.2 * len(variants) + 4), 4.5)
    left, right = fig.subplots(1, 2)
    drawn: dict[str, dict[str, Any]] = {}
    for v in variants:
        runs = values[v]
        k = max(len(r["interest_share"]) for r in runs)
        shares = np.array([np.pad(r["interest_share"], (0, k - len(r["interest_share"]))) for r in runs])
        drawn[v] = {
            "interest_cosine": _mean_std([r["interest_cosine"] for r in runs])[:2],
            "topk_jaccard": _mean_std([r["topk_jaccard"] for r in runs])[:2],
            "interest_share": shares.mean(0).tolist(),
            "n": len(runs),
        }
    x = np.arange(len(variants))
    for j, name in enumerate(("interest_cosine", "topk_jaccard")):
        left.bar(
            x + (j - 0.5) * 0.4,
            [drawn[v][name][0] for v in variants],
            0.4,
            yerr=[drawn[v][name][1] for v in variants],
            capsize=3,
            label=name,
        )
    left.set_xticks(x, variants, rotation=30, ha="right", fontsize="small")
    left.set_ylabel("mean over users (1 = collapsed)")
    left.grid(axis="y", alpha=0.3)
    left.legend(fontsize="small")
    bottom = np.zeros(len(variants))
    depth = max((len(drawn[v]["interest_share"]) for v in variants), default=0)
    for i in range(depth):
        share = np.array(
            [drawn[v]["interest_share"][i] if i < len(drawn[v]["interest_share"]) else 0.0 for v in variants]
        )
        right.bar(x, share, 0.6, bottom=bottom, label=f"interest #{i + 1}")
        bottom += share
    right.set_xticks(x, variants, rotation=30, ha="right", fontsize="small")
    right.set_ylabel("share of the final top-N list")
    right.set_ylim(0, 1)
    if depth:
        right.legend(fontsize="x-small", ncol=2)
    fig.suptitle(title or "interest collapse (test)")
    _save(fig, Path(path))
    return drawn


# ----------------------------------------------------------------------------------------------------------
# A whole grid


def read_history(run_dir: str | Path, metric: str = "recall@50") -> tuple[list[int], list[float]]:
    """(steps, values) of ``metric`` in a run folder's history.jsonl (the per-evaluation valid metrics)."""
    path = Path(run_dir) / "history.jsonl"
    if not path.exists():
        return [], []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if metric in r]
    return [int(r["step"]) for r in rows], [float(r[metric]) for r in rows]


def _test_values(
    loaded: Sequence[tuple[dict[str, Any], dict[str, Any]]], variants: Sequence[str], metrics: Sequence[str]
) -> dict[str, dict[str, list[float]]]:
    """{variant: {metric: per-seed test values}} from (record, metrics.json) pairs; absent metrics are skipped."""
    return {
        v: {m: [rm["test"][m] for r, rm in loaded if r["variant"] == v and m in rm["test"]] for m in metrics}
        for v in variants
    }


def plot_grid(records: Sequence[dict[str, Any]], out_dir: str | Path, *, k: int = 50) -> dict[Path, Any]:
    """Every figure for the finished cells of a grid. A record: dataset, variant, seed, run_dir and, for a
    swept variant, base, sweep_key, sweep_value. Returns {PNG path written: the data it drew}."""
    out_dir = Path(out_dir)
    metrics = (f"recall@{k}", f"ndcg@{k}")
    written: dict[Path, Any] = {}
    for dataset in dict.fromkeys(r["dataset"] for r in records):
        sub = [r for r in records if r["dataset"] == dataset]
        loaded = [(r, json.loads((Path(r["run_dir"]) / "metrics.json").read_text())) for r in sub]
        variants = list(dict.fromkeys(r["variant"] for r in sub))

        curves: dict[str, list] = {v: [] for v in variants}
        for r in sub:
            steps, vals = read_history(r["run_dir"], metrics[0])
            if steps:
                curves[r["variant"]].append((steps, vals))
        path = out_dir / f"curves_{safe_name(dataset)}.png"
        written[path] = plot_training_curves(
            curves, path, metric=metrics[0], title=f"{dataset}: valid {metrics[0]} (early-stop metric)"
        )

        bars = _test_values(loaded, variants, metrics)
        path = out_dir / f"bars_{safe_name(dataset)}.png"
        written[path] = plot_metric_bars(bars, path, metrics=metrics, title=f"{dataset}: test, mean ± std over seeds")

        for key in dict.fromkeys(r["sweep_key"] for r in sub if r.get("sweep_key")):
            sweep: dict[str, dict[str, dict[str, list[float]]]] = {}
            for r, rm in loaded:
                if r.get("sweep_key") != key:
                    continue
                cell = sweep.setdefault(r["base"], {}).setdefault(r["sweep_value"], {m: [] for m in metrics})
                for m in metrics:
                    if m in rm["test"]:
                        cell[m].append(rm["test"][m])
            path = out_dir / f"sweep_{safe_name(dataset)}_{safe_name(key)}.png"
            written[path] = plot_sweep(
                sweep, path, key=key, metrics=metrics, title=f"{dataset}: test metrics against {key}"
            )

        novel = f"novel_recall@{k}"
        if any(novel in rm["test"] for _, rm in loaded):
            points = _test_values(loaded, variants, (metrics[0], novel))
            path = out_dir / f"tradeoff_{safe_name(dataset)}.png"
            written[path] = plot_tradeoff({dataset: points}, path, x=metrics[0], y=novel)[dataset]

        collapse = {
            v: [rm["test"]["collapse"] for r, rm in loaded if r["variant"] == v and rm["test"].get("collapse")]
            for v in variants
        }
        if any(collapse.values()):
            path = out_dir / f"collapse_{safe_name(dataset)}.png"
            written[path] = plot_collapse(collapse, path, title=f"{dataset}: interest collapse (test), mean over seeds")
    return written
