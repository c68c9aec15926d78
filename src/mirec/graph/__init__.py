"""Global context extraction (GIMIRec section 4.2): the k-hop co-occurrence graph and E_global = A E_item."""

from mirec.graph.gce import BuildInfo, GlobalContext, build_cooccurrence, build_global_context, graph_stats

__all__ = ["BuildInfo", "GlobalContext", "build_cooccurrence", "build_global_context", "graph_stats"]
