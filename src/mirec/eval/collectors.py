"""What an evaluation gathers from each retrieved batch, and how it becomes the reported figures.

A collector's :meth:`~Collector.add` sees every :class:`Retrieved` batch; :meth:`~Collector.parts` gives sums and
counts (float64 vectors), which :func:`reduce_collectors` adds up over the ranks of a distributed evaluation with
one all-reduce before each collector's :meth:`~Collector.finish` writes its keys into the result. A new
diagnostic is one collector (and one test).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mirec.data.batching import EvalBatch
from mirec.eval.diversity import collapse_per_user, generated_collapse_keys, item_cosine
from mirec.eval.merge import first_generated
from mirec.eval.metrics import METRICS, RankedLists, per_user_metrics


@dataclass
class Retrieved:
    """One batch of users: their interests [U, K, d], per-interest top ids [U, K, N], final lists, sources."""

    eb: EvalBatch
    interests: torch.Tensor
    ids: torch.Tensor
    final: dict[int, torch.Tensor]
    source: torch.Tensor


def mean_parts(values: np.ndarray) -> np.ndarray:
    """[sum, count] over the defined (non-NaN) per-user values: NaN = undefined for that user, not counted."""
    defined = ~np.isnan(values)
    return np.array([values[defined].sum(), defined.sum()], dtype=np.float64)


class Collector:
    def add(self, step: Retrieved) -> None:
        """Take what this collector needs from one batch."""

    def parts(self) -> dict[str, np.ndarray]:
        """Sums and counts, added up over the ranks before :meth:`finish`."""
        return {}

    def finish(self, values: dict[str, np.ndarray], result: dict[str, Any]) -> None:
        """Write this collector's keys into the result from the (all-reduced) parts."""

    def per_user(self) -> dict[str, np.ndarray]:
        """Per-user arrays (this process's users) for ``evaluate(per_user=True)``."""
        return {}


class ListsCollector(Collector):
    """The final lists and the users' targets: every registered metric at every cut-off, ``users`` and the
    share of novel targets (docs/models.md section 6)."""

    def __init__(
        self,
        ks: list[int],
        categories: np.ndarray | None,
        clusters: np.ndarray | None,
        maxlen: int,
        cold: np.ndarray | None = None,
    ):
        self.ks, self.categories, self.clusters, self.maxlen, self.cold = ks, categories, clusters, maxlen, cold
        self.lists: dict[int, list[np.ndarray]] = {k: [] for k in ks}
        self.targets: list[np.ndarray] = []
        self.histories: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []
        self.arrays: dict[str, np.ndarray] = {}
        needs = {"categories": categories, "clusters": clusters, "cold": cold}
        self.names = [
            f"{metric.name}@{k}"
            for k in ks
            for metric in METRICS.values()
            if all(needs.get(need, ()) is not None for need in metric.needs)
        ]

    def add(self, step: Retrieved) -> None:
        for k in self.ks:
            self.lists[k].append(step.final[k].cpu().numpy())
        self.targets.extend(step.eb.targets)
        self.histories.extend(step.eb.history)
        self.rows.append(step.eb.rows)

    def per_user(self) -> dict[str, np.ndarray]:
        return self.arrays

    def recs(self, k: int) -> np.ndarray:
        return np.concatenate(self.lists[k]) if self.lists[k] else np.zeros((0, k), np.int64)

    def split_rows(self) -> np.ndarray:
        return np.concatenate(self.rows) if self.rows else np.zeros(0, np.int64)

    def parts(self) -> dict[str, np.ndarray]:
        windows = [h[-self.maxlen :] for h in self.histories]  # the history items the model read
        for k in self.ks:  # one pre-pass per list: the diversity greedy's lists are not prefixes of each other
            if self.targets:
                lists = per_user_metrics(
                    self.recs(k),
                    self.targets,
                    [k],
                    categories=self.categories,
                    clusters=self.clusters,
                    history=windows,
                    cold=self.cold,
                )
                self.arrays.update(lists)
        out = {"users": np.array([len(self.targets)], dtype=np.float64)}
        out.update({name: mean_parts(self.arrays.get(name, np.zeros(0))) for name in self.names})
        if self.clusters is not None:
            depth = self.recs(max(self.ks))
            novel = RankedLists(depth, self.targets, clusters=self.clusters, history=windows).novel_targets
            novel = novel if self.targets else np.zeros(0, bool)
            out["novel_target_share"] = np.array([novel.sum(), len(novel)], dtype=np.float64)
        return out

    def finish(self, values: dict[str, np.ndarray], result: dict[str, Any]) -> None:
        for name in self.names:
            total, count = values[name]
            result[name] = float(total / count) if count else 0.0
        result["users"] = int(values["users"][0])
        share = values.get("novel_target_share")
        if share is not None and share[1] > 0:
            result["novel_target_share"] = float(share[0] / share[1])


