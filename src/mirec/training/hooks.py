"""Trainer hooks: what a caller adds to a run without touching the loop (a tuner's pruning, a custom record).

A hook subclasses :class:`TrainerHook` and overrides what it needs; the trainer calls every hook in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# on_evaluation(step, valid metrics) -> a stop reason (e.g. "pruned" by a tuner) or None to go on
EvaluationHook = Callable[[int, dict[str, Any]], str | None]


class TrainerHook:
    """No-op hook points; ``trainer`` is the running :class:`mirec.training.Trainer`."""

    def on_evaluation(self, trainer: Any, step: int, metrics: dict[str, Any]) -> str | None:
        """After each valid evaluation: a non-empty string stops the run with that reason."""
        return None

    def on_fit_end(self, trainer: Any, metrics: dict[str, Any]) -> None:
        """Once the final metrics are known, before metrics.json is written (the hook may add entries)."""


class EvaluationCallback(TrainerHook):
    """The ``on_evaluation(step, metrics)`` function a tuner passes, as a hook."""

    def __init__(self, function: EvaluationHook):
        self.function = function

    def on_evaluation(self, trainer: Any, step: int, metrics: dict[str, Any]) -> str | None:
        return self.function(step, metrics)


__all__ = ["TrainerHook", "EvaluationCallback", "EvaluationHook"]
