"""Softmax losses for training: TensorFlow's ``tf.nn.sampled_softmax_loss`` (ComiRec/PIMI), full, in-batch.

ComiRec and PIMI call ``tf.nn.sampled_softmax_loss(weights=item_table, biases=zeros, labels=target,
inputs=user_vec, num_sampled=10 * batch, num_classes=n_items + 1)`` with TF's defaults: a
``log_uniform_candidate_sampler(unique=True, range_max=num_classes)`` shared by the whole batch,
``subtract_log_q=True`` and ``remove_accidental_hits=True`` (docs/models.md sections 2.4, 3.1, 6).
:func:`sampled_softmax_loss` reproduces ``_compute_sampled_logits`` + ``softmax_cross_entropy`` + the mean.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from mirec.nn.candidate_sampling import SMALL_ID_RANGE, CandidateSampler, SampledCandidates

OutputFn = Callable[[torch.Tensor | None], torch.Tensor]


def sampled_logits(
    user_vectors: torch.Tensor,
    target_ids: torch.Tensor,
    output_fn: OutputFn,
    candidates: SampledCandidates,
    remove_accidental_hits: bool = True,
    subtract_log_q: bool = True,
) -> torch.Tensor:
    """TF ``_compute_sampled_logits`` with zero biases: [B, 1 + S] logits, the true class in column 0."""
    inputs = _logit_inputs(user_vectors, target_ids, output_fn, candidates, subtract_log_q)
    true_logits = _true_logits(user_vectors, inputs)[:, None]
    sampled = _sampled_logits(user_vectors, inputs, remove_accidental_hits, candidates.distinct)
    return torch.cat([true_logits, sampled], dim=1)


@dataclass
class _LogitInputs:
    """What both logit blocks are computed from: output vectors, log Q terms, ids on the user vectors' device."""

    true_w: torch.Tensor  # [B, d]
    sampled_w: torch.Tensor  # [S, d]
    log_q_true: torch.Tensor  # [B] (zeros without subtract_log_q)
    log_q_sampled: torch.Tensor  # [S]
    sampled: torch.Tensor
    targets: torch.Tensor


def _logit_inputs(
    user_vectors: torch.Tensor,
    target_ids: torch.Tensor,
    output_fn: OutputFn,
    candidates: SampledCandidates,
    subtract_log_q: bool,
) -> _LogitInputs:
    device, dtype = user_vectors.device, user_vectors.dtype
    sampled = candidates.sampled.to(device)
    targets = target_ids.to(device)
    # One output_fn call for both blocks (a global-context model dedupes the ids itself and computes each row once).
    vectors = output_fn(torch.cat([targets, sampled]))
    if subtract_log_q:  # TF: logits - log Q(y), Q = the expected count
        log_q_true = torch.log(candidates.true_expected_count).to(device, dtype)
        log_q_sampled = torch.log(candidates.sampled_expected_count).to(device, dtype)
    else:
        log_q_true = user_vectors.new_zeros(len(targets))
        log_q_sampled = user_vectors.new_zeros(len(sampled))
    return _LogitInputs(vectors[: len(targets)], vectors[len(targets) :], log_q_true, log_q_sampled, sampled, targets)


def _true_logits(user_vectors: torch.Tensor, inputs: _LogitInputs) -> torch.Tensor:
    """[B] logits of the true classes."""
    return (user_vectors * inputs.true_w).sum(-1) - inputs.log_q_true


def _sampled_logits(
    user_vectors: torch.Tensor, inputs: _LogitInputs, remove_accidental_hits: bool, distinct: bool
) -> torch.Tensor:
    """[B, S] logits of the sampled classes (log Q fused into the matmul), accidental hits at -FLOAT_MAX."""
    logits = torch.addmm(-inputs.log_q_sampled[None, :], user_vectors, inputs.sampled_w.T)
    if not remove_accidental_hits:
        return logits
    floor = torch.finfo(logits.dtype).min
    sampled, targets = inputs.sampled, inputs.targets
    if not distinct:  # TF compute_accidental_hits with repeated ids: every copy of the row's label is a hit
        return logits.masked_fill_(sampled[None, :] == targets[:, None], floor)
    # Sampled ids are distinct, so a row has at most one hit (no [B, S] mask needed).
    hit, cols = _hit_columns(sampled, targets)
    rows = torch.arange(len(targets), device=logits.device)
    return logits.index_put_((rows, cols), torch.where(hit, logits.new_tensor(floor), logits[rows, cols]))


