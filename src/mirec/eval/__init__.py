"""Evaluation (ComiRec protocol): exact retrieval, merge, metrics, diversity and collapse diagnostics."""

from mirec.eval.diversity import diversity_at_n
from mirec.eval.evaluator import evaluate
from mirec.eval.metrics import compute_metrics
from mirec.eval.retrieval import merge_interests, topk_per_interest

__all__ = ["evaluate", "compute_metrics", "topk_per_interest", "merge_interests", "diversity_at_n"]
