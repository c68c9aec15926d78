"""Shared test helpers: tiny prepared datasets built in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mirec.config import load_config
from mirec.data.dataset import PreparedDataset, SplitSequences
from mirec.data.prepare import prepare
from mirec.serving.bundle import export_bundle, load_bundle
from mirec.training.trainer import train_run

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def assert_same_top_lists(ids, scores, ref_ids, ref_scores, tol: float = 1e-4) -> None:
    """Top-n lists from two float paths (another engine, device or CPU): the same scores within ``tol``, and the
    same ids except where the reference's scores tie within ``tol`` (a near-tie may come out in either order)."""
    ref_ids = torch.as_tensor(ref_ids)
    ref_ids = ref_ids.reshape(-1, ref_ids.shape[-1])
    ids = torch.as_tensor(ids).reshape(ref_ids.shape)
    scores = torch.as_tensor(scores, dtype=torch.float64).reshape(ids.shape)
    ref_scores = torch.as_tensor(ref_scores, dtype=torch.float64).reshape(ids.shape)
    torch.testing.assert_close(scores, ref_scores, rtol=0, atol=tol)
    gap = (ref_scores[:, :-1] - ref_scores[:, 1:]).abs() <= 2 * tol  # [rows, n - 1]: position j ties with j + 1
    tied = torch.zeros_like(ids, dtype=torch.bool)
    tied[:, :-1] |= gap
    tied[:, 1:] |= gap
    tied[:, -1] = True  # the last slot may tie with the first item left out
    assert bool(((ids == ref_ids) | tied).all()), (ids, ref_ids)


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
    categories = np.concatenate([[-1], rng.integers(0, 4, size=n_items)])
    return dataset_of(seqs, times, parts, n_items, "random", ("item", "user"), categories)


def dataset_of(seqs, times, parts, n_items: int, name: str, prefixes=("i", "u"), categories=None) -> PreparedDataset:
    """A PreparedDataset of the given sequences split into train/valid/test user ranges (80% history cuts)."""
    splits = []
    for k, (lo, hi) in enumerate(parts):
        hl = None if k == 0 else [int(0.8 * len(s)) for s in seqs[lo:hi]]
        splits.append(make_split(seqs[lo:hi], times[lo:hi], users=range(lo, hi), history_len=hl))
    item_prefix, user_prefix = prefixes
    return PreparedDataset(
        n_items=n_items,
        train=splits[0],
        valid=splits[1],
        test=splits[2],
        item_original_ids=np.array([""] + [f"{item_prefix}{i}" for i in range(1, n_items + 1)], dtype=object),
        user_original_ids=np.array([f"{user_prefix}{u}" for u in range(len(seqs))], dtype=object),
        item_categories=categories,
        meta={"name": name},
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


# ---------------------------------------------------------------- a trained run and its bundle (serving tests)
SMALL = [
    "model.embedding_dim=16",
    "train.batch_size=32",
    "train.num_negatives_factor=1",
    "train.eval_every=40",
    "train.max_steps=80",
    'train.device="cpu"',
    "eval.topk=[10,20]",
    "eval.early_stop_metric=recall@20",
]
HISTORIES = [["i100", "i101", "i102"], ["i130", "i131"], ["i115", "i150", "i116", "i117"], ["i149"]]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A 240-user log of 4 item groups with categories, prepared (the serving tests' data)."""
    rng = np.random.default_rng(0)
    rows = ["user_id\titem_id\ttimestamp\tcategory"]
    for user in range(240):
        start = 1_300_000_000 + int(rng.integers(0, 10_000_000))
        for step in range(int(rng.integers(8, 16))):
            item = 100 + (user % 4) * 15 + int(rng.integers(0, 15))
            rows.append(f"u{user}\ti{item}\t{start + step * 86400}\t{item % 5}")
    base = tmp_path_factory.mktemp("serving")
    (base / "log.tsv").write_text("\n".join(rows) + "\n")
    prepare([base / "log.tsv"], "csv", base / "data")
    return base / "data"


@pytest.fixture(scope="session")
def run_dir(data_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run") / "comirec-sa"
    train_run(data_dir, load_config(model="comirec-sa", overrides=SMALL), run, progress=False)
    return run


@pytest.fixture(scope="session")
def bundle(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "exact"
    export_bundle(run_dir, out)
    return out


@pytest.fixture(scope="session")
def served(bundle):
    return load_bundle(bundle)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(port: int, seconds: float = 60) -> None:
    """Poll a server started on loopback until /healthz answers 200 (or the time is up)."""
    import time

    import httpx

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
