"""Preparation with Spark (``mirec prepare ... --engine spark``, ``pip install "mirec[spark]"``): reading,
cleaning, id encoding and the k-core filter run as a Spark job; the kept rows come back to the driver as integer
codes only (about 24 bytes per interaction, never the log's strings), and the split, the popularity ranking and
the arrays are made by the same code as the embedded engine (:func:`mirec.data.prepare.assemble`), so both write
the same prepared folder (tested on samples of the shared logs; the ``read`` report differs: it says Spark read).

What the Spark job does, as the embedded engine (docs/models.md section 6):
- rows keep their input order (file by file, then position within the file): user and item codes are given in
  order of first appearance over the whole input, and ties of the time sort keep input order;
- rows without a user or item, or with a missing, non-numeric or non-positive timestamp are dropped; the
  timestamp unit is detected from the median; ``min/max_timestamp`` windows apply to seconds;
- items with fewer than ``min_item_count`` rows, then users with fewer than ``min_user_count`` kept rows, are
  dropped (repeated until both hold with ``iterative_kcore``).

Formats: ``csv`` (delimiter, header and columns resolved from the first line exactly as the embedded reader,
:func:`mirec.data.readers.csv_layout`) and ``parquet`` (files or partitioned folders with ``user``, ``item``,
``timestamp`` columns, and ``category`` where present). Not yet: the other formats' readers (jsonl, comirec).

Layouts: ``arrays`` (default) brings the kept rows to the driver as integer codes (about 24 bytes per
interaction, never the log's strings) and writes the memory-mapped arrays; ``parquet`` keeps every per-interaction
step in Spark (the time order, the split's history cut, the popularity re-coding) and has the executors write
``interactions/`` partitioned by split and ``users/`` as Parquet: the driver then holds per-user counts (16 bytes
a user) and per-item arrays only. Both give the same dataset (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mirec.choices import LAYOUTS
from mirec.data.dataset import SPLITS, write_items_and_meta
from mirec.data.prepare import (
    TIMESTAMP_UNITS,
    EmptyDatasetError,
    PreparationRecord,
    PrepareOptions,
    assemble,
    check_kept,
    compact_categories,
    filter_record,
    history_cut,
    original_item_ids,
    popularity_ids,
    prepare,
    record_time_range,
    split_of_users,
)
from mirec.data.readers import csv_layout
from mirec.utils import atomic_directory

SPARK_FORMATS = ("csv", "parquet")


def _frame(spark: Any, files: list[Path], fmt: str, reader_options: dict[str, Any], on_bad_rows: str) -> Any:
    """One DataFrame of (user, item, timestamp text, file, pos): every file read on its own, in order."""
    from pyspark.sql import functions as F

    frames = []
    for index, path in enumerate(files):
        if fmt == "csv":
            options = dict(reader_options)
            encoding = options.pop("encoding", "utf-8")
            delimiter, header, keep = csv_layout(path, encoding=encoding, **options)
            mode = "FAILFAST" if on_bad_rows == "error" else "DROPMALFORMED"
            frame = spark.read.csv(str(path), sep=delimiter, header=header, encoding=encoding, mode=mode)
            columns = frame.columns
            wanted = [c for c in ("user", "item", "timestamp", "category") if c in keep]
            frame = frame.select(
                *[F.col(columns[keep[c]] if isinstance(keep[c], int) else keep[c]).alias(c) for c in wanted]
            )
        else:
            frame = spark.read.parquet(str(path))
            wanted = [c for c in ("user", "item", "timestamp", "category") if c in frame.columns]
            frame = frame.select(*[F.col(c).cast("string") for c in wanted])
        if "category" not in wanted:
            frame = frame.withColumn("category", F.lit(None).cast("string"))
        # monotonically_increasing_id grows with the partition and the position inside it: the file's order
        frames.append(frame.withColumn("file", F.lit(index)).withColumn("pos", F.monotonically_increasing_id()))
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out


def _codes(frame: Any, column: str) -> Any:
    """(value, code): codes 0.. in order of first appearance (file, pos) over every row."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    first = frame.where(F.col(column).isNotNull()).groupBy(column).agg(F.min(F.struct("file", "pos")).alias("first"))
    order = Window.orderBy(F.col("first.file"), F.col("first.pos"))
    return first.select(column, (F.row_number().over(order) - 1).alias(f"{column}_code"))


