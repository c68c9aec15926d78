"""Item side features: reading and encoding the item table, catalogue-only and held-out cold items."""

from __future__ import annotations

import gzip

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mirec.data.dataset import load_dataset
from mirec.data.features import FeatureSpec, encode_item_table, load_item_features, read_item_table
from mirec.data.prepare import ItemTableOptions, prepare

SPECS = [FeatureSpec("brand", "categorical"), FeatureSpec("tags", "multi"), FeatureSpec("vec", "dense")]


def write_table(path, rows):
    path.write_text("item_id\tbrand\ttags\tvec\n" + "".join("\t".join(r) + "\n" for r in rows))
    return path


def test_encoding_by_hand(tmp_path):
    table = read_item_table(
        write_table(tmp_path / "items.tsv", [("a", "b1", "x|y", "1|2"), ("b", "b2", "y", ""), ("c", "b1", "", "3|4")]),
        SPECS,
    )
    features = encode_item_table(table, {"a": 1, "b": 2, "c": 3, "d": 4}, n_items=4)
    brand, tags, vec = (features.get(n) for n in ("brand", "tags", "vec"))
    assert brand.vocab == ["b1", "b2"]  # by descending frequency
    assert tags.vocab == ["y", "x"]
    # item 0 (padding) and item 4 (no row) hold the single value 0 = missing; c has no tags
    assert brand.indptr.tolist() == [0, 1, 2, 3, 4, 5] and brand.values.tolist() == [0, 1, 2, 1, 0]
    assert tags.indptr.tolist() == [0, 1, 3, 4, 5, 6] and tags.values.tolist() == [0, 2, 1, 1, 0, 0]
    assert vec.vectors.tolist() == [[0, 0], [1, 2], [0, 0], [3, 4], [0, 0]]
    assert features.report["items_with_row"] == 3 and features.report["items_without_row"] == 1
    # a bundle's vocabulary is kept: an unseen value counts as missing, known ones keep their numbers
    new = read_item_table(write_table(tmp_path / "new.tsv", [("e", "b2", "z|x", "5|6")]), SPECS)
    again = encode_item_table(new, {"e": 1}, n_items=1, like=features)
    assert again.get("brand").values.tolist() == [0, 2] and again.get("tags").values.tolist() == [0, 2]
    assert again.report["tags_unseen_values"] == 1


def test_save_load_and_reorder(tmp_path):
    table = read_item_table(
        write_table(tmp_path / "items.tsv", [("a", "b1", "x|y", "1|2"), ("b", "b2", "y", "3|4")]), SPECS
    )
    features = encode_item_table(table, {"a": 1, "b": 2}, n_items=2)
    features.save(tmp_path)
    loaded = load_item_features(tmp_path)
    assert loaded.names == ["brand", "tags", "vec"] and loaded.get("tags").vocab == ["y", "x"]
    swapped = loaded.rows(np.array([0, 2, 1]))
    assert swapped.get("tags").values.tolist() == [0, 1, 2, 1]
    assert swapped.get("vec").vectors.tolist() == [[0, 0], [3, 4], [1, 2]]


def test_parquet_lists(tmp_path):
    path = tmp_path / "items.parquet"
    pq.write_table(
        pa.table(
            {
                "item_id": [7, 8],
                "tags": pa.array([["x", "y"], None], type=pa.list_(pa.string())),
                "vec": pa.array([[1.0, 2.0], [3.0, 4.0]], type=pa.list_(pa.float32(), 2)),
            }
        ),
        path,
    )
    table = read_item_table(path, [FeatureSpec("tags", "multi"), FeatureSpec("vec", "dense")])
    assert table.ids == ["7", "8"] and table.columns["tags"] == [["x", "y"], []]
    assert table.columns["vec"][1].tolist() == [3.0, 4.0]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [("a", "b", "x", "1|2"), ("b", "b", "x", "1|2|3")],
            r"items\.tsv: line 3: feature 'vec' has 3 values, expected 2",
        ),
        (
            [("a", "b", "x", "1|2"), ("b", "b", "x", "1|oops")],
            r"items\.tsv: line 3: feature 'vec' is not a list of numbers",
        ),
        ([("a", "b", "x", "1|2"), ("a", "b", "x", "1|2")], r"items\.tsv: line 3: item 'a' repeats line 2"),
        ([("a", "b", "x", "1|nan")], r"items\.tsv: line 2: feature 'vec' holds a NaN"),
    ],
)
def test_bad_tables_name_file_and_line(tmp_path, rows, message):
    with pytest.raises(ValueError, match=message):
        read_item_table(write_table(tmp_path / "items.tsv", rows), SPECS)


