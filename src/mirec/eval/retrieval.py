"""Exact full-catalogue retrieval per interest and the ComiRec merge (docs/models.md sections 1 Eq. 24, 3.2).

Every interest vector of a user retrieves its own top-n items by inner product over the whole catalogue
(item ids 1..n_items; id 0 is padding and never retrieved), as ComiRec's Faiss ``IndexFlatIP`` search in
``evaluate_full``. Two interchangeable back-ends give the same rankings (ties aside):

- ``torch``: blocked matmul + ``topk`` (users in blocks, catalogue in blocks), CPU or CUDA, memory bounded;
- ``faiss``: Faiss's flat inner-product search (``faiss.knn``, the kernel of ``IndexFlatIP``) on a float32
  view of the same table (CPU, no copy).

:func:`merge_interests` is ComiRec's lambda = 0 aggregation: the K*n results sorted by score, duplicates and
id 0 dropped, the first n kept, i.e. the top-n items by f(u, i) = max_k e_i^T v_u^(k).
"""

from __future__ import annotations

import typing
from collections.abc import Sequence

import numpy as np
import torch

from mirec.config import EvalConfig

BACKENDS = typing.get_args(typing.get_type_hints(EvalConfig)["backend"])  # the config type says which
# Score blocks of at most this many bytes (users x catalogue-block x 4 bytes) in the torch back-end.
DEFAULT_BLOCK_BYTES = 128 << 20
# Catalogue block width in the torch back-end: the first block's n-th best score is the threshold that
# the later blocks must beat (see _merge_above_threshold).
DEFAULT_ITEM_BLOCK = 1 << 15


def check_interest_shape(interests: torch.Tensor, dim: int) -> None:
    """Refuse anything but [users, K, dim] query vectors (every search path's one message)."""
    if interests.ndim != 3 or interests.shape[2] != dim:
        raise ValueError(f"interests must be [users, K, {dim}], got {tuple(interests.shape)}")


