"""GemiRec IDMM: the shared quantized interest dictionary (docs/models.md section 5).

[SECONDARY] a residual quantizer over stop-gradient item embeddings (:class:`mirec.nn.quantizer.ResidualQuantizer`,
C levels of M codes, the interest embedding the concatenation of the level codes); [OURS] every catalogue item's
interest tuple is kept in a buffer, re-assigned on a schedule, so the generator reads the history's interests
without quantizing it at every step.
"""

from __future__ import annotations

import torch
from torch import nn

from mirec.config import GemiRecConfig
from mirec.nn.quantizer import QuantizerOutput, ResidualQuantizer


class InterestDictionary(nn.Module):
    """The quantizer plus the catalogue's item -> interest tuple assignment (row 0 = padding)."""

    def __init__(self, config: GemiRecConfig, n_items: int):
        super().__init__()
        self.levels, self.codes_per_level = config.idmm_levels, config.idmm_codes
        self.quantizer = ResidualQuantizer(
            config.embedding_dim,
            config.idmm_code_dim,
            config.idmm_levels,
            config.idmm_codes,
            encoder=config.idmm_encoder,
            update=config.idmm_update,
            decay=config.idmm_decay,
            beta=config.idmm_beta,
            kmeans_iters=config.idmm_kmeans_iters,
            dead_threshold=config.idmm_dead_threshold,
            recon_weight=config.idmm_recon_weight,
            input_norm=config.idmm_input_norm,
        )
        # persisted, so a loaded model serves with the assignment it was evaluated with
        self.register_buffer("item_codes", torch.zeros(n_items + 1, config.idmm_levels, dtype=torch.long))
        self.register_buffer("codes_ready", torch.zeros((), dtype=torch.bool))
        self.register_buffer("level_offsets", torch.arange(config.idmm_levels) * config.idmm_codes, persistent=False)
        self.stale = False  # quantizer updated since the last assignment

    def quantize(self, item_vectors: torch.Tensor) -> QuantizerOutput:
        """IDMM on sg[v] of a batch's items: fresh codes, the quantizer's losses (and its EMA update when training)."""
        out = self.quantizer(item_vectors)
        if self.training:
            self.stale = True
        return out

    @torch.no_grad()
    def refresh(self, item_table: torch.Tensor, chunk: int = 65536) -> None:
        """Re-assign every catalogue item (rows of ``item_table``, row 0 = padding) to its interest tuple (greedy
        RQ; k-means initialisation of the codebooks if never trained)."""
        if not bool(self.quantizer.initialized):
            self.quantizer.initialize(item_table[1:])
        codes = torch.cat([self.quantizer.assign(item_table[i : i + chunk]) for i in range(0, len(item_table), chunk)])
        self.item_codes.copy_(codes)
        self.codes_ready.fill_(True)
        self.stale = False

    def codes_of(self, items: torch.Tensor) -> torch.Tensor:
        """The assigned tuples [..., C] of catalogue ids (call :meth:`refresh` first)."""
        return self.item_codes[items]

    def flat_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Tuples [..., C] -> ids into a table of C * M per-level codes (level c's code m at c * M + m)."""
        return codes + self.level_offsets

    def usage(self) -> dict[str, list[float]]:
        """Perplexity and used share per level over the catalogue's assignment (items 1..n), and tuples used."""
        usage = self.quantizer.codebook_usage(self.item_codes[1:])
        usage["tuples_used"] = [float(torch.unique(self.item_codes[1:], dim=0).shape[0])]
        return usage

    @torch.no_grad()
    def batch_perplexity(self, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        """exp(entropy) of the code usage among ``codes`` [N, C], per level (1 = collapsed onto one code), as
        0-d tensors (no device sync) for the training log."""
        C, M = self.levels, self.codes_per_level
        counts = torch.bincount(self.flat_codes(codes).reshape(-1), minlength=C * M).view(C, M).double()
        p = counts / counts.sum(1, keepdim=True).clamp(min=1)
        perplexity = torch.exp(-(p * torch.log(p.clamp(min=1e-300))).sum(1))
        return {f"code_perplexity_l{c + 1}": perplexity[c] for c in range(C)}


__all__ = ["InterestDictionary"]
