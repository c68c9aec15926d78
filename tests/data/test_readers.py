"""Readers on fixture files written in each official format, plus the real shared samples."""

from __future__ import annotations

import gzip

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mirec.data.readers import MalformedRowError, parse_timestamps, read_interactions
from mirec.data.registry import DATASETS, resolve
from tests import conftest

FIXTURES = conftest.FIXTURES
SHARED = conftest.SHARED / "datasets"
TAOBAO_SAMPLE = SHARED / "taobao-sample" / "UserBehavior_prefix.csv.gz"
COMIREC_SPLIT = SHARED / "amazon-grocery" / "comirec-split"
needs_shared = pytest.mark.skipif(not SHARED.exists(), reason="shared datasets not available")


def rows(log):
    return list(zip(log.column("user"), log.column("item"), log.column("timestamp").tolist(), strict=True))


def test_amazon_ratings():
    log = read_interactions([FIXTURES / "ratings_Grocery_and_Gourmet_Food.csv"], "amazon-ratings")
    assert rows(log) == [
        ("A1VEELTKS8NLZB", "616719923X", 1370822400),
        ("A14R9XMZVJ6INB", "616719923X", 1400457600),
        ("A27IQHDZFQFNGG", "B00004S1C5", 1359244800),
    ]
    assert log.report["rows_read"] == 3 and log.report["rows_skipped"] == 0
    assert not log.has_category


def test_amazon_reviews_gzip_with_python_literal_line():
    log = read_interactions([FIXTURES / "reviews_Grocery_and_Gourmet_Food_5.json.gz"], "amazon-reviews")
    # the second line uses single quotes (ast.literal_eval style of the 2014 dumps)
    assert rows(log) == [
        ("A1VEELTKS8NLZB", "616719923X", 1370822400),
        ("A14R9XMZVJ6INB", "616719923X", 1400457600),
        ("A27IQHDZFQFNGG", "B00004S1C5", 1359244800),
    ]


def test_amazon_reviews_merged_files_with_file_category():
    files = [FIXTURES / "reviews_Books_5.json", FIXTURES / "reviews_Grocery_and_Gourmet_Food_5.json.gz"]
    log = read_interactions(files, "amazon-reviews", category=True)
    assert len(log) == 5
    assert log.column("category").tolist() == ["Books"] * 2 + ["Grocery_and_Gourmet_Food"] * 3
    assert [f["rows_read"] for f in log.report["files"]] == [2, 3]
    assert log.report["rows_read"] == 5


def test_amazon_2018_strict_json_lines():
    log = read_interactions([FIXTURES / "Grocery_and_Gourmet_Food_5_2018.json"], "amazon-2018")
    assert rows(log) == [("A1ZQZ8RJS1XVTX", "4639725183", 1370304000), ("A2FYQSHF8T8XS4", "4639725183", 1398988800)]


def test_amazon_2018_rejects_python_literal(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"reviewerID": "a", "asin": "b", "unixReviewTime": 5}\n{\'reviewerID\': \'c\'}\n')
    with pytest.raises(MalformedRowError, match=r"x.json line 2"):
        read_interactions([bad], "amazon-2018")
    log = read_interactions([bad], "amazon-2018", on_bad_rows="skip")
    assert rows(log) == [("a", "b", 5)] and log.report["rows_skipped"] == 1


def test_amazon_reviews_missing_key_names_line(tmp_path):
    bad = tmp_path / "reviews_X_5.json"
    bad.write_text("{'reviewerID': 'a', 'asin': 'b', 'unixReviewTime': 5}\n\n{'reviewerID': 'c', 'asin': 'd'}\n")
    with pytest.raises(MalformedRowError, match=r"reviews_X_5.json line 3: missing key\(s\) \['unixReviewTime'\]"):
        read_interactions([bad], "amazon-reviews")


def test_taobao_behaviour_filter():
    pv = read_interactions([FIXTURES / "UserBehavior.csv"], "taobao")
    assert rows(pv) == [("1", "2268318", 1511544070), ("1", "2333346", 1511561733), ("2", "3830808", 1511593493)]
    assert pv.column("category").tolist() == ["2520377", "2520771", "4181361"]
    assert pv.report["rows_read"] == 6 and pv.report["rows_filtered_behavior"] == 3
    buy = read_interactions([FIXTURES / "UserBehavior.csv"], "taobao", **DATASETS["taobao-buy"].reader_options)
    assert rows(buy) == [("1", "2576651", 1511572885)]
    everything = read_interactions([FIXTURES / "UserBehavior.csv"], "taobao", behaviors="all")
    assert len(everything) == 6


