"""The trainer's small policies, each one decision of the loop: when to evaluate, checkpoint and stop
(:class:`Schedule`), whether an evaluation improved and when patience runs out (:class:`EarlyStopping`), and
the running means of the loss and the model's named terms (:class:`RunningMeans`) that the progress bar,
``train.log`` and ``history.jsonl`` report.

Their state lives in :class:`~mirec.training.checkpoint.TrainState`, so a resumed run decides exactly as an
uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from mirec.config import TrainConfig
from mirec.training.checkpoint import TrainState


@dataclass(frozen=True)
class Schedule:
    """ComiRec's cadence: evaluate every ``eval_every`` steps; checkpoint at every evaluation (or every
    ``checkpoint_every`` steps); stop at ``max_steps`` or after ``max_minutes`` of wall clock."""

    eval_every: int
    checkpoint_every: int
    max_steps: int
    max_seconds: float

    @classmethod
    def of(cls, config: TrainConfig) -> Schedule:
        return cls(config.eval_every, config.checkpoint_every, config.max_steps, config.max_minutes * 60.0)

    def limit_reached(self, state: TrainState) -> str:
        """The name of the limit that ends the run before the next step ("" = none)."""
        if state.step >= self.max_steps:
            return "max_steps"
        if self.max_seconds > 0 and state.elapsed_seconds >= self.max_seconds:
            return "max_minutes"
        return ""

    def evaluates(self, step: int) -> bool:
        return step % self.eval_every == 0

    def checkpoints(self, step: int, evaluated: bool) -> bool:
        if self.checkpoint_every > 0:
            return step % self.checkpoint_every == 0
        return evaluated


@dataclass(frozen=True)
class EarlyStopping:
    """ComiRec ``train.py``: a valid metric above the best resets the counter (ties do not); the run stops once
    the counter exceeds ``patience``. A stop already named by a limit keeps the limit's name."""

    patience: int

    def update(self, state: TrainState, value: float) -> bool:
        """Record one evaluation at ``state.step``; True when it is the new best."""
        if value > state.best_metric:
            state.best_metric, state.best_step, state.bad_evals = value, state.step, 0
            return True
        state.bad_evals += 1
        if state.bad_evals > self.patience and not state.stop_reason:
            state.stop_reason = "patience"
        return False

    def status(self, state: TrainState, metric: str, evaluations: int) -> dict[str, str]:
        """Progress fields: evaluations done, the best value and its step, evaluations left before stopping."""
        if not evaluations:
            return {}
        return {
            "evals": str(evaluations),
            metric: f"{state.best_metric:.4f}@{state.best_step}",
            "patience_left": str(max(self.patience - state.bad_evals, 0)),
        }


class RunningMeans:
    """Sums of the loss and the model's named terms over an interval, kept on the device (no sync per step);
    read at a log or evaluation boundary."""

    def __init__(self, device: torch.device, loss_sum: float = 0.0, steps: int = 0):
        self.device = device
        self.loss = torch.full((), loss_sum, device=device)
        self.terms: dict[str, torch.Tensor] = {}
        self.steps = steps

    def add(self, loss: torch.Tensor, terms: Mapping[str, torch.Tensor]) -> None:
        self.loss += loss
        for name, value in terms.items():
            if name in self.terms:
                self.terms[name] += value.detach()
            else:
                self.terms[name] = value.detach().to(self.device, torch.float64).clone()
        self.steps += 1

    def mean_loss(self) -> float:
        return float(self.loss) / max(self.steps, 1)

    def mean_terms(self) -> dict[str, float]:
        return {name: float(total) / max(self.steps, 1) for name, total in self.terms.items()}

    def reset(self) -> None:
        self.loss.zero_()
        self.terms.clear()
        self.steps = 0


__all__ = ["Schedule", "EarlyStopping", "RunningMeans"]