def _timestamp_unit(valid: Any, timestamp_unit: str) -> str:
    """The given unit, or (auto) the unit the median of every valid timestamp suggests, as the embedded engine."""
    from pyspark.sql import functions as F

    if timestamp_unit != "auto":
        return timestamp_unit
    median = valid.agg(F.median("ts")).first()[0]
    return next(
        (u for u, low in (("ns", 1e17), ("us", 1e14), ("ms", 1e11)) if median is not None and median >= low), "s"
    )


def _kcore(legal: Any, options: PrepareOptions) -> tuple[Any, dict[str, Any]]:
    """The count filter on Spark: items, then users (ComiRec's single pass unless iterative); (rows, record)."""
    from pyspark.sql import functions as F

    kept, passes = legal, 0
    while True:
        passes += 1
        item_ok = kept.groupBy("item_code").count().where(F.col("count") >= options.min_item_count).select("item_code")
        kept = kept.join(item_ok, "item_code", "left_semi")
        user_ok = kept.groupBy("user_code").count().where(F.col("count") >= options.min_user_count).select("user_code")
        kept = kept.join(user_ok, "user_code", "left_semi").cache()
        if not options.iterative_kcore:
            break
        smallest = kept.groupBy("item_code").count().agg(F.min("count")).first()[0]
        if smallest is None or smallest >= options.min_item_count:  # the embedded engine's stopping rule
            break
    return kept, filter_record(options, passes)


def prepare_log_spark(
    files: list[Path],
    fmt: str,
    *,
    master: str,
    name: str | None,
    options: PrepareOptions,
    seed: int,
    meta: dict[str, Any],
    on_bad_rows: str = "error",
    reader_options: dict[str, Any] | None = None,
    timestamp_unit: str = "auto",
    layout: str = "arrays",
) -> Any:
    """The Spark twin of :func:`mirec.data.prepare.prepare_log` for ``csv`` / ``parquet`` inputs: a
    :class:`PreparedDataset` (``layout = "arrays"``) or a :class:`SparkPreparedLog` (``"parquet"``)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from mirec.graph.spark import spark_session

    if fmt not in SPARK_FORMATS:
        raise ValueError(f"--engine spark reads {list(SPARK_FORMATS)}; {fmt!r} is read by the embedded engine only")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    spark = spark_session(master)
    rows = _frame(spark, files, fmt, dict(reader_options or {}), on_bad_rows).cache()
    # integers exactly, decimals floored (as the embedded reader), anything else null (try_cast: ANSI mode)
    rows = rows.withColumn(
        "ts",
        F.coalesce(
            F.expr("try_cast(trim(timestamp) AS BIGINT)"),
            F.expr("try_cast(floor(try_cast(trim(timestamp) AS DOUBLE)) AS BIGINT)"),
        ),
    )
    users, items = _codes(rows, "user"), _codes(rows, "item")
    coded = rows.join(users, "user", "left").join(items, "item", "left").cache()  # read by four aggregations
    missing_id = F.col("user_code").isNull() | F.col("item_code").isNull()
    illegal = F.col("ts").isNull() | (F.col("ts") <= 0)
    counts = coded.agg(
        F.count("*").alias("rows_in"),
        F.sum(missing_id.cast("long")).alias("missing"),
        F.sum((illegal & ~missing_id).cast("long")).alias("illegal"),
    ).first()
    legal = coded.where(~missing_id & ~illegal)
    unit = _timestamp_unit(coded.where(~illegal), timestamp_unit)
    legal = legal.withColumn("sec", F.floor(F.col("ts") / TIMESTAMP_UNITS[unit]).cast("long"))
    if options.min_timestamp is not None:
        legal = legal.where(F.col("sec") >= options.min_timestamp)
    if options.max_timestamp is not None:
        legal = legal.where(F.col("sec") <= options.max_timestamp)
    legal = legal.select("user_code", "item_code", "ts", "sec", "file", "pos", "category").cache()
    clean: dict[str, Any] = {
        "rows_in": int(counts["rows_in"]),
        "dropped_missing_id": int(counts["missing"] or 0),
    }
    n_legal = legal.count()
    clean["dropped_illegal_timestamp"] = int(counts["rows_in"] - clean["dropped_missing_id"] - n_legal)
    if options.drop_duplicates:  # a repeated (user, item, second) keeps its first row in input order
        first = Window.partitionBy("user_code", "item_code", "sec").orderBy("file", "pos")
        legal = legal.withColumn("copy", F.row_number().over(first)).where(F.col("copy") == 1).drop("copy")
        n_unique = legal.count()
        clean["dropped_duplicates"], n_legal = int(n_legal - n_unique), n_unique
    if n_legal == 0:
        raise EmptyDatasetError(f"{name or 'dataset'}: no interaction left after dropping illegal rows ({clean})")
    bounds = legal.agg(F.min("sec"), F.max("sec")).first()
    record_time_range(clean, np.array([bounds[0], bounds[1]]), unit, timestamp_unit == "auto", name)
    kept, clean["filter"] = _kcore(legal, options)
    report = {"format": fmt, "engine": "spark", "master": master, "files": [str(f) for f in files], "layout": layout}
    record = PreparationRecord(meta, clean, options, seed, name, unit, report)
    if layout == "parquet":
        n_kept = kept.count()
        check_kept(n_kept, n_legal, options, name)
        clean["dropped_by_filter"] = int(n_legal - n_kept)
        return _assemble_in_spark(spark, rows, kept, users, items, n_kept, record)
    return _assemble_on_driver(rows, kept, users, items, n_legal, record)


def _assemble_on_driver(rows: Any, kept: Any, users: Any, items: Any, n_legal: int, record: PreparationRecord) -> Any:
    """Layout ``arrays``: the kept rows come to the driver (input order) and the embedded engine's ``assemble``
    draws the split and ranks the items, so the result is the embedded engine's dataset."""
    table = kept.orderBy("file", "pos").select("user_code", "item_code", "sec", "ts").toArrow()
    record.clean["dropped_by_filter"] = int(n_legal - table.num_rows)
    check_kept(table.num_rows, n_legal, record.options, record.name)
    item_vocab = _vocabulary(items, "item")
    user, item, sec, ts = (table.column(c).to_numpy().astype(np.int64) for c in ("user_code", "item_code", "sec", "ts"))
    rows_in_order = np.arange(table.num_rows, dtype=np.int64)
    categories = _first_categories(rows, kept, len(item_vocab))
    return assemble(
        user, item, sec, ts, rows_in_order, _vocabulary(users, "user"), item_vocab, categories, None, record
    )