class _SampledSoftmaxCrossEntropy(torch.autograd.Function):
    """mean_b [logsumexp(true_b, sampled_b) - true_b] with a hand-written backward: the forward keeps
    exp(logit - max) in place of the [B, S] logits and the backward scales it into the softmax gradient, where
    autograd would recompute the exponentials and copy the [B, S] gradient through the hit masking."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, user_vectors, true_w, sampled_w, inputs: _LogitInputs, remove_accidental_hits: bool, distinct: bool
    ) -> torch.Tensor:
        # true_w and sampled_w are also passed on their own so that autograd routes their gradients
        true = _true_logits(user_vectors, inputs)
        exp_sampled = _sampled_logits(user_vectors, inputs, remove_accidental_hits, distinct)
        shift = torch.maximum(exp_sampled.amax(dim=1), true)
        exp_sampled.sub_(shift[:, None]).exp_()  # accidental hits: exp(-FLOAT_MAX - shift) = 0
        exp_true = torch.exp(true - shift)
        normaliser = exp_sampled.sum(dim=1).add_(exp_true)
        ctx.save_for_backward(user_vectors, true_w, sampled_w, exp_sampled, exp_true, normaliser)
        return (torch.log(normaliser) + shift - true).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        if getattr(ctx, "consumed", False):
            raise RuntimeError(
                "sampled_softmax_loss: a second backward through the same loss (retain_graph=True) is not "
                "supported; its backward turns the saved exponentials into the gradient in place"
            )
        ctx.consumed = True
        user_vectors, true_w, sampled_w, exp_sampled, exp_true, normaliser = ctx.saved_tensors
        scale = grad / len(user_vectors) / normaliser  # d mean / d logit = softmax / B
        grad_sampled = exp_sampled.mul_(scale[:, None])  # in place: no fresh [B, S] buffer per step
        grad_true = exp_true * scale - grad / len(user_vectors)  # (softmax_true - 1) / B
        grad_user = torch.addmm(grad_true[:, None] * true_w, grad_sampled, sampled_w)
        return grad_user, grad_true[:, None] * user_vectors, grad_sampled.T @ user_vectors, None, None, None


def _hit_columns(sampled: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For distinct ``sampled`` ids: whether each target was sampled, and its column (0 where not). CPU with a
    small id range: an id -> column table; otherwise binary search (no host synchronisation on a GPU)."""
    if sampled.device.type == "cpu":
        table_size = int(torch.maximum(sampled.max(), targets.max())) + 1
        if table_size <= SMALL_ID_RANGE:
            column = torch.full((table_size,), -1, dtype=torch.int64)
            column[sampled] = torch.arange(len(sampled))
            cols = column[targets]
            return cols >= 0, cols.clamp_min(0)
    order = torch.argsort(sampled)
    in_order = sampled[order]
    position = torch.searchsorted(in_order, targets).clamp_max(len(sampled) - 1)
    return in_order[position] == targets, order[position]


def sampled_softmax_loss(
    user_vectors: torch.Tensor,
    target_ids: torch.Tensor,
    output_fn: OutputFn,
    sampler: CandidateSampler,
    num_sampled: int,
    generator: torch.Generator | None = None,
    remove_accidental_hits: bool = True,
    subtract_log_q: bool = True,
    unique: bool = True,
) -> torch.Tensor:
    """Mean of TF ``sampled_softmax_loss`` over the batch (ComiRec: ``reduce_mean(sampled_softmax_loss(...))``).

    ``user_vectors`` [B, d], ``target_ids`` [B]; ``output_fn(ids) -> [len(ids), d]`` gives the output item
    vectors (softmax weights; biases are zeros); ``generator`` is a CPU ``torch.Generator`` seeding the sampler.
    """
    if user_vectors.dim() != 2 or target_ids.shape != user_vectors.shape[:1]:
        raise ValueError(
            f"sampled_softmax_loss: expected user_vectors [B, d] and target_ids [B], got "
            f"{tuple(user_vectors.shape)} and {tuple(target_ids.shape)}"
        )
    candidates = sampler.sample(num_sampled, target_ids, generator, unique)
    inputs = _logit_inputs(user_vectors, target_ids, output_fn, candidates, subtract_log_q)
    # softmax cross-entropy with label 0 over [true, sampled], without building the [B, 1 + S] matrix
    return _SampledSoftmaxCrossEntropy.apply(
        user_vectors, inputs.true_w, inputs.sampled_w, inputs, remove_accidental_hits, candidates.distinct
    )