@needs_shared
def test_taobao_truncated_last_line():
    with gzip.open(TAOBAO_SAMPLE, "rt") as f:
        n_lines = sum(1 for _ in f)
    assert n_lines == 84476
    with pytest.raises(
        MalformedRowError, match=r"UserBehavior_prefix.csv.gz line 84476: expected 5 fields, got 4"
    ) as info:
        read_interactions([TAOBAO_SAMPLE], "taobao")
    assert info.value.line == 84476
    log = read_interactions([TAOBAO_SAMPLE], "taobao", on_bad_rows="skip", behaviors="all")
    assert log.report["rows_skipped"] == 1
    assert log.report["rows_read"] == 84476
    assert len(log) == 84475
    assert len(set(log.column("user"))) == 815 and len(set(log.column("item"))) == 55368


def test_csv_malformed_row_in_the_middle(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp\na,b,1\nc,d\ne,f,3\n")
    with pytest.raises(MalformedRowError, match=r"log.csv line 3: expected 3 fields, got 2"):
        read_interactions([path], "csv")
    log = read_interactions([path], "csv", on_bad_rows="skip")
    assert rows(log) == [("a", "b", 1), ("e", "f", 3)]
    assert log.report["rows_read"] == 3 and log.report["rows_skipped"] == 1


def test_movielens_formats():
    dat = read_interactions([FIXTURES / "ratings.dat"], "movielens-dat")
    assert rows(dat) == [("1", "1193", 978300760), ("1", "661", 978302109), ("2", "1357", 978298709)]
    csv = read_interactions([FIXTURES / "ratings.csv"], "movielens-csv")
    assert rows(csv) == [("1", "1", 964982703), ("1", "3", 964981247), ("2", "6", 964982224)]


def test_generic_csv_header_and_category():
    log = read_interactions([FIXTURES / "interactions.tsv"], "csv")
    assert rows(log) == [("1", "4551", 1357430400), ("1", "7654", 1357430400), ("2", "4551", 1360000000)]
    assert log.column("category").tolist() == ["0", "3", "0"]


def test_generic_csv_gzip_no_header_columns_by_index():
    log = read_interactions(
        [FIXTURES / "noheader_semicolon.csv.gz"], "csv", header=False, user=0, item=1, timestamp=3, category=2
    )
    assert rows(log) == [("u1", "i9", 1300000000), ("u2", "i8", 1300086400)]
    assert log.column("category").tolist() == ["x", "y"]
    auto = read_interactions([FIXTURES / "noheader_semicolon.csv.gz"], "csv", timestamp=3)  # delimiter sniffed
    assert rows(auto) == rows(log)


def test_generic_csv_by_name_and_missing_column(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("who,what,rating,when\nu,i,5,17\n")
    log = read_interactions([path], "csv", header=True, user="who", item="what", timestamp="when")
    assert rows(log) == [("u", "i", 17)]
    with pytest.raises(MalformedRowError, match="no column 'time'"):
        read_interactions([path], "csv", header=True, user="who", item="what", timestamp="time")


def test_non_numeric_timestamps_become_null():
    out, bad = parse_timestamps(pa.array(["12", " 7 ", "x", "1.5e3", "", "-3"]))
    assert out.to_pylist() == [12, 7, None, 1500, None, -3]
    assert bad == 2  # "x" and ""


def test_parquet(tmp_path):
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user": [1, 2], "item": ["a", "b"], "timestamp": [10, 20], "x": [0.1, 0.2]}), path)
    log = read_interactions([path], "parquet")
    assert rows(log) == [("1", "a", 10), ("2", "b", 20)]


def test_comirec_fixture():
    log = read_interactions([FIXTURES / "comirec"], "comirec")
    assert log.column("split").tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2]
    assert log.column("category").tolist() == ["7", "7", "7", "8", "8", "7", "7", "9", "7"]
    files = sorted((FIXTURES / "comirec").glob("tiny_*"))
    same = read_interactions(files, "comirec")
    assert rows(same) == rows(log)
    with pytest.raises(FileNotFoundError, match="valid"):
        read_interactions([FIXTURES / "comirec" / "tiny_train.txt"], "comirec")


@needs_shared
def test_comirec_shared_split_user_sets():
    log = read_interactions([COMIREC_SPLIT], "comirec")
    split = log.column("split")
    users = log.column("user")
    sets = [set(users[split == s]) for s in range(3)]
    assert [len(s) for s in sets] == [11744, 1468, 1469]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert len(set(log.column("item"))) == 8713
    for s, part in enumerate(("train", "valid", "test")):
        with gzip.open(COMIREC_SPLIT / f"grocery_{part}.txt.gz", "rt") as f:
            assert sets[s] == {line.split(",")[0] for line in f}


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="unknown format"):
        read_interactions([FIXTURES / "ratings.csv"], "nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_interactions([tmp_path / "absent.csv"], "csv")


def test_registry_resolve_missing_and_found(tmp_path, monkeypatch):
    monkeypatch.setenv("MIREC_DATA", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(
        FileNotFoundError, match=r"reviews_Books_5.json.gz.*jmcauley.ucsd.edu/data/amazon.*amazon-books"
    ):
        resolve("amazon-books")
    (tmp_path / "taobao-buy").mkdir()
    (tmp_path / "taobao-buy" / "UserBehavior.csv.gz").write_bytes(b"")
    files, fmt, options = resolve("taobao-buy")
    assert files == [tmp_path / "taobao-buy" / "UserBehavior.csv.gz"] and fmt == "taobao"
    assert options == {"behaviors": ["buy"]}
    assert DATASETS["taobao"].reader_options == {"behaviors": ["pv"]}
    assert len(DATASETS["amazon-hybrid"].files) == 5
    files, fmt, _ = resolve("amazon-grocery")
    assert fmt == "csv" and files[0].name == "amazon-grocery.tsv.gz" and files[0].exists()
    with pytest.raises(KeyError, match="unknown dataset"):
        resolve("nope")


def test_registry_resolves_shared_sets(tmp_path, monkeypatch):
    if not (SHARED / "amazon-beauty").exists():
        pytest.skip("shared datasets not available")
    for name in ("amazon-beauty", "yelp-b"):  # $MIREC_DATA/<name>/, as a user lays the files out
        (tmp_path / name).symlink_to(SHARED / name)
    monkeypatch.setenv("MIREC_DATA", str(tmp_path))
    files, fmt, _ = resolve("amazon-beauty")
    assert fmt == "csv" and files[0].exists()
    assert np.all([f.exists() for f in resolve("yelp-b")[0]])


def test_empty_integer_timestamp_counted_as_non_numeric(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp\na,b,1\nc,d,\n")
    log = read_interactions([path], "csv")
    assert log.column("timestamp").tolist()[0] == 1 and log.table.column("timestamp").null_count == 1
    assert log.report["non_numeric_timestamps"] == 1


def test_registry_shared_comirec_split(tmp_path, monkeypatch):
    if not COMIREC_SPLIT.exists():
        pytest.skip("shared datasets not available")
    (tmp_path / "amazon-grocery-comirec").symlink_to(COMIREC_SPLIT)
    monkeypatch.setenv("MIREC_DATA", str(tmp_path))
    files, fmt, _ = resolve("amazon-grocery-comirec")
    assert fmt == "comirec" and len(files) == 4
    log = read_interactions(files, fmt)
    assert len(log) == 120726 + 14858 + 15670


def test_reader_options_given_as_command_line_strings():
    log = read_interactions(
        [FIXTURES / "noheader_semicolon.csv.gz"], "csv", header="false", user="0", item="1", timestamp="3", category="2"
    )
    assert rows(log) == [("u1", "i9", 1300000000), ("u2", "i8", 1300086400)]
    assert log.column("category").tolist() == ["x", "y"]
    tagged = read_interactions([FIXTURES / "reviews_Books_5.json"], "amazon-reviews", category="true")
    assert tagged.column("category").tolist() == ["Books", "Books"]
    both = read_interactions([FIXTURES / "UserBehavior.csv"], "taobao", behaviors="pv,buy")
    assert len(both) == 4
    tsv = read_interactions([FIXTURES / "interactions.tsv"], "csv", delimiter="tab")
    assert len(tsv) == 3
