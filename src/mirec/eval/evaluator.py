"""Full-catalogue evaluation of a multi-interest model under the ComiRec protocol (docs/models.md 3.2-3.3, 6).

For every valid/test user the last ``maxlen`` items of the history part (first 80%) infer K interests; each
interest retrieves its exact top-N over items 1..n_items; the K lists are merged by max score (lambda = 0)
or by ComiRec's category-diversity greedy (``config.diversity_lambda > 0``); the remaining 20% are the
targets. Metrics are in :mod:`mirec.eval.metrics`.

Reported keys: every registered metric (:data:`mirec.eval.metrics.METRICS`) as ``NAME@N`` for N in
``config.topk``: ``recall``, ``ndcg``, ``ndcg_comirec``, ``hit_rate``, and ``diversity`` whenever the dataset
has item categories (whatever lambda: it is cheap and makes the accuracy/diversity trade-off visible);
``collapse`` (K > 1): mean pairwise interest cosine, mean Jaccard overlap of the per-interest top-max(N) lists
and the mean sorted per-interest share of the final top-max(N) list (and, for GemiRec over a base, the share
from its generated interests and the mean cosine within the base's interests, within the generated ones and
across the two groups); ``users``: the number of users evaluated.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mirec.config import EvalConfig
from mirec.data.batching import iter_eval_batches
from mirec.data.dataset import PreparedDataset
from mirec.eval.collectors import (
    CollapseCollector,
    Collector,
    ListsCollector,
    ModelDiagnosticsCollector,
    Retrieved,
    reduce_collectors,
)
from mirec.eval.diversity import NoCategoriesError
from mirec.eval.merge import ListMerge, interest_groups
from mirec.eval.retrieval import ExactRetriever
from mirec.models.base import MultiInterestModel
from mirec.utils import atomic_path


def check_cutoffs(config: EvalConfig, n_items: int) -> None:
    """A cut-off above the catalogue cannot be filled: refused before training or evaluating."""
    if max(config.topk) > n_items:
        raise ValueError(f"eval.topk = {config.topk}: a cut-off above the catalogue's {n_items} items")


def evaluate(
    model: MultiInterestModel,
    dataset: PreparedDataset,
    split: str = "valid",
    config: EvalConfig | None = None,
    *,
    maxlen: int,
    device: str | torch.device = "cpu",
    max_users: int | None = None,
    dump_path: str | Path | None = None,
    per_user: bool = False,
    retriever: Any = None,
    shard: tuple[int, int] = (0, 1),
    all_reduce: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` (already on ``device``) on the ``split`` users; returns the metric dict.

    ``retriever``: any object with ``search(interests, n, exclude) -> (scores, ids)``, e.g. a serving
    :class:`mirec.serving.index.ItemIndex` (ANN), to measure what serving returns; default exact search.
    ``max_users`` evaluates only the first users of the split (in split order); ``dump_path`` writes one JSON
    line per user with original ids (user, full history part, targets, final top-max(N) list);
    ``per_user=True`` adds ``"per_user"``: {metric: [U] array, "rows": split rows}.
    Distributed: ``shard = (rank, world)`` evaluates this rank's share of the users and ``all_reduce`` (a sum
    over the ranks of a float64 vector) combines the shares' sums, so every rank returns the metrics of all
    users, equal to one process's up to the order of float64 additions.
    The model is switched to eval mode under ``torch.no_grad()`` and restored to its previous mode after.
    """
    config = config or EvalConfig()
    ks = sorted({int(k) for k in config.topk})
    check_cutoffs(config, dataset.n_items)
    lists, collapse, collectors, merge = _collectors(model, dataset, config, ks, maxlen, device)
    with _eval_mode(model), torch.no_grad():
        retriever = retriever or ExactRetriever(model.output_embeddings(), config.backend)  # once per evaluation
        for eb in iter_eval_batches(dataset.split(split), maxlen, config.batch_size, limit=max_users, shard=shard):
            interests = model(eb.batch.to(device))
            scores, ids = retriever.search(interests, ks[-1], exclude=eb.history if config.exclude_history else None)
            step = Retrieved(eb, interests, ids, *merge.per_cutoff(scores, ids, ks))
            for collector in collectors:
                collector.add(step)
        collapse.item_vectors = model.output_embeddings() if model.num_interests > 1 else None
    result = reduce_collectors(collectors, all_reduce)
    if result["users"] == 0:
        raise ValueError(f"split {split!r} of dataset {dataset.name!r} has no user with both history and targets")
    if per_user:
        result["per_user"] = {k: v for c in collectors for k, v in c.per_user().items()} | {"rows": lists.split_rows()}
    if dump_path is not None:
        users = dataset.split(split).users[lists.split_rows()]
        _dump(dump_path, dataset, users, lists.histories, lists.targets, lists.recs(ks[-1]))
    return result


def _collectors(
    model: MultiInterestModel, dataset: PreparedDataset, config: EvalConfig, ks: list[int], maxlen: int, device: Any
) -> tuple[ListsCollector, CollapseCollector, list[Collector], ListMerge]:
    """The evaluation's collectors (lists and metrics, collapse, the model's own diagnostics) and list merge."""
    categories = dataset.item_categories
    if config.diversity_lambda > 0 and categories is None:
        raise NoCategoriesError(
            f"eval.diversity_lambda = {config.diversity_lambda} needs item categories, but dataset "
            f"{dataset.name!r} has none; set eval.diversity_lambda = 0"
        )
    clusters = None
    if config.interest_clusters > 0:
        from mirec.data.interests import item_clusters

        clusters = item_clusters(dataset, config.interest_clusters)
    groups = interest_groups(model)
    cold = None
    if dataset.n_id_items < dataset.n_items:  # held-out or table-only items: report their recall apart
        cold = np.arange(dataset.n_items + 1) > dataset.n_id_items
    lists = ListsCollector(ks, categories, clusters, maxlen, cold)
    collapse = CollapseCollector(model.num_interests, groups, model.config.embedding_dim)
    collectors: list[Collector] = [lists, collapse]
    if type(model).diagnostics is not MultiInterestModel.diagnostics:
        collectors.append(ModelDiagnosticsCollector(model, device))
    return lists, collapse, collectors, ListMerge.of(groups, config, categories, model.name)


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _dump(
    path: str | Path,
    dataset: PreparedDataset,
    users: np.ndarray,
    histories: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    recs: np.ndarray,
) -> None:
    """JSON lines in original ids: {"user", "history", "targets", "recommendations"} (atomic write)."""
    items = dataset.item_original_ids
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for user, history, target, rec in zip(users, histories, targets, recs, strict=True):
            record = {
                "user": str(dataset.user_original_ids[user]),
                "history": [str(x) for x in items[np.asarray(history, dtype=np.int64)]],
                "targets": [str(x) for x in items[np.asarray(target, dtype=np.int64)]],
                "recommendations": [str(x) for x in items[rec[rec > 0]]],
            }
            out.write(json.dumps(record) + "\n")
