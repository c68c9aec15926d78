"""``mirec tune``: hyper-parameter search with Optuna on the VALIDATION split (``pip install "mirec[tune]"``).

A search space file names config options and their ranges::

    [space]
    "train.lr" = {low = 1e-4, high = 1e-2, log = true}    # float (log scale)
    "model.routing_iterations" = {low = 1, high = 5}       # int (both bounds integers; optional step)
    "model.num_interests" = [2, 4, 8]                      # categorical

Every trial is an ordinary run folder ``OUTPUT/trials/NNNN`` (resumable, with its config.toml); the objective is
the configured early-stop metric (``eval.early_stop_metric``, recall@50 by default) of the trial's best
checkpoint on the valid split. Each evaluation is reported to the study, so a pruner (median or successive
halving) stops bad trials early. The test split is never evaluated: trials train with ``test=False``; the best
config (``OUTPUT/best.toml``) is trained and tested afterwards as its own step (``mirec bench --config``).

The study lives in an Optuna storage (SQLite ``OUTPUT/study.db`` by default, any Optuna URL accepted): a killed
``mirec tune`` resumes it (a trial cut by the kill is failed by its stopped heartbeat and retried once with the
same parameters, continuing its run folder from its checkpoint), and several workers share it (``--jobs`` starts
them as processes; more can join from elsewhere with the same ``--storage`` and ``--study``).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import subprocess
import sys
import time
import tomllib
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirec.config import ConfigError, load_config, to_toml, toml_literal
from mirec.utils import atomic_write_text, exclusive_lock, threads_per_job

HEARTBEAT_SECONDS = 10  # a worker's running trial proves it is alive this often
GRACE_SECONDS = 30  # a trial without a heartbeat for this long is failed (and retried once)


@dataclass(frozen=True)
class Dimension:
    """One searched option: ``kind`` float | int | categorical."""

    key: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one this dimension can suggest (a choice, or within the bounds)."""
        if self.kind == "categorical":
            return value in self.choices
        return isinstance(value, int | float) and not isinstance(value, bool) and self.low <= value <= self.high

    def corners(self) -> list[Any]:
        """Values that reach every bound and choice, to check the space against the config before any trial."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]


def load_space(path: str | Path) -> list[Dimension]:
    """The ``[space]`` table of a TOML file; errors name the file and the key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such search space file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    table = data.get("space")
    if not isinstance(table, dict) or not table:
        raise ConfigError(f'{path}: expected a non-empty [space] table of "section.option" = range or [choices]')
    unknown = set(data) - {"space"}
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) {sorted(unknown)}; only [space]")
    return [_dimension(path, key, spec) for key, spec in table.items()]


def _dimension(path: Path, key: str, spec: Any) -> Dimension:
    where = f"{path}: space {key!r}"
    if key.count(".") != 1:
        raise ConfigError(f'{where}: expected section.option, e.g. "train.lr"')
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{where}: an empty list of choices")
        return Dimension(key, "categorical", choices=tuple(spec))
    if not isinstance(spec, dict) or not {"low", "high"} <= set(spec):
        raise ConfigError(f"{where}: expected {{low = .., high = ..[, log = true][, step = ..]}} or a list of choices")
    extra = set(spec) - {"low", "high", "log", "step"}
    if extra:
        raise ConfigError(f"{where}: unknown field(s) {sorted(extra)}; expected low, high, log, step")
    low, high, log, step = spec["low"], spec["high"], bool(spec.get("log", False)), spec.get("step")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)) or not low < high:
        raise ConfigError(f"{where}: low and high must be numbers with low < high")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log scale needs low > 0")
    if log and step is not None:
        raise ConfigError(f"{where}: log and step cannot be combined")
    is_int = isinstance(low, int) and isinstance(high, int) and (step is None or isinstance(step, int))
    return Dimension(key, "int" if is_int else "float", float(low), float(high), log, step)


def overrides_of(params: dict[str, Any]) -> list[str]:
    return [f"{key}={toml_literal(value)}" for key, value in params.items()]


