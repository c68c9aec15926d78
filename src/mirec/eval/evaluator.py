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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mirec.config import EvalConfig
from mirec.data.batching import iter_eval_batches
from mirec.data.dataset import PreparedDataset
from mirec.eval.diversity import (
    NoCategoriesError,
    collapse_per_user,
    generated_collapse_keys,
    item_cosine,
)
from mirec.eval.merge import ListMerge, first_generated, interest_groups
from mirec.eval.metrics import METRICS, RankedLists, per_user_metrics
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
    if not ks or ks[0] < 1:
        raise ValueError(f"eval.topk must be positive cut-offs, got {config.topk}")
    check_cutoffs(config, dataset.n_items)
    depth = ks[-1]
    categories = dataset.item_categories
    if config.diversity_lambda > 0 and categories is None:
        raise NoCategoriesError(
            f"eval.diversity_lambda = {config.diversity_lambda} needs item categories, but dataset "
            f"{dataset.name!r} has none; set eval.diversity_lambda = 0"
        )
    groups = interest_groups(model)
    list_merge = ListMerge.of(groups, config, categories, model.name)
    clusters = None
    if config.interest_clusters > 0:
        from mirec.data.interests import item_clusters

        clusters = item_clusters(dataset, config.interest_clusters)
    sequences = dataset.split(split)
    generated_from = first_generated(groups)
    was_training = model.training
    model.eval()
    lists: dict[int, list[np.ndarray]] = {k: [] for k in ks}
    targets: list[np.ndarray] = []
    histories: list[np.ndarray] = []
    windows: list[np.ndarray] = []  # the history items the model read (the last maxlen)
    rows: list[np.ndarray] = []
    collapse: list[dict[str, np.ndarray]] = []
    diagnostics: list[dict[str, np.ndarray]] = []  # the model's own (GemiRec: generator hit rate by level)
    has_diagnostics = type(model).diagnostics is not MultiInterestModel.diagnostics
    try:
        with torch.no_grad():
            item_vectors = None  # the catalogue's output table, built once (here or for item_cosine)
            if retriever is None:
                item_vectors = model.output_embeddings()
                retriever = ExactRetriever(item_vectors, config.backend)  # once per evaluation
            for eb in iter_eval_batches(sequences, maxlen, config.batch_size, limit=max_users, shard=shard):
                interests = model(eb.batch.to(device))
                exclude = eb.history if config.exclude_history else None
                scores, ids = retriever.search(interests, depth, exclude=exclude)
                final, source = list_merge.per_cutoff(scores, ids, ks)
                for k in ks:
                    lists[k].append(final[k].cpu().numpy())
                if interests.shape[1] > 1:
                    collapse.append(collapse_per_user(interests, ids, source, generated_from))
                if has_diagnostics:
                    found = model.diagnostics(eb.batch.to(device), [torch.tensor(np.asarray(t)) for t in eb.targets])
                    diagnostics.append({name: values.cpu().numpy() for name, values in found.items()})
                targets.extend(eb.targets)
                histories.extend(eb.history)
                windows.extend(h[-maxlen:] for h in eb.history)
                rows.append(eb.rows)
            if item_vectors is None and model.num_interests > 1:  # a given retriever (ANN) kept its own copy
                item_vectors = model.output_embeddings()  # for item_cosine, in eval mode like the retriever's
    finally:
        model.train(was_training)

    arrays: dict[str, np.ndarray] = {}
    recs = {k: np.concatenate(lists[k]) if lists[k] else np.zeros((0, k), np.int64) for k in ks}
    for k in ks:  # one pre-pass per list: the diversity greedy's lists are not prefixes of each other
        if len(targets):
            arrays.update(
                per_user_metrics(recs[k], targets, [k], categories=categories, clusters=clusters, history=windows)
            )
    collapse_arrays = {key: np.concatenate([c[key] for c in collapse]) for key in collapse[0]} if collapse else {}
    novel = (
        RankedLists(recs[depth], targets, clusters=clusters, history=windows).novel_targets
        if clusters is not None and len(targets)
        else None
    )
    names = [
        f"{metric.name}@{k}"
        for k in ks
        for metric in METRICS.values()
        if all({"categories": categories, "clusters": clusters}.get(need, ()) is not None for need in metric.needs)
    ]
    diagnostic_names = list(diagnostics[0]) if diagnostics else []
    arrays.update({f"diagnostics.{n}": np.concatenate([d[n] for d in diagnostics]) for n in diagnostic_names})
    names += [f"diagnostics.{n}" for n in diagnostic_names]
    result = _summary(names, arrays, collapse_arrays, novel, len(targets), model, all_reduce)
    if "collapse" in result:  # the same on every rank: the whole catalogue, not a share of users
        assert item_vectors is not None
        result["collapse"]["item_cosine"] = item_cosine(item_vectors[1:])
    for name in diagnostic_names:
        result.setdefault("diagnostics", {})[name] = result.pop(f"diagnostics.{name}")
    if result["users"] == 0:
        raise ValueError(f"split {split!r} of dataset {dataset.name!r} has no user with both history and targets")
    split_rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    if per_user:
        result["per_user"] = {**arrays, "rows": split_rows}
    if dump_path is not None:
        _dump(dump_path, dataset, sequences.users[split_rows], histories, targets, recs[depth])
    return result


