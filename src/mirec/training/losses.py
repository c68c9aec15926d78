"""The training loss, chosen once from ``train.loss`` (docs/models.md 2.4, 6): a callable
``loss(user_vectors [B, d], targets [B], detach_items=False) -> mean loss`` scoring against the model's items.

- ``sampled``: TF ``sampled_softmax_loss`` as ComiRec trains (``num_negatives_factor`` x batch negatives from the
  configured candidate sampler, log Q subtracted, accidental hits removed unless told otherwise); with
  ``hard_negative_beta``, REMI's reweighting of those negatives;
- ``full``: cross-entropy over the whole catalogue; also what ``sampled`` runs as when the training catalogue has
  at most ``full_softmax_max_items`` items (:func:`resolved_loss`);
- ``gbce``: gSASRec's generalised BCE over the same sampled negatives (``gbce_t``);
- with ``row_negatives`` = N > 0, ``sampled`` and ``gbce`` draw N negatives for every row instead of one shared set;
- ``inbatch``: the batch's other targets as negatives.

``detach_items``: no gradient reaches the item table (GemiRec's side readout over a base).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from mirec.config import TrainConfig
from mirec.nn.candidate_sampling import CandidateSampler, make_candidate_sampler
from mirec.nn.sampled_softmax import (
    full_softmax_loss,
    gbce_from_logits,
    gbce_loss,
    hard_negative_sampled_softmax_loss,
    inbatch_softmax_loss,
    row_sampled_logits,
    sampled_softmax_loss,
)

OutputFn = Callable[[torch.Tensor | None], torch.Tensor]


def resolved_loss(tc: TrainConfig, n_items: int) -> str:
    """``train.loss``, or "full" for a "sampled" run whose catalogue ``train.full_softmax_max_items`` covers."""
    if tc.loss == "sampled" and 0 < n_items <= tc.full_softmax_max_items:
        return "full"
    return tc.loss


class TrainingLoss:
    """The configured loss of one run; ``negatives`` and ``num_sampled`` are the sampled loss's draws."""

    def __init__(self, tc: TrainConfig, model: torch.nn.Module, n_items: int, generator: torch.Generator):
        self.tc, self.model, self.generator = tc, model, generator
        self.kind = resolved_loss(tc, n_items)
        self.n_items = n_items  # ids 1..n_items are trained on: held-out and table-only items are never negatives
        # TF/ComiRec: num_classes = item table size (ids 0..n_items), so padding 0 may be drawn as a negative;
        # train.sampler_exclude_padding = true draws ids 1..n_items only.
        n_classes = n_items + (0 if tc.sampler_exclude_padding else 1)
        offset = 1 if tc.sampler_exclude_padding else 0
        self.negatives: CandidateSampler = make_candidate_sampler(tc.negative_sampler, n_classes, offset=offset)
        self.num_sampled = tc.num_negatives_factor * tc.batch_size
        shared = tc.row_negatives == 0
        if self.kind in ("sampled", "gbce") and shared and tc.negatives_unique and self.num_sampled > n_classes:
            raise ValueError(
                f"train.num_negatives_factor * train.batch_size = {self.num_sampled} unique negatives > "
                f"{n_classes} classes; lower train.num_negatives_factor or use train.loss = 'full'"
            )

    def items(self, detach: bool) -> OutputFn:
        """The model's output item vectors (by ids, or all for None), detached when asked."""
        model, n_items = self.model, self.n_items

        def vectors(ids: torch.Tensor | None = None) -> torch.Tensor:
            if ids is None:  # the training catalogue: items beyond it (cold, table-only) are not candidates
                ids = torch.arange(n_items + 1, device=model.item_embedding.weight.device)
            out = model.output_embeddings(ids)
            return out.detach() if detach else out

        return vectors

    def __call__(self, user_vectors: torch.Tensor, targets: torch.Tensor, detach_items: bool = False) -> torch.Tensor:
        items = self.items(detach_items)
        if self.kind == "full":
            return full_softmax_loss(user_vectors, targets, items)
        if self.kind == "inbatch":
            return inbatch_softmax_loss(user_vectors, targets, items)
        tc = self.tc
        if tc.row_negatives:
            return self.row_loss(user_vectors, targets, items)
        drawn = (self.negatives, self.num_sampled)
        options = {"remove_accidental_hits": tc.remove_accidental_hits, "unique": tc.negatives_unique}
        if self.kind == "gbce":
            return gbce_loss(user_vectors, targets, items, *drawn, tc.gbce_t, self.n_items, self.generator, **options)
        if tc.hard_negative_beta != 0:  # checked at load: only with train.loss = "sampled"
            beta = tc.hard_negative_beta
            return hard_negative_sampled_softmax_loss(
                user_vectors, targets, items, *drawn, beta, self.generator, **options
            )
        return sampled_softmax_loss(user_vectors, targets, items, *drawn, self.generator, **options)

    def row_loss(self, user_vectors: torch.Tensor, targets: torch.Tensor, items: OutputFn) -> torch.Tensor:
        """The sampled softmax or gBCE over negatives drawn for each row (``train.row_negatives``); gBCE's scores
        stay raw as on the shared path."""
        tc, gbce = self.tc, self.kind == "gbce"
        logits = row_sampled_logits(
            user_vectors, targets, items, self.negatives, tc.row_negatives, self.generator,
            remove_accidental_hits=tc.remove_accidental_hits, subtract_log_q=not gbce,
            catalogue_size=self.n_items + 1,  # the rows of items(None)
        )  # fmt: skip
        if gbce:
            return gbce_from_logits(logits, tc.gbce_t, self.n_items)
        return F.cross_entropy(logits, torch.zeros_like(targets, device=logits.device))


__all__ = ["TrainingLoss", "resolved_loss"]
