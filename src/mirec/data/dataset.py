"""The prepared-dataset folder: per-split CSR sequences (memory-mapped .npy), id maps (Parquet), meta.json.

Layout of a prepared folder::

    meta.json                      counts, options, source checksums, format version
    items.parquet                  row i = internal item i+1: original_id (string), category (int64, -1 = none)
    users.parquet                  row u = internal user u: original_id (string)
    item_features.json, feature_*  item side features, when prepared with ``--items`` (mirec.data.features)
    {split}_users.npy              int64 [n_split_users]      internal user ids
    {split}_indptr.npy             int64 [n_split_users + 1]  CSR offsets into the two arrays below
    {split}_items.npy              int64 [n_interactions]     internal item ids 1..n_items, time-sorted per user
    {split}_timestamps.npy         int64 [n_interactions]     Unix seconds
    {split}_history_len.npy        int64 [n_split_users]      valid/test only: the first history_len items infer
                                                               the interests, the rest are the targets

Item ids are 1..n_items by descending training popularity (0 is padding), as ComiRec's preprocessing.

``layout = "parquet"`` in meta.json (``mirec prepare --engine spark --layout parquet``, for logs whose
interactions should never pass through one process): ``users/`` and ``interactions/`` are Parquet datasets written
by Spark's executors instead of users.parquet and the .npy arrays; ``users/`` holds (user, original_id, split,
history_len), ``interactions/split={train,valid,test}/`` (user, item, timestamp, position in the user's
sequence). :func:`load_dataset` reads them into the same in-memory arrays (not memory-mapped).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mirec.data.features import ItemFeatures, load_item_features
from mirec.utils import atomic_directory

FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")
SECONDS_PER_DAY = 86400


def days_since_first(stamps: np.ndarray, first: np.ndarray | int) -> np.ndarray:
    """Whole days (rounded) from ``first`` to each Unix-second timestamp, + 1 so that 0 stays padding: the time
    input of PIMI and GIMIRec (PIMI_Rec data_iterator)."""
    return np.rint((np.asarray(stamps) - first) / SECONDS_PER_DAY).astype(np.int64) + 1


@dataclass
class SplitSequences:
    """Time-sorted item sequences of one split's users in CSR form."""

    users: np.ndarray
    indptr: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    history_len: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.users)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def sequence(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.indptr[row], self.indptr[row + 1]
        return self.items[lo:hi], self.timestamps[lo:hi]

    def days(self) -> np.ndarray:
        """Per interaction: whole days since the user's first interaction, + 1 (PIMI_Rec data_iterator)."""
        return days_since_first(self.timestamps, np.repeat(self.timestamps[self.indptr[:-1]], self.lengths))

    def history_mask(self) -> np.ndarray:
        """Boolean per interaction: True for history (inference) items, False for targets."""
        position = np.arange(len(self.items)) - np.repeat(self.indptr[:-1], self.lengths)
        if self.history_len is None:
            return np.ones(len(self.items), dtype=bool)
        return position < np.repeat(self.history_len, self.lengths)


@dataclass
class PreparedDataset:
    n_items: int
    train: SplitSequences
    valid: SplitSequences
    test: SplitSequences
    item_original_ids: np.ndarray  # [n_items + 1] str, index 0 = "" (padding)
    user_original_ids: np.ndarray  # [n_users] str
    item_categories: np.ndarray | None = None  # [n_items + 1] int64, -1 = unknown
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    item_features: ItemFeatures | None = None  # side features of items 0..n_items (mirec.data.features)

    def split(self, name: str) -> SplitSequences:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)

    @property
    def n_id_items(self) -> int:
        """Items 1..n_id_items are the ones models train on and hold an id embedding for; the rest of the
        catalogue (held-out cold items, items only the item table lists) is reached through features alone."""
        return int(self.meta.get("n_id_items", self.n_items))

    @property
    def name(self) -> str:
        return self.meta.get("name") or (self.path.name if self.path else "dataset")

    def item_popularity(self) -> np.ndarray:
        """Training-only interaction counts per item id (index 0 = padding), no target leaks."""
        counts = np.bincount(self.train.items, minlength=self.n_items + 1)
        for split in (self.valid, self.test):
            counts += np.bincount(split.items[split.history_mask()], minlength=self.n_items + 1)
        return counts

    def context_sequences(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CSR (indptr, items, timestamps) of every interaction a model may read: the training users' whole
        sequences, then the valid and test users' history parts (never a target); with a leave-one-out or a
        temporal split, the training rows only (nothing after the valid cut). The global-context graph and the
        interest clusters are built from these."""
        lengths, items, stamps = [], [], []
        # leave-one-out and temporal: valid/test histories repeat training rows or come after the valid cut
        held_out = () if self.meta.get("options", {}).get("split", "comirec") != "comirec" else (self.valid, self.test)
        for split in (self.train, *held_out):
            if split.history_len is None:
                lengths.append(np.asarray(split.lengths, dtype=np.int64))
                items.append(np.asarray(split.items))
                stamps.append(np.asarray(split.timestamps))
            else:
                mask = split.history_mask()
                lengths.append(np.minimum(split.lengths, np.asarray(split.history_len, dtype=np.int64)))
                items.append(np.asarray(split.items)[mask])
                stamps.append(np.asarray(split.timestamps)[mask])
        indptr = np.concatenate([[0], np.cumsum(np.concatenate(lengths))]).astype(np.int64)
        return indptr, np.concatenate(items).astype(np.int64), np.concatenate(stamps).astype(np.int64)

    @property
    def n_users(self) -> int:
        return len(self.user_original_ids)

    def split_sizes(self) -> dict[str, dict[str, int]]:
        """{split: {"users": n, "interactions": n}} (meta.json's ``splits``)."""
        sizes = {name: (len(self.split(name)), int(len(self.split(name).items))) for name in SPLITS}
        return {name: {"users": users, "interactions": rows} for name, (users, rows) in sizes.items()}

    def item_index(self) -> dict[str, int]:
        """Original item id -> internal id."""
        return {str(o): i for i, o in enumerate(self.item_original_ids) if i > 0}

    def save(self, path: str | Path, overwrite: bool = True) -> Path:
        """Write the folder atomically (built under a temporary name, then renamed)."""
        path = Path(path)
        with atomic_directory(path, overwrite=overwrite) as tmp:
            for name in SPLITS:
                split = self.split(name)
                for attr in SPLIT_ARRAYS:
                    value = getattr(split, attr)
                    if value is not None:
                        np.save(tmp / f"{name}_{attr}.npy", np.ascontiguousarray(value, dtype=np.int64))
            pq.write_table(
                pa.table({"original_id": pa.array(self.user_original_ids.astype(str))}), tmp / "users.parquet"
            )
            if self.item_features is not None:
                self.item_features.save(tmp)
            write_items_and_meta(
                tmp, self.item_original_ids, self.item_categories, self.meta, self.n_users, self.split_sizes()
            )
        self.path = path
        return path


def is_prepared_dataset(path: str | Path) -> bool:
    """True when ``path`` holds a dataset mirec prepared (a meta.json with our format version)."""
    meta_file = Path(path) / "meta.json"
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "format_version" in meta and "splits" in meta


def write_items_and_meta(
    folder: Path,
    item_original_ids: np.ndarray,
    item_categories: np.ndarray | None,
    meta: dict[str, Any],
    n_users: int,
    splits: dict[str, dict[str, int]],
    layout: str = "arrays",
) -> None:
    """items.parquet and meta.json of a prepared folder being built (both layouts)."""
    item_columns = {"original_id": pa.array(np.asarray(item_original_ids[1:]).astype(str))}
    if item_categories is not None:
        item_columns["category"] = pa.array(np.asarray(item_categories[1:]).astype(np.int64))
    pq.write_table(pa.table(item_columns), folder / "items.parquet")
    meta = dict(meta)
    meta.update(
        format_version=FORMAT_VERSION,
        layout=layout,
        n_items=int(len(item_original_ids) - 1),
        n_users=int(n_users),
        has_categories=item_categories is not None,
        splits=splits,
    )
    (folder / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


SPLIT_ARRAYS = ("users", "indptr", "items", "timestamps", "history_len")
# what a prepared folder of either layout holds (interest clusters and lock/temporary files included)
DATASET_ENTRY = re.compile(
    r"^(meta\.json|items\.parquet|users\.parquet|users|interactions|item_features\.json|feature_.+\.npy"
    rf"|({'|'.join(SPLITS)})_({'|'.join(SPLIT_ARRAYS)})\.npy|interests-(v2-)?k\d+-s\d+\.npy|\..*\.(lock|tmp))$"
)


def foreign_entries(path: str | Path) -> list[str]:
    """Names in a prepared folder that mirec does not write (``--overwrite`` would delete them: it refuses)."""
    path = Path(path)
    return sorted(p.name for p in path.iterdir() if not DATASET_ENTRY.match(p.name)) if path.is_dir() else []


def load_dataset(path: str | Path, mmap: bool = True) -> PreparedDataset:
    """Load a prepared folder; the big arrays are memory-mapped."""
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.exists():
        raise FileNotFoundError(f"{path}: not a prepared dataset (no meta.json); run `mirec prepare` first")
    meta = json.loads(meta_file.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{meta_file}: format_version {meta.get('format_version')} != {FORMAT_VERSION}")
    if meta.get("layout", "arrays") == "parquet":
        splits, users = _read_parquet_layout(path)
    else:
        mode = "r" if mmap else None
        splits = {}
        for name in SPLITS:
            arrays = {}
            for attr in SPLIT_ARRAYS:
                file = path / f"{name}_{attr}.npy"
                arrays[attr] = np.load(file, mmap_mode=mode, allow_pickle=False) if file.exists() else None
            splits[name] = SplitSequences(**arrays)
        users = np.array(pq.read_table(path / "users.parquet").column("original_id").to_pylist(), dtype=object)
    items = pq.read_table(path / "items.parquet")
    original = np.array([""] + items.column("original_id").to_pylist(), dtype=object)
    categories = None
    if "category" in items.column_names:
        categories = np.concatenate([[-1], items.column("category").to_numpy()]).astype(np.int64)
    return PreparedDataset(
        n_items=int(meta["n_items"]),
        item_original_ids=original,
        user_original_ids=users,
        item_categories=categories,
        meta=meta,
        path=path,
        item_features=load_item_features(path, mmap),
        **splits,
    )


def _read_parquet_layout(path: Path) -> tuple[dict[str, SplitSequences], np.ndarray]:
    """The CSR splits and user ids of a ``layout = "parquet"`` folder (``mirec prepare --engine spark --layout
    parquet``), read into memory: ``users/`` (user, original_id, split, history_len) and ``interactions/``
    partitioned by split (user, item, timestamp, position), both in any row order."""
    import pyarrow.dataset as ds

    users = pq.read_table(path / "users").sort_by("user")
    if not np.array_equal(users.column("user").to_numpy(), np.arange(users.num_rows)):
        raise ValueError(f"{path / 'users'}: user ids are not 0..{users.num_rows - 1}")
    split_of_user = np.asarray(users.column("split").to_numpy(zero_copy_only=False))
    history_len = users.column("history_len").to_numpy()
    frame = ds.dataset(path / "interactions", format="parquet", partitioning="hive")
    splits = {}
    for name in SPLITS:
        rows = frame.to_table(filter=ds.field("split") == name, columns=["user", "item", "timestamp", "position"])
        user = rows.column("user").to_numpy()
        order = np.lexsort((rows.column("position").to_numpy(), user))
        users_s = np.flatnonzero(split_of_user == name)
        lengths = np.bincount(user, minlength=len(split_of_user))[users_s]
        splits[name] = SplitSequences(
            users=users_s.astype(np.int64),
            indptr=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            items=rows.column("item").to_numpy()[order].astype(np.int64),
            timestamps=rows.column("timestamp").to_numpy()[order].astype(np.int64),
            history_len=None if name == "train" else history_len[users_s].astype(np.int64),
        )
    return splits, np.array(users.column("original_id").to_pylist(), dtype=object)
