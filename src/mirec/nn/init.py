"""Initialisers the TF reference code gets by default."""

from __future__ import annotations

from torch import nn


def glorot_embedding(num: int, dim: int) -> nn.Embedding:
    """An embedding table initialised Glorot-uniform, as TF's ``tf.get_variable`` default (ComiRec, PIMI)."""
    table = nn.Embedding(num, dim)
    nn.init.xavier_uniform_(table.weight)
    return table
