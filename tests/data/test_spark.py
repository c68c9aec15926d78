"""Spark (local[2]) against the embedded engine: the global context entry for entry (the paper's settings and
the ablations' switches) and the prepared folder (a sample of a shared log; illegal rows, ties, two files,
the k-core). Needs Java: without it the module is skipped with that reason."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from mirec.config import GraphConfig
from mirec.graph import build_cooccurrence, build_global_context
from tests.conftest import SHARED, random_dataset

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
        {},  # the paper's settings; below every switch at once: a zero hop weight, GIMIRec-IN and -INT
        {"hop_weights": [5.0, 0.0, 1.0], "count_pairs": False, "use_threshold": False, "self_pairs": False},
        {"l_time": 20.0, "a": 0.2, "b": 0.7},
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


def same_prepared(a_dir, b_dir) -> None:
    from mirec.data.dataset import load_dataset

    a, b = load_dataset(a_dir), load_dataset(b_dir)
    assert a.n_items == b.n_items
    for split in ("train", "valid", "test"):
        for attr in ("users", "indptr", "items", "timestamps", "history_len"):
            x, y = getattr(a.split(split), attr), getattr(b.split(split), attr)
            assert (x is None and y is None) or np.array_equal(x, y), (split, attr)
    assert np.array_equal(a.item_original_ids, b.item_original_ids)
    assert np.array_equal(a.user_original_ids, b.user_original_ids)
    assert (a.item_categories is None) == (b.item_categories is None)
    assert a.item_categories is None or np.array_equal(a.item_categories, b.item_categories)
    skip = ("read", "layout")
    assert {k: v for k, v in a.meta.items() if k not in skip} == {k: v for k, v in b.meta.items() if k not in skip}
    assert b.meta["read"]["engine"] == "spark" and b.meta["layout"] == b.meta["read"]["layout"]


@pytest.mark.parametrize("layout", ["arrays", "parquet"])
def test_spark_preparation_writes_the_embedded_folder_for_a_shared_log_sample(tmp_path, layout):
    import gzip

    source = SHARED / "datasets" / "amazon-beauty" / "interactions.tsv.gz"
    if not source.exists():
        pytest.skip(f"{source} missing: the shared datasets are not beside the repository")
    with gzip.open(source, "rt") as f:
        sample = "".join(next(f) for _ in range(12001))  # header + 12,000 rows
    log = tmp_path / "beauty-sample.tsv"
    log.write_text(sample)
    from mirec.data.prepare import prepare
    from mirec.data.spark_prepare import prepare_with_spark

    prepare(log, "csv", tmp_path / "embedded", name="sample")
    prepare_with_spark(log, "csv", tmp_path / "spark", name="sample", layout=layout)
    same_prepared(tmp_path / "embedded", tmp_path / "spark")
    if layout == "parquet":  # the executors wrote Parquet datasets; no per-interaction array passed the driver
        folder = tmp_path / "spark"
        assert (folder / "interactions" / "split=valid").is_dir() and (folder / "users").is_dir()
        assert not list(folder.glob("*.npy"))
        # the graph read by the executors from that folder equals the embedded build from the embedded folder
        from mirec.data.dataset import load_dataset

        embedded = build_global_context(load_dataset(tmp_path / "embedded"), GraphConfig()).to_scipy()
        spark = build_global_context(load_dataset(folder), GraphConfig(engine="spark")).to_scipy()
        assert embedded.nnz == spark.nnz and np.array_equal(embedded.indices, spark.indices)
        np.testing.assert_allclose(spark.data, embedded.data, rtol=2e-6)


def test_spark_preparation_matches_on_illegal_rows_ties_ms_timestamps_and_the_kcore(tmp_path):
    """Missing ids, non-numeric and non-positive timestamps, equal timestamps (input order decides), decimal
    millisecond timestamps, categories that change between an item's rows, two files, the iterative k-core,
    repeated (user, item, second) rows dropped or kept; both layouts."""
    from mirec.data.dataset import load_dataset
    from mirec.data.prepare import PrepareOptions, prepare
    from mirec.data.spark_prepare import prepare_with_spark

    rng = np.random.default_rng(0)
    lines_a, lines_b = ["user,item,timestamp,category"], ["user,item,timestamp,category"]
    for row in range(900):
        user, item = f"u{rng.integers(0, 60)}", f"i{rng.integers(0, 50)}"
        stamp = str(1_500_000_000_000 + int(rng.integers(0, 20)) * 1000)  # milliseconds, many ties
        if row % 97 == 0:
            stamp = "not-a-time"
        elif row % 89 == 0:
            stamp = "-5"
        elif row % 83 == 0:
            stamp = f"{stamp}.75"
        if row % 101 == 0:
            user = ""
        category = f"c{rng.integers(0, 4)}" if row % 7 else "10"  # numeric and text categories mixed
        (lines_a if row % 3 else lines_b).append(f"{user},{item},{stamp},{category}")
    (tmp_path / "a.csv").write_text("\n".join(lines_a) + "\n")
    (tmp_path / "b.csv").write_text("\n".join(lines_b) + "\n")
    files = [tmp_path / "a.csv", tmp_path / "b.csv"]
    for iterative, dedupe, layout in ((False, False, "arrays"), (True, True, "parquet"), (False, True, "arrays")):
        options = PrepareOptions(min_item_count=8, min_user_count=8, iterative_kcore=iterative, drop_duplicates=dedupe)
        out = f"k{int(iterative)}{int(dedupe)}"
        prepare(files, "csv", tmp_path / f"{out}-embedded", name="edge", options=options, on_bad_rows="skip")
        prepare_with_spark(
            files, "csv", tmp_path / f"{out}-spark", name="edge", options=options, on_bad_rows="skip", layout=layout
        )
        same_prepared(tmp_path / f"{out}-embedded", tmp_path / f"{out}-spark")
        spark = load_dataset(tmp_path / f"{out}-spark")
        assert spark.item_categories is not None
        dropped = spark.meta["clean"].get("dropped_duplicates")
        assert dropped > 0 if dedupe else dropped is None


def test_spark_reads_a_partitioned_parquet_folder_as_the_embedded_engine(tmp_path):
    from mirec.data.prepare import PrepareOptions, prepare
    from mirec.data.spark_prepare import prepare_with_spark
    from tests.data.test_prepare import write_partitioned_log

    partitioned, _ = write_partitioned_log(tmp_path)
    prepare(partitioned, "parquet", tmp_path / "embedded", name="p", options=PrepareOptions(2, 2))
    prepare_with_spark(partitioned, "parquet", tmp_path / "spark", name="p", options=PrepareOptions(2, 2))
    same_prepared(tmp_path / "embedded", tmp_path / "spark")
