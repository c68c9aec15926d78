"""Milvus (``pip install "mirec[milvus]"``): Milvus Lite embedded in the process (``milvus:///path/items.db``) or
any Milvus server (``milvus://host:19530``). Inner-product metric; FLAT (exact) or HNSW index."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from mirec.retrieval.base import MARKER_KEY, StoreError, StoreParams, VectorStore, pad_ids
from mirec.retrieval.table import ItemTable

INSERT_ROWS = 10_000  # rows per insert call (a call is one message to the engine)
SEARCH_QUERIES = 4_096  # query vectors per search call (Milvus allows up to 16,384)


class MilvusStore(VectorStore):
    engine = "milvus"

    def __init__(self, params: StoreParams):
        super().__init__(params)
        try:
            from pymilvus import MilvusClient
        except ImportError as exc:
            raise StoreError('the Milvus store needs pymilvus (pip install "mirec[milvus]")') from exc
        self.client = MilvusClient(params.address)

    def read_marker(self) -> dict[str, Any] | None:
        name = self.params.collection
        if not self.client.has_collection(name):
            return None
        text = self.client.describe_collection(name).get("properties", {}).get(MARKER_KEY)
        if text is None:
            raise StoreError(f"{self.where()}: exists and mirec did not create it; choose another collection")
        return json.loads(text)

    def drop(self) -> None:
        self.client.drop_collection(self.params.collection)

    def create(self, table: ItemTable, marker: dict[str, Any]) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("item_id", DataType.VARCHAR, max_length=max(1, int(max(map(len, table.item_ids)))))
        schema.add_field("category", DataType.INT64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=table.dim)
        index = self.client.prepare_index_params()
        p = self.params
        if p.index == "hnsw":
            index.add_index(
                "vector", index_type="HNSW", metric_type="IP", params={"M": p.m, "efConstruction": p.ef_construction}
            )
        else:
            index.add_index("vector", index_type="FLAT", metric_type="IP")
        self.client.create_collection(
            p.collection, schema=schema, index_params=index, properties={MARKER_KEY: json.dumps(marker)}
        )
        for start in range(0, len(table), INSERT_ROWS):
            stop = min(start + INSERT_ROWS, len(table))
            rows = [
                {"id": i + 1, "item_id": str(table.item_ids[i]), "category": int(table.categories[i]), "vector": v}
                for i, v in zip(range(start, stop), table.vectors[start:stop].tolist(), strict=True)
            ]
            self.client.insert(p.collection, rows)
        self.client.load_collection(p.collection)

    def search_ids(self, queries: np.ndarray, width: int) -> np.ndarray:
        params: dict[str, Any] = {"metric_type": "IP"}
        if self.params.index == "hnsw":
            params["params"] = {"ef": self.params.ef(width)}
        rows: list[list[int]] = []
        for start in range(0, len(queries), SEARCH_QUERIES):
            hits = self.client.search(
                self.params.collection,
                data=queries[start : start + SEARCH_QUERIES].tolist(),
                limit=width,
                anns_field="vector",
                search_params=params,
                output_fields=[],
            )
            rows += [[int(h["id"]) for h in row] for row in hits]
        return pad_ids(rows, width)

    def close(self) -> None:
        self.client.close()


__all__ = ["MilvusStore"]