def check_space(space: list[Dimension], model: str, preset: str, config_file: str | None, fixed: list[str]) -> None:
    """Build the config at every bound and choice of every dimension: a misspelled option, a value of the wrong
    type or out of range fails now, not in trial 7."""
    load_config(config_file, model=model, dataset=preset, overrides=fixed)  # the fixed options alone first
    for dim in space:
        for value in dim.corners():
            try:
                load_config(
                    config_file, model=model, dataset=preset, overrides=[*fixed, *overrides_of({dim.key: value})]
                )
            except (ConfigError, ValueError) as exc:
                raise ConfigError(f"search space {dim.key} = {value!r}: {exc}") from None


def baseline_params(space: list[Dimension], base: Any) -> dict[str, Any]:
    """The config's own values of the searched options (``--baseline-trial``), each checked against its range."""
    params = {}
    for dim in space:
        value = base.value(dim.key)
        if not dim.contains(value):
            raise ConfigError(f"--baseline-trial: the config's {dim.key} = {value!r} lies outside the search space")
        params[dim.key] = value
    return params


# ---------------------------------------------------------------- the study
def open_study(args: argparse.Namespace, worker: int = 0, warmup_steps: int = 0) -> Any:
    """The study on its storage; ``warmup_steps``: training steps before the median pruner may stop a trial."""
    import optuna

    url = args.storage
    storage: Any = url
    if url.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql", "mysql", "oracle", "mssql"):
        storage = optuna.storages.RDBStorage(
            url,
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
        )
    pruner = {
        "median": lambda: optuna.pruners.MedianPruner(
            n_startup_trials=args.startup_trials, n_warmup_steps=warmup_steps
        ),
        "halving": lambda: optuna.pruners.SuccessiveHalvingPruner(),
        "none": lambda: optuna.pruners.NopPruner(),
    }[args.pruner]()
    study = optuna.create_study(
        storage=storage,
        study_name=args.study,
        direction="maximize",
        sampler=make_sampler(args, None),
        pruner=pruner,
        load_if_exists=True,
    )
    study.sampler = make_sampler(args, sampler_seed(args.seed, worker, len(study.trials)))
    return study


def sampler_seed(seed: int | None, worker: int, trials_so_far: int) -> int | None:
    """The sampler's seed from the study's state: workers propose different trials, and a resumed study does not
    replay the seeded stream from its start (which repeated the first trials' parameters exactly)."""
    if seed is None:
        return None
    return seed + worker if trials_so_far == 0 else (seed * 1_000_003 + worker * 10_007 + trials_so_far) % 2**32


def make_sampler(args: argparse.Namespace, seed: int | None) -> Any:
    import optuna

    if args.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=args.startup_trials)


def fail_dead_workers_trials(study: Any) -> list[int]:
    """Fail (and retry once, continuing the run folder) every RUNNING trial whose worker is gone: its worker lock
    is free. Heartbeats catch the same only after a grace period; a lock is free the moment its holder dies."""
    import optuna

    from mirec.utils import LockedError

    failed = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        number, lock = trial.user_attrs.get("worker_lock", [None, None])
        if number != trial.number:
            continue  # its worker has not named its lock yet: the heartbeat's grace period catches it
        try:
            with exclusive_lock(lock, "tuning worker"):
                pass
        except LockedError:
            continue  # alive
        storage = study._storage  # Optuna's own fail_stale_trials does the same with it
        try:
            if not storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker failed it first
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)(study, storage.get_trial(trial._trial_id))
        failed.append(trial.number)
    return failed


def study_identity(args: argparse.Namespace, space: list[Dimension], data_dir: Path) -> dict[str, Any]:
    """What a study was started with; a resumed or joined study must match it."""
    return {
        "model": args.model,
        "data": str(data_dir.resolve()),
        "config": str(Path(args.config).resolve()) if args.config else "",
        "set": list(args.set),
        "seed": args.seed,
        "space": {d.key: [d.kind, d.low, d.high, d.log, d.step, list(d.choices)] for d in space},
    }


def check_identity(study: Any, identity: dict[str, Any]) -> None:
    known = study.user_attrs.get("mirec")
    if known is None:
        study.set_user_attr("mirec", identity)
        return
    changed = sorted(k for k in identity if known.get(k) != identity[k])
    if changed:
        raise ValueError(
            f"study {study.study_name!r} was started with other {', '.join(changed)} "
            f"({', '.join(f'{k}: {known.get(k)!r}' for k in changed)}); resume it with the same arguments or "
            "name a new --study"
        )


