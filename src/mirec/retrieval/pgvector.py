"""PostgreSQL with the pgvector extension (``pip install "mirec[pgvector]"``; a server with pgvector installed):
``postgresql://user@host:5432/db?collection=TABLE``. Negative inner product (``<#>``); no index (exact) or HNSW
(``vector_ip_ops``). The table is loaded with ``COPY ... FROM STDIN (FORMAT BINARY)``; the marker is the table's
comment."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from mirec.retrieval.base import MARKER_KEY, StoreError, StoreParams, VectorStore, pad_ids
from mirec.retrieval.table import ItemTable

SEARCH_QUERIES = 512  # query vectors per statement


class PgvectorStore(VectorStore):
    engine = "pgvector"

    def __init__(self, params: StoreParams):
        super().__init__(params)
        try:
            import psycopg
            from pgvector.psycopg import register_vector
        except ImportError as exc:
            raise StoreError('the pgvector store needs psycopg and pgvector (pip install "mirec[pgvector]")') from exc
        try:
            self.conn = psycopg.connect(params.address, autocommit=True)
        except psycopg.OperationalError as exc:
            raise StoreError(f"{self.where()}: cannot connect ({' '.join(str(exc).split())})") from None
        self.conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        register_vector(self.conn)

    @property
    def table(self):
        from psycopg import sql

        return sql.Identifier(self.params.collection)

    def read_marker(self) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL, obj_description(to_regclass(%s), 'pg_class')",
            (self.params.collection, self.params.collection),
        ).fetchone()
        if not row[0]:
            return None
        try:
            marker = json.loads(row[1] or "{}").get(MARKER_KEY)
        except ValueError:
            marker = None
        if marker is None:
            raise StoreError(f"{self.where()}: exists and mirec did not create it; choose another table")
        return marker

    def drop(self) -> None:
        from psycopg import sql

        self.conn.execute(sql.SQL("DROP TABLE {}").format(self.table))

    def create(self, table: ItemTable, marker: dict[str, Any]) -> None:
        from psycopg import sql

        p, t = self.params, self.table
        with self.conn.transaction():  # the table appears whole or not at all
            self.conn.execute(
                sql.SQL(
                    "CREATE TABLE {} (id bigint PRIMARY KEY, item_id text NOT NULL, category bigint NOT NULL, "
                    "embedding vector({}) NOT NULL)"
                ).format(t, sql.Literal(table.dim))
            )
            comment = json.dumps({MARKER_KEY: marker})
            self.conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(t, sql.Literal(comment)))
            with self.conn.cursor() as cursor:
                copy = sql.SQL("COPY {} (id, item_id, category, embedding) FROM STDIN WITH (FORMAT BINARY)")
                with cursor.copy(copy.format(t)) as writer:
                    writer.set_types(["int8", "text", "int8", "vector"])
                    for i in range(len(table)):
                        writer.write_row((i + 1, str(table.item_ids[i]), int(table.categories[i]), table.vectors[i]))
            if p.index == "hnsw":
                self.conn.execute(
                    sql.SQL(
                        "CREATE INDEX ON {} USING hnsw (embedding vector_ip_ops) WITH (m = {}, ef_construction = {})"
                    ).format(t, sql.Literal(p.m), sql.Literal(p.ef_construction))
                )
        self.conn.execute(sql.SQL("ANALYZE {}").format(t))

    def search_ids(self, queries: np.ndarray, width: int) -> np.ndarray:
        from psycopg import sql

        query = sql.SQL(
            "SELECT q.ord, c.id FROM unnest(%s::vector[]) WITH ORDINALITY AS q(v, ord) "
            "CROSS JOIN LATERAL (SELECT id, embedding <#> q.v AS distance FROM {} "
            "ORDER BY embedding <#> q.v LIMIT %s) AS c ORDER BY q.ord, c.distance"
        ).format(self.table)
        rows: list[list[int]] = [[] for _ in range(len(queries))]
        with self.conn.transaction():
            if self.params.index == "hnsw":  # pgvector returns at most ef_search rows per index scan
                ef = max(self.params.ef(width), width)
                self.conn.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(ef)))
            for start in range(0, len(queries), SEARCH_QUERIES):
                chunk = [vector_literal(q) for q in queries[start : start + SEARCH_QUERIES]]
                for ordinal, item in self.conn.execute(query, (chunk, width)).fetchall():
                    rows[start + ordinal - 1].append(item)
        return pad_ids(rows, width)

    def close(self) -> None:
        self.conn.close()


def vector_literal(vector: np.ndarray) -> str:
    """pgvector's text form (float64 reprs of float32 values parse back to the same float32)."""
    return "[" + ",".join(map(repr, vector.tolist())) + "]"


__all__ = ["PgvectorStore"]