@dataclass
class SparkPreparedLog:
    """A prepared log still in Spark (``layout = "parquet"``): ``save`` has the executors write the interactions
    and users as Parquet datasets; the driver holds only per-item arrays and the per-split counts."""

    interactions: Any  # DataFrame (user, item, timestamp, position, split)
    users: Any  # DataFrame (user, original_id, split, history_len)
    item_original_ids: np.ndarray
    item_categories: np.ndarray | None
    meta: dict[str, Any]
    n_users: int
    sizes: dict[str, dict[str, int]]

    @property
    def n_items(self) -> int:
        return len(self.item_original_ids) - 1

    def split_sizes(self) -> dict[str, dict[str, int]]:
        return self.sizes

    def save(self, path: str | Path, overwrite: bool = True) -> Path:
        """Write the folder atomically (built under a temporary name, then renamed); the path must be one the
        driver and the executors share (a local path with ``local[N]``)."""
        path = Path(path)
        with atomic_directory(path, overwrite=overwrite) as tmp:
            self.interactions.write.partitionBy("split").parquet(str(tmp / "interactions"))
            self.users.write.parquet(str(tmp / "users"))
            write_items_and_meta(
                tmp, self.item_original_ids, self.item_categories, self.meta, self.n_users, self.sizes, "parquet"
            )
        return path


