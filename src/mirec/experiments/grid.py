"""`mirec bench`: a resumable grid of training runs (variants x datasets x seeds) and paper-style tables.

Each cell trains in its own process and run folder; a cell whose metrics.json exists is skipped on rerun,
a failed or timed-out cell is recorded in failures.json and the grid goes on.

A grid can come from a spec (``--grid NAME`` for ``src/mirec/experiments/grids/NAME.toml``, or ``--grid FILE.toml``):
``models`` and ``variants`` (the ``--variant`` syntax), ``seeds``, common overrides ``set``, optional
``budget_minutes`` / ``jobs``, and ``[[sweep]]`` tables (``key``, ``values``, optional ``tied`` companion
keys with one value per swept value). Each sweep expands every base variant into one variant per value,
named ``base[key=value]``; several sweeps are expanded one at a time (their union, not their product).
Command-line flags add to the spec (--models, --variant, --set, --sweep; a same-named variant or same-keyed
sweep replaces the spec's) or override it (--seeds, --budget-minutes, --jobs).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mirec.config import load_config
from mirec.config import toml_literal as config_toml_literal
from mirec.config.toml import parse_toml_literal
from mirec.utils import atomic_write_text, parse_int_list, threads_per_job


@dataclass
class Variant:
    """A named model configuration: ``name=model[:key=value;key=value]`` on the command line."""

    name: str
    model: str
    overrides: list[str] = field(default_factory=list)
    base: str | None = None  # for a swept variant: the base variant's name
    sweep_key: str | None = None
    sweep_value: str | None = None  # the swept value as a compact TOML literal ("8", "0.3", "[5.0,2.5,1.0]")

    @classmethod
    def parse(cls, text: str) -> Variant:
        if "=" in text.split(":")[0]:
            name, rest = text.split("=", 1)
        else:
            name, rest = text.split(":")[0], text
        model, _, sets = rest.partition(":")
        return cls(name=name, model=model, overrides=[s for s in sets.split(";") if s])


def toml_literal(value: Any) -> str:
    """A TOML literal without spaces (for names and ``--set`` values): 8, 0.3, true, "x", [5.0,2.5,1.0]."""
    return config_toml_literal(value, separator=",")


def parse_literal(text: str) -> Any:
    """A TOML literal (bare words are strings), as ``--set`` reads values."""
    return parse_toml_literal(text)


def _split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets and quotes: "[1,0],[5,2.5]" -> ["[1,0]", "[5,2.5]"]."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


@dataclass
class Sweep:
    """One config key and its values; ``tied`` keys take the value at the same position (e.g. graph.b = 1 - a)."""

    key: str
    values: list[Any]
    tied: dict[str, list[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError(f"sweep {self.key}: no values")
        for other, values in self.tied.items():
            if len(values) != len(self.values):
                raise ValueError(
                    f"sweep {self.key}: tied {other} has {len(values)} values, expected {len(self.values)}"
                )

    @classmethod
    def parse(cls, text: str) -> Sweep:
        """``KEY=v1,v2,...`` with TOML literals (lists allowed); ``;KEY2=w1,w2,...`` adds a tied key."""
        parts = []
        for piece in _split_top_level(text, ";"):
            key, eq, raw = piece.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"--sweep expects KEY=v1,v2,..., got {text!r}")
            parts.append((key.strip(), [parse_literal(v) for v in _split_top_level(raw)]))
        (key, values), *tied = parts
        return cls(key, values, dict(tied))

    def expand(self, variant: Variant) -> list[Variant]:
        out = []
        for i, value in enumerate(self.values):
            sets = [f"{self.key}={toml_literal(value)}"] + [f"{k}={toml_literal(v[i])}" for k, v in self.tied.items()]
            label = toml_literal(value)
            out.append(
                Variant(
                    f"{variant.name}[{self.key}={label}]",
                    variant.model,
                    [*variant.overrides, *sets],
                    base=variant.name,
                    sweep_key=self.key,
                    sweep_value=label,
                )
            )
        return out


GRID_ROOT = Path(__file__).parent / "grids"
SPEC_KEYS = {"description", "datasets", "models", "variants", "seeds", "set", "budget_minutes", "jobs", "sweep"}


@dataclass
class GridSpec:
    """A grid of variants (models, named variants, sweeps), seeds and common overrides; datasets come from --data."""

    name: str = ""
    description: str = ""
    datasets: list[str] = field(default_factory=list)  # the datasets the experiment was run on (informative)
    variants: list[Variant] = field(default_factory=list)  # base variants, before sweeps
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    set: list[str] = field(default_factory=list)
    sweeps: list[Sweep] = field(default_factory=list)
    budget_minutes: float = 0.0
    jobs: int = 1
    config: str = ""  # a TOML file applied over the presets of every cell (e.g. a tuned best.toml)

    def expanded(self) -> list[Variant]:
        """The base variants, or with sweeps each base variant once per swept value (one sweep at a time)."""
        if not self.sweeps:
            out = list(self.variants)
        else:
            out = [v for sweep in self.sweeps for base in self.variants for v in sweep.expand(base)]
        names = [v.name for v in out]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"grid {self.name!r}: variant names not unique: {dupes}")
        return out


def shipped_grids() -> list[str]:
    return sorted(p.stem for p in GRID_ROOT.glob("*.toml"))


def load_grid(name_or_path: str | Path) -> GridSpec:
    """A shipped grid by name (see :func:`shipped_grids`) or a TOML file."""
    path = Path(name_or_path)
    if not (path.suffix == ".toml" and path.exists()):
        if str(name_or_path) not in shipped_grids():
            raise ValueError(f"no grid spec {str(name_or_path)!r}; shipped: {', '.join(shipped_grids())}")
        path = GRID_ROOT / f"{name_or_path}.toml"
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: {exc}") from None
    unknown = set(data) - SPEC_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; known: {sorted(SPEC_KEYS)}")
    sweeps = []
    for table in data.get("sweep", []):
        extra = set(table) - {"key", "values", "tied"}
        if extra or "key" not in table or "values" not in table:
            raise ValueError(f"{path}: a [[sweep]] needs key and values (and optional tied), got {sorted(table)}")
        sweeps.append(Sweep(table["key"], list(table["values"]), dict(table.get("tied", {}))))
    return GridSpec(
        name=path.stem,
        description=data.get("description", ""),
        datasets=list(data.get("datasets", [])),
        variants=[Variant(m, m) for m in data.get("models", [])] + [Variant.parse(t) for t in data.get("variants", [])],
        seeds=[int(s) for s in data.get("seeds", [1, 2, 3])],
        set=[str(s) for s in data.get("set", [])],
        sweeps=sweeps,
        budget_minutes=float(data.get("budget_minutes", 0.0)),
        jobs=int(data.get("jobs", 1)),
    )


def _replace_or_add(items: list[Any], new: list[Any], key: Any) -> list[Any]:
    out = list(items)
    for item in new:
        same = [i for i, old in enumerate(out) if key(old) == key(item)]
        if same:
            out[same[0]] = item
        else:
            out.append(item)
    return out


def resolve_spec(args: Any) -> GridSpec:
    """The spec of ``--grid`` (or an empty one) with the command-line flags added / overriding."""
    spec = load_grid(args.grid) if getattr(args, "grid", None) else GridSpec()
    cli_variants = [Variant(m, m) for m in (args.models.split(",") if args.models else [])]
    cli_variants += [Variant.parse(t) for t in args.variant]
    spec.variants = _replace_or_add(spec.variants, cli_variants, key=lambda v: v.name)
    spec.sweeps = _replace_or_add(
        spec.sweeps, [Sweep.parse(t) for t in getattr(args, "sweep", []) or []], key=lambda s: s.key
    )
    spec.set = [*spec.set, *args.set, *getattr(args, "log_overrides", [])]
    if getattr(args, "config", None):
        if not Path(args.config).is_file():
            raise FileNotFoundError(f"--config {args.config}: no such file")
        spec.config = str(Path(args.config).resolve())
    if args.seeds is not None:
        spec.seeds = parse_int_list(args.seeds, "--seeds")
    if args.budget_minutes is not None:
        spec.budget_minutes = args.budget_minutes
    if args.jobs is not None:
        spec.jobs = args.jobs
    if not spec.variants:
        raise ValueError("no variants: give --grid, --models or --variant")
    return spec


def check_variants(
    variants: list[Variant], common: list[str], presets: list[str] | None = None, config_file: str = ""
) -> None:
    """Build each cell's RunConfig (each variant on each dataset's presets; no data read) so an unknown key, a
    misspelled choice or a cross-field conflict fails before the first cell trains."""
    from mirec.config import ConfigError

    for preset in presets or [None]:
        for v in variants:
            try:
                load_config(config_file or None, model=v.model, dataset=preset, overrides=[*common, *v.overrides])
            except (ConfigError, ValueError) as exc:
                where = f" on the {preset!r} presets" if preset else ""
                raise ValueError(f"variant {v.name!r}{where}: {exc}") from None


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


NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}$")  # dataset and variant names: one safe path component


def check_name(name: str, what: str) -> str:
    """A user-given name that becomes a folder: a safe character set, so never a path of its own."""
    if not NAME.match(name):
        raise ValueError(
            f"{what} {name!r}: names are letters, digits and _ . + - (starting with a letter or digit, at most 100)"
        )
    return name


def check_cell_folder(output: Path, folder: Path, variant: Variant) -> Path:
    """A cell's folder is a child of ``output`` whatever a swept value holds (no separator, no ``..``)."""
    label = variant.name
    if "/" in label or "\\" in label or "\0" in label or ".." in label or len(label) > 200:
        raise ValueError(f"variant {label!r}: a swept value may not hold '/', '\\', '..' or a NUL (it names a folder)")
    if not folder.resolve().is_relative_to(output.resolve()):
        raise ValueError(f"variant {label!r}: its folder {folder} would lie outside --output {output}")
    return folder