@dataclass(frozen=True)
class StudySetup:
    """What every trial shares: the prepared data, its preset, the fixed options (``--set``, ``--seed``) and the
    config they give before the searched options."""

    data_dir: Path
    preset: str
    fixed: list[str]
    base: Any

    @classmethod
    def of(cls, args: argparse.Namespace) -> StudySetup:
        from mirec.api import preset_of, resolve_data

        data_dir = resolve_data(args.data)
        preset = preset_of(data_dir)
        fixed = list(args.set) + ([f"train.seed={args.seed}"] if args.seed is not None else [])
        return cls(data_dir, preset, fixed, load_config(args.config, model=args.model, dataset=preset, overrides=fixed))


def run_worker(args: argparse.Namespace, worker: int = 0) -> None:
    """Run trials until the study holds ``--trials`` finished (complete or pruned) trials or the budget ends."""
    output = Path(args.output)
    setup = StudySetup.of(args)
    data_dir, preset, fixed, base = setup.data_dir, setup.preset, setup.fixed, setup.base
    space = load_space(args.space)
    check_space(space, args.model, preset, args.config, fixed)
    # early evaluations are noisy: no trial is pruned before its --prune-after-evals-th evaluation
    study = open_study(args, worker, warmup_steps=args.prune_after_evals * base.train.eval_every)
    check_identity(study, study_identity(args, space, data_dir))
    # held while this worker lives: a resumed or joining worker tells a dead worker's trial by its free lock
    held_lock = output / "workers" / f"{uuid.uuid4().hex}.lock"
    with exclusive_lock(held_lock, "tuning worker"):
        for number in fail_dead_workers_trials(study):
            print(f"trial {number}: its worker is gone; failed and queued again", file=sys.stderr)
        optimize(args, study, space, setup, str(held_lock))


def optimize(args: argparse.Namespace, study: Any, space: list[Dimension], setup: StudySetup, held_lock: str) -> None:
    """Run trials of ``study`` until it holds ``--trials`` finished ones or the budget ends."""
    import optuna

    from mirec.data.dataset import load_dataset
    from mirec.runs import is_run_folder, latest_checkpoint
    from mirec.training.trainer import train_run

    output, preset, fixed, base = Path(args.output), setup.preset, setup.fixed, setup.base
    dataset = load_dataset(setup.data_dir)
    metric = base.eval.early_stop_metric

    def objective(trial: Any) -> float:
        # first: a dead worker's trial is found by its free lock (the number: a retry copies its original's attrs)
        trial.set_user_attr("worker_lock", [trial.number, held_lock])
        params = {dim.key: dim.suggest(trial) for dim in space}
        # a retried trial (its worker died) continues the run folder of the trial it repeats
        frozen = trial.study.get_trials(deepcopy=False)[trial.number]
        first = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        run_dir = output / "trials" / f"{first if first is not None else trial.number:04d}"
        config = load_config(args.config, model=args.model, dataset=preset, overrides=[*fixed, *overrides_of(params)])
        trial.set_user_attr("run_dir", str(run_dir))

        def report(step: int, metrics: dict[str, Any]) -> str | None:
            trial.report(float(metrics[metric]), step)
            return "pruned" if trial.should_prune() else None

        resume = latest_checkpoint(run_dir) is not None
        result = train_run(
            dataset,
            config,
            run_dir,
            resume=resume,
            overwrite=not resume and is_run_folder(run_dir),  # the tuner's own run, cut before its first checkpoint
            progress=False,
            preset=f"{preset}/{args.model}",
            on_evaluation=report,
            test=False,
        )
        value = float(result["train"]["best_valid_metric"])
        trial.set_user_attr("best_step", int(result["train"]["best_step"]))
        print(f"trial {trial.number}: valid {metric} = {value:.5f} ({result['train']['stop_reason']}) {params}")
        if result["train"]["stop_reason"] == "pruned":
            raise optuna.TrialPruned(f"valid {metric} {value:.5f} at step {result['train']['steps']}")
        return value

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished))
    if done >= args.trials:
        return
    budget = args.budget_minutes * 60 if args.budget_minutes else None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(
        objective,
        timeout=budget,
        callbacks=[optuna.study.MaxTrialsCallback(args.trials, states=finished)],
        gc_after_trial=True,
    )


