"""prepare: cleaning, k-core filtering, split, popularity remap without target leaks, atomic save."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from mirec.data import dataset as dataset_module
from mirec.data.dataset import load_dataset
from mirec.data.prepare import (
    EmptyDatasetError,
    PrepareOptions,
    bundled_dataset,
    kcore_filter,
    prepare,
    prepare_log,
)
from mirec.data.readers import Interactions, from_arrays
from mirec.data.synthetic import synthetic_log, write_synthetic_csv
from tests import conftest

SHARED = conftest.SHARED / "datasets"
COMIREC_SPLIT = SHARED / "amazon-grocery" / "comirec-split"
FIXTURES = conftest.FIXTURES


def log_of(triples, category=None):
    user, item, ts = zip(*triples, strict=True)
    return from_arrays(np.array(user), np.array(item), np.array(ts), None if category is None else np.array(category))


def presplit_log(sequences: dict[str, tuple[int, list[str]]]) -> Interactions:
    """user -> (split code, items at times 1, 2, ...)."""
    user, item, ts, split = [], [], [], []
    for u, (s, items) in sequences.items():
        for t, i in enumerate(items, start=1):
            user.append(u), item.append(i), ts.append(t), split.append(s)
    table = pa.table(
        {"user": user, "item": item, "timestamp": pa.array(ts, pa.int64()), "split": pa.array(split, pa.int8())}
    )
    return Interactions(table, {"format": "test"})


def sequences_by_original(ds) -> dict[str, list[str]]:
    out = {}
    for name in ("train", "valid", "test"):
        split = ds.split(name)
        for row, u in enumerate(split.users):
            items, _ = split.sequence(row)
            out[ds.user_original_ids[u]] = [ds.item_original_ids[i] for i in items]
    return out


# ------------------------------------------------------------------------------------------- filtering


def slow_filter(triples, min_item, min_user, iterative):
    rows = list(triples)
    while True:
        counts = Counter(i for _, i, _ in rows)
        rows = [r for r in rows if counts[r[1]] >= min_item]
        ucounts = Counter(u for u, _, _ in rows)
        rows = [r for r in rows if ucounts[r[0]] >= min_user]
        counts = Counter(i for _, i, _ in rows)
        if not iterative or all(counts[r[1]] >= min_item for r in rows):
            return rows


HAND = [
    ("u1", "a", 1),
    ("u1", "b", 2),
    ("u2", "a", 1),
    ("u2", "b", 2),
    ("u3", "e", 1),
    ("u3", "c", 2),
    ("u4", "e", 1),
    ("u4", "f", 2),
    ("u4", "f", 3),
]


def test_single_pass_vs_iterative_kcore_hand_built():
    options = PrepareOptions(min_item_count=2, min_user_count=2, split_ratios=(0.34, 0.33, 0.33))
    single = prepare_log(log_of(HAND), options=options)
    # c (1 row) goes; u3 is left with [e] and goes; e then has 1 row but stays in a single pass.
    assert sequences_by_original(single) == {"u1": ["a", "b"], "u2": ["a", "b"], "u4": ["e", "f", "f"]}
    options.iterative_kcore = True
    core = prepare_log(log_of(HAND), options=options)
    assert sequences_by_original(core) == {"u1": ["a", "b"], "u2": ["a", "b"], "u4": ["f", "f"]}
    assert core.meta["clean"]["filter"]["passes"] == 2
    assert core.meta["clean"]["dropped_by_filter"] == 3


@pytest.mark.parametrize("iterative", [False, True])
def test_kcore_filter_matches_slow_reference(iterative):
    rng = np.random.default_rng(3)
    user = rng.integers(0, 60, 800)
    item = rng.zipf(1.6, 800) % 90
    mask, _ = kcore_filter(user, item, 4, 5, iterative)
    triples = list(zip(user.tolist(), item.tolist(), range(800), strict=True))
    expected = slow_filter(triples, 4, 5, iterative)
    assert [t for t, m in zip(triples, mask, strict=True) if m] == expected


def test_empty_after_filter_is_a_clear_error(tmp_path):
    with pytest.raises(EmptyDatasetError, match=r"nothing left after the filter \(min_item_count=5"):
        prepare_log(log_of(HAND))
    out = tmp_path / "out"
    with pytest.raises(EmptyDatasetError):
        prepare([FIXTURES / "ratings.csv"], "movielens-csv", out)
    assert not out.exists() and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------- cleaning


def test_illegal_timestamps_dropped_and_counted(tmp_path):
    path = tmp_path / "log.tsv"
    lines = ["user_id\titem_id\ttimestamp"]
    lines += [f"u{u}\ti{i}\t{1000 + u * 10 + i}" for u in range(3) for i in range(3)]
    lines += ["u0\ti0\tabc", "u1\ti1\t0", "u2\ti2\t-5", "u0\ti1\t99", "u1\ti2\t5000", "u2\ti0\t"]
    path.write_text("\n".join(lines) + "\n")
    options = PrepareOptions(
        min_item_count=1, min_user_count=1, min_timestamp=100, max_timestamp=4000, split_ratios=(0.34, 0.33, 0.33)
    )
    report = prepare([path], "csv", tmp_path / "out", options=options)
    # abc, empty -> non-numeric; 0, -5 -> <= 0; 99 < min; 5000 > max
    assert report.clean["dropped_illegal_timestamp"] == 6
    assert report.read["non_numeric_timestamps"] == 2
    assert report.n_interactions == 9
    ds = load_dataset(tmp_path / "out")
    ts = np.concatenate([ds.split(s).timestamps for s in ("train", "valid", "test")])
    assert ts.min() >= 1000 and ts.max() <= 1022


def test_stable_time_sort_keeps_input_order_on_ties():
    triples = [("u", "x", 5), ("u", "y", 3), ("u", "z", 5), ("u", "w", 3), ("u", "v", 4)]
    # three users with the same pattern (each split needs a user)
    many = [(f"{u}{k}", i, t) for k in range(3) for u, i, t in triples]
    ds = prepare_log(log_of(many), options=PrepareOptions(1, 1, split_ratios=(0.34, 0.33, 0.33)))
    for seq in sequences_by_original(ds).values():
        assert seq == ["y", "w", "v", "x", "z"]


# ------------------------------------------------------------------------------------------- split


@pytest.fixture(scope="module")
def synthetic():
    log = synthetic_log(2000, 800, 40000, seed=5, n_clusters=20)
    return from_arrays(log.user, log.item, log.timestamp, log.category)


def test_split_invariants(synthetic):
    ds = prepare_log(synthetic, seed=1230)
    n_users = len(ds.user_original_ids)
    sizes = [len(ds.split(s)) for s in ("train", "valid", "test")]
    assert sizes == [int(n_users * 0.8), int(n_users * 0.9) - int(n_users * 0.8), n_users - int(n_users * 0.9)]
    users = [set(ds.split(s).users.tolist()) for s in ("train", "valid", "test")]
    assert set.union(*users) == set(range(n_users)) and sum(map(len, users)) == n_users
    for s in ("valid", "test"):
        split = ds.split(s)
        assert np.array_equal(split.history_len, np.array([int(0.8 * n) for n in split.lengths.tolist()]))
    assert ds.train.history_len is None
    for s in ("train", "valid", "test"):
        split = ds.split(s)
        starts = np.repeat(split.indptr[:-1], split.lengths)
        inner = np.arange(len(split.items)) != starts
        assert (np.diff(split.timestamps)[inner[1:]] >= 0).all()  # time-sorted within each user
        assert split.items.min() >= 1 and split.items.max() <= ds.n_items
        assert split.lengths.min() >= 5
    same = prepare_log(synthetic, seed=1230)
    other = prepare_log(synthetic, seed=7)
    assert all(np.array_equal(ds.split(s).users, same.split(s).users) for s in ("train", "valid", "test"))
    assert not np.array_equal(ds.test.users, other.test.users)


def test_sequences_match_slow_reference(synthetic):
    ds = prepare_log(synthetic)
    users, items, ts = synthetic.column("user"), synthetic.column("item"), synthetic.column("timestamp")
    counts = Counter(items.tolist())
    per_user = defaultdict(list)
    for n, (u, i, t) in enumerate(zip(users.tolist(), items.tolist(), ts.tolist(), strict=True)):
        if counts[i] >= 5:
            per_user[u].append((t, n, i))
    expected = {u: [i for _, _, i in sorted(v)] for u, v in per_user.items() if len(v) >= 5}
    assert sequences_by_original(ds) == expected
    # categories: item -> its cluster, ints 0..C-1 in numeric order of the original strings
    cats = dict(zip(items.tolist(), synthetic.column("category").tolist(), strict=True))
    used = sorted({int(cats[ds.item_original_ids[i]]) for i in range(1, ds.n_items + 1)})
    for i in range(1, ds.n_items + 1):
        assert ds.item_categories[i] == used.index(int(cats[ds.item_original_ids[i]]))


def test_popularity_order_from_training_parts_only(synthetic):
    ds = prepare_log(synthetic)
    counts = Counter()
    for s in ("train", "valid", "test"):
        split = ds.split(s)
        for row in range(len(split)):
            items, _ = split.sequence(row)
            keep = len(items) if s == "train" else int(split.history_len[row])
            counts.update(items[:keep].tolist())
    popularity = [counts.get(i, 0) for i in range(1, ds.n_items + 1)]
    assert popularity == sorted(popularity, reverse=True)
    assert np.array_equal(ds.item_popularity()[1:], popularity)


def test_no_target_leak_into_popularity_ranking():
    log = presplit_log(
        {
            "u0": (0, ["B", "B", "B", "A", "A"]),
            "u1": (1, ["E"] * 5),  # history 4 x E, target E
            "u2": (2, ["D"] * 8 + ["A", "A"]),  # history 8 x D, targets A, A
        }
    )
    ds = prepare_log(log)
    # training counts D 8, E 4, B 3, A 2; counting targets would give E 5, A 4 and put A before B
    assert ds.item_original_ids[1:].tolist() == ["D", "E", "B", "A"]
    assert ds.item_popularity().tolist() == [0, 8, 4, 3, 2]
    assert ds.test.history_len.tolist() == [8] and ds.valid.history_len.tolist() == [4]


def test_popularity_ties_broken_by_first_appearance():
    log = presplit_log({"u0": (0, ["q", "p", "r"]), "u1": (1, ["r", "p"]), "u2": (2, ["p", "q"])})
    ds = prepare_log(log)
    # training parts: u0 q p r, u1 history [r], u2 history [p] -> p 2, r 2, q 1;
    # p and r tie and p appears first in the input
    assert ds.item_original_ids[1:].tolist() == ["p", "r", "q"]


# ------------------------------------------------------------------------------------------- comirec / bundled


@pytest.mark.skipif(not COMIREC_SPLIT.exists(), reason="shared datasets not available")
def test_comirec_split_kept(tmp_path):
    report = prepare([COMIREC_SPLIT], "comirec", tmp_path / "g")
    assert report.splits["train"]["users"] == 11744
    assert report.splits["valid"]["users"] == 1468 and report.splits["test"]["users"] == 1469
    assert report.n_items == 8713
    ds = load_dataset(tmp_path / "g")
    import gzip

    for s in ("train", "valid", "test"):
        with gzip.open(COMIREC_SPLIT / f"grocery_{s}.txt.gz", "rt") as f:
            file_users = {line.split(",")[0] for line in f}
        assert {ds.user_original_ids[u] for u in ds.split(s).users} == file_users
    assert np.array_equal(ds.test.history_len, (ds.test.lengths * 0.8).astype(np.int64))
    pop = ds.item_popularity()[1:]
    assert (np.diff(pop) <= 0).all()
    assert ds.item_categories is not None and ds.item_categories.min() == -1


def test_bundled_dataset_and_round_trip(tmp_path):
    report = bundled_dataset(tmp_path / "grocery")
    assert (report.n_users, report.n_items, report.n_interactions) == (14681, 8713, 151254)
    assert report.splits["train"]["users"] == 11744
    json.loads(str(report))  # printable as JSON
    ds = prepare_log(from_arrays(*_read_bundled()), name="amazon-grocery")
    loaded = load_dataset(tmp_path / "grocery")
    assert loaded.meta["name"] == "amazon-grocery" and loaded.meta["n_interactions"] == 151254
    assert len(loaded.meta["sources"]) == 1 and len(loaded.meta["sources"][0]["sha256"]) == 64
    assert loaded.meta["clean"]["n_categories"] == 57
    assert loaded.meta["options"]["min_item_count"] == 5
    for s in ("train", "valid", "test"):
        a, b = loaded.split(s), ds.split(s)
        assert np.array_equal(a.users, b.users) and np.array_equal(a.items, b.items)
        assert np.array_equal(a.indptr, b.indptr) and np.array_equal(a.timestamps, b.timestamps)
    assert np.array_equal(loaded.valid.history_len, ds.valid.history_len)
    assert loaded.item_original_ids.tolist() == ds.item_original_ids.tolist()
    assert loaded.user_original_ids.tolist() == ds.user_original_ids.tolist()
    assert np.array_equal(loaded.item_categories, ds.item_categories)


def _read_bundled():
    from mirec.data.prepare import bundled_path
    from mirec.data.readers import read_interactions

    log = read_interactions([bundled_path()], "csv")
    return log.column("user"), log.column("item"), log.column("timestamp"), log.column("category")


def test_atomic_write_failure_leaves_nothing(tmp_path, monkeypatch):
    path = write_synthetic_csv(tmp_path / "in" / "log.tsv.gz", 300, 100, 6000, seed=1)
    out = tmp_path / "out" / "prepared"

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(dataset_module.pq, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        prepare([path], "csv", out)
    assert not out.exists() and list(out.parent.iterdir()) == []
    monkeypatch.undo()
    report = prepare([path], "csv", out)
    assert out.exists() and report.n_interactions > 0


def test_synthetic_log_statistics():
    log = synthetic_log(3000, 2000, 60000, seed=2, n_clusters=30)
    assert len(log.user) == 60000 and log.user.dtype == np.int64
    assert np.bincount(log.user).min() >= 5
    assert (log.timestamp % 86400 == 0).all()
    counts = np.sort(np.bincount(log.item, minlength=2000))[::-1]
    assert counts[:20].sum() > 5 * counts[1000:1020].sum()  # heavy head (Zipf)
    again = synthetic_log(3000, 2000, 60000, seed=2, n_clusters=30)
    assert np.array_equal(log.item, again.item) and np.array_equal(log.timestamp, again.timestamp)
    # each user's items concentrate on a few clusters
    per_user = {}
    for u, c in zip(log.user[:20000].tolist(), log.category[:20000].tolist(), strict=True):
        per_user.setdefault(u, Counter())[c] += 1
    top5 = np.mean(
        [sum(v for _, v in c.most_common(5)) / sum(c.values()) for c in per_user.values() if sum(c.values()) >= 10]
    )
    assert top5 > 0.7


def test_drop_duplicates_option():
    triples = [(f"u{k}", i, t) for k in range(3) for i, t in [("a", 1), ("a", 1), ("b", 2), ("a", 3)]]
    options = PrepareOptions(1, 1, split_ratios=(0.34, 0.33, 0.33))
    kept = prepare_log(log_of(triples), options=options)
    assert kept.meta["n_interactions"] == 12
    options.drop_duplicates = True
    dedup = prepare_log(log_of(triples), options=options)
    assert dedup.meta["clean"]["dropped_duplicates"] == 3
    assert all(seq == ["a", "b", "a"] for seq in sequences_by_original(dedup).values())


def test_split_cut_points_match_comirec():
    # ComiRec: train = users[:int(n*0.8)], valid = users[int(n*0.8):int(n*0.9)]
    from mirec.data.prepare import split_of_users

    for n in (10, 97, 14681, 123457):
        counts = np.bincount(split_of_users(n, (0.8, 0.1, 0.1), 1230), minlength=3)
        assert counts.tolist() == [int(n * 0.8), int(n * 0.9) - int(n * 0.8), n - int(n * 0.9)]


@pytest.mark.skipif(not (SHARED / "taobao-sample").exists(), reason="shared datasets not available")
def test_taobao_sample_buy_is_empty_after_5core(tmp_path):
    sample = SHARED / "taobao-sample" / "UserBehavior_prefix.csv.gz"
    out = tmp_path / "tb"
    with pytest.raises(EmptyDatasetError, match="nothing left after the filter"):
        prepare([sample], "taobao", out, on_bad_rows="skip", reader_options={"behaviors": ["buy"]})
    assert not out.exists()
    report = prepare(
        [sample], "taobao", out, on_bad_rows="skip", options=PrepareOptions(min_item_count=1, min_user_count=1)
    )
    assert report.read["rows_skipped"] == 1 and report.read["rows_read"] == 84476
    assert report.n_interactions == 84475 - report.read["rows_filtered_behavior"]


def test_merged_amazon_files_prepare_with_file_categories(tmp_path):
    files = [FIXTURES / "reviews_Books_5.json", FIXTURES / "reviews_Grocery_and_Gourmet_Food_5.json.gz"]
    report = prepare(
        files,
        "amazon-reviews",
        tmp_path / "hy",
        reader_options={"category": True},
        options=PrepareOptions(1, 1, split_ratios=(0.5, 0.25, 0.25)),
    )
    ds = load_dataset(tmp_path / "hy")
    assert report.n_items == 4 and ds.meta["category_names"] == ["Books", "Grocery_and_Gourmet_Food"]
    by_item = dict(zip(ds.item_original_ids[1:].tolist(), ds.item_categories[1:].tolist(), strict=True))
    assert by_item == {"0000000116": 0, "0000013714": 0, "616719923X": 1, "B00004S1C5": 1}
    assert [s["sha256"] for s in ds.meta["sources"]] and len(ds.meta["sources"]) == 2


def test_prepare_log_from_files_equals_prepare(tmp_path):
    files = [FIXTURES / "reviews_Books_5.json", FIXTURES / "reviews_Grocery_and_Gourmet_Food_5.json.gz"]
    options = PrepareOptions(1, 1, split_ratios=(0.5, 0.25, 0.25))
    in_memory = prepare_log(files, "amazon-reviews", options=options, seed=3)
    prepare(files, "amazon-reviews", tmp_path / "x", options=options, seed=3)
    saved = load_dataset(tmp_path / "x")
    assert saved.item_original_ids.tolist() == in_memory.item_original_ids.tolist()
    for s in ("train", "valid", "test"):
        assert np.array_equal(saved.split(s).items, in_memory.split(s).items)
    with pytest.raises(ValueError, match="format"):
        prepare_log(files)


def test_atomic_write_gives_the_umask_mode_not_mkstemps_0600(tmp_path):
    import os

    from mirec.utils import atomic_write_text

    mask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(mask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "a.json").read_text() == "{}"


def write_partitioned_log(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """A Hive-partitioned Parquet folder (month=.../part-*.parquet, plus _SUCCESS and hidden staging litter) and one
    Parquet file with the same rows in the folder's reading order (partition folders sorted, then files)."""
    import pyarrow.parquet as pq

    log = synthetic_log(120, 60, 1500, seed=seed, n_clusters=5)
    table = pa.table(
        {"user": log.user.astype(str), "item": log.item.astype(str), "timestamp": log.timestamp}
    ).append_column("month", pa.array((log.timestamp // (30 * 86400)) % 3))
    parts = []
    for month in range(3):
        part = table.filter(pa.compute.equal(table.column("month"), month)).drop(["month"])
        for index, piece in enumerate((part.slice(0, part.num_rows // 2), part.slice(part.num_rows // 2))):
            target = folder / "log" / f"month={month}" / f"part-{index:05d}.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(piece, target)
            (target.parent / f".part-{index:05d}.parquet.inprogress").write_bytes(b"\0")  # hidden staging file
            parts.append(piece)
    (folder / "log" / "_SUCCESS").write_text("")
    pq.write_table(pa.concat_tables(parts), folder / "flat.parquet")
    return folder / "log", folder / "flat.parquet"


def test_a_partitioned_parquet_folder_reads_as_its_files_in_order(tmp_path):
    from mirec.data.readers import input_files

    partitioned, flat = write_partitioned_log(tmp_path)
    files = input_files([partitioned])
    assert [f.relative_to(partitioned).as_posix() for f in files] == [
        f"month={m}/part-{i:05d}.parquet" for m in range(3) for i in range(2)
    ]
    prepare(partitioned, "parquet", tmp_path / "a", options=PrepareOptions(2, 2))
    prepare(flat, "parquet", tmp_path / "b", options=PrepareOptions(2, 2))
    a, b = load_dataset(tmp_path / "a"), load_dataset(tmp_path / "b")
    for s in ("train", "valid", "test"):
        assert np.array_equal(a.split(s).items, b.split(s).items) and np.array_equal(a.split(s).users, b.split(s).users)
    assert a.item_original_ids.tolist() == b.item_original_ids.tolist()
    assert len(a.meta["sources"]) == 6
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no data file"):
        input_files([tmp_path / "empty"])


# ------------------------------------------------------------------------------------------- leave-one-out


def split_rows(ds, split_name: str) -> dict[str, tuple[list[str], list[str]]]:
    """user -> (history items, target items) of one split, in original ids (training users: all history)."""
    split = ds.split(split_name)
    out = {}
    for row, u in enumerate(split.users):
        items = [ds.item_original_ids[i] for i in split.sequence(row)[0]]
        cut = len(items) if split.history_len is None else int(split.history_len[row])
        out[ds.user_original_ids[u]] = (items[:cut], items[cut:])
    return out


def test_leave_one_out_holds_out_the_last_two_items_and_drops_seen_or_untrained_targets():
    days = 86_400
    seqs = {
        "u1": ["a", "b", "c", "d", "e", "f"],  # plain: valid target e, test target f
        "u2": ["e", "f", "a", "b", "c", "a"],  # test target a was seen before: no test row
        "u3": ["c", "d", "e", "f", "b", "z"],  # z occurs only as a last item, never trained on: no test row
        "u4": ["a", "c", "d", "f", "y", "b"],  # y occurs only as a second-last item: no valid row
    }
    triples = [(u, item, 1_300_000_000 + t * days) for u, items in seqs.items() for t, item in enumerate(items)]
    ds = prepare_log(log_of(triples), options=PrepareOptions(min_item_count=1, min_user_count=1, split="loo"))
    name = lambda ids: [ds.item_original_ids[i] for i in ids]  # noqa: E731

    rows = partial(split_rows, ds)

    assert rows("train") == {u: (s[:4], []) for u, s in seqs.items()}
    assert rows("valid") == {
        "u1": (["a", "b", "c", "d"], ["e"]),
        "u2": (["e", "f", "a", "b"], ["c"]),
        "u3": (["c", "d", "e", "f"], ["b"]),
    }
    assert rows("test") == {"u1": (["a", "b", "c", "d", "e"], ["f"]), "u4": (["a", "c", "d", "f", "y"], ["b"])}
    # what a model may read (graph, clusters) is the training rows only, and popularity counts nothing else
    _, items, _ = ds.context_sequences()
    assert sorted(name(items)) == sorted(i for s in seqs.values() for i in s[:4])
    train_counts = [sum(s[:4].count(i) for s in seqs.values()) for i in name(range(1, ds.n_items + 1))]
    assert train_counts == sorted(train_counts, reverse=True) and set(name([ds.n_items - 1, ds.n_items])) == {"y", "z"}
    assert ds.meta["options"]["split"] == "loo"


def test_leave_one_out_needs_three_items_per_user_and_the_embedded_engine():
    triples = [("u1", "a", 1_300_000_000), ("u1", "b", 1_300_086_400)]
    with pytest.raises(EmptyDatasetError, match="leave-one-out needs 3 interactions per user"):
        prepare_log(log_of(triples), options=PrepareOptions(min_item_count=1, min_user_count=1, split="loo"))
    from mirec.data.spark_prepare import prepare_with_spark

    with pytest.raises(ValueError, match="needs --engine embedded"):
        prepare_with_spark(["x.tsv"], "csv", "out", options=PrepareOptions(split="loo"))


@pytest.mark.skipif(not (SHARED / "amazon-beauty").exists(), reason="../shared/datasets/amazon-beauty is absent")
def test_leave_one_out_beauty_has_the_benchmarks_counts(tmp_path):
    """Beauty 5-core: 22,363 users, 12,101 items, 176,139 interactions before the test targets (the eSASRec
    benchmark's data/s3_beauty/statistics.csv); its test set keeps 22,311 users after dropping seen targets, ours
    22,345 (same-day interactions are ordered by the file here, by the S3-Rec sequence there)."""
    prepare(
        [SHARED / "amazon-beauty" / "interactions.tsv.gz"], "csv", tmp_path / "b", options=PrepareOptions(split="loo")
    )
    ds = load_dataset(tmp_path / "b")
    assert (ds.n_users, ds.n_items) == (22_363, 12_101)
    assert len(ds.train.items) + len(ds.train.lengths) == 176_139  # train rows + every valid target
    assert abs(len(ds.test.users) - 22_311) < 0.005 * 22_311


def test_a_temporal_split_never_trains_on_or_reads_for_the_graph_what_comes_after_the_valid_cut():
    day = 86_400
    t0 = 1_300_000_000
    # time range 0..100 days: valid cut at day 80, test cut at day 90
    log = {
        "u1": [("a", 0), ("b", 10), ("c", 85), ("d", 95)],  # train a b; valid target c; test target d
        "u2": [("b", 5), ("a", 20), ("e", 100)],  # train b a; no valid rows; test target e
        "u3": [("c", 30), ("d", 82)],  # one training row: not a training user; valid target d
        "u4": [("e", 88), ("a", 99)],  # first seen in the valid period: test history e (read, never trained on)
    }
    triples = [(u, i, t0 + d * day) for u, rows in log.items() for i, d in rows]
    options = PrepareOptions(min_item_count=1, min_user_count=1, split="temporal", temporal_cut_by="time")
    ds = prepare_log(log_of(triples), options=options)
    name = lambda ids: [ds.item_original_ids[i] for i in ids]  # noqa: E731

    rows = partial(split_rows, ds)

    assert rows("train") == {"u1": (["a", "b"], []), "u2": (["b", "a"], [])}
    assert rows("valid") == {"u1": (["a", "b"], ["c"]), "u3": (["c"], ["d"])}
    assert rows("test") == {"u1": (["a", "b", "c"], ["d"]), "u2": (["b", "a"], ["e"]), "u4": (["e"], ["a"])}
    _, items, stamps = ds.context_sequences()
    assert sorted(name(items)) == ["a", "a", "b", "b"] and stamps.max() < t0 + 80 * day  # u3 is no training user
    assert ds.meta["clean"]["split"] == {"temporal_cuts": [0.8, 0.9], "by": "time"}
    with pytest.raises(ValueError, match="temporal_cuts"):
        PrepareOptions(split="temporal", temporal_cuts=(0.9, 0.8))
    # by interactions (the default): the cuts are time quantiles of the rows
    by_rows = prepare_log(log_of(triples), options=PrepareOptions(min_item_count=1, min_user_count=1, split="temporal"))
    stamps = np.sort([t for _, _, t in triples])
    assert by_rows.context_sequences()[2].max() < stamps[int(0.8 * (len(stamps) - 1))]