def hard_negative_sampled_softmax_loss(
    user_vectors: torch.Tensor,
    target_ids: torch.Tensor,
    output_fn: OutputFn,
    sampler: CandidateSampler,
    num_sampled: int,
    beta: float,
    generator: torch.Generator | None = None,
    remove_accidental_hits: bool = True,
    unique: bool = True,
) -> torch.Tensor:
    """REMI's interest-aware hard negatives (Tokkiu/REMI src/BasicModel.py ``sampled_softmax_loss`` with
    ``beta != 0``): with logits x = [x_0 true, x_1..x_S sampled] and importance weights w_j = exp(beta x_j),
    the negatives' mass is sum_j w_j exp(x_j) / mean_j w_j (a Monte-Carlo estimate of drawing negatives in
    proportion to exp(beta x)) and the loss is -x_0 + log(exp(x_0) + that mass), averaged over the batch; the
    weights are not detached, as in REMI. x carries our sampler's log Q correction (REMI's uniform sampler makes it a
    constant); accidental hits are removed as configured (REMI keeps them)."""
    candidates = sampler.sample(num_sampled, target_ids, generator, unique)
    inputs = _logit_inputs(user_vectors, target_ids, output_fn, candidates, subtract_log_q=True)
    true = _true_logits(user_vectors, inputs)
    sampled = _sampled_logits(user_vectors, inputs, remove_accidental_hits, candidates.distinct)
    hit = sampled <= torch.finfo(sampled.dtype).min / 2  # removed hits weigh nothing
    top = torch.maximum(true, sampled.masked_fill(hit, float("-inf")).max(-1).values).detach()
    x0, x = true - top, sampled - top[:, None]
    log_w = (beta * x).masked_fill(hit, float("-inf"))
    log_w = log_w - log_w.max(-1, keepdim=True).values.detach()
    kept = (~hit).sum(-1).clamp(min=1)
    # log of sum_j w_j exp(x_j) / mean_j w_j, computed in log space
    log_mass = torch.logsumexp(log_w + x.masked_fill(hit, 0.0), -1) - torch.log(log_w.exp().sum(-1) / kept)
    return (torch.logaddexp(x0, log_mass) - x0).mean()


def gbce_loss(
    user_vectors: torch.Tensor,
    target_ids: torch.Tensor,
    output_fn: OutputFn,
    sampler: CandidateSampler,
    num_sampled: int,
    t: float,
    n_items: int,
    generator: torch.Generator | None = None,
    remove_accidental_hits: bool = True,
    unique: bool = True,
) -> torch.Tensor:
    """gSASRec's generalised binary cross-entropy (Petrov & Macdonald, RecSys 2023, eq. 9; asash/gSASRec-pytorch
    gbce.py): beta * softplus(-s_pos) + sum_j softplus(s_j) over the S sampled negatives, averaged over the
    B x (1 + S) logits as gSASRec averages, with beta = alpha (t (1 - 1/alpha) + 1/alpha), alpha = S / (n_items - 1).
    t = 0 is plain BCE with S negatives, t = 1 removes the sampling's overconfidence entirely. Raw scores (gBCE is
    derived for uniform negatives: no log Q); accidental hits dropped from the sum as configured."""
    candidates = sampler.sample(num_sampled, target_ids, generator, unique)
    logits = sampled_logits(
        user_vectors, target_ids, output_fn, candidates, remove_accidental_hits, subtract_log_q=False
    )
    return gbce_from_logits(logits, t, n_items)


