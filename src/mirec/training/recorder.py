"""What a training run writes about itself: ``train.log``, ``history.jsonl`` (one entry per evaluation), the
trackers' mirrors (TensorBoard / MLflow, :mod:`mirec.training.tracking`), ``metrics.json``, and the console's one
lasting line per evaluation. Under torchrun rank 0 alone writes; the other ranks record to a null handler."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mirec.config import TrainConfig
from mirec.training.checkpoint import TrainState
from mirec.training.policies import RunningMeans
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

    def start(self, notes: list[str], resumed_step: int | None, changes: list[str]) -> None:
        """The run's first train.log lines: folder notes, and on resume the step and the applied changes."""
        for note in notes:
            self.info(note)
        if resumed_step is None:
            self.history = []
            return
        self.info(f"resumed from step {resumed_step}")
        for change in changes:
            self.info(f"resume applies {change}")

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

    def evaluation(
        self, st: TrainState, metrics: dict[str, Any], key: str, improved: bool, interval: RunningMeans, patience: int
    ) -> None:
        """One evaluation: history.jsonl rewritten atomically, a train.log line, the trackers' scalars, the console."""
        interval_loss, terms = interval.mean_loss(), interval.mean_terms()
        entry = {
            "step": st.step,
            "train_loss": interval_loss,
            **({"train_terms": terms} if terms else {}),
            **metrics,
            "best": improved,
            "train_seconds": round(st.train_seconds, 3),
            "eval_seconds": round(st.eval_seconds, 3),
        }
        self.history.append(entry)
        if self.writes:
            atomic_write_text(self.run_dir / "history.jsonl", "".join(json.dumps(e) + "\n" for e in self.history))
        shown = " ".join(f"{k}={v:.5f}" for k, v in metrics.items() if isinstance(v, float))
        self.logger.info(
            f"step {st.step} eval: loss={interval_loss:.5f} {shown} best={st.best_metric:.5f}"
            f"@{st.best_step} trials={st.bad_evals}"
        )
        scalars = {f"valid/{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        self.trackers.scalars({**scalars, "valid/best": st.best_metric}, st.step)
        if self.console:  # one lasting console line per evaluation, above the progress bar
            left = max(patience - st.bad_evals, 0)
            tqdm.write(
                f"step {st.step}: valid {key}={float(metrics[key]):.4f}{' (best)' if improved else ''}; best "
                f"{st.best_metric:.4f} at step {st.best_step}; {left} evaluation(s) without gain left before "
                "early stopping"
            )

    def training(
        self,
        bar: tqdm,
        st: TrainState,
        logged: RunningMeans,
        batch_size: int,
        wall_start: float,
        train_seconds: float,
        status: dict[str, str],
    ) -> None:
        """The progress bar's postfix and one train.log line: mean loss (and named terms), samples/s."""
        mean = logged.mean_loss()  # syncs the device, so the throughput below is honest
        if not math.isfinite(mean):
            raise FloatingPointError(f"step {st.step}: training loss is {mean}")
        rate = logged.steps * batch_size / max(train_seconds, 1e-9)
        bar.set_postfix(loss=f"{mean:.4f}", sps=f"{rate:,.0f}", **status)
        mean_terms = logged.mean_terms()
        terms = "".join(f" {name}={value:.5f}" for name, value in mean_terms.items())
        scalars = {"train/loss": mean, "train/samples_per_s": rate, **{f"train/{k}": v for k, v in mean_terms.items()}}
        self.trackers.scalars(scalars, st.step)
        wall = time.perf_counter() - wall_start
        self.logger.info(f"step {st.step} loss={mean:.5f}{terms} samples/s={rate:.0f} wall={wall:.1f}s")

    def progress_bar(self, max_steps: int, step: int, name: str) -> tqdm:
        """The console's bar, its postfix the validation state (evaluations, patience left, best so far). Its total
        is the user's step cap, else, once evaluations started, :meth:`update_total`'s early-stopping bound."""
        return tqdm(
            total=max_steps if max_steps < TrainConfig.max_steps else None,
            initial=step,
            disable=not self.console,
            dynamic_ncols=True,
            desc=f"train {name}",
        )

    @staticmethod
    def update_total(bar: tqdm, st: TrainState, tc: TrainConfig, patience: int) -> None:
        """Total and ETA to the latest step the run can reach: the step cap, or sooner the step at which early
        stopping ends it unless valid improves again (then the bound moves out)."""
        bound = st.step + max(patience - st.bad_evals + 1, 0) * tc.eval_every
        total = min(tc.max_steps, bound)
        if bar.total != total:
            bar.total = total
            bar.refresh()

    def finish(self, metrics: dict[str, Any]) -> None:
        """metrics.json, the final figures in train.log, and the files the trackers keep."""
        if not self.writes:
            return
        atomic_write_text(self.run_dir / "metrics.json", json.dumps(metrics, indent=2))
        for split in ("valid", "test"):
            if split in metrics:
                self.logger.info(f"{split} " + json.dumps(metrics[split]))
        self.trackers.final(metrics, [self.run_dir / name for name in FINAL_FILES])


def run_summary(st: TrainState, tc: TrainConfig, device: Any) -> dict[str, Any]:
    """metrics.json's ``train`` block: steps, clocks, throughput, the best step and why the run stopped."""
    import torch

    return {
        "steps": st.step,
        "seconds": round(st.train_seconds, 3),
        "eval_seconds": round(st.eval_seconds, 3),
        "wall_seconds": round(st.elapsed_seconds, 3),
        "samples_per_second": st.step * tc.batch_size / max(st.train_seconds, 1e-9),
        "best_step": st.best_step,
        "best_valid_metric": st.best_metric,
        "stop_reason": st.stop_reason,
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),  # throughput depends on it (and on what shared the cores)
    }


__all__ = ["RunRecorder", "FINAL_FILES", "run_summary"]