# ---------------------------------------------------------------- reports
def trial_rows(study: Any, metric_name: str) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower() + (" (baseline)" if t.user_attrs.get("baseline") else ""),
                f"valid {metric_name}": "" if t.value is None else round(float(t.value), 6),
                **{key: value for key, value in t.params.items()},
                "steps": max(t.intermediate_values, default=""),
                "seconds": "" if t.duration is None else round(t.duration.total_seconds(), 1),
                "run_dir": t.user_attrs.get("run_dir", ""),
            }
        )
    return rows


def best_toml(study: Any, args: argparse.Namespace, metric_name: str) -> str:
    """The best trial's options plus the fixed ``--set`` ones, as a config file for ``mirec train --config``
    (over the same model and dataset presets; the tuned seed is left out, so bench's seeds apply)."""
    from mirec.config import apply_overrides

    best = study.best_trial
    fixed = [text for text in args.set if not text.replace(" ", "").startswith("train.seed=")]
    data = apply_overrides({}, [*fixed, *overrides_of(best.params)])
    lines = [
        f"# mirec tune: study {study.study_name!r}, best of {len(study.trials)} trials: trial {best.number}, "
        f"valid {metric_name} = {best.value:.6f}",
        f"# model {args.model}; train and test it with: mirec bench --config best.toml --models {args.model} "
        "--data NAME=DIR --seeds 1,2,3 --output DIR",
    ]
    if args.config:
        lines.append(f"# tuned over {Path(args.config).resolve()}: its options are not repeated here")
    if fixed:
        lines.append(f"# fixed for every trial (--set): {' '.join(fixed)}")
    return "\n".join(lines) + "\n" + to_toml(data)


def write_reports(args: Any) -> list[dict[str, Any]]:
    """trials.csv, trials.md, best.toml (and plots, tracker mirrors) of a study; returns the trial rows."""
    import optuna

    output = Path(args.output)
    study = optuna.load_study(study_name=args.study, storage=args.storage)
    base = StudySetup.of(args).base
    metric = base.eval.early_stop_metric
    rows = trial_rows(study, metric)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(output / "trials.csv", buffer.getvalue())
    table = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    table += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    atomic_write_text(output / "trials.md", "\n".join(table) + "\n")
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        print(f"no complete trial yet in study {args.study!r}; nothing written to best.toml", file=sys.stderr)
        return rows
    atomic_write_text(output / "best.toml", best_toml(study, args, metric))
    best = study.best_trial
    print(f"best: trial {best.number}, valid {metric} = {best.value:.5f}, {best.params} -> {output / 'best.toml'}")
    if args.plots:
        write_plots(study, output / "plots", len(completed))
    from mirec.training.tracking import mirror_summary

    summary = {"study": args.study, "model": args.model, "trials": len(study.trials), "best": best.params}
    files = [output / n for n in ("best.toml", "trials.csv", "trials.md")] + sorted((output / "plots").glob("*.png"))
    mirror_summary(output, base.train, summary, files)
    return rows


def write_plots(study: Any, folder: Path, completed: int) -> list[Path]:
    """The optimisation history and (with 2+ complete trials and 2+ parameters) the parameter importances."""
    from mirec.experiments.plots import require_matplotlib

    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import optuna.visualization.matplotlib as vis

    from mirec.utils import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    drawn = [("optimization_history.png", vis.plot_optimization_history)]
    if completed >= 2 and len(study.best_trial.params) >= 2:
        drawn.append(("param_importances.png", vis.plot_param_importances))
    written = []
    for name, plot in drawn:
        ax = plot(study)
        with atomic_path(folder / name) as tmp:
            ax.figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        matplotlib.pyplot.close(ax.figure)
        written.append(folder / name)
    return written


@dataclass(frozen=True)
class StudySpec:
    """A tuning study: which model on which data, the search space file, how many trials, where; the options
    `mirec tune` takes (the CLI only maps its flags onto this)."""

    data: str
    model: str
    space: str
    trials: int
    output: str
    storage: str | None = None  # an Optuna URL; default sqlite:///OUTPUT/study.db
    study: str | None = None  # default: the output folder's name
    jobs: int = 1  # worker processes sharing the study
    budget_minutes: float = 0.0
    seed: int | None = None  # the sampler's, and every trial's train.seed
    config: str | None = None
    set: tuple[str, ...] = ()  # fixed for every trial
    sampler: str = "tpe"
    pruner: str = "median"
    startup_trials: int = 5
    prune_after_evals: int = 3
    baseline_trial: bool = False  # trial 0 runs the config's own values of the searched options
    plots: bool = False
    worker: int | None = None  # set on the worker processes of a --jobs study
    threads: int | None = None


