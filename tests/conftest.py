"""Shared test helpers: tiny prepared datasets built in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mirec.data.dataset import PreparedDataset, SplitSequences

SHARED = Path(__file__).resolve().parents[2] / "shared"


def make_split(sequences: list[list[int]], times: list[list[int]] | None = None, users=None, history_len=None):
    lengths = [len(s) for s in sequences]
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = np.array([i for s in sequences for i in s], dtype=np.int64)
    if times is None:
        times = [[86400 * (10 + j) for j in range(len(s))] for s in sequences]
    stamps = np.array([t for s in times for t in s], dtype=np.int64)
    users = np.arange(len(sequences), dtype=np.int64) if users is None else np.asarray(users, dtype=np.int64)
    hl = None if history_len is None else np.asarray(history_len, dtype=np.int64)
    return SplitSequences(users=users, indptr=indptr, items=items, timestamps=stamps, history_len=hl)


def random_dataset(n_users: int = 60, n_items: int = 40, seed: int = 0, min_len: int = 5, max_len: int = 30):
    """A small random PreparedDataset with an 8:1:1 user split and 80% history cuts."""
    rng = np.random.default_rng(seed)
    seqs = [list(rng.integers(1, n_items + 1, size=rng.integers(min_len, max_len + 1))) for _ in range(n_users)]
    times = [sorted(rng.integers(1_300_000_000, 1_400_000_000, size=len(s)).tolist()) for s in seqs]
    n_train, n_valid = int(n_users * 0.8), int(n_users * 0.1)
    parts = [(0, n_train), (n_train, n_train + n_valid), (n_train + n_valid, n_users)]
    splits = []
    for k, (lo, hi) in enumerate(parts):
        hl = None if k == 0 else [int(0.8 * len(s)) for s in seqs[lo:hi]]
        splits.append(make_split(seqs[lo:hi], times[lo:hi], users=range(lo, hi), history_len=hl))
    return PreparedDataset(
        n_items=n_items,
        train=splits[0],
        valid=splits[1],
        test=splits[2],
        item_original_ids=np.array([""] + [f"item{i}" for i in range(1, n_items + 1)], dtype=object),
        user_original_ids=np.array([f"user{u}" for u in range(n_users)], dtype=object),
        item_categories=np.concatenate([[-1], rng.integers(0, 4, size=n_items)]),
        meta={"name": "random"},
    )


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: tiny models run faster without oversubscribing the 2 CI cores, and
    runs in child processes started with one thread are bit-identical to the test's own."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_dataset() -> PreparedDataset:
    return random_dataset()
