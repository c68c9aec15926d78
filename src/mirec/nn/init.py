"""Initialisers the TF reference code gets by default."""

from __future__ import annotations

from torch import nn

from mirec.nn.embedding import RowGradEmbedding


def glorot_embedding(num: int, dim: int) -> RowGradEmbedding:
    """An embedding table initialised Glorot-uniform, as TF's ``tf.get_variable`` default (ComiRec, PIMI)."""
    table = RowGradEmbedding(num, dim)
    nn.init.xavier_uniform_(table.weight)
    return table


def kaiming_reinit(module: nn.Module) -> None:
    """Kaiming-normal on every weight of two or more dimensions (biases untouched), as the PyTorch ComiRec ports
    do (REMI and ShiningCosmos/pytorch_ComiRec ``BasicModel.reset_parameters``); tables [n, d] get std sqrt(2 / d)."""
    for weight in module.parameters():
        if weight.dim() >= 2:
            nn.init.kaiming_normal_(weight)
