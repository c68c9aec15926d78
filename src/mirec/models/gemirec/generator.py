"""GemiRec MIPDM: the generative model of the user's next interest (docs/models.md section 5).

[SECONDARY] a causal (GPT-like) Transformer over the history predicts the next item's interest; [OURS] the tuple
is factorised level by level, p(m | h) = prod_c p(m_c | m_<c, h), with the decoded levels' prefix embeddings
added to h, and served by a beam search over levels (optionally one interest per distinct first-level code).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mirec.config import GemiRecConfig


class CausalEncoder(nn.Module):
    """Small causal pre-LN Transformer over a left-aligned, right-padded sequence; returns all positions."""

    def __init__(self, d: int, maxlen: int, layers: int, heads: int, dropout: float):
        super().__init__()
        self.position = nn.Embedding(maxlen, d)
        nn.init.xavier_uniform_(self.position.weight)
        layer = nn.TransformerEncoderLayer(
            d, heads, dim_feedforward=4 * d, dropout=dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        if length > self.position.num_embeddings:
            raise ValueError(f"GemiRec: sequence length {length} exceeds maxlen {self.position.num_embeddings}")
        pos = self.position(torch.arange(length, device=x.device))
        h = self.dropout((x + pos[None]) * mask[..., None])
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=x.device), diagonal=1)
        # Padding is ignored by the key padding mask (and lies after every valid position anyway).
        h = self.encoder(h, mask=causal, src_key_padding_mask=mask <= 0, is_causal=True)
        return self.norm(h)


def last_valid(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hidden state at each row's last valid position (left-aligned sequences): [B, L, d] -> [B, d]."""
    last = (mask.sum(1).long() - 1).clamp(min=0)
    return h[torch.arange(len(h), device=h.device), last]


