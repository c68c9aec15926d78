"""The global context built by Spark (local[2]) equals the embedded build entry for entry, for the paper's
settings and the ablations' switches. Needs Java: without it the module is skipped with that reason."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from mirec.config import GraphConfig
from mirec.graph.gce import build_cooccurrence, build_global_context
from tests.conftest import random_dataset

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java (none on PATH)")


@pytest.fixture(scope="module")
def sequences():
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 15, size=60)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    items = rng.integers(1, 41, size=indptr[-1])
    items[5] = items[4]  # a self-pair at hop 1
    days = np.concatenate([np.sort(rng.uniform(0, 200, size=n)) for n in lengths])
    return indptr, items, days


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"l_time": 20.0, "hop_weights": [5.0, 0.0, 1.0]},
        {"count_pairs": False},
        {"use_threshold": False, "self_pairs": False, "a": 0.2, "b": 0.7},
    ],
)
def test_spark_builds_the_embedded_matrix(sequences, options):
    from mirec.graph.spark import build_cooccurrence_spark

    indptr, items, days = sequences
    config = GraphConfig(**options)
    embedded = build_cooccurrence(indptr, items, days, 40, config)
    spark = build_cooccurrence_spark(indptr, items, days, 40, config)
    assert spark.shape == embedded.shape and spark.nnz == embedded.nnz
    assert np.array_equal(spark.indptr, embedded.indptr) and np.array_equal(spark.indices, embedded.indices)
    np.testing.assert_allclose(spark.data, embedded.data, rtol=2e-6)


def test_a_dataset_graph_by_spark_equals_the_embedded_one():
    dataset = random_dataset(n_users=50, n_items=30, seed=4)
    embedded = build_global_context(dataset, GraphConfig())
    spark = build_global_context(dataset, GraphConfig(engine="spark"))
    a, b = embedded.to_scipy(), spark.to_scipy()
    assert a.nnz == b.nnz and np.array_equal(a.indices, b.indices)
    np.testing.assert_allclose(b.data, a.data, rtol=2e-6)