def exclusion_pairs(exclude: Sequence[np.ndarray] | None, n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-user id arrays -> (user, item) int64 arrays sorted by user; ids outside 1..n_items rejected."""
    if exclude is None:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if len(exclude) != n_users:
        raise ValueError(f"exclude has {len(exclude)} per-user arrays for {n_users} users")
    lengths = np.fromiter((len(e) for e in exclude), dtype=np.int64, count=n_users)
    users = np.repeat(np.arange(n_users, dtype=np.int64), lengths)
    items = (
        np.concatenate([np.asarray(e, dtype=np.int64).ravel() for e in exclude])
        if lengths.sum()
        else np.zeros(0, dtype=np.int64)
    )
    bad = (items < 0) | (items > n_items)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"exclude: user row {users[i]} lists item id {items[i]} outside 0..{n_items}")
    keep = items > 0  # padding is never retrieved anyway
    return users[keep], items[keep]


class ExactRetriever:
    """Exact inner-product top-n search over item ids 1..n_items; build once, search many batches.

    ``item_table`` is [n_items + 1, d] (row 0 = padding), e.g. ``model.output_embeddings()``.
    """

    def __init__(
        self,
        item_table: torch.Tensor,
        backend: str = "torch",
        *,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        item_block: int = DEFAULT_ITEM_BLOCK,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"unknown retrieval backend {backend!r}; expected one of {BACKENDS}")
        if item_table.ndim != 2 or item_table.shape[0] < 2:
            raise ValueError(f"item_table must be [n_items + 1, d] with n_items >= 1, got {tuple(item_table.shape)}")
        self.backend = backend
        self.n_items = int(item_table.shape[0]) - 1
        self.dim = int(item_table.shape[1])
        self.block_bytes = int(block_bytes)
        self.item_block = max(1, int(item_block))
        self.table = item_table.detach()[1:].float().contiguous()
        if backend == "faiss":
            self.table = self.table.cpu()

    def search(
        self, interests: torch.Tensor, n: int, exclude: Sequence[np.ndarray] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-n per interest: (scores [U, K, n] float32, ids [U, K, n] int64), best first, on ``interests``'s
        device. Slots that cannot be filled (n > catalogue minus exclusions) hold id -1 and score -inf.
        ``exclude``: per-user arrays of item ids removed from that user's ranking (e.g. the history)."""
        self._check(interests, n)
        return self._search(interests, n, *exclusion_pairs(exclude, int(interests.shape[0]), self.n_items))

    def search_pairs(
        self, interests: torch.Tensor, n: int, ex_users: np.ndarray, ex_items: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`search` with the exclusions already as :func:`exclusion_pairs` gives them (user rows sorted,
        item ids in 1..n_items), for callers that hold them in that form."""
        self._check(interests, n)
        return self._search(interests, n, ex_users, ex_items)

    def _search(
        self, interests: torch.Tensor, n: int, ex_users: np.ndarray, ex_items: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n_users, k = int(interests.shape[0]), int(interests.shape[1])
        if self.backend == "torch":
            scores, ids = self._search_torch(interests.detach(), n, ex_users, ex_items)
        else:
            scores, ids = self._search_faiss(interests.detach(), n, ex_users, ex_items)
        return scores.reshape(n_users, k, n), ids.reshape(n_users, k, n)

    def _check(self, interests: torch.Tensor, n: int) -> None:
        check_interest_shape(interests, self.dim)
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")

    def _search_torch(
        self, interests: torch.Tensor, n: int, ex_users: np.ndarray, ex_items: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n_users, k, _ = interests.shape
        device = interests.device
        if self.table.device != device:  # move the catalogue once, not per batch
            self.table = self.table.to(device)
        table = self.table
        queries = interests.reshape(n_users * k, self.dim).float()
        item_block = min(self.item_block, self.n_items)
        users_per_block = max(1, self.block_bytes // (4 * item_block * k))
        ex_u = torch.from_numpy(ex_users).to(device)
        ex_i = torch.from_numpy(ex_items - 1).to(device)  # row in table[1:]
        bounds = np.searchsorted(ex_users, np.arange(0, n_users + users_per_block, users_per_block))
        n_keep = min(n, self.n_items)
        out_s = torch.empty(n_users * k, n_keep, device=device)
        out_i = torch.empty(n_users * k, n_keep, dtype=torch.int64, device=device)
        offsets = torch.arange(k, device=device)
        # One reused score buffer: fresh multi-100-MB allocations per block cost more than the matmul.
        buffer = torch.empty(min(users_per_block, n_users) * k * item_block, device=device)
        for b, u0 in enumerate(range(0, n_users, users_per_block)):
            u1 = min(u0 + users_per_block, n_users)
            q = queries[u0 * k : u1 * k]
            bu = ex_u[bounds[b] : bounds[b + 1]] - u0
            bi = ex_i[bounds[b] : bounds[b + 1]]
            best_s = best_i = None
            for i0 in range(0, self.n_items, item_block):
                i1 = min(i0 + item_block, self.n_items)
                s = buffer[: len(q) * (i1 - i0)].view(len(q), i1 - i0)
                torch.matmul(q, table[i0:i1].T, out=s)  # e_i^T v_u^(k) (Eq. 24 before the max over k)
                if len(bi):
                    sel = (bi >= i0) & (bi < i1)
                    rows = (bu[sel][:, None] * k + offsets[None, :]).reshape(-1)
                    cols = (bi[sel] - i0).repeat_interleave(k)
                    s[rows, cols] = float("-inf")
                if best_s is None:
                    best_s, best_i = s.topk(min(n_keep, i1 - i0), dim=1)
                    best_i = best_i + (i0 + 1)
                    if best_s.shape[1] < n_keep:
                        best_s, best_i = _pad(best_s, best_i, n_keep)
                else:
                    best_s, best_i = _merge_above_threshold(best_s, best_i, s, i0 + 1)
            out_s[u0 * k : u1 * k] = best_s
            out_i[u0 * k : u1 * k] = best_i
        return _pad(out_s, out_i, n)

    def _search_faiss(
        self, interests: torch.Tensor, n: int, ex_users: np.ndarray, ex_items: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n_users, k, _ = interests.shape
        queries = np.ascontiguousarray(interests.reshape(n_users * k, self.dim).float().cpu().numpy())
        max_ex = int(np.bincount(ex_users, minlength=n_users).max(initial=0)) if len(ex_users) else 0
        depth = min(n + max_ex, self.n_items)
        import faiss

        dist, label = faiss.knn(queries, self.table.numpy(), depth, metric=faiss.METRIC_INNER_PRODUCT)
        label = label.astype(np.int64)
        drop = label < 0  # faiss pads with -1 when depth exceeds the catalogue
        ids = np.where(drop, -1, label + 1)
        if max_ex:
            base = self.n_items + 2
            row_user = np.repeat(np.arange(n_users, dtype=np.int64), k)
            keys = row_user[:, None] * base + ids
            drop |= np.isin(keys, ex_users * base + ex_items)
        n_keep = min(n, depth)
        # Stable compaction: kept results first, in faiss's (descending score) order.
        pick = np.argsort(drop, axis=1, kind="stable")[:, :n_keep]
        ids = np.take_along_axis(ids, pick, 1)
        dist = np.take_along_axis(dist, pick, 1)
        dropped = np.take_along_axis(drop, pick, 1)
        ids[dropped] = -1
        dist[dropped] = -np.inf
        device = interests.device
        return _pad(torch.from_numpy(dist).to(device), torch.from_numpy(ids).to(device), n)


def _merge_above_threshold(
    best_s: torch.Tensor, best_i: torch.Tensor, s: torch.Tensor, id_offset: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge a score block into the running per-row top-n, exactly: only entries above the row's current
    n-th best can enter, so one comparison pass replaces a full ``topk`` of the block (few survive)."""
    rows, n_keep = best_s.shape
    r, c = (s > best_s[:, -1:]).nonzero(as_tuple=True)
    if len(r) == 0:
        return best_s, best_i
    device = s.device
    all_r = torch.cat([torch.arange(rows, device=device).repeat_interleave(n_keep), r])
    all_s = torch.cat([best_s.reshape(-1), s[r, c]])
    all_i = torch.cat([best_i.reshape(-1), c + id_offset])
    order = torch.sort(all_s, descending=True, stable=True).indices
    order = order[torch.sort(all_r[order], stable=True).indices]  # grouped by row, score-descending
    row = all_r[order]
    starts = torch.cumsum(torch.bincount(row, minlength=rows), 0) - torch.bincount(row, minlength=rows)
    pos = torch.arange(len(row), device=device) - starts[row]
    keep = pos < n_keep
    new_s, new_i = torch.empty_like(best_s), torch.empty_like(best_i)
    new_s[row[keep], pos[keep]] = all_s[order[keep]]
    new_i[row[keep], pos[keep]] = all_i[order[keep]]
    return new_s, new_i


def _pad(scores: torch.Tensor, ids: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mark -inf scores as empty (id -1) and pad the columns to n."""
    ids = torch.where(torch.isneginf(scores), torch.full_like(ids, -1), ids)
    if scores.shape[1] < n:
        extra = n - scores.shape[1]
        scores = torch.cat([scores, scores.new_full((scores.shape[0], extra), float("-inf"))], 1)
        ids = torch.cat([ids, ids.new_full((ids.shape[0], extra), -1)], 1)
    return scores, ids


def dedup_candidates(
    scores: torch.Tensor, ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row, sort the candidates by score (descending, stable) and keep each item's best occurrence.

    ``scores``/``ids`` are [U, M] (M = K*n, flattened per-interest lists). Returns (sorted scores, sorted ids,
    keep mask, position of each sorted entry in the input row); ids <= 0 and repeated ids are not kept.
    """
    valid = ids > 0
    s = torch.where(valid, scores.float(), torch.full_like(scores.float(), float("-inf")))
    s_sorted, order = torch.sort(s, dim=1, descending=True, stable=True)
    id_sorted = ids.gather(1, order)
    # Stable sort by id keeps the score order within an id: the first of each run is its best score.
    id2, order2 = torch.sort(id_sorted, dim=1, stable=True)
    dup2 = torch.zeros_like(id2, dtype=torch.bool)
    dup2[:, 1:] = id2[:, 1:] == id2[:, :-1]
    dup = torch.empty_like(dup2).scatter_(1, order2, dup2)
    keep = ~dup & (id_sorted > 0)
    return s_sorted, id_sorted, keep, order


def merge_interests_full(
    scores: torch.Tensor, ids: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ComiRec lambda = 0 merge with extras: (ids [U, n], scores [U, n], interest [U, n]).

    ``interest`` is the index of the interest whose list gave the item its best score (-1 in empty slots).
    """
    if scores.shape != ids.shape or scores.ndim != 3:
        raise ValueError(f"scores and ids must both be [U, K, n'], got {tuple(scores.shape)} and {tuple(ids.shape)}")
    n_users, _, per = scores.shape
    s_sorted, id_sorted, keep, order = dedup_candidates(scores.reshape(n_users, -1), ids.reshape(n_users, -1))
    # Kept entries first, each group in descending score order (stable).
    pick = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
    width = min(n, pick.shape[1])
    pick = pick[:, :width]
    kept = keep.gather(1, pick)
    out_ids = torch.where(kept, id_sorted.gather(1, pick), torch.full_like(pick, -1))
    out_s = torch.where(kept, s_sorted.gather(1, pick), torch.full_like(pick, float("-inf"), dtype=torch.float32))
    source = torch.where(kept, order.gather(1, pick) // per, torch.full_like(pick, -1))
    if width < n:
        out_ids, out_s, source = (
            torch.cat([t, t.new_full((n_users, n - width), fill)], 1)
            for t, fill in ((out_ids, -1), (out_s, float("-inf")), (source, -1))
        )
    return out_ids, out_s, source


def merge_with_reserved_share(
    scores: torch.Tensor, ids: torch.Tensor, n: int, reserved: slice, share: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The max-score merge with ``q = round(share * n)`` slots reserved for the interests ``reserved`` (a slice of
    the K; GemiRec's generated interests ``slice(K_base, None)`` or its base's ``slice(0, K_base)``): the top
    ``n - q`` of the merge over all K interests, then the best items of the reserved interests' own merge not among
    them (up to q), then, if those run out, the merge's next items; the union is ordered by score. ``share = 0`` is
    :func:`merge_interests_full`. Same outputs as that function.
    """
    merged, merged_s, source = merge_interests_full(scores, ids, n)
    q = min(n, max(0, round(share * n)))
    first, stop, _ = reserved.indices(scores.shape[1])
    if q == 0 or first >= stop:
        return merged, merged_s, source
    r_ids, r_s, r_src = merge_interests_full(scores[:, first:stop], ids[:, first:stop], n)
    r_src = torch.where(r_src >= 0, r_src + first, r_src)
    head = merged[:, : n - q]
    taken = (r_ids[:, :, None] == head[:, None, :]).any(2) | (r_ids < 0)
    r_take = ~taken & (torch.cumsum((~taken).long(), 1) <= q)
    # the merge's items after the head fill what the reserved interests could not (excluding their picks)
    tail, tail_s, tail_src = merged[:, n - q :], merged_s[:, n - q :], source[:, n - q :]
    picked = torch.where(r_take, r_ids, torch.full_like(r_ids, -1))
    tail_free = (tail >= 0) & ~(tail[:, :, None] == picked[:, None, :]).any(2)
    missing = q - r_take.sum(1, keepdim=True)
    tail_take = tail_free & (torch.cumsum(tail_free.long(), 1) <= missing)
    cand_ids = torch.cat([head, r_ids, tail], 1)
    cand_s = torch.cat([merged_s[:, : n - q], r_s, tail_s], 1)
    cand_src = torch.cat([source[:, : n - q], r_src, tail_src], 1)
    take = torch.cat([head >= 0, r_take, tail_take], 1)
    key = torch.where(take, cand_s.float(), torch.full_like(cand_s.float(), float("-inf")))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :n]
    kept = take.gather(1, order)
    out_ids = torch.where(kept, cand_ids.gather(1, order), torch.full_like(order, -1))
    out_s = torch.where(kept, cand_s.gather(1, order), torch.full_like(order, float("-inf"), dtype=cand_s.dtype))
    out_src = torch.where(kept, cand_src.gather(1, order), torch.full_like(order, -1))
    return out_ids, out_s, out_src


def merge_interests(scores: torch.Tensor, ids: torch.Tensor, n: int) -> torch.Tensor:
    """ComiRec lambda = 0 aggregation (``evaluate_full``): the K*n results sorted by score, duplicates and
    id 0 dropped, the first n kept; -1 fills rows with fewer than n distinct items. Returns ids [U, n]."""
    return merge_interests_full(scores, ids, n)[0]