class InterestGenerator(nn.Module):
    """Encodes a history (item vectors and/or their interest tuples) and scores / decodes interest tuples."""

    def __init__(self, config: GemiRecConfig):
        super().__init__()
        d, C, M = config.embedding_dim, config.idmm_levels, config.idmm_codes
        self.config = config
        self.levels, self.codes_per_level = C, M
        # history-code embeddings (input) [OURS]: one table of C * M per-level codes, summed over levels
        self.code_embedding = nn.Embedding(C * M, d)
        nn.init.xavier_uniform_(self.code_embedding.weight)
        self.register_buffer("level_offsets", torch.arange(C) * M, persistent=False)
        self.sequence = CausalEncoder(d, config.maxlen, config.mipdm_layers, config.mipdm_heads, config.mipdm_dropout)
        self.user_sequence: CausalEncoder | None = None
        if config.user_encoder == "separate":
            self.user_sequence = CausalEncoder(
                d, config.maxlen, config.mipdm_layers, config.mipdm_heads, config.mipdm_dropout
            )
        # prefix embeddings P_c[m] of already-decoded levels, added to h for p(m_c | m_<c, h) [OURS]
        self.prefix_embedding = nn.Embedding(C * M, d)
        nn.init.xavier_uniform_(self.prefix_embedding.weight)
        self.heads = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, M)) for _ in range(C)
        )

    def encode(
        self, item_vectors: torch.Tensor, history_codes: torch.Tensor | None, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal encoding: item vectors [B, L, d] and/or tuples [B, L, C] (``config.mipdm_input``) ->
        (h [B, L, d] for the generator, u_seq [B, d] for the retrieval module)."""
        mode = self.config.mipdm_input
        x = torch.zeros_like(item_vectors)
        if mode in ("item+code", "item"):
            x = x + item_vectors
        if mode in ("item+code", "code"):
            assert history_codes is not None, f"mipdm_input = {mode!r} reads the history's interest tuples"
            x = x + self.code_embedding(history_codes + self.level_offsets).sum(2)
        h = self.sequence(x, mask)
        if self.user_sequence is None:
            return h, last_valid(h, mask)
        return h, last_valid(self.user_sequence(item_vectors, mask), mask)

    def code_log_probs(self, h: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Teacher-forced log p(m | h) = sum_c log p(m_c | m_<c, h): h [..., d], codes [..., C] -> [...]."""
        total = h.new_zeros(h.shape[:-1])
        g = h
        for c in range(self.levels):
            logp = F.log_softmax(self.heads[c](g), dim=-1)
            total = total + logp.gather(-1, codes[..., c : c + 1]).squeeze(-1)
            g = g + self.prefix_embedding(codes[..., c] + c * self.codes_per_level)
        return total

    def beam_search(
        self,
        h: torch.Tensor,
        k: int,
        beam_width: int | None = None,
        distinct_prefix: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k code tuples by log p(m|h) with a beam over levels: h [B, d] -> (codes [B, k, C], logp [B, k]).

        ``distinct_prefix`` (default ``config.beam_distinct_prefix``) returns the k best tuples whose
        first-level codes are pairwise distinct instead of the k best tuples overall (see
        :meth:`_distinct_prefix_beam`). Both are sorted by log-probability, best first.
        """
        width = max(beam_width or self.config.beam_width, k)
        distinct = self.config.beam_distinct_prefix if distinct_prefix is None else distinct_prefix
        if distinct:
            return self._distinct_prefix_beam(h, k, width)
        batch = h.shape[0]
        return self._extend_beams(
            h.new_zeros(batch, 1), torch.zeros(batch, 1, 0, dtype=torch.long, device=h.device), h[:, None], 0, width, k
        )

    def _extend_beams(
        self, scores: torch.Tensor, prefix: torch.Tensor, g: torch.Tensor, level: int, width: int, last_keep: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Beam over levels ``level``..C-1: scores [..., beam], prefix [..., beam, level], g [..., beam, d];
        ``width`` beams kept per level, ``last_keep`` at the last. Returns (prefix [..., keep, C], scores)."""
        M = self.codes_per_level
        for c in range(level, self.levels):
            logp = F.log_softmax(self.heads[c](g), dim=-1)  # [..., beam, M]
            total = (scores[..., None] + logp).flatten(-2)  # [..., beam * M]
            keep = min(width if c < self.levels - 1 else last_keep, total.shape[-1])
            scores, flat = total.topk(keep, dim=-1)
            parent, code = flat // M, flat % M
            prefix = torch.cat(
                [prefix.gather(-2, parent[..., None].expand(*parent.shape, prefix.shape[-1])), code[..., None]], -1
            )
            if c < self.levels - 1:
                g = g.gather(-2, parent[..., None].expand(*parent.shape, g.shape[-1])) + self.prefix_embedding(
                    code + c * M
                )
        return prefix, scores

    def _distinct_prefix_beam(self, h: torch.Tensor, k: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[OURS] The k best tuples with pairwise-distinct first-level codes (one interest per coarse code).

        A plain top-k beam returns tuples that mostly share m_1 and differ in the small last-level residual
        codes, i.e. near-duplicate interests. Here the k best of :meth:`first_code_candidates` are returned.
        """
        codes, scores = self.first_code_candidates(h, width)
        best, order = scores.topk(k, dim=1)  # best completion per first code -> top-k first codes
        return codes.gather(1, order[..., None].expand(-1, -1, codes.shape[-1])), best

    def first_code_candidates(self, h: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The best tuple of each of the G = min(M, width) most probable first codes: h [B, d] -> (codes
        [B, G, C], log p [B, G]). Each first code runs its own beam (width ``width``) over the remaining levels
        and keeps its best completion, of score max_rest log p(m_1, rest). Exact when width >= M and
        width >= M^(C-2)."""
        groups = min(self.codes_per_level, width)
        first_logp = F.log_softmax(self.heads[0](h), dim=-1)  # [B, M]
        scores, first = first_logp.topk(groups, dim=1)  # [B, G]
        g = (h[:, None] + self.prefix_embedding(first))[:, :, None]  # [B, G, beam=1, d]
        prefix, scores = self._extend_beams(scores[..., None], first[..., None, None], g, 1, width, 1)
        return prefix[:, :, 0], scores[..., 0]


def diverse_selection(
    scores: torch.Tensor, unit: torch.Tensor, k: int, weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximal marginal relevance over candidates: scores [B, G] (log p), unit [B, G, D] (unit vectors) -> the
    indices [B, k] of the greedily chosen candidates, in choice order, and their scores [B, k]. Each step picks
    argmax_g scores_g - weight * max_{chosen c} cos(g, c) (the first pick is the most probable). Vectorised over
    users; the loop is over the k picks [OURS, after Carbonell & Goldstein 1998]."""
    batch, groups = scores.shape
    rows = torch.arange(batch, device=scores.device)
    gram = unit @ unit.transpose(1, 2)  # [B, G, G]
    closest = torch.zeros_like(scores)  # max cosine to the chosen ones (none chosen: no penalty)
    free = torch.ones_like(scores, dtype=torch.bool)
    picks = []
    for _ in range(min(k, groups)):
        pick = torch.where(free, scores - weight * closest, torch.full_like(scores, float("-inf"))).argmax(1)
        picks.append(pick)
        free[rows, pick] = False
        sim = gram[rows, pick]  # [B, G]
        closest = sim if len(picks) == 1 else torch.maximum(closest, sim)
    order = torch.stack(picks, 1)
    return order, scores.gather(1, order)


__all__ = ["CausalEncoder", "InterestGenerator", "diverse_selection", "last_valid"]
