"""Global context extraction (GIMIRec section 4.2): the k-hop co-occurrence graph and E_global = A E_item."""

from typing import Any

from mirec.config import GraphConfig
from mirec.graph import gce
from mirec.graph.gce import BuildInfo, GlobalContext, build_cooccurrence, graph_stats


def build_global_context(dataset: Any, config: GraphConfig) -> GlobalContext:
    """The dataset's global context, built by this process or, with ``graph.engine = "spark"``, by Spark."""
    if config.engine == "spark":
        from mirec.graph.spark import build_cooccurrence_spark, cooccurrence_from_parquet_layout

        if dataset.meta.get("layout") == "parquet" and dataset.path is not None:  # no sequence via the driver
            matrix = cooccurrence_from_parquet_layout(dataset.path, dataset.n_items, config)
            return GlobalContext(matrix, config, BuildInfo(n_sequences=dataset.n_users))

        return gce.build_global_context(dataset, config, build=build_cooccurrence_spark)
    return gce.build_global_context(dataset, config)


__all__ = ["BuildInfo", "GlobalContext", "build_cooccurrence", "build_global_context", "graph_stats"]