def test_bad_declarations(tmp_path):
    with pytest.raises(ValueError, match="no column"):
        read_item_table(write_table(tmp_path / "items.tsv", [("a", "b", "x", "1")]), [FeatureSpec("colour", "multi")])
    with pytest.raises(ValueError, match="NAME:KIND"):
        FeatureSpec.parse("brand")
    with pytest.raises(ValueError, match="kind 'text'"):
        FeatureSpec.parse("brand:text")
    with pytest.raises(ValueError, match="use letters"):
        FeatureSpec("../evil", "multi")


def log_and_table(tmp_path, n_users=60, n_items=30, seed=0):
    """A log over items i0..i{n_items-1} and an item table listing them plus two items never in the log."""
    rng = np.random.default_rng(seed)
    rows = ["user_id\titem_id\ttimestamp"]
    for user in range(n_users):
        for step in range(int(rng.integers(6, 12))):
            rows.append(f"u{user}\ti{int(rng.integers(0, n_items))}\t{1_300_000_000 + step * 86400}")
    (tmp_path / "log.tsv").write_text("\n".join(rows) + "\n")
    items = [(f"i{i}", f"b{i % 3}", f"t{i % 4}|t{i % 5}", f"{i}|1") for i in range(n_items)]
    items += [("new1", "b1", "t1", "9|9"), ("new2", "b9", "", "")]
    with gzip.open(tmp_path / "items.tsv.gz", "wt") as f:
        f.write("item_id\tbrand\ttags\tvec\n" + "".join("\t".join(r) + "\n" for r in items))
    return tmp_path / "log.tsv", tmp_path / "items.tsv.gz"


def test_prepare_with_items_and_cold_items(tmp_path):
    log, items = log_and_table(tmp_path)
    options = ItemTableOptions(items, tuple(SPECS), cold_fraction=0.2)
    prepare([log], "csv", tmp_path / "data", items=options, options=None, seed=5)
    data = load_dataset(tmp_path / "data")
    n_log = 30
    n_cold = round(0.2 * n_log)
    assert data.n_items == n_log + 2 and data.n_id_items == n_log - n_cold
    assert list(data.item_original_ids[-2:]) == ["new1", "new2"]  # table-only items last
    cold = np.arange(data.n_items + 1) > data.n_id_items
    assert not cold[data.train.items].any()  # cold items never in training sequences ...
    for split in (data.valid, data.test):
        assert not cold[split.items[split.history_mask()]].any()  # ... nor in the histories the model reads
    targets = np.concatenate([s.items[~s.history_mask()] for s in (data.valid, data.test)])
    assert cold[targets].any()  # ... but remain targets
    # features follow the renumbering: every item's brand is its original id's
    brand = data.item_features.get("brand")
    for item in range(1, data.n_items + 1):
        value = brand.values[brand.indptr[item]]
        original = data.item_original_ids[item]
        expected = "b9" if original == "new2" else ("b1" if original == "new1" else f"b{int(original[1:]) % 3}")
        assert brand.vocab[value - 1] == expected
    assert data.meta["item_table"]["cold_items"] == n_cold and data.meta["item_table"]["catalogue_only_items"] == 2
    # the same seed draws the same cold items; the user split is the one of a prepare without items
    prepare([log], "csv", tmp_path / "again", items=options, seed=5)
    assert np.array_equal(load_dataset(tmp_path / "again").item_original_ids, data.item_original_ids)
    prepare([log], "csv", tmp_path / "plain", seed=5)
    assert np.array_equal(load_dataset(tmp_path / "plain").test.users, data.test.users)


def test_prepare_without_cold_keeps_log_ids(tmp_path):
    log, items = log_and_table(tmp_path)
    prepare([log], "csv", tmp_path / "plain")
    prepare([log], "csv", tmp_path / "data", items=ItemTableOptions(items, (SPECS[1],)))
    plain, data = load_dataset(tmp_path / "plain"), load_dataset(tmp_path / "data")
    assert data.n_id_items == plain.n_items and data.n_items == plain.n_items + 2
    assert np.array_equal(data.item_original_ids[: plain.n_items + 1], plain.item_original_ids)
    assert np.array_equal(data.train.items, plain.train.items)
