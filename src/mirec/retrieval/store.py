"""Vector databases as the item index of a served model: one contract, an adapter per engine.

A store holds one model version's item table (``id`` = mirec's item row, ``item_id``, the vector) in a collection
that mirec created and marked with the model version, dimension and row count. It answers the index contract of
:class:`mirec.serving.index.ItemIndex` (``search(queries [U, K, d], n, exclude) -> (scores, ids) [U, K, n]``): the
U x K interest vectors go to the engine in one batched call, its candidates are re-scored exactly from the
bundle's item table (so scores are comparable across a user's interests, as with Faiss) and the user's K lists
are merged by the evaluator's own :class:`mirec.eval.merge.ListMerge` (no database does that merge).

URIs (``mirec serve BUNDLE --store URI``)::

    milvus:///abs/path/items.db        Milvus Lite, embedded (a file)      milvus://host:19530   a Milvus server
    qdrant:///:memory:                 Qdrant local mode, in memory        qdrant://host:6333    a Qdrant server
    postgresql://user@host:5432/db     PostgreSQL with the pgvector extension

Options go in the query string: ``collection`` (default ``mirec_items``; the table name for PostgreSQL),
``index`` (``flat``: exact, the default; ``hnsw``), ``m``, ``ef_construction``, ``ef_search``.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from mirec.retrieval.base import StoreError, StoreParams, VectorStore, redact


def parse_store_uri(uri: str) -> tuple[str, StoreParams]:
    """``scheme://...?options`` -> (engine, params); see the module doc for the forms."""
    parts = urlsplit(uri)
    pairs = parse_qsl(parts.query)
    known = {"collection", "index", "m", "ef_construction", "ef_search"}
    options = {k: v for k, v in pairs if k in known}
    passed = [(k, v) for k, v in pairs if k not in known]  # PostgreSQL's own parameters (host=/socket/dir, sslmode)
    scheme = parts.scheme
    if scheme in ("milvus", "qdrant"):
        if passed:
            raise StoreError(f"store URI option {passed[0][0]!r}; known: {sorted(known)}")
        # milvus:///path (embedded, a file or folder) or milvus://host:port (a server)
        address = parts.path if not parts.netloc else f"http://{parts.netloc}"
        address = address.removeprefix("/") if address == "/:memory:" else address
        engine = scheme
    elif scheme in ("postgresql", "postgres"):
        query = "&".join(f"{k}={v}" for k, v in passed)
        address, engine = urlunsplit((parts.scheme, parts.netloc, parts.path, query, "")), "pgvector"
    else:
        raise StoreError(f"store URI {redact(uri)!r}: milvus://, qdrant:// or postgresql://")
    if not address:
        raise StoreError(f"store URI {redact(uri)!r}: no path or host")
    try:
        numbers = {k: int(options[k]) for k in ("m", "ef_construction", "ef_search") if k in options}
    except ValueError:
        raise StoreError(f"store URI {redact(uri)!r}: m, ef_construction and ef_search are integers") from None
    rest = {k: options[k] for k in ("collection", "index") if k in options}
    return engine, StoreParams(address, **rest, **numbers)  # type: ignore[arg-type]


def open_store(uri: str) -> VectorStore:
    """The adapter for a store URI (its client library is an optional extra: ``mirec[milvus|qdrant|pgvector]``)."""
    engine, params = parse_store_uri(uri)
    if engine == "milvus":
        from mirec.retrieval.milvus import MilvusStore as cls
    elif engine == "qdrant":
        from mirec.retrieval.qdrant import QdrantStore as cls
    else:
        from mirec.retrieval.pgvector import PgvectorStore as cls
    return cls(params)


def serve_from_store(serving: Any, uri: str) -> Any:
    """The same served bundle, its index a store. One collection per model version (``<collection>_<version>``):
    loaded with the bundle's item table unless it holds it already, checked, attached; a reload to a new version
    loads beside the old one and swaps, so no request ever meets a half-loaded table."""
    from dataclasses import replace

    from mirec.retrieval.table import ItemTable
    from mirec.serving.model import ServingModel

    version = str(serving.manifest.get("model_version") or "")
    if not re.fullmatch(r"[0-9a-f]{16}", version):
        raise StoreError("a store serves a bundle (mirec export), whose model version names the collection")
    store = open_store(uri)
    try:
        store.params = replace(store.params, collection=f"{store.params.collection}_{version}")
        store.load(ItemTable.of_serving(serving))
        store.attach(serving.index.item_table, version)
    except Exception:
        store.close()
        raise
    manifest = {**serving.manifest, "index_version": f"{store.engine}:{store.params.index}", "store": store.where()}
    return ServingModel(
        serving.model, serving.config, serving.item_original_ids, store, serving.item_categories, manifest
    )


__all__ = ["serve_from_store", "open_store", "parse_store_uri"]