def plan(output: Path, datasets: dict[str, str], variants: list[Variant], seeds: list[int]) -> list[Cell]:
    """Seed-major order: a grid cut short still leaves whole seeds (every dataset and variant) to compare.
    Every name is checked before any cell runs."""
    for ds in datasets:
        check_name(ds, "--data name")
    for v in variants:
        check_name(v.base or v.name, "variant")
    return [
        Cell(ds, path, v, s, check_cell_folder(output, output / ds / v.name / f"seed{s}", v))
        for s in seeds
        for ds, path in datasets.items()
        for v in variants
    ]


def run_cell(cell: Cell, common: list[str], budget_minutes: float, threads: int, config: str = "") -> dict[str, Any]:
    """Train one cell in a subprocess with a soft (train.max_minutes) and a hard (timeout) budget."""
    cmd = [
        sys.executable,
        "-m",
        "mirec.cli",
        "train",
        "--data",
        cell.data_dir,
        "--model",
        cell.variant.model,
        "--output",
        str(cell.run_dir),
        "--seed",
        str(cell.seed),
        "--quiet",
    ]
    if config:
        cmd += ["--config", config]
    for text in [*common, *cell.variant.overrides] + (
        [f"train.max_minutes={budget_minutes}"] if budget_minutes else []
    ):
        cmd += ["--set", text]
    from mirec.runs import is_run_folder, latest_checkpoint, run_entries

    if latest_checkpoint(cell.run_dir) is not None:
        cmd.append("--resume")
    elif run_entries(cell.run_dir) and is_run_folder(cell.run_dir):
        cmd.append("--overwrite")  # a run of mirec's cut before its first checkpoint; anything else is refused
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


