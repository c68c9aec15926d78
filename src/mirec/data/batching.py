"""Vectorised batch building, as ComiRec/PIMI's DataIterator but without per-sample Python.

Training (ComiRec ``train_flag=0``): sample users, cut each sequence at k ~ U[min_cut, len-1], the target is
item k and the history the up-to-``maxlen`` items before it, left-aligned and right-padded with 0.
Evaluation: the last up-to-``maxlen`` history items of a valid/test user; the targets are the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from mirec.data.dataset import SplitSequences


@dataclass
class Batch:
    """A model's input: ``items``/``mask``/``days`` are [B, L]; ``targets`` [B] at training only."""

    items: torch.Tensor  # int64 item ids, 0 = padding, oldest first (left-aligned)
    mask: torch.Tensor  # float32 1 = real item
    days: torch.Tensor  # int64 days since the user's first interaction (+1), 0 at padding
    targets: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.items), move(self.mask), move(self.days), move(self.targets))

    def __len__(self) -> int:
        return self.items.shape[0]


def gather_windows(split: SplitSequences, days: np.ndarray, rows: np.ndarray, ends: np.ndarray, maxlen: int) -> Batch:
    """History windows ending (exclusive) at sequence position ``ends`` of split rows ``rows``."""
    starts = np.maximum(ends - maxlen, 0)
    length = ends - starts
    offsets = np.arange(maxlen)
    valid = offsets[None, :] < length[:, None]
    index = split.indptr[rows][:, None] + starts[:, None] + offsets[None, :]
    index = np.where(valid, index, 0)
    items = np.where(valid, np.asarray(split.items)[index], 0)
    day_values = np.where(valid, days[index], 0)
    return Batch(
        items=torch.from_numpy(items.astype(np.int64)),
        mask=torch.from_numpy(valid.astype(np.float32)),
        days=torch.from_numpy(day_values.astype(np.int64)),
    )


class TrainSampler:
    """Draws training batches; all randomness comes from one seeded numpy Generator (resumable state)."""

    def __init__(
        self,
        split: SplitSequences,
        maxlen: int,
        batch_size: int,
        seed: int,
        min_cut: int = 4,
        last_window: bool = False,
    ):
        self.split = split
        self.maxlen = maxlen
        self.batch_size = batch_size
        self.min_cut = min_cut
        self.last_window = last_window  # SASRec: the target is the sequence's last item, every time
        self.days = split.days()
        lengths = split.lengths
        self.rows = np.flatnonzero(lengths >= 2)  # a user needs a history item and a target
        if len(self.rows) == 0:
            raise ValueError("no training user has 2 or more interactions")
        self.lengths = lengths
        self.rng = np.random.default_rng(seed)

    def sample(self) -> Batch:
        size = min(self.batch_size, len(self.rows))
        rows = self.rng.choice(self.rows, size=size, replace=False)
        length = self.lengths[rows]
        low = np.minimum(self.min_cut, length - 1)
        cut = low + np.floor(self.rng.random(size) * (length - low)).astype(np.int64)  # drawn either way (same stream)
        if self.last_window:
            cut = length - 1
        batch = gather_windows(self.split, self.days, rows, cut, self.maxlen)
        batch.targets = torch.from_numpy(np.asarray(self.split.items)[self.split.indptr[rows] + cut].astype(np.int64))
        return batch

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


@dataclass
class EvalBatch:
    batch: Batch
    rows: np.ndarray  # split rows of these users
    targets: list[np.ndarray]  # each user's target items (time order, repeats kept)
    history: list[np.ndarray]  # each user's full history part (for --exclude-history and dumps)


def iter_eval_batches(
    split: SplitSequences,
    maxlen: int,
    batch_size: int,
    limit: int | None = None,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[EvalBatch]:
    """Valid/test users in order; history = the last <= maxlen items before the 80% cut. ``limit``: only the
    first users (in split order); ``shard = (rank, world)``: every world-th of those, from the rank-th
    (distributed evaluation: the shards of all ranks are the users of one process)."""
    if split.history_len is None:
        raise ValueError("this split has no history/target cut (is it the training split?)")
    days = split.days()
    items = np.asarray(split.items)
    eligible = np.flatnonzero((split.history_len > 0) & (split.history_len < split.lengths))
    rank, world = shard
    eligible = eligible[:limit][rank::world]
    for lo in range(0, len(eligible), batch_size):
        rows = eligible[lo : lo + batch_size]
        cut = split.history_len[rows]
        batch = gather_windows(split, days, rows, cut, maxlen)
        starts, ends = split.indptr[rows], split.indptr[rows + 1]
        yield EvalBatch(
            batch=batch,
            rows=rows,
            targets=[items[s + c : e] for s, c, e in zip(starts, cut, ends, strict=True)],
            history=[items[s : s + c] for s, c in zip(starts, cut, strict=True)],
        )