def gbce_from_logits(logits: torch.Tensor, t: float, n_items: int) -> torch.Tensor:
    """gBCE over [B, 1 + S] raw logits (the positive in column 0), S the negatives each row saw."""
    num_sampled = logits.shape[1] - 1
    alpha = num_sampled / max(n_items - 1, 1)
    beta = alpha * (t * (1 - 1 / alpha) + 1 / alpha)
    # a removed hit sits at -FLOAT_MAX, where softplus is exactly 0: it adds nothing to the sum
    total = beta * F.softplus(-logits[:, 0]).sum() + F.softplus(logits[:, 1:]).sum()
    return total / logits.numel()


# the blocks of per-row negatives gathered at once (floats): small enough for malloc to reuse, not mmap, each step
ROW_BLOCK_FLOATS = 1 << 21


class _RowGatherDot(torch.autograd.Function):
    """[R, S] logits vectors[ids[r, s]] . users[r], computed over blocks of rows so that the [R, S, d] gathered
    negatives and their gradient never exist at once: the products of gather + bmm (tested equal), without the
    step's largest allocations (SASRec's 256 negatives per position: hundreds of MB a step, page-faulted anew)."""

    @staticmethod
    def forward(ctx, users: torch.Tensor, vectors: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        block = max(1, ROW_BLOCK_FLOATS // (ids.shape[1] * users.shape[1]))
        out = users.new_empty(ids.shape)
        for a in range(0, len(ids), block):
            out[a : a + block] = torch.bmm(vectors[ids[a : a + block]], users[a : a + block, :, None]).squeeze(-1)
        ctx.save_for_backward(users, vectors, ids)
        ctx.block = block
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        users, vectors, ids = ctx.saved_tensors
        grad_users = torch.empty_like(users) if ctx.needs_input_grad[0] else None
        grad_vectors = torch.zeros_like(vectors) if ctx.needs_input_grad[1] else None
        for a in range(0, len(ids), ctx.block):
            g, rows, u = grad[a : a + ctx.block], ids[a : a + ctx.block], users[a : a + ctx.block]
            if grad_users is not None:
                grad_users[a : a + ctx.block] = torch.bmm(g[:, None, :], vectors[rows]).squeeze(1)
            if grad_vectors is not None:
                products = (g[:, :, None] * u[:, None, :]).reshape(-1, u.shape[1])
                grad_vectors.index_put_((rows.reshape(-1),), products, accumulate=True)  # deterministic on CUDA too
        return grad_users, grad_vectors, None


def row_sampled_logits(
    user_vectors: torch.Tensor,
    target_ids: torch.Tensor,
    output_fn: OutputFn,
    sampler: CandidateSampler,
    per_row: int,
    generator: torch.Generator | None = None,
    remove_accidental_hits: bool = True,
    subtract_log_q: bool = True,
    catalogue_size: int | None = None,
) -> torch.Tensor:
    """[B, 1 + per_row] logits, the true class in column 0, where every row draws its own ``per_row`` negatives
    with replacement (RecTools ``CatalogUniformSampler``: randint of shape [batch, session_len, n_negatives], the
    sampler of the eSASRec benchmark's SASRec+SS) instead of one set shared by the batch. log Q = log(p * per_row)
    (constant for the uniform sampler); a hit is any copy of the row's own target. With ``catalogue_size`` (the
    rows of ``output_fn(None)``) smaller than the draws, every item's vector is computed once and the negatives'
    products block by block (:class:`_RowGatherDot`); otherwise the drawn rows are looked up (same logits)."""
    rows = len(target_ids)
    device, dtype = user_vectors.device, user_vectors.dtype
    drawn = sampler.draw(rows * per_row, generator)  # on the CPU generator, as the shared draws
    targets, drawn_here = target_ids.to(device), drawn.to(device)
    if catalogue_size is not None and rows * per_row > catalogue_size:
        table = output_fn(None)
        true = (user_vectors * table[targets]).sum(-1)
        sampled = _RowGatherDot.apply(user_vectors, table, drawn_here.view(rows, per_row))
    else:
        vectors = output_fn(torch.cat([targets, drawn_here]))
        true_w, sampled_w = vectors[:rows], vectors[rows:].view(rows, per_row, -1)
        true = (user_vectors * true_w).sum(-1)
        sampled = torch.bmm(sampled_w, user_vectors[:, :, None]).squeeze(-1)
    if subtract_log_q:  # TF ExpectedCountHelper without repeats counted: p * per_row (the sampler's lookup tables)
        log_q_true = torch.log(sampler.expected_count(target_ids.detach().cpu(), per_row, per_row))
        log_q_sampled = torch.log(sampler.expected_count(drawn, per_row, per_row)).view(rows, per_row)
        true, sampled = true - log_q_true.to(device, dtype), sampled - log_q_sampled.to(device, dtype)
    if remove_accidental_hits:
        hit = drawn_here.view(rows, per_row) == targets[:, None]
        sampled = sampled.masked_fill(hit, torch.finfo(dtype).min)
    return torch.cat([true[:, None], sampled], dim=1)


# rows per block of the full softmax at least: on large catalogues the products stay matrix products
FULL_SOFTMAX_MIN_ROWS = 32


class _BlockedFullSoftmaxCE(torch.autograd.Function):
    """mean_r [logsumexp_j(u_r . w_j) - u_r . w_target(r)] over the whole table, over blocks of rows: the [R, N]
    logits, their masked copy, log-softmax and gradient are never held at once. The loss is a scalar, so each
    block's gradient (softmax - one-hot, times the table or the users) is taken in the forward while its logits are
    at hand, and the backward only scales it: the products of autograd's form, without its R x N buffers."""

    @staticmethod
    def forward(ctx, users: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, mask_padding: bool):  # type: ignore[override]
        block = max(FULL_SOFTMAX_MIN_ROWS, ROW_BLOCK_FLOATS // len(table))
        wanted = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_users = torch.empty_like(users) if wanted else None
        grad_table = torch.zeros_like(table) if wanted else None
        total = users.new_zeros(())
        for a in range(0, len(users), block):
            u, t = users[a : a + block], targets[a : a + block]
            logits = u @ table.T
            if mask_padding:
                logits[:, 0] = torch.finfo(logits.dtype).min
            rows = torch.arange(len(u), device=u.device)
            lse = torch.logsumexp(logits, dim=1)
            total += (lse - logits[rows, t]).sum()
            if wanted:  # d loss_r / d logits = softmax - one-hot (masked padding: exp(min - lse) = 0)
                softmax = logits.sub_(lse[:, None]).exp_()
                softmax[rows, t] -= 1
                grad_users[a : a + block] = softmax @ table
                grad_table.addmm_(softmax.T, u)
        if wanted:
            ctx.save_for_backward(grad_users, grad_table)
        return total / len(users)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        grad_users, grad_table = ctx.saved_tensors
        scale = grad / len(grad_users)
        return grad_users * scale, grad_table * scale, None, None


def full_softmax_loss(
    user_vectors: torch.Tensor, target_ids: torch.Tensor, output_fn: OutputFn, mask_padding: bool = True
) -> torch.Tensor:
    """Cross-entropy over the whole catalogue (``output_fn(None)`` = all ids 0..n_items); id 0 masked out.
    Computed over blocks of rows (:class:`_BlockedFullSoftmaxCE`; equal to ``F.cross_entropy`` on the full
    logits, tested)."""
    table = output_fn(None)
    return _BlockedFullSoftmaxCE.apply(user_vectors, table, target_ids.to(table.device), mask_padding)


def inbatch_softmax_loss(
    user_vectors: torch.Tensor,
    target_ids: torch.Tensor,
    output_fn: OutputFn,
    remove_accidental_hits: bool = True,
) -> torch.Tensor:
    """In-batch negatives: row i scores every target of the batch, label i (no log Q correction).

    Accidental hits: another row's target equal to row i's own target is masked (it would be a false negative).
    """
    targets = target_ids.to(user_vectors.device)
    rows, inverse = torch.unique(targets, return_inverse=True)
    target_w = output_fn(rows)[inverse]
    logits = user_vectors @ target_w.T
    if remove_accidental_hits:
        same = targets[:, None] == targets[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, torch.finfo(logits.dtype).min)
    labels = torch.arange(len(targets), device=logits.device)
    return F.cross_entropy(logits, labels)


__all__ = [
    "sampled_logits",
    "sampled_softmax_loss",
    "hard_negative_sampled_softmax_loss",
    "gbce_loss",
    "gbce_from_logits",
    "row_sampled_logits",
    "full_softmax_loss",
    "inbatch_softmax_loss",
]