def run_grid(
    cells: list[Cell],
    common: list[str],
    budget_minutes: float,
    jobs: int,
    output: Path,
    config: str = "",
    threads: int | None = None,
) -> list[dict]:
    """Train the cells not done yet, ``jobs`` at a time, each with ``threads`` CPU threads (default: the usable
    CPUs shared out among the jobs; more threads than cores makes OpenMP's spinning threads crawl)."""
    todo = [c for c in cells if not c.done]
    print(f"{len(cells)} cells, {len(cells) - len(todo)} already done, {len(todo)} to run", file=sys.stderr)
    threads = threads or threads_per_job(jobs)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(lambda c: run_cell(c, common, budget_minutes, threads, config), todo))
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
            train = m.get("train", {})
            row = {
                "dataset": c.dataset,
                "variant": c.variant.name,
                "model": c.variant.model,
                "seed": c.seed,
                "split": split,
                "train_seconds": train.get("seconds"),
                "samples_per_second": train.get("samples_per_second"),
                "steps": train.get("steps"),
                "best_step": train.get("best_step"),
                "stop_reason": train.get("stop_reason"),
            }
            if c.variant.sweep_key is not None:
                row.update(
                    base_variant=c.variant.base, sweep_key=c.variant.sweep_key, sweep_value=c.variant.sweep_value
                )
            row.update({k: v for k, v in m[split].items() if isinstance(v, int | float)})
            collapse = m[split].get("collapse") or {}
            row.update({f"collapse_{k}": v for k, v in collapse.items() if isinstance(v, int | float)})
            rows.append(row)
    return rows


