"""GIMIRec's global context (Eq. 1-6) built by Spark (``graph.engine = "spark"``, ``pip install "mirec[spark]"``):
the same matrix as :func:`mirec.graph.gce.build_cooccurrence`, entry for entry up to float rounding (tested).

The sequences (training users whole, valid/test users' history parts, as the embedded build) are written to
Parquet and read by Spark; hop k pairs each item with the one k positions later in its sequence (a window
``lead``), filtered and weighted as Eq. 1-2, summed per directed pair (Eq. 3), symmetrised and merged with
the identity (Eq. 4-5) and normalised by the degrees (Eq. 6), all as Spark aggregations; only the final
non-zeros come back to the driver (as Arrow) to form the CSR matrix the model reads. ``graph.spark_master``
picks the cluster (``local[2]`` by default; ``spark://HOST:7077``, ``yarn``, ... for a real one).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from mirec.config import GraphConfig
from mirec.data.dataset import SECONDS_PER_DAY


def local_driver_memory(master: str) -> str | None:
    """The driver heap for a ``local[...]`` master, where the driver is also the executor: MIREC_SPARK_DRIVER_MEMORY,
    else half the machine's memory (at most 32g); None (Spark's own setting) for a cluster master or when
    SPARK_DRIVER_MEMORY is set. Spark's default, 1g, makes a few million rows spill and crawl."""
    if not master.startswith("local") or os.environ.get("SPARK_DRIVER_MEMORY"):
        return None
    if os.environ.get("MIREC_SPARK_DRIVER_MEMORY"):
        return os.environ["MIREC_SPARK_DRIVER_MEMORY"]
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return f"{max(1, min(32, total // 2**31))}g"


