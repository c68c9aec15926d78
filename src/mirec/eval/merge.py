"""How a user's K per-interest lists become one ranked list: the one home of that rule, built once from the
model and the eval config, used alike by the evaluator and the serving model.

Three merges, in this order of precedence: ComiRec's category-diversity greedy (``diversity_lambda > 0``,
docs/models.md 3.2); a reserved share of the list for one group of interests (GemiRec over a base:
``eval.generated_share`` for the generated group, ``eval.base_share`` for the extracted one, docs/models.md 5.3);
else ComiRec's max-score merge (duplicates removed). A model names its interest groups with
``interest_groups() -> {"extracted": slice, "generated": slice}`` (one group, ``interests``, for most).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mirec.config import EvalConfig, RunConfig, check_diversity_lambda, check_list_shares
from mirec.eval.diversity import NoCategoriesError, diverse_aggregate
from mirec.eval.retrieval import merge_interests_full, merge_with_reserved_share

Merged = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # ids [U, n], scores [U, n], source interest [U, n]


def interest_groups(model: Any) -> dict[str, slice]:
    """The model's interest groups; every interest is extracted from the history unless the model says otherwise."""
    declared = getattr(model, "interest_groups", None)  # an ensemble of runs is one group
    return declared() if declared is not None else {"interests": slice(0, model.num_interests)}


def first_generated(groups: dict[str, slice]) -> int | None:
    """Index of the first generated interest (they come last), or None."""
    return groups["generated"].start if "generated" in groups else None


@dataclass(frozen=True)
class ListMerge:
    """One user's K lists -> one list of n: :meth:`merge` (serving) and :meth:`per_cutoff` (evaluation)."""

    diversity_lambda: float = 0.0
    categories: np.ndarray | None = None
    reserved: slice | None = None  # the interests given reserved slots
    share: float = 0.0  # their share of the list

    @classmethod
    def of(cls, groups: dict[str, slice], config: EvalConfig, categories: np.ndarray | None, model: str) -> ListMerge:
        """The merge a model's interest groups and an eval config ask for (a share needs two groups)."""
        check_list_shares(config, "generated" in groups, model)
        reserved, share = None, 0.0
        if config.generated_share > 0:
            reserved, share = groups["generated"], config.generated_share
        elif config.base_share > 0:
            reserved, share = groups["extracted"], config.base_share
        return cls(categories=categories, reserved=reserved, share=share).with_diversity(config.diversity_lambda)

    def with_diversity(self, diversity_lambda: float) -> ListMerge:
        """The same merge with another diversity weight (a service request's own)."""
        diversity_lambda = check_diversity_lambda(diversity_lambda)
        if diversity_lambda > 0 and self.categories is None:
            raise NoCategoriesError(
                f"diversity_lambda = {diversity_lambda} needs item categories, and this model's items have none; "
                "use diversity_lambda = 0"
            )
        return dataclasses.replace(self, diversity_lambda=diversity_lambda)

    @property
    def prefix_consistent(self) -> bool:
        """True when the top-k of the merged top-N is the merged top-k (only the max-score merge)."""
        return self.diversity_lambda <= 0 and self.reserved is None

    def merge(self, scores: torch.Tensor, ids: torch.Tensor, n: int) -> Merged:
        """scores / ids [U, K, n'] -> (ids, scores, source interest) [U, n], -1 in empty slots."""
        if self.diversity_lambda > 0:
            return diverse_aggregate(scores, ids, n, self.categories, self.diversity_lambda)
        if self.reserved is not None:
            return merge_with_reserved_share(scores, ids, n, self.reserved, self.share)
        return merge_interests_full(scores, ids, n)

    def per_cutoff(
        self, scores: torch.Tensor, ids: torch.Tensor, ks: list[int]
    ) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """({N: ids [U, N]} for every cut-off, the source interest of the top-max(N) list)."""
        depth = max(ks)
        if self.prefix_consistent:  # one merge serves every cut-off
            merged, _, source = self.merge(scores, ids, depth)
            return {k: merged[:, :k] for k in ks}, source
        # neither the greedy nor a share of N is prefix-consistent: one merge per N on the per-interest top-N pools
        # (ComiRec runs its greedy per N)
        out = {k: self.merge(scores[:, :, :k], ids[:, :, :k], k) for k in ks}
        return {k: merged[0] for k, merged in out.items()}, out[depth][2]


def calibrate(
    config: RunConfig, evaluate_valid: Callable[[EvalConfig], dict[str, Any]]
) -> tuple[RunConfig, dict[str, Any], dict[str, Any] | None]:
    """Post-training calibration of the list merge on the valid split (the test split never takes part): with
    ``eval.base_share_grid``, the base's list share of a GemiRec over a base (docs/models.md 5.3).
    Returns (config with the chosen share, its valid metrics, {"base_share_choice": record} or None).

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
    return chosen, by_share[best], {"base_share_choice": record}


def calibration_summary(record: dict[str, Any]) -> str:
    """One train.log line saying what the calibration chose and from what."""
    choice = record["base_share_choice"]
    shares = ", ".join(f"{s}: {v:.5f}" for s, v in choice["valid"].items())
    return f"eval.base_share = {choice['chosen']} chosen on valid {choice['metric']} from {shares}"


__all__ = ["ListMerge", "interest_groups", "first_generated", "calibrate", "calibration_summary"]