LEADING = ("dataset", "variant", "model", "seed", "split", "base_variant", "sweep_key", "sweep_value")


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """CSV (quoted where a name or a swept list holds a comma); the identifying columns first."""
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in LEADING, k))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if r.get(k) is None else r[k] for k in keys} for r in rows)
    atomic_write_text(path, buffer.getvalue())


def markdown_tables(rows: list[dict[str, Any]], ks: list[int], split: str = "test") -> str:
    """Per dataset: mean ± std over seeds, best in bold, improvement of best over second, paired t-test."""
    from scipy import stats

    from mirec.eval.metrics import METRICS

    out = []
    rows = [r for r in rows if r["split"] == split]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        sub = [r for r in rows if r["dataset"] == dataset]
        variants = list(dict.fromkeys(r["variant"] for r in sub))
        # every registered metric the cells reported (diversity only where the dataset has categories)
        cols = [c for c in (f"{m}@{k}" for k in ks for m in METRICS) if any(r.get(c) is not None for r in sub)]
        values = {
            v: {c: {r["seed"]: r.get(c) for r in sub if r["variant"] == v and r.get(c) is not None} for c in cols}
            for v in variants
        }
        out.append(f"### {dataset} ({split}, mean ± std over seeds; n = seeds per row)\n")
        out.append("| model | n | " + " | ".join(cols) + " | train s |")
        out.append("|---|---|" + "---|" * len(cols) + "---|")
        best = {
            c: max(variants, key=lambda v: np.mean(list(values[v][c].values())) if values[v][c] else -1) for c in cols
        }
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
            out.append(
                f"| {v} | {n} | " + " | ".join(cells) + f" | {np.mean(secs):.0f} |"
                if secs
                else f"| {v} | {n} | " + " | ".join(cells) + " | - |"
            )
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
        cut = [
            f"{r['variant']} seed {r['seed']} ({r['steps']:,} steps)"
            for r in sub
            if r.get("stop_reason") == "max_minutes" and r.get("steps") is not None
        ]
        if cut:
            out.append("\nStopped by the wall-clock budget (still improving or not): " + ", ".join(cut))
        out.append("")
    return "\n".join(out)


