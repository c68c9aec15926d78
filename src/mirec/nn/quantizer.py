"""Residual quantizer (RQ-VAE style) for GemiRec's Interest Dictionary Maintenance Module (IDMM).

Provenance labels (see docs/models.md section 5): [PAPER] the GemiRec abstract, [SECONDARY] the
third-party reviews of the method (section 5.1), [OURS] our engineering choices (section 5.3), each a switch.

- [SECONDARY] r_1 = z_enc(sg[v]); m_c = argmin_j ||r_c - e_c^j||^2; r_{c+1} = r_c - sg[e_c^{m_c}];
  interest embedding = concat(e_1^{m_1}, ..., e_C^{m_C}) (width C * code_dim).
- [OURS] input_norm "l2": sg[v] rescaled to norm sqrt(D) before z_enc (see :meth:`prepare_input`).
- [OURS] z_enc: "mlp" (D -> D -> code_dim), "linear" or "identity"; optional decoder reconstructing sg[v]
  from the straight-through concat (the "VAE" part; weight 0 disables it); commitment beta = 0.25
  (VQ-VAE default); codebooks k-means initialised on the first batch, EMA-updated (decay 0.99, Laplace
  smoothing as VQ-VAE-2 / Sonnet) or gradient-updated (codebook loss ||sg[r_c] - e||^2); codes whose EMA
  usage falls under ``dead_threshold`` are re-seeded from current residuals of their level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ENCODERS = ("mlp", "linear", "identity")
UPDATES = ("ema", "grad")
INPUT_NORMS = ("none", "l2")


@dataclass
class QuantizerOutput:
    """Result of quantising N vectors with C levels."""

    codes: torch.Tensor  # [N, C] int64 code index per level
    quantized: torch.Tensor  # [N, C * code_dim] concat of chosen codes (straight-through to the encoder)
    residuals: torch.Tensor  # [N, C, code_dim] r_c per level (before subtracting level c's code)
    commitment: torch.Tensor  # scalar: sum_c mean ||r_c - sg[e_c]||^2 (not yet multiplied by beta)
    codebook_loss: torch.Tensor  # scalar: sum_c mean ||sg[r_c] - e_c||^2 (0 with EMA codebooks)
    reconstruction: torch.Tensor  # scalar: mean ||sg[v] - dec(concat)||^2 (0 without decoder)
    loss: torch.Tensor  # codebook_loss + beta * commitment + recon_weight * reconstruction


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Lloyd's k-means (vectorised): init on k distinct random rows (with replacement + jitter when N < k)."""
    n = x.shape[0]
    if n == 0:
        raise ValueError("kmeans: no data points to initialise the codebook from")
    if n >= k:
        idx = torch.randperm(n, generator=generator, device="cpu")[:k].to(x.device)
        centers = x[idx].clone()
    else:
        idx = torch.randint(n, (k,), generator=generator, device="cpu").to(x.device)
        noise = torch.randn(k, x.shape[1], generator=generator, device="cpu").to(x)
        centers = x[idx] + 1e-3 * (x.std() + 1e-6) * noise
    for _ in range(iters):
        assign = torch.cdist(x, centers).argmin(dim=1)
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        # Empty clusters keep their previous centre.
        centers = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centers)
    return centers


