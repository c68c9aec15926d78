"""Qdrant (``pip install "mirec[qdrant]"``): local mode in the process's memory (``qdrant:///:memory:``, exact
search, loaded from the bundle at start) or any Qdrant server (``qdrant://host:6333``, HNSW or exact).
Dot-product distance. Qdrant's local mode on disk is refused: it stores points with pickle, and mirec never
unpickles."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from mirec.retrieval.base import MARKER_KEY, StoreError, StoreParams, VectorStore, pad_ids
from mirec.retrieval.table import ItemTable

UPLOAD_ROWS = 10_000
SEARCH_QUERIES = 1_024  # query vectors per batched call
MEMORY = ":memory:"


class QdrantStore(VectorStore):
    engine = "qdrant"

    def __init__(self, params: StoreParams):
        super().__init__(params)
        try:
            from qdrant_client import QdrantClient
        except ImportError as exc:
            raise StoreError('the Qdrant store needs qdrant-client (pip install "mirec[qdrant]")') from exc
        address = params.address
        self.local = not address.startswith("http")  # local mode: always exact, takes no search parameters
        if self.local and address != MEMORY:
            raise StoreError(
                f"qdrant://{address}: Qdrant's local mode on disk stores points with pickle, which mirec never reads "
                f"back; use qdrant:///{MEMORY} (filled from the bundle at start) or a Qdrant server"
            )
        self.client = QdrantClient(location=MEMORY) if self.local else QdrantClient(url=address)

    def read_marker(self) -> dict[str, Any] | None:
        name = self.params.collection
        if not self.client.collection_exists(name):
            return None
        text = (self.client.get_collection(name).config.metadata or {}).get(MARKER_KEY)
        if text is None:
            raise StoreError(f"{self.where()}: exists and mirec did not create it; choose another collection")
        return json.loads(text)

    def drop(self) -> None:
        self.client.delete_collection(self.params.collection)

    def create(self, table: ItemTable, marker: dict[str, Any]) -> None:
        from qdrant_client import models

        p = self.params
        hnsw = models.HnswConfigDiff(m=p.m if p.index == "hnsw" else 0, ef_construct=p.ef_construction)
        self.client.create_collection(
            p.collection,
            vectors_config=models.VectorParams(size=table.dim, distance=models.Distance.DOT),
            hnsw_config=hnsw,  # m = 0: no graph, every search is exact
            metadata={MARKER_KEY: json.dumps(marker)},
        )
        payload = [
            {"item_id": str(i), "category": int(c)} for i, c in zip(table.item_ids, table.categories, strict=True)
        ]
        self.client.upload_collection(
            p.collection,
            vectors=table.vectors,
            payload=payload,
            ids=list(range(1, len(table) + 1)),
            batch_size=UPLOAD_ROWS,
            wait=True,
        )

    def search_ids(self, queries: np.ndarray, width: int) -> np.ndarray:
        from qdrant_client import models

        exact = self.params.index == "flat"
        search = (
            None if self.local else models.SearchParams(exact=exact, hnsw_ef=None if exact else self.params.ef(width))
        )
        rows: list[list[int]] = []
        for start in range(0, len(queries), SEARCH_QUERIES):
            requests = [
                models.QueryRequest(query=q, limit=width, params=search, with_payload=False)
                for q in queries[start : start + SEARCH_QUERIES].tolist()
            ]
            answers = self.client.query_batch_points(self.params.collection, requests=requests)
            rows += [[int(point.id) for point in answer.points] for answer in answers]
        return pad_ids(rows, width)

    def close(self) -> None:
        self.client.close()


__all__ = ["QdrantStore"]