def parse_data_args(texts: list[str], check: bool = True) -> dict[str, str]:
    """``NAME=DIR`` pairs; with ``check`` each DIR must be a prepared dataset (or the bundled name), so a typo
    fails before any cell runs (``--tables-only`` reads finished cells and needs no data)."""
    from mirec.api import BUNDLED
    from mirec.data.dataset import is_prepared_dataset

    datasets: dict[str, str] = {}
    for text in texts:
        name, sep, path = text.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--data {text!r}: expected NAME=DIR")
        if check and path != BUNDLED and not is_prepared_dataset(path):
            raise FileNotFoundError(
                f"--data {text}: {path} is not a prepared dataset (no meta.json); run mirec prepare"
            )
        datasets[name] = path
    return datasets


@dataclass
class GridResults:
    """The rows of a grid's finished cells (one per dataset, variant, seed and split) and their tables."""

    rows: list[dict[str, Any]]
    ks: list[int]

    def markdown(self, split: str = "test") -> str:
        return markdown_tables(self.rows, self.ks, split)

    def write(self, output: Path) -> None:
        """results.csv and results.md (atomic)."""
        write_csv(self.rows, output / "results.csv")
        atomic_write_text(output / "results.md", self.markdown())


@dataclass
class Grid:
    """Datasets x variants x seeds, every cell an ordinary run folder ``output/DATASET/VARIANT/seedN``; a cut
    grid resumes. ``in_process`` trains the cells here, one after the other (tests, notebooks); otherwise each
    cell is its own ``mirec train`` process, ``spec.jobs`` at a time (isolation, parallel cells)."""

    spec: GridSpec
    datasets: dict[str, str]  # NAME -> prepared folder (or the bundled dataset's name)
    output: Path
    threads: int | None = None  # torch threads of each cell (default: the usable CPUs shared out)
    in_process: bool = False
    ks: list[int] = field(default_factory=lambda: [20, 50])

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        self.variants = self.spec.expanded()
        self.cells = plan(self.output, self.datasets, self.variants, self.spec.seeds)  # names checked here

    def check(self) -> None:
        """Build every cell's config on its dataset's presets (no data read): a typo fails before any training."""
        from mirec.api import BUNDLED, preset_of

        presets = sorted({BUNDLED if d == BUNDLED else preset_of(d) for d in self.datasets.values()})
        check_variants(self.variants, self.spec.set, presets, self.spec.config)

    def run(self) -> GridResults:
        """Train the cells not done yet, write grid.json, results.csv and results.md; raises when cells failed."""
        self.check()
        atomic_write_text(self.output / "grid.json", json.dumps(self.description(), indent=2))
        if self.in_process:
            outcome = [run_cell_here(c, self.spec.set, self.spec.budget_minutes, self.spec.config) for c in self.todo()]
        else:
            spec = self.spec
            outcome = run_grid(
                self.cells, spec.set, spec.budget_minutes, spec.jobs, self.output, spec.config, self.threads
            )
        results = self.results()
        failed = [r for r in outcome if not r["ok"]]
        if failed:
            raise RuntimeError(
                f"{len(failed)} of {len(outcome)} cells failed (reasons above and in {self.output / 'failures.json'})"
            )
        return results

    def todo(self) -> list[Cell]:
        return [c for c in self.cells if not c.done]

    def results(self) -> GridResults:
        """The finished cells' figures, written to results.csv / results.md."""
        results = GridResults(collect(self.cells), self.ks)
        results.write(self.output)
        return results

    def description(self) -> dict[str, Any]:
        """grid.json: what the grid ran, enough to run it again."""
        keys = ("name", "model", "overrides", "base", "sweep_key", "sweep_value")
        return {
            "grid": self.spec.name,
            "datasets": self.datasets,
            "seeds": self.spec.seeds,
            "set": self.spec.set,
            "config": self.spec.config,
            "budget_minutes": self.spec.budget_minutes,
            "variants": [{k: getattr(v, k) for k in keys} for v in self.variants],
        }


