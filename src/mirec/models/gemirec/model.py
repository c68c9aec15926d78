"""GemiRec as a mirec model: the dictionary (IDMM), the generator (MIPDM) and the retrieval module (MIRM) joined.

Three [OURS] defaults depart from a literal reading of the reference design (docs/models.md section 5.3) because
it collapsed the K interests (see :class:`GemiRec`); ``idmm_input_norm="none", beam_distinct_prefix=False,
mirm_teacher_prob=1.0`` restores it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from mirec.config import GemiRecConfig
from mirec.data.batching import Batch
from mirec.models.base import MultiInterestModel, TrainingOutput
from mirec.models.gemirec.dictionary import InterestDictionary
from mirec.models.gemirec.generator import InterestGenerator, diverse_selection, last_valid
from mirec.models.gemirec.retrieval import InterestRetrieval
from mirec.nn.regularizers import mean_pairwise_cosine

# parameter names before the three modules had a file each -> their names now (old run folders still load)
LEGACY_PREFIXES = {
    "quantizer.": "dictionary.quantizer.",
    "item_codes": "dictionary.item_codes",
    "codes_ready": "dictionary.codes_ready",
    "code_embedding.": "generator.code_embedding.",
    "sequence.": "generator.sequence.",
    "user_sequence.": "generator.user_sequence.",
    "prefix_embedding.": "generator.prefix_embedding.",
    "heads.": "generator.heads.",
    "interest_norm.": "retrieval.interest_norm.",
    "fusion.": "retrieval.fusion.",
    "interest_proj.": "retrieval.interest_proj.",
}


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
    paper = "GemiRec: Interest Quantization and Generation for Multi-Interest Recommendation (arXiv 2510.14626)"
    config_class = GemiRecConfig
    may_skip_parameters = True  # the teacher-forcing and generated-interest branches use different modules

    def __init__(self, config: GemiRecConfig, n_items: int):
        super().__init__(config, n_items)
        self.base: MultiInterestModel | None = None
        if config.base != "none":
            self.base = _base_model(config, n_items, self.item_embedding)
            self.requires_global_context = self.base.requires_global_context  # GIMIRec's graph for its base
        if config.generative:
            self.dictionary = InterestDictionary(config, n_items)  # IDMM [SECONDARY]
            self.generator = InterestGenerator(config)  # MIPDM [SECONDARY]
            self.retrieval = InterestRetrieval(config)  # MIRM [SECONDARY]
        self._register_load_state_dict_pre_hook(_rename_legacy_keys, with_module=True)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name == "global_context" and getattr(self, "base", None) is not None:
            object.__setattr__(self.base, "global_context", value)  # shared, registered here only

    @property
    def num_interests(self) -> int:
        """Interest vectors served: the base's K and the K generated ones (K alone without one of them)."""
        k = self.config.num_interests
        return k * ((self.base is not None) + bool(self.config.generative))

    @property
    def _isolated(self) -> bool:
        """Only the base's loss trains the item table (``item_table_gradient = "base"`` with a base)."""
        return self.base is not None and self.config.item_table_gradient == "base"

    def interest_groups(self) -> dict[str, slice]:
        """Over a base: the base's K extracted interests, then the K generated ones."""
        if not self.config.serves_generated_interests():
            return super().interest_groups()
        k = self.config.num_interests
        return {"extracted": slice(0, k), "generated": slice(k, 2 * k)}

    # ----------------------------------------------------------------- IDMM maintenance
    def refresh_assignments(self) -> None:
        """Re-assign every catalogue item to its interest tuple."""
        self.dictionary.refresh(self.output_embeddings())

    def on_step_end(self, step: int) -> None:
        """Dictionary maintenance: refresh the catalogue's item->interest assignment on a schedule."""
        every = self.config.maintenance_every
        if every > 0 and step % every == 0:
            self.refresh_assignments()

    def _history_codes(self, items: torch.Tensor) -> torch.Tensor:
        stale = self.dictionary.stale and self.config.refresh_on_eval and not self.training
        if not bool(self.dictionary.codes_ready) or stale:
            self.refresh_assignments()
        return self.dictionary.codes_of(items)

    def codebook_usage(self) -> dict[str, list[float]]:
        """Perplexity and used share per level over the catalogue's assignment (items 1..n), and tuples used."""
        if not bool(self.dictionary.codes_ready):
            self.refresh_assignments()
        return self.dictionary.usage()

    # ----------------------------------------------------------------- MIPDM
    def _encode(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal encoding of the history: (h [B, L, d] for MIPDM, u_seq [B, d] for MIRM)."""
        needs_codes = self.config.mipdm_input in ("item+code", "code")
        codes = self._history_codes(batch.items) if needs_codes else None
        items = self.embed_items(batch.items)
        if self._isolated:  # the generator's losses stay off the base's item table
            items = items.detach()
        return self.generator.encode(items, codes, batch.mask)

    def code_log_probs(self, h: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Teacher-forced log p(m | h): h [..., d], codes [..., C] -> [...]."""
        return self.generator.code_log_probs(h, codes)

    def beam_search(
        self, h: torch.Tensor, k: int, beam_width: int | None = None, distinct_prefix: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k code tuples by log p(m|h): h [B, d] -> (codes [B, k, C], logp [B, k]); see the generator. With
        ``beam_diversity`` > 0 (and distinct first codes) the k are chosen from the first-code candidates by
        maximal marginal relevance on the cosine of their interest embeddings as the fusion reads them [OURS]."""
        weight = self.config.beam_diversity
        distinct = self.config.beam_distinct_prefix if distinct_prefix is None else distinct_prefix
        if weight <= 0.0 or not distinct:  # an explicit distinct_prefix=False asks for the plain top-k beam
            return self.generator.beam_search(h, k, beam_width, distinct_prefix)
        width = max(beam_width or self.config.beam_width, k)
        candidates, logp = self.generator.first_code_candidates(h, width)
        order, chosen_logp = diverse_selection(logp, F.normalize(self._fusion_input(candidates), dim=-1), k, weight)
        return candidates.gather(1, order[..., None].expand(-1, -1, candidates.shape[-1])), chosen_logp

    # ----------------------------------------------------------------- MIRM
    def _fusion_input(self, codes: torch.Tensor) -> torch.Tensor:
        """The normalised interest embedding the fusion reads for each tuple: codes [..., C] -> [..., C * D]."""
        return self.retrieval.interest_norm(self.dictionary.quantizer.lookup(codes))

    def interest_vectors(self, u_seq: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """u_m = f(u_seq, e_m), e_m = concat of the tuple's codes: u_seq [B, d], codes [B, K, C] -> [B, K, d]."""
        # [OURS] the codebooks are trained by the IDMM only
        return self.retrieval(u_seq, self.dictionary.quantizer.lookup(codes).detach())

    # ----------------------------------------------------------------- model contract
    def forward(self, batch: Batch) -> torch.Tensor:
        """Serving: the base's K interests (with a base), then the user vectors of the K most probable interest
        tuples (beam search): [B, K or 2K, d]."""
        if not self.config.generative:
            assert self.base is not None
            return self.base(batch)
        h, u_seq = self._encode(batch)
        codes, _ = self.beam_search(last_valid(h, batch.mask), self.config.num_interests)
        generated = self.interest_vectors(u_seq, codes)
        return generated if self.base is None else torch.cat([self.base(batch), generated], dim=1)

    def generate(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The K generated interest tuples [B, K, C] and their log-probabilities [B, K]."""
        h, _ = self._encode(batch)
        return self.beam_search(last_valid(h, batch.mask), self.config.num_interests)

    @torch.no_grad()
    def diagnostics(self, batch: Batch, targets: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per user: the share of its targets whose interest tuple, up to level c, is the prefix of one of the
        K generated tuples (``generator_hit_l{c}``); the last level = the target's whole tuple was generated.
        And how alike the K generated tuples are before the fusion: the mean pairwise cosine of their first-level
        code vectors (``generated_first_code_cosine``) and of their normalised code embeddings, the fusion's
        input (``generated_code_cosine``); the fused vectors' cosine is in the collapse report."""
        if not self.config.generative:
            return {}
        generated, _ = self.generate(batch)  # [B, K, C]
        first_codes = self.dictionary.quantizer.codebooks[0][generated[..., 0]]  # [B, K, D]
        similarity = {
            "generated_first_code_cosine": mean_pairwise_cosine(first_codes),
            "generated_code_cosine": mean_pairwise_cosine(self._fusion_input(generated)),
        }
        lengths = torch.tensor([len(t) for t in targets], device=generated.device)
        user = torch.repeat_interleave(torch.arange(len(targets), device=generated.device), lengths)
        codes = self.dictionary.codes_of(torch.cat(targets).to(generated.device))  # [T, C]
        same = (generated[user] == codes[:, None]).long().cumprod(-1).bool()  # [T, K, C]: prefix match to level c
        hit = same.any(1).double()  # [T, C]
        per_user = torch.zeros(len(targets), hit.shape[1], dtype=torch.float64, device=hit.device)
        per_user.index_add_(0, user, hit)
        per_user /= lengths.clamp(min=1)[:, None]
        return {**{f"generator_hit_l{c + 1}": per_user[:, c] for c in range(hit.shape[1])}, **similarity}

    def _code_cross_entropy(
        self, batch: Batch, h: torch.Tensor, h_last: torch.Tensor, target_codes: torch.Tensor
    ) -> torch.Tensor:
        """MIPDM's cross-entropy of the next item's code tuple: the target's from the last state, or (with
        mipdm_all_positions) history item t+1's (its catalogue assignment) from every state t."""
        if not self.config.mipdm_all_positions:
            return -self.code_log_probs(h_last, target_codes).mean()
        nxt = torch.cat([self.dictionary.codes_of(batch.items[:, 1:]), target_codes[:, None]], 1)
        last = (batch.mask.sum(1).long() - 1).clamp(min=0)
        nxt[torch.arange(len(last), device=last.device), last] = target_codes
        logp = self.code_log_probs(h, nxt)
        return -(logp * batch.mask).sum() / batch.mask.sum().clamp(min=1)

    def training_output(self, batch: Batch) -> TrainingOutput:
        """u_{m*(target)} [B, d] (teacher forcing on the target's tuple), the auxiliary loss, and its terms plus
        the batch's code perplexity per level (codebook usage) for the log.

        aux = lambda_mipdm * CE(target tuple) + lambda_idmm * (codebook + beta * commitment + recon).
        """
        if batch.targets is None:
            raise ValueError("GemiRec.training_output: the batch has no targets")
        if not self.config.generative:
            assert self.base is not None
            return self.base.training_output(batch)
        pieces = [batch.targets, batch.items[batch.mask > 0]]
        extra = self.config.idmm_uniform_items
        if extra > 0 and self.training:  # [OURS] cover the catalogue, not only the popular batch items
            pieces.append(torch.randint(1, self.n_items + 1, (extra,), device=batch.items.device))
        ids, inverse = torch.unique(torch.cat(pieces), return_inverse=True)
        quant = self.dictionary.quantize(self.embed_items(ids))  # IDMM on sg[v] of the batch's items (EMA update)
        target_codes = quant.codes[inverse[: len(batch.targets)]]  # m*(target), fresh assignment
        h, u_seq = self._encode(batch)
        h_last = last_valid(h, batch.mask)
        ce = self._code_cross_entropy(batch, h, h_last, target_codes)
        teacher = self.config.mirm_teacher_prob
        diversity = self.config.generated_diversity
        isolated = self._isolated
        if teacher > 0.0:
            user = self.interest_vectors(u_seq, target_codes[:, None])[:, 0]  # teacher forcing (5.3 item 4)
        if teacher < 1.0 or diversity > 0.0:
            # [OURS] the K generated tuples the model serves with (beam, no gradient through the search)
            with torch.no_grad():
                generated, _ = self.beam_search(h_last, self.config.num_interests)
            interests = self.interest_vectors(u_seq, generated)
        if teacher < 1.0:
            # [OURS] train the fusion on the interests it serves with, read out by the largest inner product with
            # the target (ComiRec); each row keeps the teacher-forced vector with probability mirm_teacher_prob.
            target_vectors = self.output_embeddings(batch.targets)
            if self.base is not None and not isolated:  # [OURS] one readout over the base's and the generated
                read = self.readout(torch.cat([self.base(batch), interests], dim=1), target_vectors)
            else:  # the generated interests' own readout (isolated: scored against a detached table)
                read = self.readout(interests, target_vectors.detach())
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
            **self.dictionary.batch_perplexity(quant.codes),
        }
        if diversity > 0.0:  # [OURS] push the generated interests apart (they were near-duplicates, 16d)
            generated_cosine = mean_pairwise_cosine(interests).mean()
            aux = aux + diversity * generated_cosine
            terms["generated_cosine"] = generated_cosine.detach()
        if isolated:  # the base trains on its own readout exactly as alone; the generated rows beside it
            assert self.base is not None
            base = self.base.training_output(batch)
            if base.aux_loss is not None:
                aux = aux + base.aux_loss
            return TrainingOutput(base.user_vectors, aux, {**base.terms, **terms}, side_user_vectors=user)
        return TrainingOutput(user, aux, terms)


def _base_model(config: GemiRecConfig, n_items: int, item_embedding: torch.nn.Module) -> MultiInterestModel:
    """The base model with its own default options and this model's shared ones, reading the wrapper's item
    table: one table, registered (and saved) once, as ``item_embedding``."""
    from mirec.models import get_model_class

    cls = get_model_class(config.base)
    shared = {k: getattr(config, k) for k in ("embedding_dim", "num_interests", "maxlen", "readout_power")}
    base = cls(cls.config_class(name=config.base, **shared), n_items)
    del base.item_embedding
    object.__setattr__(base, "item_embedding", item_embedding)  # read by the base, owned by the wrapper
    return base


def _rename_legacy_keys(module: Any, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """load_state_dict pre-hook: rename a pre-split GemiRec state dict's keys in place."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        name = key[len(prefix) :]
        for old, new in LEGACY_PREFIXES.items():
            if name.startswith(old):
                state_dict[prefix + new + name[len(old) :]] = state_dict.pop(key)
                break


__all__ = ["GemiRec", "LEGACY_PREFIXES"]
