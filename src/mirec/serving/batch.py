"""Batch recommendation: top-n lists for a file of histories or every user of a prepared dataset, streamed in
chunks (bounded memory whatever the number of users) into a Parquet file written atomically.

Output rows: ``user`` (original id), ``rank`` (1..n), ``item`` (original id), ``score``, ``interest``.
Input files: Parquet or JSON lines with ``user``, ``history`` (list of original item ids, oldest first) and
optionally ``timestamps`` (Unix seconds, one per item).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from mirec.data.batching import Batch
from mirec.data.dataset import PreparedDataset, days_since_first
from mirec.serving.model import ServingModel
from mirec.utils import atomic_path

OUTPUT_SCHEMA = pa.schema(
    [
        ("user", pa.string()),
        ("rank", pa.int32()),
        ("item", pa.string()),
        ("score", pa.float32()),
        ("interest", pa.int16()),
    ]
)


def _rows(
    users: np.ndarray, ids: torch.Tensor, scores: torch.Tensor, source: torch.Tensor, item_names: np.ndarray
) -> pa.RecordBatch:
    """Flatten [U, n] results into output rows (empty slots dropped), vectorised."""
    ids_np, keep = ids.numpy(), ids.numpy() > 0
    n = ids_np.shape[1]
    ranks = np.broadcast_to(np.arange(1, n + 1, dtype=np.int32), ids_np.shape)[keep]
    user_col = np.repeat(np.asarray(users, dtype=object), keep.sum(1))
    return pa.record_batch(
        [
            pa.array(user_col.astype(str)),
            pa.array(ranks),
            pa.array(item_names[ids_np[keep]].astype(str)),
            pa.array(scores.numpy()[keep].astype(np.float32)),
            pa.array(source.numpy()[keep].astype(np.int16)),
        ],
        schema=OUTPUT_SCHEMA,
    )


def _write(chunks: Iterator[pa.RecordBatch], output: str | Path) -> int:
    rows = 0
    with atomic_path(output) as tmp, pq.ParquetWriter(tmp, OUTPUT_SCHEMA) as writer:
        for chunk in chunks:
            writer.write_batch(chunk)
            rows += chunk.num_rows
    return rows


def dataset_histories(
    dataset: PreparedDataset, split: str
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per split of ``split`` (valid | test | train | all): (user codes, indptr, items, timestamps) of the
    sequences used as histories: the history part of valid/test users (what evaluation feeds the model), the
    whole sequence of train users (and of every user with ``all``)."""
    names = ("train", "valid", "test") if split == "all" else (split,)
    for name in names:
        seq = dataset.split(name)
        if split == "all" or seq.history_len is None:
            yield seq.users, seq.indptr, seq.items, seq.timestamps
        else:
            keep = seq.history_mask()
            indptr = np.concatenate([[0], np.cumsum(seq.history_len)]).astype(np.int64)
            yield seq.users, indptr, np.asarray(seq.items)[keep], np.asarray(seq.timestamps)[keep]


def window_batch(indptr: np.ndarray, items: np.ndarray, stamps: np.ndarray, rows: np.ndarray, maxlen: int) -> Batch:
    """The last ``maxlen`` items of each selected CSR row, left-aligned, with PIMI days; vectorised."""
    ends = indptr[rows + 1]
    lengths = np.minimum(ends - indptr[rows], maxlen)
    starts = ends - lengths
    col = np.arange(maxlen)
    valid = col[None, :] < lengths[:, None]
    index = np.where(valid, starts[:, None] + col[None, :], 0)
    ids = np.where(valid, np.asarray(items)[index], 0).astype(np.int64)
    t = np.asarray(stamps)[index]
    first = np.asarray(stamps)[indptr[rows]][:, None]  # days from the history's first item, as Recommender.recommend
    days = np.where(valid, days_since_first(t, first), 0)
    return Batch(torch.from_numpy(ids), torch.from_numpy(valid.astype(np.float32)), torch.from_numpy(days))


def recommend_dataset(
    serving: ServingModel,
    dataset: PreparedDataset,
    split: str,
    output: str | Path,
    n: int = 50,
    chunk: int = 2048,
    progress: bool = True,
) -> dict[str, Any]:
    """Top-n for every user of a prepared dataset's ``split`` (valid | test | train | all) into ``output``."""
    if split not in ("train", "valid", "test", "all"):
        raise ValueError(f"split {split!r}; expected train, valid, test or all")
    # an ids-only model serves the trained items only: the dataset's ids must start with the model's, and its
    # histories (ids <= n_id_items: never a held-out or table-only item) must lie within them
    rows = serving.n_items + 1
    same = dataset.n_items >= serving.n_items and dataset.n_id_items <= serving.n_items
    if not same or not np.array_equal(dataset.item_original_ids[:rows], serving.item_original_ids):
        raise ValueError("the dataset's item ids are not the model's (a bundle of another dataset?)")
    total = sum(len(u) for u, *_ in dataset_histories(dataset, split))
    started = time.perf_counter()

    def chunks() -> Iterator[pa.RecordBatch]:
        with tqdm(total=total, unit="user", disable=not progress, desc="recommend") as bar:
            for users, indptr, items, stamps in dataset_histories(dataset, split):
                for lo in range(0, len(users), chunk):
                    rows = np.arange(lo, min(lo + chunk, len(users)))
                    batch = window_batch(indptr, items, stamps, rows, serving.maxlen)
                    ids, scores, source = serving.search_batch(batch, n)
                    yield _rows(dataset.user_original_ids[users[rows]], ids, scores, source, serving.item_original_ids)
                    bar.update(len(rows))

    written = _write(chunks(), output)
    seconds = time.perf_counter() - started
    return {
        "users": total,
        "rows": written,
        "seconds": round(seconds, 3),
        "users_per_second": total / max(seconds, 1e-9),
    }