class Study:
    """``Study(spec).run()``: the trials (valid split only) until the study holds ``spec.trials`` finished ones,
    then trials.csv / trials.md / best.toml; returns the trial rows."""

    def __init__(self, spec: StudySpec):
        output = Path(spec.output)
        self.spec = dataclasses.replace(
            spec,
            storage=spec.storage or f"sqlite:///{(output / 'study.db').resolve()}",
            study=spec.study or output.resolve().name,
        )

    def run(self) -> list[dict[str, Any]]:
        try:
            import optuna
        except ImportError:
            raise ImportError('mirec tune needs Optuna: pip install "mirec[tune]"') from None
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # the plots, the retry
        spec = self.spec
        if spec.trials < 1 or spec.jobs < 1:
            raise ValueError("--trials and --jobs must be >= 1")
        # everything that can be wrong is checked before the first trial (and before anything is written)
        setup = StudySetup.of(spec)
        space = load_space(spec.space)
        check_space(space, spec.model, setup.preset, spec.config, setup.fixed)
        baseline = baseline_params(space, setup.base) if spec.baseline_trial and spec.worker is None else None
        Path(spec.output).mkdir(parents=True, exist_ok=True)
        if spec.plots:
            from mirec.experiments.plots import require_matplotlib

            require_matplotlib()
        started = time.time()
        if baseline is not None:
            enqueue_baseline(spec, baseline)
        if spec.jobs == 1 or spec.worker is not None:
            run_worker(spec, spec.worker or 0)
        else:
            open_study(spec)  # the storage's tables and the study exist before the workers race to create them
            run_workers(spec)
        if spec.worker is not None:
            return []
        rows = write_reports(spec)
        print(f"tuning took {time.time() - started:.0f} s", file=sys.stderr)
        return rows


def enqueue_baseline(spec: StudySpec, params: dict[str, Any]) -> None:
    """Queue the config's own values as the study's first trial (Optuna's ``enqueue_trial``), once: a resumed
    study that already holds trials gets none."""
    study = open_study(spec)
    if study.trials:
        return
    study.enqueue_trial(params, user_attrs={"baseline": True})
    print(f"trial 0 runs the config's own values: {params}", file=sys.stderr)


def main_tune(args: argparse.Namespace) -> None:
    """``mirec tune``: the flags mapped onto a :class:`StudySpec`."""
    names = {f.name for f in dataclasses.fields(StudySpec)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values["set"] = tuple(values.get("set") or ())
    Study(StudySpec(**values)).run()


def run_workers(args: argparse.Namespace) -> None:
    """``--jobs J``: J worker processes on the one storage (threads would share torch's global RNG)."""
    base = [sys.executable, "-m", "mirec.cli", "tune", *worker_argv(args)]
    procs = [subprocess.Popen([*base, "--worker", str(w)]) for w in range(args.jobs)]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"tuning worker(s) failed with exit status {codes}")


def worker_argv(args: argparse.Namespace) -> list[str]:
    """The command line of one worker: the same study, one trial at a time."""
    argv = ["--data", str(args.data), "--model", args.model, "--space", str(args.space), "--trials", str(args.trials)]
    argv += ["--storage", args.storage, "--study", args.study, "--output", str(args.output), "--jobs", "1"]
    argv += ["--sampler", args.sampler, "--pruner", args.pruner, "--startup-trials", str(args.startup_trials)]
    argv += ["--prune-after-evals", str(args.prune_after_evals)]
    argv += ["--threads", str(getattr(args, "threads", None) or threads_per_job(args.jobs))]
    if args.config:
        argv += ["--config", str(args.config)]
    if args.seed is not None:
        argv += ["--seed", str(args.seed)]
    if args.budget_minutes:
        argv += ["--budget-minutes", str(args.budget_minutes)]
    for text in args.set:
        argv += ["--set", text]
    return argv


__all__ = [
    "Study",
    "StudySpec",
    "load_space",
    "check_space",
    "Dimension",
    "main_tune",
    "run_worker",
    "best_toml",
    "write_reports",
]
