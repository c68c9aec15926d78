"""Reusable layers: candidate samplers and sampled softmax, capsule routing, self-attentive extractor,
time-interval and star-graph attention, residual quantizer, interest-diversity penalty."""

from mirec.nn.candidate_sampling import LogUniformSampler
from mirec.nn.capsule import CapsuleRouting, squash
from mirec.nn.regularizers import mean_pairwise_cosine
from mirec.nn.sampled_softmax import sampled_softmax_loss
from mirec.nn.self_attentive import SelfAttentiveExtractor
from mirec.nn.star_graph import StarGraph, StarMultiHeadAttention
from mirec.nn.time_interval import TimeIntervalAttention, time_interval_matrix

__all__ = [
    "CapsuleRouting",
    "squash",
    "LogUniformSampler",
    "mean_pairwise_cosine",
    "sampled_softmax_loss",
    "SelfAttentiveExtractor",
    "StarGraph",
    "StarMultiHeadAttention",
    "TimeIntervalAttention",
    "time_interval_matrix",
]
