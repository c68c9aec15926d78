"""Mirrors of a run in the experiment trackers people already use: TensorBoard and MLflow (``train.log_to``).

The run folder stays the source of truth; a tracker only copies what the trainer writes there (the config as
parameters, the loss and the model's named terms, throughput, every validation metric at every evaluation, the
final metrics, and the run's files as artefacts). A tracker that fails (missing package, unreachable server,
locked database) warns once and is switched off: it never fails or stops training.

- ``tensorboard``: event files in ``RUN/tensorboard/`` (``tensorboard --logdir`` on the folder holding the runs
  shows them side by side); needs the ``tensorboard`` package (``pip install "mirec[track]"``).
- ``mlflow``: one MLflow run per mirec run, in the experiment ``train.tracking_experiment`` at
  ``train.tracking_uri`` (default: the ``MLFLOW_TRACKING_URI`` environment variable, else a SQLite store
  ``mlflow.db`` beside the run folder, shared by the runs of one output folder); needs ``mlflow-skinny``.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mirec.config import TRACKERS, TrainConfig


def parse_log_to(text: str) -> list[str]:
    """``"tensorboard,mlflow"`` -> ["tensorboard", "mlflow"]; "" or "none" -> [] (checked by TrainConfig)."""
    return [part.strip() for part in text.split(",") if part.strip() not in ("", "none")]


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class Tracker:
    """One tracker; subclasses implement ``_start``, ``_scalars``, ``_final``, ``_files``, ``_close``. Every call
    is guarded: the first failure warns and switches the tracker off."""

    name = ""

    def __init__(self) -> None:
        self.active = True

    def _guard(self, what: str, fn: Any, *args: Any) -> None:
        if not self.active:
            return
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - a mirror must never stop training
            self.active = False
            warnings.warn(f"{self.name} tracking switched off ({what} failed: {exc})", RuntimeWarning, stacklevel=3)

    def start(self, run_dir: Path, config: Mapping[str, Any], resumed: bool) -> None:
        self._guard("start", self._start, run_dir, _flatten(config), resumed)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        self._guard("logging", self._scalars, dict(values), step)

    def final(self, metrics: Mapping[str, Mapping[str, Any]]) -> None:
        flat = {
            f"{split}/{name}": float(value)
            for split in ("valid", "test")
            for name, value in metrics.get(split, {}).items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        self._guard("final metrics", self._final, flat)

    def files(self, paths: list[Path]) -> None:
        self._guard("artefacts", self._files, [p for p in paths if p.exists()])

    def close(self) -> None:
        self._guard("close", self._close)

    def _start(self, run_dir: Path, params: dict[str, Any], resumed: bool) -> None:
        raise NotImplementedError

    def _scalars(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def _final(self, values: dict[str, float]) -> None:
        raise NotImplementedError

    def _files(self, paths: list[Path]) -> None:
        """Only MLflow stores files; TensorBoard shows the PNG plots among them as images."""

    def _close(self) -> None:
        raise NotImplementedError


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def _start(self, run_dir: Path, params: dict[str, Any], resumed: bool) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if not resumed:
            table = "\n".join(f"| {k} | {v!r} |" for k, v in params.items())
            self.writer.add_text("config", "| option | value |\n|---|---|\n" + table, 0)

    def _scalars(self, values: dict[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def _final(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(f"final/{name}", value, 0)
        self.writer.flush()

    def _files(self, paths: list[Path]) -> None:
        import matplotlib.image

        for path in paths:
            if path.suffix == ".png":
                image = matplotlib.image.imread(path)[..., :3]  # RGBA PNG -> RGB
                self.writer.add_image(f"plots/{path.stem}", image, 0, dataformats="HWC")
        self.writer.flush()

    def _close(self) -> None:
        self.writer.close()


class MLflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, uri: str, experiment: str):
        super().__init__()
        self.uri, self.experiment = uri, experiment or "mirec"

    def _start(self, run_dir: Path, params: dict[str, Any], resumed: bool) -> None:
        from mlflow.tracking import MlflowClient

        uri = self.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{run_dir.resolve().parent / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(self.experiment)
        experiment_id = found.experiment_id if found else self._create_experiment(uri)
        marker = run_dir / "mlflow_run.txt"  # a resumed mirec run continues its MLflow run
        run_id = marker.read_text().strip() if resumed and marker.exists() else ""
        if not run_id:
            tags = {"mirec.run_dir": str(run_dir.resolve()), "mlflow.runName": run_dir.name}
            run_id = self.client.create_run(experiment_id, tags=tags).info.run_id
            from mirec.utils import atomic_write_text

            atomic_write_text(marker, run_id + "\n")
            from mlflow.entities import Param

            # one batched write per call: a SQLite store commits each write, ~50 ms apiece
            self.client.log_batch(
                run_id, params=[Param(k, repr(v) if isinstance(v, list) else str(v)) for k, v in params.items()]
            )
        self.run_id = run_id

    def _create_experiment(self, uri: str) -> str:
        # a SQLite store would put artefacts in ./mlruns of whatever the working directory is: keep them by the db
        artifacts = None
        if uri.startswith("sqlite:///"):
            artifacts = (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlflow-artifacts").as_uri()
        return self.client.create_experiment(self.experiment, artifact_location=artifacts)

    def _scalars(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(name.replace("@", "_at_"), value, now, step) for name, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def _final(self, values: dict[str, float]) -> None:
        self._scalars({f"final/{name}": value for name, value in values.items()}, 0)

    def _files(self, paths: list[Path]) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path))

    def _close(self) -> None:
        self.client.set_terminated(self.run_id)


class Trackers:
    """The configured trackers as one (possibly empty) mirror."""

    def __init__(self, log_to: str, uri: str = "", experiment: str = ""):
        self.trackers: list[Tracker] = []
        for name in parse_log_to(log_to):
            self.trackers.append(TensorBoardTracker() if name == "tensorboard" else MLflowTracker(uri, experiment))

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def start(self, run_dir: Path, config: Mapping[str, Any], resumed: bool) -> None:
        for t in self.trackers:
            t.start(run_dir, config, resumed)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for t in self.trackers:
            t.scalars(values, step)

    def final(self, metrics: Mapping[str, Mapping[str, Any]], files: list[Path]) -> None:
        for t in self.trackers:
            t.final(metrics)
            t.files(files)

    def close(self) -> None:
        for t in self.trackers:
            t.close()


def mirror_summary(folder: Path, train: TrainConfig, params: Mapping[str, Any], files: list[Path]) -> None:
    """One tracker run for a bench grid or a tuning study (beside its runs), set up by the ``train`` section of
    their config (``log_to``, ``tracking_uri``, ``tracking_experiment``): the spec as parameters, the tables and
    the plots as files (MLflow artefacts; PNGs as TensorBoard images). Nothing when tracking is off."""
    trackers = Trackers(train.log_to, train.tracking_uri, train.tracking_experiment)
    if not trackers:
        return
    trackers.start(folder, params, resumed=True)  # a re-run continues the folder's tracker run
    trackers.final({}, files)
    trackers.close()


__all__ = [
    "Trackers",
    "mirror_summary",
    "TensorBoardTracker",
    "MLflowTracker",
    "parse_log_to",
    "TRACKERS",
]
