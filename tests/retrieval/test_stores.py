"""Vector databases as the served index, against the real engines: exact (flat) stores return exactly the
bundle's exact top-n, approximate ones overlap it; a store never touches a collection mirec did not create."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mirec.retrieval import StoreError, open_store, parse_store_uri, serve_from_store
from mirec.serving.index import ItemIndex, overlap
from mirec.serving.model import RecommendRequest
from tests.conftest import HISTORIES
from tests.retrieval.conftest import padded, synthetic_table

pytestmark = pytest.mark.usefixtures("one_thread")


def same_top_n(found: torch.Tensor, exact_ids: torch.Tensor, exact_scores: torch.Tensor, tol: float = 1e-4) -> None:
    """Every row of ``found`` holds the exact top n, up to ties: an item may differ only where its exact score is
    within ``tol`` of the n-th (two engines' float sums can order near-ties differently)."""
    for got, ids, scores in zip(
        found.reshape(-1, found.shape[-1]),
        exact_ids.reshape(-1, exact_ids.shape[-1]),
        exact_scores.reshape(-1, exact_scores.shape[-1]),
        strict=True,
    ):
        missing = set(ids.tolist()) - set(got.tolist())
        boundary = float(scores[-1])
        for item in missing:
            assert float(scores[ids == item][0]) - boundary <= tol, f"item {item} of the exact top n is missing"


def test_a_flat_store_returns_the_exact_top_50_of_every_interest(store_uri):
    table = synthetic_table()
    store = open_store(store_uri)
    try:
        assert store.load(table)["loaded"] is True
        store.attach(padded(table), "v1")
        queries = torch.from_numpy(np.random.default_rng(1).standard_normal((25, 4, table.dim)).astype(np.float32))
        exact_scores, exact_ids = ItemIndex(padded(table)).search(queries, 50)
        scores, ids = store.search(queries, 50)
        same_top_n(ids, exact_ids, exact_scores)
        torch.testing.assert_close(scores, exact_scores, rtol=1e-5, atol=1e-5)  # re-scored from the same table
        excluded = [exact_ids[u, 0, :3].numpy() for u in range(25)]  # each user's 3 best of interest 0
        _, kept = store.search(queries, 50, excluded)
        for user, banned in enumerate(excluded):
            assert not np.isin(kept[user].numpy(), banned).any()
    finally:
        store.close()


def test_an_hnsw_store_overlaps_exact_search(store_uri):
    if store_uri.startswith("qdrant://"):
        pytest.skip("Qdrant's local mode has no HNSW (every search is exact); a Qdrant server builds one")
    table = synthetic_table()
    store = open_store(f"{store_uri}{'&' if '?' in store_uri else '?'}index=hnsw&m=16&ef_construction=100")
    try:
        store.load(table)
        store.attach(padded(table), "v1")
        queries = torch.from_numpy(np.random.default_rng(2).standard_normal((25, 4, table.dim)).astype(np.float32))
        exact_ids = ItemIndex(padded(table)).search(queries, 50)[1]
        assert overlap(store.search(queries, 50)[1], exact_ids) >= 0.9
    finally:
        store.close()


def test_a_store_never_replaces_a_collection_mirec_did_not_make_nor_another_model_silently(store_uri):
    table = synthetic_table()
    store = open_store(store_uri)
    try:
        store.load(table)
        assert store.load(table)["loaded"] is False  # the same table again: nothing to do
        newer = synthetic_table(seed=5, version="v2")
        with pytest.raises(StoreError, match="holds mirec table"):
            store.load(newer)
        with pytest.raises(StoreError, match="the model needs"):
            store.attach(padded(newer), "v2")
        assert store.load(newer, replace=True)["loaded"] is True
        store.attach(padded(newer), "v2")
        store.drop()
        make_foreign_collection(store)
        with pytest.raises(StoreError, match="mirec did not create it"):
            store.load(table, replace=True)
        assert foreign_collection_intact(store)
    finally:
        store.close()


def make_foreign_collection(store) -> None:
    """A collection of the same name that somebody else made (no mirec marker), with one row."""
    name = store.params.collection
    if store.engine == "milvus":
        store.client.create_collection(name, dimension=4)
        store.client.insert(name, [{"id": 7, "vector": [1.0, 0.0, 0.0, 0.0]}])
    elif store.engine == "qdrant":
        from qdrant_client import models

        store.client.create_collection(name, vectors_config=models.VectorParams(size=4, distance=models.Distance.DOT))
        store.client.upsert(name, [models.PointStruct(id=7, vector=[1.0, 0.0, 0.0, 0.0])])
    else:
        store.conn.execute(f"CREATE TABLE {name} (id bigint); INSERT INTO {name} VALUES (7)")


def foreign_collection_intact(store) -> bool:
    name = store.params.collection
    if store.engine == "milvus":
        return store.client.query(name, filter="id >= 0", output_fields=["id"])[0]["id"] == 7
    if store.engine == "qdrant":
        return store.client.count(name).count == 1
    return store.conn.execute(f"SELECT id FROM {name}").fetchall() == [(7,)]


def test_a_bundle_served_from_a_store_answers_as_from_its_own_index(store_uri, served, data_dir):
    from mirec.data.dataset import load_dataset
    from mirec.serving.bundle import validation_interests

    from_store = serve_from_store(served, store_uri)
    try:
        interests = validation_interests(served.model, load_dataset(data_dir), served.config, max_users=40)
        exact_scores, exact_ids = served.index.search(interests, 50)
        same_top_n(from_store.index.search(interests, 50)[1], exact_ids, exact_scores)  # validation users, top 50
        requests = [RecommendRequest(history, n=50, exclude_history=True) for history in HISTORIES]
        for got, expected in zip(from_store.recommend(requests), served.recommend(requests), strict=True):
            assert got.items == expected.items and got.interests == expected.interests
            assert got.scores == pytest.approx(expected.scores, rel=1e-5, abs=1e-6)
        assert from_store.manifest["store"].startswith(from_store.index.engine)
    finally:
        from_store.index.close()


def test_qdrant_on_disk_is_refused_because_it_would_unpickle(tmp_path):
    pytest.importorskip("qdrant_client", reason="mirec[qdrant] is not installed")
    with pytest.raises(StoreError, match="pickle"):
        open_store(f"qdrant://{tmp_path / 'q'}")
    assert not (tmp_path / "q").exists()


def test_store_uris_are_parsed_and_wrong_ones_named():
    engine, params = parse_store_uri("milvus:///tmp/a.db?collection=beauty&index=hnsw&ef_search=64")
    assert (engine, params.address, params.collection, params.index, params.ef_search) == (
        "milvus",
        "/tmp/a.db",
        "beauty",
        "hnsw",
        64,
    )
    assert parse_store_uri("qdrant://localhost:6333")[1].address == "http://localhost:6333"
    assert parse_store_uri("qdrant:///:memory:")[1].address == ":memory:"
    engine, params = parse_store_uri("postgresql://u:secret@/db?host=/run/pg&collection=t")
    assert (
        engine == "pgvector" and params.address == "postgresql://u:secret@/db?host=/run/pg" and params.collection == "t"
    )
    for wrong, message in [
        ("redis://x", "milvus://, qdrant:// or postgresql://"),
        ("milvus:///a.db?colection=x", "store URI option 'colection'"),
        ("qdrant:///q?collection=a;drop", "letters, digits and _"),
        ("milvus:///a.db?index=ivf", "flat or hnsw"),
        ("milvus:///a.db?m=many", "are integers"),
    ]:
        with pytest.raises(StoreError, match=message):
            parse_store_uri(wrong)
    with pytest.raises(StoreError) as caught:
        parse_store_uri("redis://u:secret@host")
    assert "secret" not in str(caught.value)
