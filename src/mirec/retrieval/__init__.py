"""Hand-offs to vector databases: a model's item table as files other systems load (:mod:`.table`), and
adapters that serve a bundle from Milvus, Qdrant or PostgreSQL + pgvector with mirec's own list merge
(:mod:`.store`)."""

from mirec.retrieval.base import StoreError, StoreParams, VectorStore
from mirec.retrieval.store import open_store, parse_store_uri, serve_from_store
from mirec.retrieval.table import ItemTable, export_item_table, is_item_table, merge_rule, read_item_table

__all__ = [
    "ItemTable",
    "export_item_table",
    "read_item_table",
    "is_item_table",
    "merge_rule",
    "VectorStore",
    "StoreParams",
    "StoreError",
    "open_store",
    "parse_store_uri",
    "serve_from_store",
]
