"""The item table of a trained model, as the systems outside mirec load it (``mirec export --format parquet|csv``).

A folder with ``vectors.json`` (what the table is: model, model version, dimension, the metric, the merge rule)
and one of:

- ``items.parquet``: ``id`` (int64, mirec's item row 1..n of this model version), ``item_id`` (original id),
  ``vector`` (fixed-size list of float32), ``norm`` (float32, |vector|), ``category`` (int64, -1 = none).
  Milvus ``bulk_import`` and most vector databases read it as is.
- ``items.csv``: the same columns with the vector as pgvector's text literal ``[x1,...,xd]``, for PostgreSQL's
  ``COPY ... FROM ... WITH (FORMAT csv, HEADER true)`` (docs/serving.md has the statements).

The vectors are the ones the model scores against (``output_embeddings()``: the global context folded in), so
the inner product of a user's interest vector with a row is the model's score. No vector database merges a
user's K result lists; :func:`mirec.retrieval.merge_rule` says how mirec does it, and a store adapter
(:mod:`mirec.retrieval.stores`) does it with the evaluator's own merge.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mirec.utils import atomic_directory, exclusive_lock, read_format_json

TABLE_FORMAT = 1
TABLE_META = "vectors.json"
TableFormat = Literal["parquet", "csv"]


@dataclass(frozen=True)
class ItemTable:
    """Rows 0..n-1 = mirec item ids 1..n: original ids, vectors [n, d] float32, categories (-1 = none)."""

    item_ids: np.ndarray
    vectors: np.ndarray
    categories: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def model_version(self) -> str:
        return str(self.meta.get("model_version", ""))

    def __len__(self) -> int:
        return len(self.item_ids)

    @classmethod
    def of_serving(cls, serving: Any) -> ItemTable:
        """The table of a :class:`mirec.serving.ServingModel` (a bundle or a run)."""
        vectors = serving.index.item_table[1:].numpy().astype(np.float32)
        categories = serving.item_categories
        categories = np.full(len(vectors), -1, np.int64) if categories is None else np.asarray(categories[1:])
        meta = {
            "table_format": TABLE_FORMAT,
            "created_by": "mirec",
            "model": serving.config.model.name,
            "model_version": serving.manifest.get("model_version"),
            "n_items": len(vectors),
            "dim": int(vectors.shape[1]),
            "metric": "inner_product",
            "merge": merge_rule(serving),
        }
        return cls(serving.item_original_ids[1:].astype(str), vectors, categories.astype(np.int64), meta)

    def arrow(self, vector_as_text: bool = False) -> pa.Table:
        """The table's columns (``vector_as_text``: pgvector's ``[x1,...]`` literal instead of a float list)."""
        flat = pa.array(np.ascontiguousarray(self.vectors).reshape(-1), pa.float32())
        vectors = pa.FixedSizeListArray.from_arrays(flat, self.dim)
        if vector_as_text:
            # float64 reprs of float32 values: pgvector parses them back to the same float32
            vectors = pa.array(["[" + ",".join(map(repr, row)) + "]" for row in self.vectors.tolist()])
        return pa.table(
            {
                "id": pa.array(np.arange(1, len(self) + 1, dtype=np.int64)),
                "item_id": pa.array(self.item_ids.astype(str)),
                "vector": vectors,
                "norm": pa.array(np.linalg.norm(self.vectors, axis=1).astype(np.float32)),
                "category": pa.array(self.categories.astype(np.int64)),
            }
        )


def merge_rule(serving: Any) -> dict[str, Any]:
    """How the K per-interest lists of a user become one list (what a client of a vector database must do)."""
    merge = serving.list_merge
    rule = "max: each item keeps its best score over the K interests, duplicates removed, sorted by that score"
    if merge.diversity_lambda > 0:
        rule = "ComiRec's greedy: item score minus diversity_lambda times its category's count in the list so far"
    out: dict[str, Any] = {
        "num_interests": int(serving.config.model.num_interests),
        "rule": rule,
        "diversity_lambda": float(merge.diversity_lambda),
        "per_interest_n": "the final list's n (each interest's top n is searched, then merged)",
    }
    if merge.reserved is not None:
        out["reserved"] = {"interests": [merge.reserved.start, merge.reserved.stop], "share": merge.share}
    return out


def export_item_table(
    source: str | Path,
    output: str | Path,
    fmt: TableFormat = "parquet",
    overwrite: bool = False,
    data: str | Path | None = None,
) -> dict[str, Any]:
    """Write the item table of a bundle or run folder into ``output`` (new, empty, or with ``overwrite`` an item
    table mirec wrote: its ``vectors.json`` is the marker); returns the metadata written."""
    from mirec.serving.bundle import load_serving

    output = Path(output)
    if output.exists():
        if not output.is_dir() or (any(output.iterdir()) and not is_item_table(output)):
            raise FileExistsError(f"{output}: exists and is not a mirec item table; choose a new or empty folder")
        if is_item_table(output) and not overwrite:
            raise FileExistsError(f"{output}: already holds an item table; pass --overwrite to replace it")
    table = ItemTable.of_serving(load_serving(source, data=data))  # data: a run's dataset, if it has moved
    meta = {**table.meta, "source": str(Path(source).resolve()), "files": [f"items.{fmt}"]}
    lock = output.resolve().parent / f".{output.name}.lock"
    with exclusive_lock(lock, f"item table {output}"), atomic_directory(output) as tmp:
        if fmt == "parquet":
            pq.write_table(table.arrow(), tmp / "items.parquet")
        else:
            pacsv.write_csv(table.arrow(vector_as_text=True), tmp / "items.csv")
        (tmp / TABLE_META).write_text(json.dumps(meta, indent=2))
    return meta


def is_item_table(path: str | Path) -> bool:
    try:
        return json.loads((Path(path) / TABLE_META).read_text()).get("created_by") == "mirec"
    except (OSError, ValueError, AttributeError):
        return False


def read_item_table(folder: str | Path) -> ItemTable:
    """An item table folder written by :func:`export_item_table` (Parquet)."""
    folder = Path(folder)
    meta = read_format_json(folder / TABLE_META, "table_format", TABLE_FORMAT, "missing; not a mirec item table")
    columns = pq.read_table(folder / "items.parquet")
    vectors = columns.column("vector").combine_chunks().flatten().to_numpy().reshape(len(columns), -1)
    return ItemTable(
        columns.column("item_id").to_numpy(zero_copy_only=False).astype(str),
        np.ascontiguousarray(vectors, dtype=np.float32),
        columns.column("category").to_numpy(),
        meta,
    )


__all__ = ["ItemTable", "export_item_table", "read_item_table", "is_item_table", "merge_rule", "TABLE_META"]
