"""The item table export: what Milvus, PostgreSQL and other systems load, exactly the vectors the model scores."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from mirec.retrieval import export_item_table, read_item_table
from mirec.tensors import load_tensors
from tests.conftest import HISTORIES, free_port, wait_until_healthy


def test_the_parquet_table_holds_the_bundles_vectors_ids_and_merge_rule(bundle, tmp_path):
    meta = export_item_table(bundle, tmp_path / "table")
    columns = pq.read_table(tmp_path / "table" / "items.parquet")
    assert columns.column_names == ["id", "item_id", "vector", "norm", "category"]
    vector_type = columns.schema.field("vector").type
    assert vector_type.list_size == meta["dim"] and str(vector_type.value_type) == "float"
    vectors = load_tensors(bundle / "item_vectors.safetensors")["item_vectors"][1:].numpy()
    table = read_item_table(tmp_path / "table")
    np.testing.assert_array_equal(table.vectors, vectors)  # the same float32 values, copied
    ids = pq.read_table(bundle / "items.parquet").column("original_id").to_pylist()
    assert table.item_ids.tolist() == ids and columns.column("id").to_pylist() == list(range(1, len(ids) + 1))
    np.testing.assert_allclose(columns.column("norm").to_numpy(), np.linalg.norm(vectors, axis=1), rtol=1e-6)
    manifest = json.loads((bundle / "manifest.json").read_text())
    written = json.loads((tmp_path / "table" / "vectors.json").read_text())
    assert written["metric"] == "inner_product" and written["model_version"] == manifest["model_version"]
    assert written["merge"]["num_interests"] == manifest["num_interests"] and "max" in written["merge"]["rule"]


def test_an_export_never_replaces_a_folder_it_did_not_write(bundle, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a mirec item table"):
        export_item_table(bundle, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    export_item_table(bundle, tmp_path / "table")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_item_table(bundle, tmp_path / "table", "csv")
    export_item_table(bundle, tmp_path / "table", "csv", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "table").iterdir()) == ["items.csv", "vectors.json"]


# the statements docs/serving.md gives for PostgreSQL + pgvector (psql's \copy is COPY ... FROM STDIN)
PG_CREATE = (
    "CREATE TABLE items (id bigint PRIMARY KEY, item_id text NOT NULL, embedding vector({dim}) NOT NULL, "
    "norm real, category bigint)"
)
PG_COPY = "COPY items (id, item_id, embedding, norm, category) FROM STDIN WITH (FORMAT csv, HEADER true)"
PG_TOP = "SELECT item_id FROM items ORDER BY embedding <#> %s::vector LIMIT 10"


def test_the_csv_table_loads_into_pgvector_with_the_documented_statements(bundle, tmp_path, postgres_uri):
    import psycopg

    meta = export_item_table(bundle, tmp_path / "table", "csv")
    table = read_item_table_from_bundle(bundle)
    with psycopg.connect(postgres_uri, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute("DROP TABLE IF EXISTS items")
        conn.execute(PG_CREATE.format(dim=meta["dim"]))
        with conn.cursor() as cursor, cursor.copy(PG_COPY) as copy:
            copy.write((tmp_path / "table" / "items.csv").read_bytes())
        query = np.random.default_rng(0).standard_normal(meta["dim"]).astype(np.float32)
        literal = "[" + ",".join(map(repr, query.tolist())) + "]"
        got = [row[0] for row in conn.execute(PG_TOP, (literal,)).fetchall()]
        conn.execute("DROP TABLE items")
    ids, vectors = table
    assert got == ids[np.argsort(-(vectors @ query), kind="stable")[:10]].tolist()


def read_item_table_from_bundle(bundle):
    vectors = load_tensors(bundle / "item_vectors.safetensors")["item_vectors"][1:].numpy()
    ids = np.array(pq.read_table(bundle / "items.parquet").column("original_id").to_pylist())
    return ids, vectors


def test_mirec_serve_with_a_store_answers_as_the_bundle(bundle, served, tmp_path):
    pytest.importorskip("pymilvus", reason="mirec[milvus] is not installed")
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "mirec", "serve", str(bundle), "--port", str(port)]
    command += ["--store", f"milvus://{tmp_path / 'items.db'}"]
    server = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE)
    try:
        wait_until_healthy(port, 120)
        for history in HISTORIES:
            answer = httpx.post(f"http://127.0.0.1:{port}/v1/recommend", json={"history": history, "n": 20}).json()
            expected = served.recommend([__import__("mirec").serving.model.RecommendRequest(history, n=20)])[0]
            assert [item["id"] for item in answer["items"]] == expected.items
        metadata = httpx.get(f"http://127.0.0.1:{port}/v1/metadata").json()
        assert metadata["manifest"]["index_version"] == "milvus:flat"
    finally:
        server.terminate()
        server.wait(30)