class ResidualQuantizer(nn.Module):
    """C-level residual quantizer with M codes per level; codebooks persist in the state_dict.

    Use :meth:`forward` at training (losses; EMA/k-means/dead-code updates when ``self.training``) and
    :meth:`assign` for pure nearest-code assignment (catalogue maintenance, serving).
    """

    def __init__(
        self,
        input_dim: int,
        code_dim: int,
        levels: int = 2,
        codes: int = 64,
        *,
        encoder: str = "mlp",
        update: str = "ema",
        decay: float = 0.99,
        beta: float = 0.25,
        eps: float = 1e-5,
        kmeans_iters: int = 10,
        dead_threshold: float = 1.0,
        recon_weight: float = 0.0,
        input_norm: str = "none",
    ):
        super().__init__()
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"ResidualQuantizer: input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
        if encoder not in ENCODERS:
            raise ValueError(f"ResidualQuantizer: encoder must be one of {ENCODERS}, got {encoder!r}")
        if update not in UPDATES:
            raise ValueError(f"ResidualQuantizer: update must be one of {UPDATES}, got {update!r}")
        if encoder == "identity" and code_dim != input_dim:
            raise ValueError(
                f"ResidualQuantizer: encoder='identity' needs code_dim == input_dim ({code_dim} != {input_dim})"
            )
        if levels < 1 or codes < 1 or code_dim < 1:
            raise ValueError(
                f"ResidualQuantizer: levels, codes and code_dim must be >= 1 (got {levels}, {codes}, {code_dim})"
            )
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ResidualQuantizer: decay must be in [0, 1), got {decay}")
        self.input_dim, self.code_dim, self.levels, self.num_codes = input_dim, code_dim, levels, codes
        self.update, self.decay, self.beta, self.eps = update, decay, beta, eps
        self.kmeans_iters, self.dead_threshold, self.recon_weight = kmeans_iters, dead_threshold, recon_weight
        self.input_norm = input_norm
        # [OURS] interest encoder z_enc.
        if encoder == "mlp":
            self.encoder: nn.Module = nn.Sequential(
                nn.Linear(input_dim, input_dim), nn.ReLU(), nn.Linear(input_dim, code_dim)
            )
        elif encoder == "linear":
            self.encoder = nn.Linear(input_dim, code_dim)
        else:
            self.encoder = nn.Identity()
        # [OURS] RQ-VAE decoder C*code_dim -> D, only when the reconstruction term is used.
        self.decoder: nn.Module | None = None
        if recon_weight > 0:
            width = levels * code_dim
            self.decoder = nn.Sequential(nn.Linear(width, input_dim), nn.ReLU(), nn.Linear(input_dim, input_dim))
        init = torch.randn(levels, codes, code_dim) / math.sqrt(code_dim)
        if update == "grad":
            self.codebooks = nn.Parameter(init)
        else:
            self.register_buffer("codebooks", init)
        # EMA statistics (also the usage counts for dead-code detection in "grad" mode).
        self.register_buffer("cluster_size", torch.zeros(levels, codes))
        self.register_buffer("embed_sum", init.clone())
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.reseeded_total = [0] * levels  # diagnostics: dead codes re-seeded per level (not persisted)

    # ----------------------------------------------------------------- assignment
    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """sg[v], optionally rescaled to norm sqrt(input_dim) ("l2") [OURS]; also the decoder's target.

        Item tables start at Glorot scale (norm ~0.1 for 64-d), so a default-initialised encoder's output is
        dominated by its bias: every item lands in a tiny ball far from the origin, whose common drift under
        training moves the whole catalogue onto one code. Unit-RMS inputs make the encoder's output spread
        comparable to its offset (and the reconstruction term comparable to the commitment term).
        """
        x = x.detach()
        if self.input_norm == "l2":
            x = F.normalize(x, dim=-1) * math.sqrt(self.input_dim)
        return x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """r_1 = z_enc(sg[v])  [SECONDARY]: the item vectors are detached."""
        return self.encoder(self.prepare_input(x))

    def _nearest(self, r: torch.Tensor, level: int) -> torch.Tensor:
        """m_c = argmin_j ||r_c - e_c^j||^2  [SECONDARY]."""
        book = self.codebooks[level].detach()
        dist = (r * r).sum(1, keepdim=True) - 2 * r @ book.T + (book * book).sum(1)[None]
        return dist.argmin(dim=1)

    @torch.no_grad()
    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """Greedy residual code assignment [N, C] of item vectors x [N, input_dim]; no state changes."""
        r = self.encode(x)
        codes = []
        for c in range(self.levels):
            m = self._nearest(r, c)
            codes.append(m)
            r = r - self.codebooks[c][m]  # r_{c+1} = r_c - sg[e_c^{m_c}]
        return torch.stack(codes, dim=1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Interest embedding e_m = concat_c e_c^{m_c} [SECONDARY concat form]: [..., C] -> [..., C*code_dim]."""
        levels = torch.arange(self.levels, device=codes.device)
        return self.codebooks[levels, codes].flatten(-2)

    # ----------------------------------------------------------------- codebook maintenance
    @torch.no_grad()
    def set_codebooks(self, codebooks: torch.Tensor, counts: torch.Tensor | None = None) -> None:
        """Overwrite the codebooks (and EMA statistics) and mark the quantizer initialised."""
        if codebooks.shape != self.codebooks.shape:
            raise ValueError(
                f"set_codebooks: expected shape {tuple(self.codebooks.shape)}, got {tuple(codebooks.shape)}"
            )
        counts = torch.ones(self.levels, self.num_codes) if counts is None else counts
        self.codebooks.data.copy_(codebooks)
        self.cluster_size.copy_(counts)
        self.embed_sum.copy_(codebooks * counts[..., None].to(codebooks))
        self.initialized.fill_(True)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """[OURS] k-means on the first batch, level by level on the residuals (a few Lloyd iterations)."""
        r = self.encode(x)
        books, counts = [], []
        for _ in range(self.levels):
            centers = kmeans(r, self.num_codes, self.kmeans_iters)
            m = torch.cdist(r, centers).argmin(dim=1)
            books.append(centers)
            counts.append(torch.bincount(m, minlength=self.num_codes).to(r.dtype))
            r = r - centers[m]
        counts_t = torch.stack(counts)
        # Start every code at least at the dead threshold so that init-time empty clusters are not
        # re-seeded before they had a chance to be used.
        self.set_codebooks(torch.stack(books), counts_t.clamp(min=max(self.dead_threshold, 1.0)))

    @torch.no_grad()
    def _ema_update(self, level: int, r: torch.Tensor, m: torch.Tensor) -> None:
        """EMA codebook update (VQ-VAE-2): N <- g N + (1-g) n; S <- g S + (1-g) sum r; e = S / smoothed N."""
        onehot_counts = torch.bincount(m, minlength=self.num_codes).to(r.dtype)
        sums = torch.zeros(self.num_codes, self.code_dim, dtype=r.dtype, device=r.device).index_add_(0, m, r)
        self.cluster_size[level].mul_(self.decay).add_(onehot_counts, alpha=1 - self.decay)
        self.embed_sum[level].mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size[level]
        total = n.sum()
        smoothed = (n + self.eps) / (total + self.num_codes * self.eps) * total  # Laplace smoothing
        self.codebooks[level].copy_(self.embed_sum[level] / smoothed[:, None])

    @torch.no_grad()
    def _usage_update(self, level: int, m: torch.Tensor) -> None:
        counts = torch.bincount(m, minlength=self.num_codes).to(self.cluster_size.dtype)
        self.cluster_size[level].mul_(self.decay).add_(counts, alpha=1 - self.decay)

    @torch.no_grad()
    def reseed_dead_codes(self, level: int, r: torch.Tensor) -> int:
        """[OURS] Codes with EMA usage < dead_threshold get a random current residual of their level."""
        dead = torch.nonzero(self.cluster_size[level] < self.dead_threshold).flatten()
        if len(dead) == 0 or len(r) == 0:
            return 0
        pick = torch.randint(len(r), (len(dead),), device="cpu").to(r.device)
        fresh = r[pick].detach()
        self.codebooks.data[level, dead] = fresh
        count = max(self.dead_threshold, 1.0)
        self.cluster_size[level, dead] = count
        self.embed_sum[level, dead] = fresh * count
        self.reseeded_total[level] += len(dead)
        return len(dead)

    # ----------------------------------------------------------------- training forward
    def forward(self, x: torch.Tensor) -> QuantizerOutput:
        """Quantise x [N, input_dim]; in training mode also initialise / EMA-update / re-seed codebooks."""
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"ResidualQuantizer: expected [N, {self.input_dim}] input, got {tuple(x.shape)}")
        if self.training and not bool(self.initialized):
            self.initialize(x)
        r = self.encode(x)
        codes, chosen, residuals = [], [], []
        commitment = x.new_zeros(())
        codebook_loss = x.new_zeros(())
        for c in range(self.levels):
            m = self._nearest(r, c)
            e = self.codebooks[c][m]  # gradient reaches the codebook only in "grad" mode
            commitment = commitment + F.mse_loss(r, e.detach())  # ||r_c - sg[e_c]||^2
            if self.update == "grad":
                codebook_loss = codebook_loss + F.mse_loss(r.detach(), e)  # ||sg[r_c] - e_c||^2
            residuals.append(r)
            codes.append(m)
            chosen.append(r + (e - r).detach())  # straight-through estimator for the decoder input
            if self.training:
                if self.update == "ema":
                    self._ema_update(c, r.detach(), m)
                else:
                    self._usage_update(c, m)
                self.reseed_dead_codes(c, r.detach())
            r = r - e.detach()  # r_{c+1} = r_c - sg[e_c^{m_c}]  [SECONDARY]
        quantized = torch.cat(chosen, dim=1)
        reconstruction = x.new_zeros(())
        if self.decoder is not None:
            reconstruction = F.mse_loss(self.decoder(quantized), self.prepare_input(x))
        loss = codebook_loss + self.beta * commitment + self.recon_weight * reconstruction
        return QuantizerOutput(
            codes=torch.stack(codes, dim=1),
            quantized=quantized,
            residuals=torch.stack(residuals, dim=1),
            commitment=commitment,
            codebook_loss=codebook_loss,
            reconstruction=reconstruction,
            loss=loss,
        )

    # ----------------------------------------------------------------- diagnostics
    @torch.no_grad()
    def codebook_usage(self, codes: torch.Tensor | None = None) -> dict[str, list[float]]:
        """Per level: perplexity exp(H(p)) of code usage and share of codes used.

        From ``codes`` [N, C] when given (e.g. the catalogue's assignment), else from the EMA usage counts
        (a code counts as used when its EMA count is >= dead_threshold).
        """
        if codes is not None:
            counts = torch.stack(
                [torch.bincount(codes[:, c], minlength=self.num_codes).double() for c in range(self.levels)]
            )
            used = counts > 0
        else:
            counts = self.cluster_size.double()
            used = counts >= self.dead_threshold
        p = counts / counts.sum(1, keepdim=True).clamp(min=1e-12)
        entropy = -(p * torch.log(p.clamp(min=1e-300))).sum(1)
        return {
            "perplexity": torch.exp(entropy).tolist(),
            "used_share": used.double().mean(1).tolist(),
        }