def _assemble_in_spark(
    spark: Any, rows: Any, kept: Any, users: Any, items: Any, n_kept: int, record: PreparationRecord
) -> SparkPreparedLog:
    """Steps 3-7 of :func:`mirec.data.prepare.assemble` as a Spark job: the rows stay in Spark; per-user counts
    (16 bytes a user) and per-item counts come to the driver, which draws the split and ranks the items with the
    embedded engine's own functions, so the result is the same dataset."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    per_user = kept.groupBy("user_code").count().toArrow()
    order = np.argsort(per_user.column("user_code").to_numpy())
    user_codes = per_user.column("user_code").to_numpy()[order]
    lengths = per_user.column("count").to_numpy()[order].astype(np.int64)
    n_users = len(user_codes)  # internal users 0..U-1 in code (first-appearance) order, as the embedded engine
    split_of_user = split_of_users(n_users, record.options.split_ratios, record.seed)
    history_len = history_cut(split_of_user, lengths, record.options, record.name)
    split_names = np.asarray(SPLITS, dtype=object)[split_of_user]
    user_table = spark.createDataFrame(
        pa.table(
            {
                "user_code": user_codes,
                "user_id": np.arange(n_users, dtype=np.int64),
                "split": pa.array(split_names, pa.string()),
                "history_len": history_len,
            }
        )
    )
    by_time = Window.partitionBy("user_code").orderBy("ts", "file", "pos")  # ties keep input order
    sequences = (
        kept.select("user_code", "item_code", "sec", "ts", "file", "pos")
        .join(user_table, "user_code")
        .withColumn("position", F.row_number().over(by_time) - 1)
    )
    is_train_row = (F.col("split") == SPLITS[0]) | (F.col("position") < F.col("history_len"))
    counts = (
        sequences.groupBy("item_code")
        .agg(F.count("*").alias("rows"), F.sum(is_train_row.cast("long")).alias("train"))
        .toArrow()
    )
    item_vocab = _vocabulary(items, "item")
    row_counts = np.zeros(len(item_vocab), dtype=np.int64)
    train_counts = np.zeros(len(item_vocab), dtype=np.int64)
    codes = counts.column("item_code").to_numpy()
    row_counts[codes] = counts.column("rows").to_numpy()
    train_counts[codes] = counts.column("train").to_numpy()
    ordered_codes, _ = popularity_ids(row_counts, train_counts)
    item_table = spark.createDataFrame(
        pa.table({"item_code": ordered_codes, "item_id": np.arange(1, len(ordered_codes) + 1, dtype=np.int64)})
    )
    interactions = sequences.join(item_table, "item_code").select(
        F.col("user_id").alias("user"),
        F.col("item_id").alias("item"),
        F.col("sec").alias("timestamp"),
        "position",
        "split",
    )
    user_rows = users.join(user_table, "user_code").select(
        F.col("user_id").alias("user"), F.col("user").alias("original_id"), "split", "history_len"
    )
    item_categories, category_names = compact_categories(_first_categories(rows, kept, len(item_vocab)), ordered_codes)
    item_original = original_item_ids(item_vocab, ordered_codes)
    sizes = {
        split_name: {
            "users": int((split_of_user == code).sum()),
            "interactions": int(lengths[split_of_user == code].sum()),
        }
        for code, split_name in enumerate(SPLITS)
    }
    dataset_meta = record.meta_json(
        n_rows=n_kept, n_users=n_users, n_items=len(ordered_codes), split_given=False, category_names=category_names
    )
    return SparkPreparedLog(interactions, user_rows, item_original, item_categories, dataset_meta, n_users, sizes)


def _first_categories(rows: Any, kept: Any, n_items: int) -> tuple[np.ndarray, pa.Array] | None:
    """(category code of each item's first kept row in input order, -1 none; the category vocabulary in order of
    first appearance over every row), as the embedded engine; None when the input has no category."""
    from pyspark.sql import functions as F

    if rows.where(F.col("category").isNotNull()).limit(1).count() == 0:
        return None
    codes = _codes(rows, "category")
    first = (
        kept.join(codes, "category", "left")
        .groupBy("item_code")
        .agg(F.min_by("category_code", F.struct("file", "pos")).alias("category_code"))
        .toArrow()
    )
    item_cat = np.full(n_items, -1, dtype=np.int64)
    found = first.column("category_code").to_numpy(zero_copy_only=False)
    known = ~np.isnan(found.astype(np.float64))
    item_cat[first.column("item_code").to_numpy()[known]] = found[known].astype(np.int64)
    return item_cat, _vocabulary(codes, "category")


def prepare_with_spark(
    inputs: Any, fmt: str, output: Any, *, spark_master: str = "local[2]", layout: str = "arrays", **options: Any
) -> Any:
    """:func:`mirec.data.prepare.prepare` (same checks, lock, atomic folder) with this module's Spark front end."""
    chosen = options.get("options")
    if chosen is not None and getattr(chosen, "split", "comirec") != "comirec":
        raise ValueError(
            f"--engine spark prepares ComiRec's split only; --split {chosen.split} needs --engine embedded"
        )

    def frontend(files: list[Path], fmt: str, **kw: Any) -> Any:
        return prepare_log_spark(files, fmt, master=spark_master, layout=layout, **kw)

    return prepare(inputs, fmt, output, frontend=frontend, **options)


def _vocabulary(codes: Any, column: str) -> pa.Array:
    """The values in code order, as an Arrow string array (the embedded engine's dictionary)."""
    table = codes.orderBy(f"{column}_code").select(column).toArrow()
    return table.column(column).combine_chunks().cast(pa.string())


__all__ = ["prepare_log_spark", "prepare_with_spark", "SparkPreparedLog", "LAYOUTS", "SPARK_FORMATS"]