class CollapseCollector(Collector):
    """Interest-collapse diagnostics of a K > 1 model (docs/models.md 5.3): mean pairwise interest cosine, top-k
    overlap, list share per interest, dead dimensions, the catalogue's item cosine (the floor), and for GemiRec
    over a base the generated list share and the cosines within and across its two interest groups."""

    def __init__(self, num_interests: int, groups: dict[str, slice], width: int):
        self.k, self.width = num_interests, width
        self.generated_from = first_generated(groups)
        self.generated_keys = (
            [] if self.generated_from is None else generated_collapse_keys(self.generated_from, self.k)
        )
        self.batches: list[dict[str, np.ndarray]] = []
        self.item_vectors: torch.Tensor | None = None  # set after the loop: the catalogue, for item_cosine

    def add(self, step: Retrieved) -> None:
        if step.interests.shape[1] > 1:
            self.batches.append(collapse_per_user(step.interests, step.ids, step.source, self.generated_from))

    def parts(self) -> dict[str, np.ndarray]:
        collapse = (
            {key: np.concatenate([c[key] for c in self.batches]) for key in self.batches[0]} if self.batches else {}
        )
        count = len(collapse.get("interest_cosine", ()))
        out = {"collapse.n": np.array([count], dtype=np.float64)}
        for key in ["interest_cosine", "topk_jaccard", *self.generated_keys]:
            out[f"collapse.{key}"] = np.array([collapse[key].sum() if count else 0.0])
        out["collapse.interest_share"] = collapse["interest_share"].sum(0) if count else np.zeros(self.k)
        active = collapse.get("active_dims")
        width = self.width if active is None else active.shape[1]
        out["collapse.active"] = active.any(0).astype(np.float64) if count else np.zeros(width)
        return out

    def finish(self, values: dict[str, np.ndarray], result: dict[str, Any]) -> None:
        count = values["collapse.n"][0]
        if count <= 0:
            return
        collapse = {
            "interest_cosine": float(values["collapse.interest_cosine"][0] / count),
            "topk_jaccard": float(values["collapse.topk_jaccard"][0] / count),
            "interest_share": [float(x) for x in values["collapse.interest_share"] / count],
        }
        for key in self.generated_keys:
            collapse[key] = float(values[f"collapse.{key}"][0] / count)
        collapse["dead_dims"] = int((values["collapse.active"] == 0).sum())
        if self.item_vectors is not None:  # the same on every rank: the whole catalogue, not a share of users
            collapse["item_cosine"] = item_cosine(self.item_vectors[1:])
        result["collapse"] = collapse


class ModelDiagnosticsCollector(Collector):
    """A model's own per-user diagnostics (``MultiInterestModel.diagnostics``, e.g. GemiRec's generator hit rate
    by level), as means in ``result["diagnostics"]``."""

    def __init__(self, model: Any, device: Any):
        self.model, self.device = model, device
        self.batches: list[dict[str, np.ndarray]] = []

    def add(self, step: Retrieved) -> None:
        targets = [torch.tensor(np.asarray(t)) for t in step.eb.targets]
        found = self.model.diagnostics(step.eb.batch.to(self.device), targets)
        self.batches.append({name: values.cpu().numpy() for name, values in found.items()})

    def per_user(self) -> dict[str, np.ndarray]:
        names = list(self.batches[0]) if self.batches else []
        return {f"diagnostics.{n}": np.concatenate([d[n] for d in self.batches]) for n in names}

    def parts(self) -> dict[str, np.ndarray]:
        return {key: mean_parts(values) for key, values in self.per_user().items()}

    def finish(self, values: dict[str, np.ndarray], result: dict[str, Any]) -> None:
        for key, parts in values.items():
            if key.startswith("diagnostics."):
                total, count = parts
                result.setdefault("diagnostics", {})[key.split(".", 1)[1]] = float(total / count) if count else 0.0


def reduce_collectors(
    collectors: list[Collector], all_reduce: Callable[[np.ndarray], np.ndarray] | None
) -> dict[str, Any]:
    """Every collector's parts added up over the ranks with one all-reduce (None: this process's alone), then
    each collector's keys written into one result."""
    parts: dict[str, np.ndarray] = {}
    for collector in collectors:
        parts.update(collector.parts())
    sizes = [len(v) for v in parts.values()]
    flat = np.concatenate(list(parts.values()))
    if all_reduce is not None:
        flat = np.asarray(all_reduce(flat), dtype=np.float64)
    values = dict(zip(parts, np.split(flat, np.cumsum(sizes)[:-1]), strict=True))
    result: dict[str, Any] = {}
    for collector in collectors:
        collector.finish(values, result)
    return result


__all__ = [
    "Retrieved",
    "Collector",
    "ListsCollector",
    "CollapseCollector",
    "ModelDiagnosticsCollector",
    "reduce_collectors",
]
