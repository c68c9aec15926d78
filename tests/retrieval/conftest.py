"""The real engines: Milvus Lite and Qdrant local mode in the process, a PostgreSQL server with pgvector
(``MIREC_TEST_POSTGRES`` = a conninfo to use one already running, else one started here by pgserver's bundled
PostgreSQL 16 + pgvector on a Unix socket, stopped at the end)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from mirec.retrieval import ItemTable


def synthetic_table(n: int = 2000, dim: int = 16, seed: int = 0, version: str = "v1") -> ItemTable:
    """Vectors with log-normal norms (a trained table's spread), ids "item-<row>"."""
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((n, dim)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    vectors = directions * rng.lognormal(0.0, 0.4, (n, 1)).astype(np.float32)
    meta = {"model_version": version, "dim": dim, "n_items": n}
    return ItemTable(np.array([f"item-{i}" for i in range(1, n + 1)]), vectors, rng.integers(0, 5, n), meta)


def padded(table: ItemTable) -> torch.Tensor:
    """The [n + 1, d] item table a model scores against (row 0 padding)."""
    return torch.cat([torch.zeros(1, table.dim), torch.from_numpy(table.vectors)])


@pytest.fixture(scope="session")
def postgres_uri(tmp_path_factory):
    given = os.environ.get("MIREC_TEST_POSTGRES")
    if given:
        yield given
        return
    pytest.importorskip("psycopg", reason="mirec[pgvector] is not installed")
    pgserver = pytest.importorskip("pgserver", reason="no PostgreSQL: set MIREC_TEST_POSTGRES or install pgserver")
    server = pgserver.get_server(tmp_path_factory.mktemp("postgres"), cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture(params=["milvus", "qdrant", "pgvector"])
def store_uri(request, tmp_path):
    """A fresh, empty store of each engine (its own file, folder or table name)."""
    engine = request.param
    if engine == "milvus":
        pytest.importorskip("pymilvus", reason="mirec[milvus] is not installed")
        return f"milvus://{tmp_path / 'items.db'}"
    if engine == "qdrant":
        pytest.importorskip("qdrant_client", reason="mirec[qdrant] is not installed")
        return "qdrant:///:memory:"
    base = request.getfixturevalue("postgres_uri")
    table = f"items_{abs(hash(str(tmp_path))) % 10**9}"
    return f"{base}{'&' if '?' in base else '?'}collection={table}"
