"""`mirec tune`: search space files, checks before any trial, trials as run folders on the valid split only,
best.toml, a resumed and a shared (two worker processes) study, and the trainer's pruning hook."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
import pytest

from mirec.cli import main
from mirec.config import ConfigError, load_config
from mirec.data.dataset import PreparedDataset
from mirec.experiments.tune import Dimension, load_space
from mirec.utils import threads_per_job
from tests.training.test_trainer import cycle_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

# a tiny DNN on the cycle dataset: a trial takes about a second
TINY = [
    "train.batch_size=16",
    "train.max_steps=40",
    "train.eval_every=20",
    "train.num_negatives_factor=2",
    "train.device=cpu",
    "model.embedding_dim=8",
    "model.maxlen=8",
    "eval.topk=[5, 10]",
    "eval.early_stop_metric=recall@10",
    "eval.batch_size=64",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "cycle"
    cycle_dataset().save(path)
    return path


def write_space(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def tune(data_dir: Path, space: Path, output: Path, trials: int, *extra: str) -> int:
    argv = ["tune", "--data", str(data_dir), "--model", "dnn", "--space", str(space), "--trials", str(trials)]
    argv += ["--output", str(output), "--seed", "3", "--startup-trials", "2"]
    for text in TINY:
        argv += ["--set", text]
    return main([*argv, *extra])


SPACE = '[space]\n"train.lr" = {low = 1e-3, high = 5e-2, log = true}\n"model.num_interests" = [1, 2]\n'


def test_space_files_parse_each_kind_and_errors_name_the_file_and_key(tmp_path):
    space = write_space(
        tmp_path / "s.toml",
        '[space]\n"train.lr" = {low = 1e-4, high = 1e-2, log = true}\n"train.batch_size" = {low = 16, high = 64, '
        'step = 16}\n"model.num_interests" = [2, 4, 8]\n"train.weight_decay" = {low = 0, high = 0.1}\n',
    )
    assert load_space(space) == [
        Dimension("train.lr", "float", 1e-4, 1e-2, True),
        Dimension("train.batch_size", "int", 16.0, 64.0, False, 16),
        Dimension("model.num_interests", "categorical", choices=(2, 4, 8)),
        Dimension("train.weight_decay", "float", 0.0, 0.1),
    ]
    for body, message in [
        (
            '[space]\n"train.lr" = {low = 0.1, high = 0.01}\n',
            "'train.lr': low and high must be numbers with low < high",
        ),
        ('[space]\n"train.lr" = {low = 0, high = 1, log = true}\n', "a log scale needs low > 0"),
        ('[space]\n"train.lr" = {low = 0.1, high = 1, by = 2}\n', "unknown field(s) ['by']"),
        ('[space]\n"lr" = [1, 2]\n', "expected section.option"),
        ("[spaces]\n", "expected a non-empty [space] table"),
    ]:
        with pytest.raises(ConfigError, match=None) as caught:
            load_space(write_space(tmp_path / "bad.toml", body))
        assert str(caught.value).startswith(f"{tmp_path / 'bad.toml'}: ") and message in str(caught.value)


def test_a_bad_option_in_the_space_fails_before_any_trial_or_file(data_dir, tmp_path, capsys):
    space = write_space(tmp_path / "s.toml", '[space]\n"train.optimizer" = ["adam", "sgd"]\n')
    assert tune(data_dir, space, tmp_path / "out", 2) == 1
    assert "unknown option(s) ['optimizer']" in capsys.readouterr().err
    space = write_space(tmp_path / "s2.toml", '[space]\n"eval.backend" = ["torch", "fiass"]\n')
    assert tune(data_dir, space, tmp_path / "out", 2) == 1
    assert "eval.backend = 'fiass'; expected one of ['torch', 'faiss']" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_trials_are_run_folders_scored_on_valid_only_and_best_toml_reproduces_the_best(data_dir, tmp_path, monkeypatch):
    splits: list[str] = []
    original = PreparedDataset.split
    monkeypatch.setattr(PreparedDataset, "split", lambda self, name: splits.append(name) or original(self, name))
    output = tmp_path / "study"
    assert tune(data_dir, write_space(tmp_path / "s.toml", SPACE), output, 3, "--pruner", "none") == 0
    assert "test" not in splits and "valid" in splits  # the tuner never reads the test split
    study = optuna.load_study(study_name="study", storage=f"sqlite:///{output / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    for trial in study.trials:
        run = output / "trials" / f"{trial.number:04d}"
        metrics = json.loads((run / "metrics.json").read_text())
        assert "test" not in metrics and trial.value == pytest.approx(metrics["train"]["best_valid_metric"])
        config = load_config(run / "config.toml")
        assert (
            config.train.lr == trial.params["train.lr"]
            and config.model.num_interests == trial.params["model.num_interests"]
        )
        history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
        assert trial.intermediate_values == {r["step"]: pytest.approx(r["recall@10"]) for r in history}
    best = study.best_trial
    tuned = load_config(output / "best.toml", model="dnn", dataset="default")  # the presets the trials used
    assert tuned.train.lr == best.params["train.lr"] and tuned.train.max_steps == 40
    tuned = tuned.with_values({"train.seed": 3})  # best.toml leaves the seed to whoever trains it (bench's seeds)
    assert load_config(output / "trials" / f"{best.number:04d}" / "config.toml").to_dict() == tuned.to_dict()
    with open(output / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["trial"]) for r in rows] == [0, 1, 2] and {r["state"] for r in rows} == {"complete"}


def test_a_baseline_trial_runs_the_configs_own_values_first_and_only_once(data_dir, tmp_path, capsys):
    space, output = write_space(tmp_path / "s.toml", SPACE), tmp_path / "study"
    own = ["--baseline-trial", "--set", "train.lr=0.004", "--set", "model.num_interests=2"]
    assert tune(data_dir, space, output, 2, *own) == 0
    assert tune(data_dir, space, output, 3, *own) == 0  # resumed: no second baseline
    study = optuna.load_study(study_name="study", storage=f"sqlite:///{output / 'study.db'}")
    assert study.trials[0].params == {"train.lr": 0.004, "model.num_interests": 2}
    assert [bool(t.user_attrs.get("baseline")) for t in study.trials] == [True, False, False]
    assert load_config(output / "trials" / "0000" / "config.toml").train.lr == 0.004
    with open(output / "trials.csv") as f:
        assert [r["state"] for r in csv.DictReader(f)][0].endswith("(baseline)")
    # a config value the space cannot hold fails before anything is written
    assert tune(data_dir, space, tmp_path / "other", 2, *own, "--set", "train.lr=0.5") == 1
    assert "the config's train.lr = 0.5 lies outside the search space" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_a_study_resumes_to_its_trial_count_and_refuses_other_arguments(data_dir, tmp_path, capsys):
    space, output = write_space(tmp_path / "s.toml", SPACE), tmp_path / "study"
    assert tune(data_dir, space, output, 2) == 0
    assert tune(data_dir, space, output, 3) == 0  # one more trial, not three
    study = optuna.load_study(study_name="study", storage=f"sqlite:///{output / 'study.db'}")
    assert len(study.trials) == 3 and sorted(p.name for p in (output / "trials").iterdir()) == ["0000", "0001", "0002"]
    lrs = [t.params["train.lr"] for t in study.trials]
    assert len(set(lrs)) == 3, lrs  # the resumed sampler did not replay the seeded stream from its start
    other = write_space(tmp_path / "other.toml", '[space]\n"train.lr" = {low = 1e-3, high = 1e-2}\n')
    assert tune(data_dir, other, output, 4) == 1
    assert "was started with other space" in capsys.readouterr().err


def test_a_tracked_study_puts_its_trials_and_its_summary_in_one_mlflow_store(data_dir, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    output = tmp_path / "study"
    assert tune(data_dir, write_space(tmp_path / "s.toml", SPACE), output, 2, "--log", "mlflow", "--plots") == 0
    client = MlflowClient(f"sqlite:///{output / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mirec").experiment_id])
    summary = (output / "mlflow_run.txt").read_text().strip()
    assert len(runs) == 3 and summary in {r.info.run_id for r in runs}  # two trials and the study
    artefacts = {a.path for a in client.list_artifacts(summary)}
    assert {"best.toml", "trials.csv", "trials.md", "optimization_history.png"} <= artefacts


def test_two_worker_processes_share_one_study(data_dir, tmp_path):
    output = tmp_path / "shared"
    assert (
        tune(data_dir, write_space(tmp_path / "s.toml", SPACE), output, 4, "--jobs", "2", "--prune-after-evals", "0")
        == 0
    )
    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{output / 'study.db'}")
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) >= 4 and len({t.number for t in finished}) == len(finished)
    for t in finished:  # a pruned trial is a run folder stopped by the pruner at its last reported step
        metrics = json.loads((output / "trials" / f"{t.number:04d}" / "metrics.json").read_text())
        assert (metrics["train"]["stop_reason"] == "pruned") == (t.state.name == "PRUNED")
        assert metrics["train"]["steps"] == max(t.intermediate_values)
    assert (output / "best.toml").exists()
    threads = {json.loads((p / "metrics.json").read_text())["train"]["cpu_threads"] for p in output.glob("trials/*")}
    assert threads == {threads_per_job(2)}  # each worker its share of the cores (explicit --threads wins)


def test_a_killed_tuner_resumes_its_cut_trial_from_the_trials_checkpoint(data_dir, tmp_path, monkeypatch):
    import os
    import signal
    import subprocess
    import sys
    import time

    import mirec.experiments.tune as tune_module

    space, output = write_space(tmp_path / "s.toml", SPACE), tmp_path / "killed"
    # long enough that a loaded machine's polling still kills it mid-trial (400 steps finished first under load)
    longer = ["--set", "train.max_steps=1200", "--set", "train.checkpoint_every=20"]
    argv = [sys.executable, "-m", "mirec.cli", "--threads", "1", "tune", "--data", str(data_dir), "--model", "dnn"]
    argv += ["--space", str(space), "--trials", "1", "--output", str(output), "--seed", "3", "--pruner", "none"]
    argv += [arg for text in TINY for arg in ("--set", text)] + longer
    worker = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = output / "trials" / "0000" / "checkpoints"
    deadline = time.time() + 120
    while not (checkpoints.is_dir() and len(list(checkpoints.iterdir())) >= 2) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(worker.pid, signal.SIGKILL)  # mid-trial, no clean-up
    worker.wait()
    assert not (output / "trials" / "0000" / "metrics.json").exists()
    # resumed at once, well inside the heartbeat's grace period: the dead worker's free lock tells
    assert tune_module.GRACE_SECONDS >= 30
    assert tune(data_dir, space, output, 1, "--pruner", "none", *longer) == 0
    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{output / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    assert study.trials[1].params == study.trials[0].params  # the retry repeats the cut trial
    assert sorted(p.name for p in (output / "trials").iterdir()) == ["0000"]
    log = (output / "trials" / "0000" / "train.log").read_text()
    assert "resumed from step" in log
    assert json.loads((output / "trials" / "0000" / "metrics.json").read_text())["train"]["steps"] == 1200


def test_a_study_runs_from_python_and_returns_its_trials(data_dir, tmp_path):
    from mirec.experiments.tune import Study, StudySpec

    space = write_space(tmp_path / "s.toml", SPACE)
    spec = StudySpec(
        str(data_dir), "dnn", str(space), 2, str(tmp_path / "py"), seed=3, startup_trials=2, set=tuple(TINY)
    )
    rows = Study(spec).run()
    assert [int(r["trial"]) for r in rows] == [0, 1] and {r["state"] for r in rows} == {"complete"}
    assert (tmp_path / "py" / "best.toml").exists() and (tmp_path / "py" / "study.db").exists()