def run_cell_here(cell: Cell, common: list[str], budget_minutes: float, config: str = "") -> dict[str, Any]:
    """Train one cell in this process (the subprocess cell's rules: resume a checkpoint, replace only a run of
    mirec's, a failure recorded and not raised)."""
    from mirec.api import train
    from mirec.runs import is_run_folder, latest_checkpoint, run_entries

    overrides = [*common, *cell.variant.overrides, f"train.seed={cell.seed}"]
    overrides += [f"train.max_minutes={budget_minutes}"] if budget_minutes else []
    resume = latest_checkpoint(cell.run_dir) is not None
    overwrite = not resume and bool(run_entries(cell.run_dir)) and is_run_folder(cell.run_dir)
    started = time.time()
    try:
        train(
            cell.data_dir,
            cell.variant.model,
            cell.run_dir,
            config_file=config or None,
            overrides=overrides,
            resume=resume,
            overwrite=overwrite,
            progress=False,
        )
        ok, reason = True, ""
    except Exception as exc:  # noqa: BLE001 - a failed cell is reported, the grid goes on
        ok, reason = False, " ".join(str(exc).split())
    return {"cell": str(cell.run_dir), "ok": ok, "reason": reason, "seconds": time.time() - started}


def main_bench(args: Any) -> None:
    """``mirec bench``: the flags mapped onto a :class:`Grid`."""
    if getattr(args, "plots", False):
        from mirec.experiments.plots import require_matplotlib

        require_matplotlib()  # fail before hours of training, not after
    datasets = parse_data_args(args.data, check=not args.tables_only)
    spec = resolve_spec(args)
    grid = Grid(
        spec, datasets, Path(args.output), getattr(args, "threads", None), ks=parse_int_list(args.topk, "--topk")
    )
    unused = sorted(set(datasets) - set(spec.datasets)) if spec.datasets else []
    if unused:
        print(
            f"note: grid {spec.name!r} was run in the paper on {', '.join(spec.datasets)}; "
            f"also running on {', '.join(unused)}",
            file=sys.stderr,
        )
    failure: RuntimeError | None = None
    try:
        results = grid.results() if args.tables_only else grid.run()
    except RuntimeError as exc:  # the tables and mirrors of the finished cells are still written
        failure, results = exc, grid.results()
    print(results.markdown())
    if getattr(args, "plots", False):
        plot_cells(grid)
    mirror_grid(grid)
    if failure is not None:
        raise failure


def plot_cells(grid: Grid) -> None:
    from mirec.experiments.plots import plot_grid

    keys = ("base", "sweep_key", "sweep_value")
    records = [
        {
            "dataset": c.dataset,
            "variant": c.variant.name,
            **{k: getattr(c.variant, k) for k in keys},
            "seed": c.seed,
            "run_dir": c.run_dir,
        }
        for c in grid.cells
        if c.done
    ]
    written = plot_grid(records, grid.output / "plots", k=grid.ks[-1])
    print(f"{len(written)} plots in {grid.output / 'plots'}", file=sys.stderr)


def mirror_grid(grid: Grid) -> None:
    """The grid's tables and plots in the tracker the cells used (train.log_to), if any."""
    from mirec.training.tracking import mirror_summary

    spec, output = grid.spec, grid.output
    summary = {"datasets": {k: str(v) for k, v in grid.datasets.items()}, "seeds": spec.seeds, "set": spec.set}
    summary["variants"] = [f"{v.name} = {v.model}: {'; '.join(v.overrides)}" for v in grid.variants]  # names hold [ ]
    files = [output / "results.md", output / "results.csv", *sorted((output / "plots").glob("*.png"))]
    train = load_config(spec.config or None, model=grid.variants[0].model, overrides=spec.set).train  # every cell's
    mirror_summary(output, train, summary, files)