def _summary(
    names: list[str],
    arrays: dict[str, np.ndarray],
    collapse: dict[str, np.ndarray],
    novel: np.ndarray | None,
    users: int,
    model: MultiInterestModel,
    all_reduce: Callable[[np.ndarray], np.ndarray] | None,
) -> dict[str, Any]:
    """Means over users from sums and counts, so that shards on several ranks add up (one all_reduce)."""
    parts: dict[str, np.ndarray] = {"users": np.array([users], dtype=np.float64)}
    generated_from = first_generated(interest_groups(model))
    generated_keys = [] if generated_from is None else generated_collapse_keys(generated_from, model.num_interests)
    for name in names:  # NaN = undefined for that user (novel recall without novel targets): not counted
        values = arrays.get(name, np.zeros(0))
        defined = ~np.isnan(values)
        parts[name] = np.array([values[defined].sum(), defined.sum()], dtype=np.float64)
    if novel is not None or all_reduce is not None:
        novel = np.zeros(0, bool) if novel is None else novel
        parts["novel_target_share"] = np.array([novel.sum(), len(novel)], dtype=np.float64)
    if model.num_interests > 1:
        count = len(collapse.get("interest_cosine", ()))
        parts["collapse.n"] = np.array([count], dtype=np.float64)
        per_user_means = ["interest_cosine", "topk_jaccard"]
        # GemiRec over a base: the list's generated share and the cosine within / across the two interest groups
        per_user_means += generated_keys
        for key in per_user_means:
            parts[f"collapse.{key}"] = np.array([collapse[key].sum() if count else 0.0])
        share = collapse.get("interest_share", np.zeros((0, model.num_interests)))
        parts["collapse.interest_share"] = share.sum(0) if count else np.zeros(model.num_interests)
        active = collapse.get("active_dims")
        width = model.config.embedding_dim if active is None else active.shape[1]
        parts["collapse.active"] = active.any(0).astype(np.float64) if count else np.zeros(width)
    sizes = [len(v) for v in parts.values()]
    flat = np.concatenate(list(parts.values()))
    if all_reduce is not None:
        flat = np.asarray(all_reduce(flat), dtype=np.float64)
    values = dict(zip(parts, np.split(flat, np.cumsum(sizes)[:-1]), strict=True))
    result: dict[str, Any] = {}
    for name in names:
        total, count = values[name]
        result[name] = float(total / count) if count else 0.0
    result["users"] = int(values["users"][0])
    if "novel_target_share" in values and values["novel_target_share"][1] > 0:
        result["novel_target_share"] = float(values["novel_target_share"][0] / values["novel_target_share"][1])
    count = values.get("collapse.n", [0.0])[0]
    if count > 0:
        result["collapse"] = {
            "interest_cosine": float(values["collapse.interest_cosine"][0] / count),
            "topk_jaccard": float(values["collapse.topk_jaccard"][0] / count),
            "interest_share": [float(x) for x in values["collapse.interest_share"] / count],
        }
        for key in generated_keys:
            result["collapse"][key] = float(values[f"collapse.{key}"][0] / count)
        if "collapse.active" in values:
            result["collapse"]["dead_dims"] = int((values["collapse.active"] == 0).sum())
    return result


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