def read_chunks(path: str | Path, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]]:
    """(users, history offsets [U + 1], flat original item ids, flat timestamps or None) per chunk of a Parquet
    file (list columns read as flat arrays: no Python object per user) or a JSON-lines file."""
    path = Path(path)
    if path.suffix == ".parquet":
        for record in pq.ParquetFile(path).iter_batches(batch_size=chunk):
            names = record.schema.names
            if "user" not in names or "history" not in names:
                raise ValueError(f"{path}: needs columns user and history, has {names}")
            history = record.column("history")
            offsets = history.offsets.to_numpy().astype(np.int64)
            flat = history.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
            stamps = None
            if "timestamps" in names:
                column = record.column("timestamps")
                stamps = column.values.to_numpy()[column.offsets.to_numpy()[0] : column.offsets.to_numpy()[-1]]
                if len(stamps) != len(flat):
                    raise ValueError(f"{path}: timestamps and history differ in length")
            yield (
                np.asarray(record.column("user").to_pylist(), dtype=object),
                offsets - offsets[0],
                flat,
                None if stamps is None else stamps.astype(np.int64),
            )
        return
    users: list[str] = []
    histories: list[list[str]] = []
    stamps_list: list[list[int] | None] = []

    def emit():
        lengths = [len(h) for h in histories]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        flat = np.asarray([i for h in histories for i in h], dtype=object)
        stamps = None
        if any(s is not None for s in stamps_list):
            stamps = np.asarray(
                [t for h, s in zip(histories, stamps_list, strict=True) for t in (s or [0] * len(h))], dtype=np.int64
            )
        return np.asarray(users, dtype=object), offsets, flat, stamps

    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                history = [str(i) for i in record["history"]]
                stamps = record.get("timestamps")
                if stamps is not None and len(stamps) != len(history):
                    raise ValueError(f"{len(stamps)} timestamps for {len(history)} items")
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(
                    f'{path} line {number}: expected {{"user", "history"[, "timestamps"]}} ({exc})'
                ) from None
            users.append(str(record["user"]))
            histories.append(history)
            stamps_list.append(stamps)
            if len(users) == chunk:
                yield emit()
                users, histories, stamps_list = [], [], []
    if users:
        yield emit()


SKIPPED_LISTED = 1000  # skipped users named in a report (all are counted)


def recommend_file(
    serving: ServingModel,
    input_path: str | Path,
    output: str | Path,
    n: int = 50,
    chunk: int = 4096,
    progress: bool = True,
) -> dict[str, Any]:
    """Top-n for each history of a file; users with an empty or all-unknown history are left out and named in the
    report (``skipped_users``, the first 1,000). Vectorised per chunk: ids looked up at once, windows cut from the
    flat arrays, one search per chunk."""
    started = time.perf_counter()
    counts: dict[str, Any] = {"users": 0, "skipped_unknown": 0, "skipped_users": []}

    def chunks() -> Iterator[pa.RecordBatch]:
        with tqdm(unit="user", disable=not progress, desc="recommend") as bar:
            for users, offsets, flat, stamps in read_chunks(input_path, chunk):
                ids = serving.lookup(flat)
                known = ids > 0
                segment = np.repeat(np.arange(len(users)), np.diff(offsets))
                known_per_user = np.bincount(segment[known], minlength=len(users))
                indptr = np.concatenate([[0], np.cumsum(known_per_user)]).astype(np.int64)
                times = np.zeros(int(known.sum()), np.int64) if stamps is None else stamps[known]
                rows = np.flatnonzero(known_per_user > 0)
                counts["users"] += len(users)
                counts["skipped_unknown"] += len(users) - len(rows)
                room = SKIPPED_LISTED - len(counts["skipped_users"])
                if room > 0 and len(rows) < len(users):
                    counts["skipped_users"] += [str(u) for u in users[known_per_user == 0][:room]]
                if len(rows):
                    batch = window_batch(indptr, ids[known], times, rows, serving.maxlen)
                    merged, scores, source = serving.search_batch(batch, n)
                    yield _rows(users[rows], merged, scores, source, serving.item_original_ids)
                bar.update(len(users))

    written = _write(chunks(), output)
    seconds = time.perf_counter() - started
    return {
        **counts,
        "rows": written,
        "seconds": round(seconds, 3),
        "users_per_second": counts["users"] / max(seconds, 1e-9),
    }


__all__ = ["recommend_dataset", "recommend_file", "window_batch", "OUTPUT_SCHEMA"]
