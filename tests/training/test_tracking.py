"""Run tracking mirrors (train.log_to): what TensorBoard and MLflow receive equals what the run folder holds;
a failing tracker warns and never stops training; a resumed run continues its MLflow run."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import mirec.config as config_module
import mirec.models as models_module
from mirec.config import ConfigError, ModelConfig, TrainConfig
from mirec.training.trainer import Trainer, train_run
from tests.training.test_trainer import cycle_dataset, make_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def register_test_model(monkeypatch):
    monkeypatch.setitem(models_module.MODEL_PATHS, "meanlast", "tests.training.test_trainer:MeanLast")
    monkeypatch.setitem(config_module.MODEL_CONFIGS, "meanlast", ModelConfig)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "cycle"
    cycle_dataset().save(path)
    return path


def history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def test_tensorboard_holds_the_runs_losses_validation_metrics_and_final_metrics(data_dir, tmp_path):
    run = tmp_path / "tb"
    metrics = train_run(
        data_dir, make_config(max_steps=40, eval_every=20, log_every=10, log_to="tensorboard"), run, progress=False
    )
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    valid = [(e.step, e.value) for e in events.Scalars("valid/recall@10")]
    assert valid == [(r["step"], pytest.approx(r["recall@10"])) for r in history(run)]
    assert [e.step for e in events.Scalars("train/loss")] == [10, 20, 30, 40]
    assert events.Scalars("final/test/recall@10")[0].value == pytest.approx(metrics["test"]["recall@10"])
    (config_text,) = events.Tensors("config/text_summary")  # the config as a Markdown table
    assert "| train.lr | 0.01 |" in config_text.tensor_proto.string_val[0].decode()


def test_mlflow_holds_params_metric_history_artefacts_and_a_resumed_run_continues_it(data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / "..")  # artefacts must land beside the store, not in the working directory
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = make_config(max_steps=40, eval_every=20, log_every=20, log_to="mlflow", tracking_uri=uri)
    config = config.with_values({"train.tracking_experiment": "tests"})
    run = tmp_path / "ml"
    train_run(data_dir, config, run, progress=False)
    client = MlflowClient(uri)
    run_id = (run / "mlflow_run.txt").read_text().strip()
    record = client.get_run(run_id)
    assert record.info.status == "FINISHED"
    assert client.get_experiment(record.info.experiment_id).name == "tests"
    assert record.data.params["train.lr"] == "0.01" and record.data.params["model.name"] == "meanlast"
    steps = [(m.step, m.value) for m in client.get_metric_history(run_id, "valid/recall_at_10")]
    assert steps == [(r["step"], pytest.approx(r["recall@10"])) for r in history(run)]
    assert {a.path for a in client.list_artifacts(run_id)} == {
        "config.toml",
        "metrics.json",
        "history.jsonl",
        "train.log",
    }
    assert (tmp_path / "mlflow-artifacts").is_dir() and not (tmp_path / ".." / "mlruns").exists()
    # resume with a raised step cap: the same MLflow run gets the new evaluations
    config = config.with_values({"train.max_steps": 60})
    Trainer(data_dir, config, run, progress=False, resume=True).fit()
    assert (run / "mlflow_run.txt").read_text().strip() == run_id
    assert [m.step for m in client.get_metric_history(run_id, "valid/recall_at_10")] == [20, 40, 60]
    assert len(client.search_runs([record.info.experiment_id])) == 1


def test_a_failing_tracker_warns_once_and_training_is_unchanged(data_dir, tmp_path):
    plain = train_run(data_dir, make_config(max_steps=40, eval_every=20), tmp_path / "plain", progress=False)
    broken = make_config(max_steps=40, eval_every=20, log_to="mlflow", tracking_uri="nosuchscheme://nowhere")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracked = train_run(data_dir, broken, tmp_path / "broken", progress=False)
    notes = [str(w.message) for w in caught if "tracking switched off" in str(w.message)]
    assert len(notes) == 1 and notes[0].startswith("mlflow tracking switched off (start failed")
    assert tracked["test"] == plain["test"] and tracked["valid"] == plain["valid"]
    best, best_tracked = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("plain", "broken"))
    assert all(torch.equal(best[k], best_tracked[k]) for k in best)


def test_unknown_trackers_are_refused_when_the_config_is_built():
    with pytest.raises(ConfigError, match=r"train.log_to = 'wandb'; must be a comma-separated subset"):
        TrainConfig(log_to="wandb")
    assert TrainConfig(log_to="tensorboard, mlflow").log_to == "tensorboard, mlflow"
