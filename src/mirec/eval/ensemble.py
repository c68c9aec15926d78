"""Several trained runs of one dataset served as one model: a control for "is the gain of a second encoder more
than an ensemble effect?" (docs/models.md 5.3).

Each run's interests are scored against its own item table, exactly, through one block-diagonal model: an item's
vector is the concatenation [T_1[i] | ... | T_n[i]] of the runs' output vectors and run j's interests are padded
with zeros outside block j, so every inner product is the run's own score and the evaluator's max-score merge
of all runs' interests is the ensemble's list. Pairwise interest cosines across runs are 0 by construction (the
collapse report's cosine is not meaningful for an ensemble; the list overlap is).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mirec.data.batching import Batch
from mirec.models.base import MultiInterestModel


class RunEnsemble(MultiInterestModel):
    """The interests of several trained models of one catalogue, each scored against its own item table (for
    evaluation: it is never trained)."""

    name = "ensemble"

    def __init__(self, models: Sequence[MultiInterestModel]):
        nn.Module.__init__(self)  # no table of its own: the members' are used
        if len(models) < 2:
            raise ValueError(f"an ensemble needs at least 2 models, got {len(models)}")
        if len({m.n_items for m in models}) != 1:
            raise ValueError(f"ensemble members must share one catalogue, got sizes {[m.n_items for m in models]}")
        self.members = nn.ModuleList(models)
        self.config = models[0].config
        self.n_items = models[0].n_items

    @property
    def num_interests(self) -> int:
        return sum(m.num_interests for m in self.members)

    def output_embeddings(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        return torch.cat([m.output_embeddings(ids) for m in self.members], dim=-1)

    def forward(self, batch: Batch) -> torch.Tensor:
        interests = [m(batch) for m in self.members]
        widths = [i.shape[-1] for i in interests]
        blocks = []
        for j, member_interests in enumerate(interests):
            before, after = sum(widths[:j]), sum(widths[j + 1 :])
            blocks.append(nn.functional.pad(member_interests, (before, after)))
        return torch.cat(blocks, dim=1)


def evaluate_runs(
    run_dirs: Sequence[str | Path], split: str = "test", device: str = "cpu", **eval_overrides: Any
) -> dict:
    """Evaluate the ensemble of trained run folders (the first run's dataset, maxlen and evaluation settings)."""
    from mirec.api import load
    from mirec.eval.evaluator import evaluate

    runs = [load(run, device=device) for run in run_dirs]
    first = runs[0]
    for run in runs[1:]:
        if not np.array_equal(run.dataset.item_original_ids, first.dataset.item_original_ids):
            raise ValueError(f"{run.run_dir} and {first.run_dir} were trained on different catalogues")
        if run.config.model.maxlen != first.config.model.maxlen:
            raise ValueError(
                f"{run.run_dir} reads {run.config.model.maxlen} items, {first.run_dir} reads "
                f"{first.config.model.maxlen}"
            )
    model = RunEnsemble([run.model for run in runs])
    config = first.eval_config(**eval_overrides)
    return evaluate(model, first.dataset, split, config, maxlen=first.config.model.maxlen, device=first.device)


__all__ = ["RunEnsemble", "evaluate_runs"]
