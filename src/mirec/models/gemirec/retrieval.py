"""GemiRec MIRM: multi-interest retrieval, one query vector per generated interest (docs/models.md section 5).

[SECONDARY] the user's sequence embedding is fused with each quantized interest embedding; [OURS] the fusion is an
MLP on the concatenation, a gated sum, or an MLP on the interest embedding alone ("code": the generated interests
then differ exactly as their code tuples do), over a LayerNorm-ed interest embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from mirec.config import GemiRecConfig


class InterestRetrieval(nn.Module):
    """u_m = f(u_seq, e_m): the K retrieval vectors of a user from its sequence embedding and K interest embeddings."""

    def __init__(self, config: GemiRecConfig):
        super().__init__()
        d, width = config.embedding_dim, config.idmm_levels * config.idmm_code_dim
        self.mode = config.mirm_fusion
        # e_m is normalised before fusion: codes live at the (small, Glorot) item-embedding scale while u_seq
        # is LayerNorm-ed, and without it the fusion ignores e_m (the K vectors collapse) [OURS]
        self.interest_norm = nn.LayerNorm(width)
        if self.mode in ("mlp", "code"):
            inputs = d + width if self.mode == "mlp" else width
            self.fusion: nn.Module = nn.Sequential(nn.Linear(inputs, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))
        else:
            self.interest_proj = nn.Linear(width, d)
            self.fusion = nn.Linear(d + width, d)  # gate

    def forward(self, u_seq: torch.Tensor, interest_embeddings: torch.Tensor) -> torch.Tensor:
        """u_seq [B, d], e [B, K, C * code_dim] (the concatenated codes) -> [B, K, d]."""
        e = self.interest_norm(interest_embeddings)
        if self.mode == "code":
            # the user enters only through which tuples were generated: one vector per tuple, not per user [OURS]
            return self.fusion(e)
        u = u_seq[:, None].expand(-1, e.shape[1], -1)
        both = torch.cat([u, e], dim=-1)
        if self.mode == "mlp":
            return self.fusion(both)  # MLP on the concatenation [OURS]
        return u + torch.sigmoid(self.fusion(both)) * self.interest_proj(e)  # gated sum [OURS]


__all__ = ["InterestRetrieval"]
