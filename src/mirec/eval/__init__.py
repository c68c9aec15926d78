"""Evaluation (ComiRec protocol): exact retrieval, merge, metrics (a registry), diversity and collapse diagnostics.

Import from the modules: ``mirec.eval.evaluator.evaluate``, ``mirec.eval.metrics`` (numpy only: the config
reads the metric names from it without loading torch), ``mirec.eval.retrieval``, ``mirec.eval.diversity``.
"""