def spark_session(master: str) -> Any:
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ImportError('graph.engine = "spark" needs PySpark: pip install "mirec[spark]"') from None
    builder = SparkSession.builder
    memory = local_driver_memory(master)
    if memory:
        builder = builder.config("spark.driver.memory", memory)  # read only when this call starts the JVM
    spark = (
        builder.master(master)
        .appName("mirec-global-context")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")  # no stage bars over mirec's own output
        .config("spark.sql.shuffle.partitions", "8")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def build_cooccurrence_spark(
    indptr: np.ndarray, items: np.ndarray, timestamps_days: np.ndarray, n_items: int, config: GraphConfig
) -> sp.csr_matrix:
    """Spark twin of ``build_cooccurrence``: normalised A as a float32 CSR matrix of shape (n_items+1)^2."""
    from mirec.graph.gce import _check_config

    hop_weights = _check_config(config)  # a bad option fails before Spark starts
    indptr = np.asarray(indptr, dtype=np.int64)
    lengths = np.diff(indptr)
    table = pa.table(
        {
            "seq": np.repeat(np.arange(len(lengths), dtype=np.int64), lengths),
            "pos": np.arange(len(items), dtype=np.int64) - np.repeat(indptr[:-1], lengths),
            "item": np.asarray(items, dtype=np.int64),
            "days": np.asarray(timestamps_days, dtype=np.float64),
        }
    )
    spark = spark_session(config.spark_master)
    with tempfile.TemporaryDirectory(prefix="mirec-gce-") as tmp:
        pq.write_table(table, Path(tmp) / "sequences.parquet")
        frame = spark.read.parquet(str(Path(tmp) / "sequences.parquet"))
        return _cooccurrence(spark, frame, n_items, config, hop_weights)


def cooccurrence_from_parquet_layout(folder: str | Path, n_items: int, config: GraphConfig) -> sp.csr_matrix:
    """The same matrix straight from a ``layout = "parquet"`` prepared folder: the executors read
    ``interactions/`` and keep the training users' whole sequences and the valid/test users' history parts
    (position < history_len), so no sequence passes through the driver."""
    from pyspark.sql import functions as F

    from mirec.graph.gce import _check_config

    hop_weights = _check_config(config)  # a bad option fails before Spark starts
    spark = spark_session(config.spark_master)
    rows = spark.read.parquet(str(Path(folder) / "interactions"))
    cuts = spark.read.parquet(str(Path(folder) / "users")).select("user", "history_len")
    context = rows.join(cuts, "user").where((F.col("split") == "train") | (F.col("position") < F.col("history_len")))
    first = context.agg(F.min("timestamp")).first()[0] or 0  # days from the earliest context row, as the embedded
    frame = context.select(
        F.col("user").alias("seq"),
        F.col("position").alias("pos"),
        "item",
        ((F.col("timestamp") - F.lit(first)) / float(SECONDS_PER_DAY)).alias("days"),
    )
    return _cooccurrence(spark, frame, n_items, config, hop_weights)


def _cooccurrence(spark: Any, frame: Any, n_items: int, config: GraphConfig, hop_weights: list[float]) -> sp.csr_matrix:
    """Eq. 1-6 over a frame of (seq, pos, item, days), with the checked config's hop weights."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from mirec.graph.gce import DT_TOLERANCE_DAYS

    l_time = float(config.l_time)
    order = Window.partitionBy("seq").orderBy("pos")
    parts = [spark.range(n_items + 1).select(F.col("id").alias("u"), F.col("id").alias("v"), F.lit(1.0).alias("w"))]
    for k, weight in enumerate(hop_weights, start=1):  # Eq. 1-4, one hop at a time
        pairs = frame.select(
            F.col("item").alias("u"),
            F.lead("item", k).over(order).alias("v"),
            (F.lead("days", k).over(order) - F.col("days")).alias("dt"),
        ).where(F.col("v").isNotNull())
        if config.use_threshold:
            pairs = pairs.where(F.col("dt") <= l_time + DT_TOLERANCE_DAYS)
        if not config.self_pairs:
            pairs = pairs.where(F.col("u") != F.col("v"))
        if config.count_pairs:  # Eq. 2, the interval normalised to [0, 1]
            clipped = F.least(F.greatest((F.lit(l_time) - F.col("dt")) / l_time, F.lit(0.0)), F.lit(1.0))
            pairs = pairs.withColumn("p", F.lit(config.a) * clipped + F.lit(config.b))
        else:
            pairs = pairs.withColumn("p", F.lit(1.0))
        q = pairs.groupBy("u", "v").agg(F.sum("p").alias("q")).where(F.col("q") != 0)  # Eq. 3
        if not config.count_pairs:
            q = q.withColumn("q", F.lit(1.0))  # GIMIRec-IN: presence of the pair
        if weight == 0.0:
            continue
        scaled = q.select("u", "v", (F.col("q") * weight).alias("w"))
        parts += [scaled, scaled.select(F.col("v").alias("u"), F.col("u").alias("v"), "w")]  # q + q^T
    a_prime = parts[0]
    for part in parts[1:]:
        a_prime = a_prime.unionByName(part)
    a_prime = a_prime.groupBy("u", "v").agg(F.sum("w").alias("w"))  # Eq. 5
    degree = a_prime.groupBy("u").agg((1.0 / F.sqrt(F.sum("w"))).alias("du"))
    normalised = (  # Eq. 6: D^-1/2 A' D^-1/2
        a_prime.join(degree, "u")
        .join(degree.select(F.col("u").alias("v"), F.col("du").alias("dv")), "v")
        .select("u", "v", (F.col("w") * F.col("du") * F.col("dv")).alias("a"))
    )
    result = _to_arrow(normalised)
    u = result.column("u").to_numpy()
    v = result.column("v").to_numpy()
    a = result.column("a").to_numpy().astype(np.float32)
    size = n_items + 1
    out = sp.csr_matrix((a, (u, v)), shape=(size, size))
    out.sort_indices()
    return out


def _to_arrow(frame: Any) -> pa.Table:
    """The frame's rows on the driver as Arrow (Spark 4's toArrow; plain rows otherwise)."""
    if hasattr(frame, "toArrow"):
        return frame.toArrow()
    rows = frame.collect()  # pragma: no cover - Spark < 4
    return pa.table({name: [r[name] for r in rows] for name in frame.columns})


__all__ = ["build_cooccurrence_spark", "cooccurrence_from_parquet_layout", "spark_session"]
