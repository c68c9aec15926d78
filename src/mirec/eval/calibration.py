"""Post-training calibration on the valid split: settings that change how a trained model's lists are served,
chosen after training and written as a new, checked config (the test split never takes part).

Today one setting: ``eval.base_share`` of a GemiRec over a base, chosen from ``eval.base_share_grid``
(docs/models.md 5.3).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from mirec.config import EvalConfig, RunConfig


def choose_base_share(
    config: RunConfig, evaluate_valid: Callable[[EvalConfig], dict[str, Any]]
) -> tuple[RunConfig, dict[str, Any], dict[str, Any] | None]:
    """(config with the chosen share, its valid metrics, the choice record or None without a grid).

    Each share of the grid is evaluated on valid by ``evaluate_valid(eval_config)``; the first best by
    ``eval.early_stop_metric`` wins. The returned config is built by ``dataclasses.replace``, so it is checked
    like any loaded one: a choice that a config file could not hold fails here, not when the run is reloaded."""
    ec = config.eval
    if not ec.base_share_grid:
        return config, evaluate_valid(ec), None
    by_share = {share: evaluate_valid(dataclasses.replace(ec, base_share=share)) for share in ec.base_share_grid}
    key = ec.early_stop_metric
    best = max(ec.base_share_grid, key=lambda share: by_share[share][key])  # the first best
    chosen = dataclasses.replace(config, eval=dataclasses.replace(ec, base_share=best))
    record = {"chosen": best, "metric": key, "valid": {str(s): by_share[s][key] for s in ec.base_share_grid}}
    return chosen, by_share[best], record


__all__ = ["choose_base_share"]
