"""GemiRec: Interest Quantization and Generation for Multi-Interest Recommendation (Wu et al., arXiv 2510.14626).

Only the abstract and a partial method paragraph are public (docs/models.md section 5); this file
builds the labelled reference design of section 5.3. Labels: [PAPER] abstract, [SECONDARY] third-party
reviews, [OURS] our interpretation (each a config switch in :class:`GemiRecConfig`). Three [OURS] defaults
depart from a literal reading of section 5.3 because it collapsed the K interests (see :class:`GemiRec`);
``idmm_input_norm="none", beam_distinct_prefix=False, mirm_teacher_prob=1.0`` restores it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mirec.config import GemiRecConfig
from mirec.data.batching import Batch
from mirec.models.base import MultiInterestModel, TrainingOutput
from mirec.nn.quantizer import ResidualQuantizer


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
            raise ValueError(
                f"GemiRec: sequence length {length} exceeds maxlen {self.position.num_embeddings}"
            )
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


class GemiRec(MultiInterestModel):
    """GemiRec = IDMM (quantized interest dictionary) + MIPDM (generative interest model) + MIRM (retrieval).

    - [PAPER] three modules IDMM / MIPDM / MIRM; K interests are *generated* (not extracted) at serving;
      quantization is meant to separate the interests structurally (no interest collapse).
    - [SECONDARY] IDMM is a residual quantizer over sg[item embeddings]; interest = concat of level codes.
    - [SECONDARY] MIPDM is a causal (GPT-like) Transformer predicting the next interest; top-K at serving.
    - [SECONDARY] MIRM fuses the user embedding with the quantized interest embedding, one query per interest.
    - [OURS] level-by-level factorisation p(m_1|h) p(m_2|m_1,h)..., beam search, code embeddings as extra
      input, EMA/k-means/dead-code maintenance, decoder reconstruction, MLP/gated fusion, loss weights.
    - [OURS, against interest collapse; measured on Amazon Grocery, see the config comments]
      ``idmm_input_norm = "l2"``: unit-RMS encoder input, so that the Glorot-scale item table does not put the
      whole catalogue on one level-1 code; ``beam_distinct_prefix``: the K served tuples have pairwise-distinct
      first-level (coarse) codes, instead of sharing m_1 and differing only in a small residual code;
      ``mirm_teacher_prob = 0``: the fusion is trained on the generated interests it serves with.
    Training: the MIPDM cross-entropy is always teacher-forced on the target's own tuple. The retrieval user
    vector is, per row, either u_{m*(target)} (teacher forcing, reference design 5.3 item 4; probability
    ``mirm_teacher_prob``) or the hard readout over the K generated interests (ComiRec). Serving returns the user
    vectors of the K generated tuples.
    """

    name = "gemirec"
    paper = (
        "GemiRec: Interest Quantization and Generation for Multi-Interest Recommendation (arXiv 2510.14626)"
    )
    config_class = GemiRecConfig

    def __init__(self, config: GemiRecConfig, n_items: int):
        super().__init__(config, n_items)
        d, C, M = config.embedding_dim, config.idmm_levels, config.idmm_codes
        self.levels, self.codes_per_level = C, M
        # IDMM [SECONDARY]
        self.quantizer = ResidualQuantizer(
            d,
            config.idmm_code_dim,
            C,
            M,
            encoder=config.idmm_encoder,
            update=config.idmm_update,
            decay=config.idmm_decay,
            beta=config.idmm_beta,
            kmeans_iters=config.idmm_kmeans_iters,
            dead_threshold=config.idmm_dead_threshold,
            recon_weight=config.idmm_recon_weight,
            input_norm=config.idmm_input_norm,
        )
        # Catalogue item -> interest tuple (row 0 = padding); persisted so a loaded model serves identically.
        self.register_buffer("item_codes", torch.zeros(n_items + 1, C, dtype=torch.long))
        self.register_buffer("codes_ready", torch.zeros((), dtype=torch.bool))
        self._codes_stale = False
        # MIPDM: history-code embeddings (input) [OURS], causal encoder, level heads [OURS]
        self.code_embedding = nn.Embedding(C * M, d)
        nn.init.xavier_uniform_(self.code_embedding.weight)
        self.register_buffer("level_offsets", torch.arange(C) * M, persistent=False)
        self.sequence = CausalEncoder(
            d, config.maxlen, config.mipdm_layers, config.mipdm_heads, config.mipdm_dropout
        )
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
        # MIRM fusion f(u_seq, e_m) [OURS]
        width = C * config.idmm_code_dim
        # e_m is normalised before fusion: codes live at the (small, Glorot) item-embedding scale while u_seq
        # is LayerNorm-ed, and without it the fusion ignores e_m (the K vectors collapse) [OURS]
        self.interest_norm = nn.LayerNorm(width)
        if config.mirm_fusion == "mlp":
            self.fusion: nn.Module = nn.Sequential(
                nn.Linear(d + width, 2 * d), nn.ReLU(), nn.Linear(2 * d, d)
            )
        else:
            self.interest_proj = nn.Linear(width, d)
            self.fusion = nn.Linear(d + width, d)  # gate

    # ----------------------------------------------------------------- IDMM maintenance
    @torch.no_grad()
    def refresh_assignments(self, chunk: int = 65536) -> None:
        """Re-assign every catalogue item to its interest tuple (greedy RQ; k-means init if never trained)."""
        weights = self.output_embeddings()
        if not bool(self.quantizer.initialized):
            self.quantizer.initialize(weights[1:])
        codes = torch.cat(
            [self.quantizer.assign(weights[i : i + chunk]) for i in range(0, len(weights), chunk)]
        )
        self.item_codes.copy_(codes)
        self.codes_ready.fill_(True)
        self._codes_stale = False

    def on_step_end(self, step: int) -> None:
        """Dictionary maintenance: refresh the catalogue's item->interest assignment on a schedule."""
        every = self.config.maintenance_every
        if every > 0 and step % every == 0:
            self.refresh_assignments()

    def _history_codes(self, items: torch.Tensor) -> torch.Tensor:
        stale = self._codes_stale and self.config.refresh_on_eval and not self.training
        if not bool(self.codes_ready) or stale:
            self.refresh_assignments()
        return self.item_codes[items]

    def codebook_usage(self) -> dict[str, list[float]]:
        """Perplexity and used share per level over the catalogue's assignment (items 1..n)."""
        if not bool(self.codes_ready):
            self.refresh_assignments()
        usage = self.quantizer.codebook_usage(self.item_codes[1:])
        usage["tuples_used"] = [float(torch.unique(self.item_codes[1:], dim=0).shape[0])]
        return usage

    # ----------------------------------------------------------------- MIPDM
    def _encode(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal encoding of the history: (h [B, L, d] for MIPDM, u_seq [B, d] for MIRM)."""
        mode = self.config.mipdm_input
        x = torch.zeros(*batch.items.shape, self.config.embedding_dim, device=batch.items.device)
        item_vectors = self.embed_items(batch.items)
        if mode in ("item+code", "item"):
            x = x + item_vectors
        if mode in ("item+code", "code"):
            codes = self._history_codes(batch.items)  # [B, L, C]
            x = x + self.code_embedding(codes + self.level_offsets).sum(2)  # sum of per-level code embeddings
        h = self.sequence(x, batch.mask)
        if self.user_sequence is None:
            return h, last_valid(h, batch.mask)
        return h, last_valid(self.user_sequence(item_vectors, batch.mask), batch.mask)

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
        codes, i.e. near-duplicate interests. Here each of the G = min(M, width) most probable first codes
        runs its own beam (width ``width``) over the remaining levels; the best completion of each first code
        scores s(m_1) = max_rest log p(m_1, rest), and the k first codes with the largest s(m_1) are returned
        with their best completions. Exact when width >= M and width >= M^(C-2).
        """
        M, C = self.codes_per_level, self.levels
        groups = min(M, width)
        first_logp = F.log_softmax(self.heads[0](h), dim=-1)  # [B, M]
        scores, first = first_logp.topk(groups, dim=1)  # [B, G]
        g = (h[:, None] + self.prefix_embedding(first))[:, :, None]  # [B, G, beam=1, d]
        # one beam per first code over the remaining levels, keeping only its best completion
        prefix, scores = self._extend_beams(scores[..., None], first[..., None, None], g, 1, width, 1)
        best, order = scores[..., 0].topk(k, dim=1)  # best completion per first code -> top-k first codes
        codes = prefix[:, :, 0].gather(1, order[..., None].expand(-1, -1, C))
        return codes, best

    # ----------------------------------------------------------------- MIRM
    def interest_vectors(self, u_seq: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """u_m = f(u_seq, e_m), e_m = concat of the tuple's codes: u_seq [B, d], codes [B, K, C] -> [B, K, d]."""
        e = self.interest_norm(self.quantizer.lookup(codes).detach())  # [OURS] codebooks: IDMM only
        u = u_seq[:, None].expand(-1, codes.shape[1], -1)
        both = torch.cat([u, e], dim=-1)
        if self.config.mirm_fusion == "mlp":
            return self.fusion(both)  # MLP on the concatenation [OURS]
        return u + torch.sigmoid(self.fusion(both)) * self.interest_proj(e)  # gated sum [OURS]

    # ----------------------------------------------------------------- model contract
    def forward(self, batch: Batch) -> torch.Tensor:
        """Serving: the K most probable interest tuples (beam search) -> K user vectors [B, K, d]."""
        h, u_seq = self._encode(batch)
        codes, _ = self.beam_search(last_valid(h, batch.mask), self.num_interests)
        return self.interest_vectors(u_seq, codes)

    def generate(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The K generated interest tuples [B, K, C] and their log-probabilities [B, K]."""
        h, _ = self._encode(batch)
        return self.beam_search(last_valid(h, batch.mask), self.num_interests)

    def training_output(self, batch: Batch) -> TrainingOutput:
        """u_{m*(target)} [B, d] (teacher forcing on the target's tuple), the auxiliary loss, and its terms plus
        the batch's code perplexity per level (codebook usage) for the log.

        aux = lambda_mipdm * CE(target tuple) + lambda_idmm * (codebook + beta * commitment + recon).
        """
        if batch.targets is None:
            raise ValueError("GemiRec.training_output: the batch has no targets")
        pieces = [batch.targets, batch.items[batch.mask > 0]]
        extra = self.config.idmm_uniform_items
        if extra > 0 and self.training:  # [OURS] cover the catalogue, not only the popular batch items
            pieces.append(torch.randint(1, self.n_items + 1, (extra,), device=batch.items.device))
        ids, inverse = torch.unique(torch.cat(pieces), return_inverse=True)
        quant = self.quantizer(self.embed_items(ids))  # IDMM on sg[v] of the batch's items (EMA update here)
        if self.training:
            self._codes_stale = True
        target_codes = quant.codes[inverse[: len(batch.targets)]]  # m*(target), fresh assignment
        h, u_seq = self._encode(batch)
        h_last = last_valid(h, batch.mask)
        if self.config.mipdm_all_positions:
            # next-item codes at every position: history item t+1 (catalogue assignment), then the target
            nxt = torch.cat([self.item_codes[batch.items[:, 1:]], target_codes[:, None]], 1)
            last = (batch.mask.sum(1).long() - 1).clamp(min=0)
            rows = torch.arange(len(last), device=last.device)
            nxt[rows, last] = target_codes
            logp = self.code_log_probs(h, nxt)
            ce = -(logp * batch.mask).sum() / batch.mask.sum().clamp(min=1)
        else:
            ce = -self.code_log_probs(h_last, target_codes).mean()
        teacher = self.config.mirm_teacher_prob
        if teacher > 0.0:
            user = self.interest_vectors(u_seq, target_codes[:, None])[:, 0]  # teacher forcing (5.3 item 4)
        if teacher < 1.0:
            # [OURS] train the fusion on the interests it serves with: the K generated tuples (beam, no
            # gradient through the search), read out by the largest inner product with the target (ComiRec);
            # each row keeps the teacher-forced vector with probability mirm_teacher_prob.
            with torch.no_grad():
                generated, _ = self.beam_search(h_last, self.num_interests)
            interests = self.interest_vectors(u_seq, generated)
            read = self.readout(interests, self.output_embeddings(batch.targets).detach())
            if teacher <= 0.0:
                user = read
            else:
                keep = torch.rand(len(read), device=read.device) < teacher
                user = torch.where(keep[:, None], user, read)
        aux = self.config.lambda_mipdm * ce + self.config.lambda_idmm * quant.loss
        terms = {
            "mipdm_ce": ce.detach(),
            "commitment": quant.commitment.detach(),
            "codebook": quant.codebook_loss.detach(),
            "reconstruction": quant.reconstruction.detach(),
            **self._batch_code_perplexity(quant.codes),
        }
        return TrainingOutput(user, aux, terms)

    @torch.no_grad()
    def _batch_code_perplexity(self, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        """exp(entropy) of the code usage of this batch's items, per level (1 = collapsed onto one code)."""
        C, M = self.config.idmm_levels, self.config.idmm_codes
        counts = torch.bincount((codes + self.level_offsets).reshape(-1), minlength=C * M).view(C, M).double()
        p = counts / counts.sum(1, keepdim=True).clamp(min=1)
        perplexity = torch.exp(-(p * torch.log(p.clamp(min=1e-300))).sum(1))
        return {f"code_perplexity_l{c + 1}": perplexity[c] for c in range(C)}


__all__ = ["GemiRec", "GemiRecConfig"]
