"""The serving model: a trained model, its item vectors and index, built once, answering batches of histories.

One path serves every caller: ``Recommender.recommend`` (Python API), ``mirec recommend`` (one history or a
file of millions), and the HTTP service. A batch is encoded into one left-aligned tensor, the model runs once,
the index is searched once for every interest of every user, then each user's K lists are merged (ComiRec's
max over interests, or its diversity-controlled greedy) exactly as the offline evaluation merges them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mirec.config import RunConfig, check_diversity_lambda
from mirec.data.batching import Batch
from mirec.data.dataset import days_since_first
from mirec.eval.merge import ListMerge, interest_groups
from mirec.models import MultiInterestModel
from mirec.serving.index import ItemIndex

# Unix seconds, 1970-01-01 to 9999-12-31: a request outside is refused before it joins a batch
MIN_TIMESTAMP, MAX_TIMESTAMP = 0, 253_402_300_799
MAX_ITEM_ID_CHARS = 256  # default cap on one item id's length (a service setting)


@dataclass
class RecommendRequest:
    """One user: original item ids oldest first, optional Unix-second timestamps (one per item)."""

    history: list[str]
    timestamps: list[int] | None = None
    n: int = 50
    exclude_history: bool = False
    diversity_lambda: float = 0.0

    def __post_init__(self) -> None:
        """Checked once, when built: a request that exists cannot fail the batch it joins (``ValueError``, one
        line, naming the field)."""
        if not self.history:
            raise ValueError("history: at least one item")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n = {self.n!r}: a positive integer")
        if not all(isinstance(item, str) for item in self.history):
            raise ValueError("history: item ids are strings")
        check_diversity_lambda(self.diversity_lambda)
        if self.timestamps is not None:
            check_timestamps(self.timestamps, len(self.history))

    def check_id_lengths(self, max_chars: int) -> None:
        """A service's cap on an item id's length (its memory and time per request follow)."""
        longest = max(range(len(self.history)), key=lambda i: len(self.history[i]))
        if len(self.history[longest]) > max_chars:
            raise ValueError(f"history.{longest}: an item id is a string of at most {max_chars} characters")


def check_timestamps(stamps: list[int], n_items: int) -> None:
    """One Unix-second integer per item, in range, oldest first; the first offender named."""
    if len(stamps) != n_items:
        raise ValueError(f"{len(stamps)} timestamps for {n_items} items")
    wrong = next((i for i, t in enumerate(stamps) if type(t) is not int), None)  # bool is not an int here
    if wrong is None and (min(stamps) < MIN_TIMESTAMP or max(stamps) > MAX_TIMESTAMP):
        wrong = next(i for i, t in enumerate(stamps) if not MIN_TIMESTAMP <= t <= MAX_TIMESTAMP)
    if wrong is not None:
        raise ValueError(
            f"timestamps.{wrong} = {stamps[wrong]!r}: Unix seconds, an integer in {MIN_TIMESTAMP}..{MAX_TIMESTAMP}"
        )
    backwards = np.flatnonzero(np.diff(np.asarray(stamps, dtype=np.int64)) < 0)
    if len(backwards):
        i = int(backwards[0]) + 1
        raise ValueError(f"timestamps.{i} = {stamps[i]} is before timestamps.{i - 1}: give the history oldest first")


@dataclass
class Recommendation:
    items: list[str]
    scores: list[float]
    interests: list[int]  # which interest retrieved each item (its best score)
    unknown_items: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": [
                {"id": i, "score": s, "interest": k}
                for i, s, k in zip(self.items, self.scores, self.interests, strict=True)
            ],
            "unknown_items": self.unknown_items,
        }


class UnknownItemsError(ValueError):
    """No item of a history is known to the model."""


class ServingModel:
    """Model + item id map + item index; :meth:`recommend` takes a batch of requests."""

    def __init__(
        self,
        model: MultiInterestModel,
        config: RunConfig,
        item_original_ids: np.ndarray,
        index: ItemIndex,
        item_categories: np.ndarray | None = None,
        manifest: dict[str, Any] | None = None,
    ):
        self.model = model.eval()
        self.config = config
        self.device = next(model.parameters()).device
        self.maxlen = int(config.model.maxlen)
        self.item_original_ids = np.asarray(item_original_ids, dtype=object)  # [n_items + 1], 0 = ""
        # a hash map built once: a query costs its own size (a sorted-array search widened every catalogue
        # name to the longest query id)
        self._internal = {str(name): i for i, name in enumerate(self.item_original_ids[1:].tolist(), start=1)}
        self.index = index
        self.item_categories = item_categories
        # the evaluator's merge of the K lists, built once; a request may only change its diversity weight
        self.list_merge = ListMerge.of(interest_groups(model), config.eval, item_categories, config.model.name)
        self.manifest = dict(manifest or {})
        self.n_items = int(len(self.item_original_ids) - 1)

    @classmethod
    def of_run(
        cls,
        model: MultiInterestModel,
        dataset: Any,
        config: RunConfig,
        index_params: Any = None,
        source: str | None = None,
    ) -> ServingModel:
        """The serving model of a trained run held in memory: its dataset's id map and categories, the model's
        item vectors in an index (exact unless ``index_params`` says otherwise)."""
        from mirec.serving.index import IndexParams

        with torch.no_grad():
            vectors = model.output_embeddings().detach().float().cpu()
        params = index_params or IndexParams()
        manifest = {
            "model": config.model.name,
            "source_run": source,
            "model_version": "run",
            "index_version": params.kind,
        }
        n = model.n_catalogue + 1  # an ids-only model cannot score held-out or table-only items
        categories = dataset.item_categories
        return cls(
            model,
            config,
            dataset.item_original_ids[:n],
            ItemIndex(vectors, params),
            item_categories=None if categories is None else categories[:n],
            manifest=manifest,
        )

    # ------------------------------------------------------------------ ids
    def lookup(self, original: list[str] | np.ndarray) -> np.ndarray:
        """Original ids -> internal ids (0 where unknown)."""
        get = self._internal.get
        return np.fromiter((get(str(x), 0) for x in original), dtype=np.int64, count=len(original))

    def encode(
        self, requests: list[RecommendRequest], skip_unknown: bool = False
    ) -> tuple[Batch, list[np.ndarray], list[list[str]]]:
        """(batch of the last ``maxlen`` known items per user, each user's known internal ids, unknown ids).
        A history with no known item raises :class:`UnknownItemsError`, or with ``skip_unknown`` leaves an
        empty row (all padding) for the caller to drop."""
        lengths = np.fromiter((len(r.history) for r in requests), dtype=np.int64, count=len(requests))
        flat = self.lookup([item for r in requests for item in r.history])
        stamps = np.zeros(len(flat), dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        items = np.zeros((len(requests), self.maxlen), dtype=np.int64)
        days = np.zeros((len(requests), self.maxlen), dtype=np.int64)
        known_ids: list[np.ndarray] = []
        unknown: list[list[str]] = []
        for row, request in enumerate(requests):  # per user (not per item): slicing and small numpy ops
            ids = flat[offsets[row] : offsets[row + 1]]
            known = ids > 0
            if request.timestamps is not None:
                if len(request.timestamps) != len(request.history):
                    raise ValueError(f"{len(request.timestamps)} timestamps for {len(request.history)} items")
                stamps[offsets[row] : offsets[row + 1]] = request.timestamps
            unknown.append([str(x) for x in np.asarray(request.history, dtype=object)[~known]])
            if not known.any():
                if not skip_unknown:
                    raise UnknownItemsError(f"none of the {len(request.history)} items is known to this model")
                known_ids.append(ids[known])
                continue
            kept = ids[known][-self.maxlen :]
            items[row, : len(kept)] = kept
            if request.timestamps is not None:
                t = stamps[offsets[row] : offsets[row + 1]][known]
                days[row, : len(kept)] = days_since_first(t, t.min())[-self.maxlen :]
            else:
                days[row, : len(kept)] = 1
            known_ids.append(ids[known])
        mask = (items > 0).astype(np.float32)
        batch = Batch(torch.from_numpy(items), torch.from_numpy(mask), torch.from_numpy(days)).to(self.device)
        return batch, known_ids, unknown

    # ------------------------------------------------------------------ retrieval
    @torch.no_grad()
    def interests(self, requests: list[RecommendRequest]) -> torch.Tensor:
        """The K interest vectors [U, K, d] of each request's history (float32, CPU)."""
        batch, _, _ = self.encode(requests)
        return self.model(batch).float().cpu()

    @torch.no_grad()
    def search_batch(
        self, batch: Batch, n: int, exclude: list[np.ndarray] | None = None, diversity_lambda: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One forward pass, one index search, the merge: (ids [U, n], scores [U, n], interest [U, n]) in
        internal ids, -1 in empty slots. The bulk path (``mirec recommend --data``) calls it directly."""
        interests = self.model(batch.to(self.device)).float().cpu()
        scores, ids = self.index.search(interests, n, exclude)
        return self.list_merge.with_diversity(diversity_lambda).merge(scores, ids, n)

    @torch.no_grad()
    def recommend(self, requests: list[RecommendRequest], skip_unknown: bool = False) -> list[Recommendation | None]:
        """One forward pass and one index search per distinct diversity setting; each request gets its own n.
        ``skip_unknown``: a request none of whose items is known gets None instead of failing the batch."""
        if not requests:
            return []
        batch, known_ids, unknown = self.encode(requests, skip_unknown)
        n_max = max(r.n for r in requests)
        out: list[Recommendation | None] = [None] * len(requests)
        served = [len(ids) > 0 for ids in known_ids]
        for lam in sorted({float(r.diversity_lambda) for r in requests}):  # usually one group
            rows = [i for i, r in enumerate(requests) if float(r.diversity_lambda) == lam and served[i]]
            if not rows:
                continue
            sel = torch.tensor(rows)
            sub = Batch(batch.items[sel], batch.mask[sel], batch.days[sel])
            exclude = None
            if any(requests[i].exclude_history for i in rows):
                exclude = [known_ids[i] if requests[i].exclude_history else np.zeros(0, np.int64) for i in rows]
            merged_ids, merged_s, source = self.search_batch(sub, n_max, exclude, lam)
            for j, row in enumerate(rows):
                take = merged_ids[j] > 0
                n = requests[row].n
                item_ids = merged_ids[j][take][:n].numpy()
                out[row] = Recommendation(
                    items=[str(x) for x in self.item_original_ids[item_ids]],
                    scores=merged_s[j][take][:n].tolist(),
                    interests=source[j][take][:n].tolist(),
                    unknown_items=unknown[row],
                )
        return out

    @torch.no_grad()
    def similar(self, item: str, n: int = 20) -> list[dict[str, Any]]:
        """The n items whose vectors have the largest inner product with this item's (itself excluded)."""
        (internal,) = self.lookup([item])
        if internal == 0:
            raise KeyError(item)
        query = self.index.item_table[internal][None, None, :]
        scores, ids = self.index.search(query, n, [np.array([internal])])
        keep = ids[0, 0] > 0
        return [
            {"id": str(self.item_original_ids[i]), "score": float(s)}
            for i, s in zip(ids[0, 0][keep].tolist(), scores[0, 0][keep].tolist(), strict=True)
        ]


__all__ = ["ServingModel", "RecommendRequest", "Recommendation", "UnknownItemsError"]
