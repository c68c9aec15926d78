"""What a training run writes about itself: ``train.log``, ``history.jsonl`` (one entry per evaluation), the
trackers' mirrors (TensorBoard / MLflow, :mod:`mirec.training.tracking`), ``metrics.json``, and the console's one
lasting line per evaluation. Under torchrun rank 0 alone writes; the other ranks record to a null handler."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mirec.training.tracking import Trackers
from mirec.utils import atomic_write_text

FINAL_FILES = ("config.toml", "metrics.json", "history.jsonl", "train.log")  # handed to the trackers at the end


class RunRecorder:
    """The run folder's log, history and metrics; ``writes`` is False on the ranks that only compute."""

    def __init__(self, run_dir: Path, writes: bool, trackers: Trackers, console: bool):
        self.run_dir, self.writes, self.trackers, self.console = run_dir, writes, trackers, console and writes
        self.history: list[dict[str, Any]] = []
        self.logger = logging.getLogger(f"mirec.training.{id(self)}")
        self.logger.propagate = False
        self._handler: logging.Handler | None = None

    def open(self, append: bool) -> None:
        """Start train.log (appended to on resume)."""
        if not self.writes:
            self._handler = logging.NullHandler()
        else:
            self._handler = logging.FileHandler(self.run_dir / "train.log", mode="a" if append else "w")
            self._handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self._handler)

    def start_trackers(self, config: dict[str, Any], resumed: bool) -> None:
        if self.writes:
            self.trackers.start(self.run_dir, config, resumed)

    def close(self) -> None:
        self.trackers.close()
        if self._handler is not None:
            self.logger.removeHandler(self._handler)
            self._handler.close()
            self._handler = None

    def info(self, text: str) -> None:
        self.logger.info(text)

    def restore_history(self, step: int) -> None:
        """The evaluations up to a resumed checkpoint's step (a crash between the two may have left later ones)."""
        history = self.run_dir / "history.jsonl"
        if history.exists():
            rows = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
            self.history = [r for r in rows if r["step"] <= step]

    def evaluation(self, entry: dict[str, Any], scalars: dict[str, float], summary: str, console: str) -> None:
        """One evaluation: history.jsonl rewritten atomically, a train.log line, the trackers' scalars."""
        self.history.append(entry)
        if self.writes:
            atomic_write_text(self.run_dir / "history.jsonl", "".join(json.dumps(e) + "\n" for e in self.history))
        self.logger.info(summary)
        self.trackers.scalars(scalars, entry["step"])
        if self.console:  # one lasting console line per evaluation, above the progress bar
            tqdm.write(console)

    def training(self, step: int, scalars: dict[str, float], line: str) -> None:
        self.trackers.scalars(scalars, step)
        self.logger.info(line)

    def finish(self, metrics: dict[str, Any]) -> None:
        """metrics.json, the final figures in train.log, and the files the trackers keep."""
        if not self.writes:
            return
        atomic_write_text(self.run_dir / "metrics.json", json.dumps(metrics, indent=2))
        for split in ("valid", "test"):
            if split in metrics:
                self.logger.info(f"{split} " + json.dumps(metrics[split]))
        self.trackers.final(metrics, [self.run_dir / name for name in FINAL_FILES])


__all__ = ["RunRecorder", "FINAL_FILES"]
