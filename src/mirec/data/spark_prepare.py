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
``timestamp`` columns, and ``category`` where present). Not yet: ``drop_duplicates``, the other formats'
readers, and writing partitioned Parquet for logs whose integer codes exceed the driver's memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mirec.data.prepare import (
    TIMESTAMP_UNITS,
    EmptyDatasetError,
    PrepareOptions,
    assemble,
    check_time_range,
    prepare,
)
from mirec.data.readers import csv_layout

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
) -> Any:
    """The Spark twin of :func:`mirec.data.prepare.prepare_log` for ``csv`` / ``parquet`` inputs."""
    from pyspark.sql import functions as F

    from mirec.graph.spark import spark_session

    if fmt not in SPARK_FORMATS:
        raise ValueError(f"--engine spark reads {list(SPARK_FORMATS)}; {fmt!r} is read by the embedded engine only")
    if options.drop_duplicates:
        raise NotImplementedError("drop_duplicates is not supported by the Spark engine yet")
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
    coded = rows.join(users, "user", "left").join(items, "item", "left")
    missing_id = F.col("user_code").isNull() | F.col("item_code").isNull()
    illegal = F.col("ts").isNull() | (F.col("ts") <= 0)
    counts = coded.agg(
        F.count("*").alias("rows_in"),
        F.sum(missing_id.cast("long")).alias("missing"),
        F.sum((illegal & ~missing_id).cast("long")).alias("illegal"),
    ).first()
    legal = coded.where(~missing_id & ~illegal)
    if timestamp_unit == "auto":  # the median of every valid timestamp, as the embedded engine
        median = coded.where(~illegal).agg(F.median("ts")).first()[0]
        unit = next(
            (u for u, low in (("ns", 1e17), ("us", 1e14), ("ms", 1e11)) if median is not None and median >= low), "s"
        )
    else:
        unit = timestamp_unit
    legal = legal.withColumn("sec", F.floor(F.col("ts") / TIMESTAMP_UNITS[unit]).cast("long"))
    if options.min_timestamp is not None:
        legal = legal.where(F.col("sec") >= options.min_timestamp)
    if options.max_timestamp is not None:
        legal = legal.where(F.col("sec") <= options.max_timestamp)
    clean: dict[str, Any] = {
        "rows_in": int(counts["rows_in"]),
        "dropped_missing_id": int(counts["missing"] or 0),
    }
    n_legal = legal.count()
    clean["dropped_illegal_timestamp"] = int(counts["rows_in"] - clean["dropped_missing_id"] - n_legal)
    if n_legal == 0:
        raise EmptyDatasetError(f"{name or 'dataset'}: no interaction left after dropping illegal rows ({clean})")
    clean["timestamp_unit"] = unit
    bounds = legal.agg(F.min("sec"), F.max("sec")).first()
    warning = check_time_range(np.array([bounds[0], bounds[1]]), unit, detected=timestamp_unit == "auto")
    if warning:
        import warnings

        clean["timestamp_warning"] = warning
        warnings.warn(f"{name or 'dataset'}: {warning}", stacklevel=2)
    kept, passes = legal, 0
    while True:  # the k-core filter: items, then users (ComiRec's single pass unless iterative)
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
    clean["filter"] = {
        "min_item_count": options.min_item_count,
        "min_user_count": options.min_user_count,
        "iterative": options.iterative_kcore,
        "passes": passes,
    }
    table = kept.orderBy("file", "pos").select("user_code", "item_code", "sec", "ts").toArrow()
    clean["dropped_by_filter"] = int(n_legal - table.num_rows)
    if table.num_rows == 0:
        raise EmptyDatasetError(
            f"{name or 'dataset'}: nothing left after the filter (min_item_count={options.min_item_count}, "
            f"min_user_count={options.min_user_count}, iterative={options.iterative_kcore}); {n_legal} rows before"
        )
    user_vocab = _vocabulary(users, "user")
    item_vocab = _vocabulary(items, "item")
    category_of_item = _first_categories(rows, kept, len(item_vocab))
    report = {"format": fmt, "engine": "spark", "master": master, "files": [str(f) for f in files]}
    return assemble(
        table.column("user_code").to_numpy().astype(np.int64),
        table.column("item_code").to_numpy().astype(np.int64),
        table.column("sec").to_numpy().astype(np.int64),
        table.column("ts").to_numpy().astype(np.int64),
        np.arange(table.num_rows, dtype=np.int64),
        user_vocab,
        item_vocab,
        category_of_item,
        None,
        clean=clean,
        options=options,
        seed=seed,
        name=name,
        meta=meta,
        unit=unit,
        read_report=report,
    )


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


def prepare_with_spark(inputs: Any, fmt: str, output: Any, *, spark_master: str = "local[2]", **options: Any) -> Any:
    """:func:`mirec.data.prepare.prepare` (same checks, lock, atomic folder) with this module's Spark front end."""

    def frontend(files: list[Path], fmt: str, **kw: Any) -> Any:
        return prepare_log_spark(files, fmt, master=spark_master, **kw)

    return prepare(inputs, fmt, output, frontend=frontend, **options)


def _vocabulary(codes: Any, column: str) -> pa.Array:
    """The values in code order, as an Arrow string array (the embedded engine's dictionary)."""
    table = codes.orderBy(f"{column}_code").select(column).toArrow()
    return table.column(column).combine_chunks().cast(pa.string())


__all__ = ["prepare_log_spark", "prepare_with_spark", "SPARK_FORMATS"]
