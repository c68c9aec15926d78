"""The contract of a vector database serving as mirec's item index (:class:`VectorStore`), shared by every engine's
adapter (:mod:`.milvus`, :mod:`.qdrant`, :mod:`.pgvector`); :mod:`.store` opens one from a URI."""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from mirec.retrieval.table import ItemTable
from mirec.serving.index import candidate_width, rescore_candidates

MARKER_KEY = "mirec_item_table"  # the marker every adapter stores with its collection (JSON text)
DEFAULT_COLLECTION = "mirec_items"
StoreIndexKind = Literal["flat", "hnsw"]


class StoreError(ValueError):
    """A store that is unreachable, holds another model's table, or a collection mirec did not create."""


@dataclass(frozen=True)
class StoreParams:
    """Where and how: the engine's address, the collection, and its index (flat = exact search)."""

    address: str  # what the engine's client takes: a file, a folder, a URL or a PostgreSQL conninfo
    collection: str = DEFAULT_COLLECTION
    index: StoreIndexKind = "flat"
    m: int = 16  # HNSW graph degree
    ef_construction: int = 200
    ef_search: int = 0  # 0 = max(128, 2 * candidates)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", self.collection):
            raise StoreError(f"collection {self.collection!r}: letters, digits and _ (at most 63, not a digit first)")
        if self.index not in ("flat", "hnsw"):
            raise StoreError(f"index {self.index!r}: flat or hnsw")
        if min(self.m, self.ef_construction) < 1 or self.ef_search < 0:
            raise StoreError("m and ef_construction >= 1, ef_search >= 0")

    def ef(self, width: int) -> int:
        return self.ef_search or max(128, 2 * width)


class VectorStore(ABC):
    """One engine's adapter: :meth:`load` an item table, then :meth:`search` it like an ``ItemIndex``."""

    engine = "?"

    def __init__(self, params: StoreParams):
        self.params = params
        self.item_table: torch.Tensor | None = None  # [n + 1, d] once attached (row 0 padding)

    @property
    def candidates_factor(self) -> int:
        """Flat search is exact: n candidates are the answer; an approximate index is asked for twice as many."""
        return 2 if self.params.index == "hnsw" else 1

    # --------------------------------------------------------------- the engine's part
    @abstractmethod
    def read_marker(self) -> dict[str, Any] | None:
        """The collection's mirec marker; None if there is no such collection; raises if it exists unmarked."""

    @abstractmethod
    def drop(self) -> None:
        """Remove the collection (called only after the marker said mirec made it)."""

    @abstractmethod
    def create(self, table: ItemTable, marker: dict[str, Any]) -> None:
        """Create the marked collection, insert every row, build the index, make it searchable."""

    @abstractmethod
    def search_ids(self, queries: np.ndarray, width: int) -> np.ndarray:
        """The top ``width`` item ids [Q, width] (int64, -1 where none) of every query row, in one call."""

    @abstractmethod
    def close(self) -> None:
        """Release the client (files, connections)."""

    # --------------------------------------------------------------- shared
    def load(self, table: ItemTable, replace: bool = False) -> dict[str, Any]:
        """Put ``table`` in the collection. An existing collection is replaced only if mirec made it and
        ``replace`` is set (every check runs before anything is dropped); returns the load time."""
        marker = {"model_version": table.model_version, "dim": table.dim, "n_items": len(table)}
        found = self.read_marker()
        if found is not None:
            if found == marker:
                return {"loaded": False, "seconds": 0.0, "rows": len(table), "reason": "already holds this table"}
            if not replace:
                raise StoreError(
                    f"{self.where()}: holds mirec table {found}, not {marker}; replace it explicitly (--store-replace)"
                )
        started = time.perf_counter()
        if found is not None:
            self.drop()
        self.create(table, marker)
        return {"loaded": True, "seconds": round(time.perf_counter() - started, 3), "rows": len(table)}

    def attach(self, item_table: torch.Tensor, model_version: str) -> VectorStore:
        """Serve with this store: it must hold this model version's table (ids mean rows of that version)."""
        marker = self.read_marker()
        expected = {"model_version": model_version, "dim": int(item_table.shape[1]), "n_items": len(item_table) - 1}
        if marker != expected:
            raise StoreError(f"{self.where()}: holds {marker or 'no mirec table'}, the model needs {expected}")
        self.item_table = item_table.detach().float().cpu().contiguous()
        return self

    def search(
        self, queries: torch.Tensor, n: int, exclude: Sequence[np.ndarray] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [U, K, n], ids [U, K, n]) best first, -1 / -inf where fewer than n items are left."""
        if self.item_table is None:
            raise StoreError(f"{self.where()}: attach() the model's item table before searching")
        n_users, k, dim = queries.shape
        flat = queries.detach().float().cpu().reshape(-1, dim)
        width = candidate_width(n, len(self.item_table) - 1, self.candidates_factor, exclude)
        ids = torch.from_numpy(self.search_ids(np.ascontiguousarray(flat.numpy()), width)).long()
        return rescore_candidates(flat, ids, self.item_table, n, exclude, n_users, k)

    def where(self) -> str:
        return f"{self.engine} {redact(self.params.address)} collection {self.params.collection}"


def redact(address: str) -> str:
    """An address without its password (it goes into error messages and logs)."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", address)


def pad_ids(rows: list[list[int]], width: int) -> np.ndarray:
    """Ragged id lists -> [Q, width] int64, -1 padded."""
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row[:width]
    return out


__all__ = ["VectorStore", "StoreParams", "StoreError", "MARKER_KEY", "DEFAULT_COLLECTION", "pad_ids", "redact"]
