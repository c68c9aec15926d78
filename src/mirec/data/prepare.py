"""Clean, filter, split and remap a raw log into a :class:`~mirec.data.dataset.PreparedDataset`.

Follows ComiRec/PIMI_Rec ``preprocess/data.py`` (docs/models.md section 2.1): items with >= 5 interactions
kept, then users with >= 5 kept interactions (one pass; iterative k-core is an option); users shuffled with
seed 1230 and split 8:1:1; per user time-sorted sequences; for a valid/test user the first
``int(0.8 * len)`` items infer the interests (PIMI_Rec data_iterator ``k = int(len*0.8)``), the rest are the
targets. Our decision (docs/models.md section 6): item ids 1..N by descending *training* popularity (train
users + valid/test history parts, never targets), ties broken by first appearance in the input (as
ComiRec's stable sort over its insertion-ordered counter). Everything is vectorised numpy / pyarrow.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mirec.choices import TIMESTAMP_UNITS
from mirec.data.catalogue import with_item_table
from mirec.data.dataset import SPLITS, PreparedDataset, SplitSequences, foreign_entries, is_prepared_dataset
from mirec.data.features import FeatureSpec, read_item_table
from mirec.data.readers import Interactions, input_files, read_interactions
from mirec.data.registry import BUNDLED, bundled_path
from mirec.utils import exclusive_lock, sha256_file

DEFAULT_SEED = 1230  # ComiRec preprocess/data.py
EARLIEST_PLAUSIBLE = 631_152_000  # 1990-01-01: no public interaction log starts earlier


def detect_timestamp_unit(ts: np.ndarray) -> str:
    """The unit of positive epoch timestamps from the median's magnitude: seconds of the years 1973-5138
    are 1e8..1e11, the same instants in ms / us / ns are 1e3 / 1e6 / 1e9 times larger."""
    if len(ts) == 0:
        return "s"
    median = float(np.median(ts))
    for unit, lower in (("ns", 1e17), ("us", 1e14), ("ms", 1e11)):
        if median >= lower:
            return unit
    return "s"


def check_time_range(ts_seconds: np.ndarray, unit: str, detected: bool) -> str | None:
    """A warning text when the converted timestamps do not look like real dates (None when they do)."""
    if len(ts_seconds) == 0:
        return None
    first, last = int(ts_seconds.min()), int(ts_seconds.max())
    now = int(time.time()) + 86_400
    if first >= EARLIEST_PLAUSIBLE and last <= now:
        return None
    span = (
        f"{time.strftime('%Y-%m-%d', time.gmtime(first))} .. {time.strftime('%Y-%m-%d', time.gmtime(min(last, 2**37)))}"
    )
    how = "detected" if detected else "given"
    return (
        f"timestamps read as {unit} ({how}) span {span}: dates before 1990 or in the future; "
        "is the timestamp column right (--reader-option timestamp=...) and its unit (--timestamp-unit)?"
    )


class EmptyDatasetError(ValueError):
    """Cleaning/filtering left no interactions (or no users in a split)."""


@dataclass
class PrepareOptions:
    """Cleaning, filtering and split options (defaults = ComiRec/PIMI preprocessing)."""

    min_item_count: int = 5
    min_user_count: int = 5
    iterative_kcore: bool = False  # False = ComiRec's single pass (items, then users)
    min_timestamp: int | None = None  # inclusive window on raw Unix seconds
    max_timestamp: int | None = None
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    history_ratio: float = 0.8  # valid/test: history_len = int(history_ratio * len)
    drop_duplicates: bool = False  # drop repeated (user, item, timestamp) rows (ComiRec keeps them)
    # comirec: users split 8:1:1, valid/test users' later 20% are targets | loo: each user's last item is the test
    # target, the one before it the valid target (SASRec / BERT4Rec), targets seen before or never trained on dropped
    # | temporal: one global time cut for valid and one for test; training reads only what came before the first
    split: Literal["comirec", "loo", "temporal"] = "comirec"
    # temporal: the valid and test cuts, as fractions of the interactions (time quantiles) or of the time range
    temporal_cuts: tuple[float, float] = (0.8, 0.9)
    temporal_cut_by: Literal["interactions", "time"] = "interactions"

    def __post_init__(self) -> None:
        self.split_ratios = tuple(float(r) for r in self.split_ratios)  # type: ignore[assignment]
        if (
            len(self.split_ratios) != 3
            or any(r < 0 for r in self.split_ratios)
            or abs(sum(self.split_ratios) - 1) > 1e-6
        ):
            raise ValueError(f"split_ratios must be three non-negative numbers summing to 1, got {self.split_ratios}")
        if not 0.0 < self.history_ratio < 1.0:
            raise ValueError(f"history_ratio must be in (0, 1), got {self.history_ratio}")
        if self.min_item_count < 1 or self.min_user_count < 1:
            raise ValueError("min_item_count and min_user_count must be >= 1")
        if self.split not in ("comirec", "loo", "temporal"):
            raise ValueError(f"split {self.split!r}; expected comirec, loo or temporal")
        self.temporal_cuts = tuple(float(c) for c in self.temporal_cuts)  # type: ignore[assignment]
        if len(self.temporal_cuts) != 2 or not 0.0 < self.temporal_cuts[0] < self.temporal_cuts[1] < 1.0:
            raise ValueError(f"temporal_cuts must be two fractions 0 < valid < test < 1, got {self.temporal_cuts}")
        if self.temporal_cut_by not in ("interactions", "time"):
            raise ValueError(f"temporal_cut_by {self.temporal_cut_by!r}; expected interactions or time")


@dataclass(frozen=True)
class ItemTableOptions:
    """``mirec prepare --items``: the item table and what to read from it."""

    path: Path  # .tsv / .csv (optionally .gz) with a header, or .parquet
    features: tuple[FeatureSpec, ...]  # the declared columns (NAME:KIND)
    id_column: str = "item_id"  # the column holding the log's item ids
    cold_fraction: float = 0.0  # share of the log's items held out as cold items (the cold-start protocol)


@dataclass
class PrepareReport:
    """What prepare did; ``str(report)`` / ``to_json()`` give JSON."""

    name: str
    output: str | None
    n_users: int
    n_items: int
    n_interactions: int
    splits: dict[str, dict[str, int]]
    read: dict[str, Any]
    clean: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True, default=str)

    def __str__(self) -> str:
        return self.to_json()


def _encode(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Dictionary-encode strings: (int64 codes in first-appearance order, -1 for null; vocabulary)."""
    encoded = pc.dictionary_encode(column)
    if isinstance(encoded, pa.ChunkedArray):
        dictionary = (
            encoded.chunk(encoded.num_chunks - 1).dictionary if encoded.num_chunks else pa.array([], pa.string())
        )
        indices = pa.chunked_array([c.indices for c in encoded.chunks], type=encoded.type.index_type)
    else:
        dictionary, indices = encoded.dictionary, encoded.indices
    codes = pc.fill_null(indices.cast(pa.int64()), -1).to_numpy()
    if isinstance(codes, pa.ChunkedArray):  # pragma: no cover - to_numpy returns numpy for chunked too
        codes = np.asarray(codes)
    return np.asarray(codes, dtype=np.int64), dictionary


def _empty_as_null(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """ "" -> null, so that a row with an empty user or item id is dropped as a missing id (as Spark reads it)."""
    return pc.if_else(pc.equal(column, ""), pa.scalar(None, column.type), column)


def _category_order(vocab: pa.Array) -> np.ndarray:
    """Order of category strings: numeric when all are integers (keeps e.g. 0..56 as is), else lexicographic."""
    values = vocab.to_numpy(zero_copy_only=False).astype(str)
    try:
        keys = values.astype(np.int64)
    except ValueError:
        return np.argsort(values, kind="stable")
    return np.argsort(keys, kind="stable")


def kcore_filter(
    user: np.ndarray, item: np.ndarray, min_item: int, min_user: int, iterative: bool
) -> tuple[np.ndarray, int]:
    """Boolean keep mask: items with >= min_item rows, then users with >= min_user kept rows (ComiRec single
    pass); ``iterative`` repeats until both hold (k-core). Returns (mask, passes)."""
    keep = np.ones(len(user), dtype=bool)
    n_items = int(item.max()) + 1 if len(item) else 0
    n_users = int(user.max()) + 1 if len(user) else 0
    passes = 0
    while True:
        passes += 1
        item_counts = np.bincount(item[keep], minlength=n_items)
        keep &= item_counts[item] >= min_item
        user_counts = np.bincount(user[keep], minlength=n_users)
        keep &= user_counts[user] >= min_user
        if not iterative:
            return keep, passes
        item_counts = np.bincount(item[keep], minlength=n_items)
        if not keep.any() or item_counts[item[keep]].min() >= min_item:
            return keep, passes


def _stable_user_time_order(user: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Permutation sorting rows by (user, timestamp), ties keeping input order."""
    if len(user) == 0:
        return np.zeros(0, dtype=np.int64)
    t0 = int(ts.min())
    span = int(ts.max()) - t0 + 1
    if (int(user.max()) + 1) * span < 2**62:
        return np.argsort(user * span + (ts - t0), kind="stable")
    order = np.argsort(ts, kind="stable")
    return order[np.argsort(user[order], kind="stable")]


def split_of_users(n_users: int, ratios: Sequence[float], seed: int) -> np.ndarray:
    """Shuffle users with ``seed`` and cut 8:1:1 at int(n*0.8), int(n*0.9) (ComiRec preprocess/data.py)."""
    perm = np.random.default_rng(seed).permutation(n_users)
    cut1 = int(n_users * ratios[0])
    cut2 = int(n_users * round(ratios[0] + ratios[1], 12))  # 0.8 + 0.1 -> 0.9 exactly, as ComiRec
    split = np.empty(n_users, dtype=np.int8)
    split[perm[:cut1]] = 0
    split[perm[cut1:cut2]] = 1
    split[perm[cut2:]] = 2
    return split


def prepare_log(
    log: Interactions | Sequence[str | Path] | str | Path,
    fmt: str | None = None,
    *,
    name: str | None = None,
    options: PrepareOptions | None = None,
    on_bad_rows: str = "error",
    seed: int = DEFAULT_SEED,
    reader_options: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    timestamp_unit: str = "auto",
) -> PreparedDataset:
    """Clean, filter, split and remap a log (an :class:`Interactions`, or input files of format ``fmt``, read
    first); nothing is written. ``meta['clean']`` holds the cleaning counts, ``meta['read']`` the read report.

    Timestamps are stored in Unix seconds: ``timestamp_unit`` (s | ms | us | ns, or auto = detected from their
    magnitude) converts them; the order within a user follows the raw values. The unit is recorded in
    ``meta['timestamp_unit']``; an implausible date range warns and is recorded in ``meta['clean']``."""
    if timestamp_unit != "auto" and timestamp_unit not in TIMESTAMP_UNITS:
        raise ValueError(f"timestamp unit {timestamp_unit!r}; expected auto or one of {list(TIMESTAMP_UNITS)}")
    if not isinstance(log, Interactions):
        if fmt is None:
            raise ValueError("prepare_log: give the format (fmt) of the input files")
        log = read_interactions(log, fmt, on_bad_rows=on_bad_rows, **(reader_options or {}))
    options = options or PrepareOptions()
    table = log.table
    clean: dict[str, Any] = {"rows_in": int(table.num_rows)}

    # 1. ids -> codes (first-appearance order), timestamps -> numpy; drop illegal rows.
    user, user_vocab = _encode(_empty_as_null(table.column("user")))  # an empty id is a missing id
    item, item_vocab = _encode(_empty_as_null(table.column("item")))
    ts_col = table.column("timestamp")
    ts_valid = pc.is_valid(ts_col).to_numpy(zero_copy_only=False)
    ts = pc.fill_null(ts_col, 0).to_numpy().astype(np.int64, copy=False)
    missing_id = (user < 0) | (item < 0)
    illegal_ts = ~ts_valid | (ts <= 0)
    unit = detect_timestamp_unit(ts[~illegal_ts]) if timestamp_unit == "auto" else timestamp_unit
    ts_raw, ts = ts, ts // TIMESTAMP_UNITS[unit]  # raw values keep sub-second order; seconds are stored
    if options.min_timestamp is not None:
        illegal_ts |= ts < options.min_timestamp
    if options.max_timestamp is not None:
        illegal_ts |= ts > options.max_timestamp
    keep = ~missing_id & ~illegal_ts
    clean["dropped_missing_id"] = int(missing_id.sum())
    clean["dropped_illegal_timestamp"] = int((illegal_ts & ~missing_id).sum())
    split_given = log.has_split
    file_split = table.column("split").to_numpy().astype(np.int8) if split_given else None
    if options.drop_duplicates:
        clean["dropped_duplicates"] = drop_duplicates(keep, user, item, ts)
    if not keep.any():
        raise EmptyDatasetError(f"{name or 'dataset'}: no interaction left after dropping illegal rows ({clean})")
    record_time_range(clean, ts[keep], unit, timestamp_unit == "auto", name)

    # 2. k-core filter (items, then users); the comirec format keeps its own split, so no filter.
    kept_rows, clean["filter"] = (keep, "none (pre-split input)") if split_given else _kcore(user, item, keep, options)
    clean["dropped_by_filter"] = int(keep.sum() - kept_rows.sum())
    rows = np.flatnonzero(kept_rows)
    check_kept(len(rows), int(keep.sum()), options, name)
    user, item, ts, ts_raw = user[rows], item[rows], ts[rows], ts_raw[rows]
    category_of_item = _first_category(table, item, rows, len(item_vocab)) if log.has_category else None
    record = PreparationRecord(meta, clean, options, seed, name, unit, log.report)
    return assemble(user, item, ts, ts_raw, rows, user_vocab, item_vocab, category_of_item, file_split, record)


def record_time_range(clean: dict[str, Any], seconds: np.ndarray, unit: str, detected: bool, name: str | None) -> None:
    """The unit into the cleaning record; an implausible date range (both engines) recorded and warned about."""
    clean["timestamp_unit"] = unit
    warning = check_time_range(seconds, unit, detected=detected)
    if warning:
        clean["timestamp_warning"] = warning
        warnings.warn(f"{name or 'dataset'}: {warning}", stacklevel=3)


def drop_duplicates(keep: np.ndarray, user: np.ndarray, item: np.ndarray, ts: np.ndarray) -> int:
    """Unmark repeated (user, item, second) rows among the kept ones, keeping the first; returns how many."""
    idx = np.flatnonzero(keep)
    _, first = np.unique(np.stack([user[idx], item[idx], ts[idx]]), axis=1, return_index=True)
    dup = np.ones(len(idx), dtype=bool)
    dup[first] = False
    keep[idx[dup]] = False
    return int(dup.sum())


def _kcore(
    user: np.ndarray, item: np.ndarray, keep: np.ndarray, options: PrepareOptions
) -> tuple[np.ndarray, dict[str, Any]]:
    """(rows kept by the item-then-user count filter, the filter's record)."""
    kept_rows, passes = _filter_subset(user, item, keep, options)
    return kept_rows, filter_record(options, passes)


def filter_record(options: PrepareOptions, passes: int) -> dict[str, Any]:
    """meta.json's record of the count filter (both engines)."""
    return {
        "min_item_count": options.min_item_count,
        "min_user_count": options.min_user_count,
        "iterative": options.iterative_kcore,
        "passes": passes,
    }


def check_kept(n_kept: int, n_before: int, options: PrepareOptions, name: str | None) -> None:
    """The k-core filter must leave a row (both engines)."""
    if n_kept == 0:
        raise EmptyDatasetError(
            f"{name or 'dataset'}: nothing left after the filter (min_item_count={options.min_item_count}, "
            f"min_user_count={options.min_user_count}, iterative={options.iterative_kcore}); "
            f"{n_before} rows before filtering"
        )


@dataclass
class PreparationRecord:
    """What a preparation reports beside its counts, carried from the engine's front end to meta.json: the
    caller's meta (sources, reader options), the cleaning report being filled, the options, the split seed, the
    dataset name, the timestamp unit and the reader's report."""

    meta: dict[str, Any] | None
    clean: dict[str, Any]
    options: PrepareOptions
    seed: int
    name: str | None
    unit: str
    read_report: Any

    def meta_json(
        self, *, n_rows: int, n_users: int, n_items: int, split_given: bool, category_names: list[str] | None
    ) -> dict[str, Any]:
        """meta.json's report of the preparation (both engines, both layouts)."""
        options, clean = self.options, self.clean
        clean.update(
            rows_out=int(n_rows),
            n_users=int(n_users),
            n_items=int(n_items),
            split="given (pre-split input)"
            if split_given
            else "leave-one-out (last item test, second last valid)"
            if options.split == "loo"
            else {"temporal_cuts": list(options.temporal_cuts), "by": options.temporal_cut_by}
            if options.split == "temporal"
            else {"seed": self.seed, "ratios": list(options.split_ratios)},
            history_ratio=options.history_ratio,
            popularity="training only (train users + valid/test history parts)"
            if options.split == "comirec"
            else "training rows only (what comes before the valid target or cut)",
            n_categories=None if category_names is None else len(category_names),
        )
        dataset_meta = dict(self.meta or {})
        dataset_meta.update(
            name=self.name or dataset_meta.get("name") or "dataset",
            options=dataclasses.asdict(options),
            seed=self.seed,
            timestamp_unit=self.unit,
            read=self.read_report,
            clean=clean,
            n_interactions=int(n_rows),
        )
        if category_names is not None:
            dataset_meta["category_names"] = category_names
        return dataset_meta


def history_cut(
    split_of_user: np.ndarray, lengths: np.ndarray, options: PrepareOptions, name: str | None
) -> np.ndarray:
    """Every split must hold a user; then each user's history length, int(len * history_ratio) (PIMI
    data_iterator: k = int(len*0.8)); the valid/test users' later items are their targets (both engines)."""
    for code, split_name in enumerate(SPLITS):
        if not (split_of_user == code).any():
            raise EmptyDatasetError(
                f"{name or 'dataset'}: the {split_name} split has no user ({len(split_of_user)} users in all)"
            )
    return (lengths * options.history_ratio).astype(np.int64)


def assemble(
    user: np.ndarray,
    item: np.ndarray,
    ts: np.ndarray,
    ts_raw: np.ndarray,
    rows: np.ndarray,
    user_vocab: pa.Array,
    item_vocab: pa.Array,
    category_of_item: tuple[np.ndarray, pa.Array] | None,
    file_split: np.ndarray | None,
    record: PreparationRecord,
) -> PreparedDataset:
    """Steps 3-7 of preparation on the kept rows, in input order (user and item codes in first-appearance order
    of the whole input, ``rows`` their input positions): shared by the embedded and the Spark engines, so both
    give the same dataset from the same kept rows."""
    split_given = file_split is not None
    options, name = record.options, record.name

    # 3. internal users 0..U-1 in first-appearance order (compaction, no sort); sort (user, time) stably.
    user_present = np.bincount(user, minlength=len(user_vocab)) > 0
    user_codes = np.flatnonzero(user_present)
    user = (np.cumsum(user_present) - 1)[user]
    n_users = len(user_codes)
    order = _stable_user_time_order(user, ts_raw)
    user, item, ts, rows = user[order], item[order], ts[order], rows[order]
    lengths = np.bincount(user, minlength=n_users)
    indptr = np.concatenate([[0], np.cumsum(lengths)])

    # 4. split users (or keep the given split); leave-one-out splits every user's sequence instead.
    position = np.arange(len(user)) - indptr[:-1][user]
    if options.split != "comirec" and split_given:
        raise ValueError(f"--split {options.split} re-splits a log by time; a pre-split input keeps its own split")
    if options.split == "loo":
        check_loo_lengths(lengths, name)
        is_train_row = position < (lengths - 2)[user]
    elif options.split == "temporal":
        cuts = temporal_cut_times(ts, options.temporal_cuts, options.temporal_cut_by)
        is_train_row = ts < cuts[0]
    else:
        split_of_user = user_split(file_split, rows, user, user_vocab, user_codes, indptr, lengths, record)
        history_len = history_cut(split_of_user, lengths, options, name)
        is_train_row = (split_of_user[user] == 0) | (position < history_len[user])

    # 5. item ids by descending training popularity, ties by first appearance (code order).
    ordered_codes, new_id = popularity_ids(
        np.bincount(item, minlength=len(item_vocab)), np.bincount(item[is_train_row], minlength=len(item_vocab))
    )
    n_items = len(ordered_codes)
    item_ids = new_id[item]

    # 6. categories (item -> category of its first row; strings -> 0..C-1, -1 unknown).
    item_categories, category_names = compact_categories(category_of_item, ordered_codes)

    # 7. CSR per split, users ascending.
    if options.split == "loo":
        splits = leave_one_out_splits(item_ids, ts, lengths, indptr, position, user, n_items)
    elif options.split == "temporal":
        splits = temporal_splits(item_ids, ts, user, len(lengths), cuts, name)
    else:
        splits = user_splits(split_of_user, user, item_ids, ts, lengths, history_len)

    item_original = original_item_ids(item_vocab, ordered_codes)
    user_original = np.asarray(user_vocab.take(pa.array(user_codes)).to_numpy(zero_copy_only=False), dtype=object)
    dataset_meta = record.meta_json(
        n_rows=len(rows), n_users=n_users, n_items=n_items, split_given=split_given, category_names=category_names
    )
    return PreparedDataset(
        n_items=n_items,
        item_original_ids=item_original,
        user_original_ids=user_original,
        item_categories=item_categories,
        meta=dataset_meta,
        **splits,
    )


def user_split(file_split, rows, user, user_vocab, user_codes, indptr, lengths, record) -> np.ndarray:
    """The split code (0 train, 1 valid, 2 test) of every user: the input's own, or drawn 8:1:1 with the seed."""
    if file_split is None:
        return split_of_users(len(lengths), record.options.split_ratios, record.seed)
    row_split = file_split[rows]
    split_of_user = row_split[indptr[:-1]]
    if (row_split != np.repeat(split_of_user, lengths)).any():
        bad = int(user[np.flatnonzero(row_split != np.repeat(split_of_user, lengths))[0]])
        raise ValueError(f"pre-split input: user {user_vocab[int(user_codes[bad])]} appears in several split files")
    return split_of_user


def user_splits(split_of_user, user, item_ids, ts, lengths, history_len) -> dict[str, SplitSequences]:
    """ComiRec's splits: each user in one of them; valid/test users' first ``history_len`` items are history."""
    splits: dict[str, SplitSequences] = {}
    row_split = split_of_user[user]
    for code, split_name in enumerate(SPLITS):
        users_s = np.flatnonzero(split_of_user == code)
        sel = row_split == code
        splits[split_name] = SplitSequences(
            users=users_s.astype(np.int64),
            indptr=np.concatenate([[0], np.cumsum(lengths[users_s])]).astype(np.int64),
            items=item_ids[sel],
            timestamps=ts[sel],
            history_len=None if code == 0 else history_len[users_s],
        )
    return splits


def check_loo_lengths(lengths: np.ndarray, name: str | None) -> None:
    short = int((lengths < 3).sum())
    if short:
        raise EmptyDatasetError(
            f"{name or 'dataset'}: leave-one-out needs 3 interactions per user (train, valid, test); {short} users "
            "have fewer (raise --min-count)"
        )


def leave_one_out_splits(item_ids, ts, lengths, indptr, position, user, n_items) -> dict[str, SplitSequences]:
    """Every user trains on all but the last two items; the valid target is the second last (history: what comes
    before it), the test target the last (history: everything before it). As the eSASRec benchmark's LastNSplitter
    (filter_already_seen, filter_cold_items): a target the user had already met, or no training row holds, is
    dropped, with its user, from that split."""
    train_rows = position < (lengths - 2)[user]
    users = np.arange(len(lengths), dtype=np.int64)
    splits = {"train": csr_split(users, user[train_rows], item_ids[train_rows], ts[train_rows], None)}
    for split_name, held in (("valid", 2), ("test", 1)):
        history_len = lengths - held
        before = position < history_len[user]  # every row a model may read for this split
        known = np.zeros(n_items + 1, dtype=bool)
        known[item_ids[before]] = True
        target = item_ids[indptr[:-1] + history_len]
        key = user.astype(np.int64) * (n_items + 1) + item_ids  # (user, item) pairs of the history rows
        seen = np.isin(users * (n_items + 1) + target, key[before])
        kept = known[target] & ~seen
        rows = kept[user] & (position <= history_len[user])
        splits[split_name] = csr_split(users[kept], user[rows], item_ids[rows], ts[rows], history_len[kept])
    return splits


def temporal_cut_times(ts: np.ndarray, fractions: tuple[float, float], by: str) -> tuple[int, int]:
    """The valid and test cut times: the times by which those fractions of the interactions had happened
    (``by = "interactions"``; Amazon logs grow fast, so 80% of Beauty's time range holds 12% of its rows), or
    those fractions of the way from the first to the last interaction (``by = "time"``)."""
    if by == "interactions":
        return tuple(int(t) for t in np.quantile(ts, fractions, method="lower"))  # type: ignore[return-value]
    first, last = int(ts.min()), int(ts.max())
    return int(first + fractions[0] * (last - first)), int(first + fractions[1] * (last - first))


def temporal_splits(item_ids, ts, user, n_users, cuts, name) -> dict[str, SplitSequences]:
    """A global time split: training rows are those before the valid cut (users with 2 or more of them); a
    valid user has history before the valid cut and targets before the test cut; a test user has history
    before the test cut (valid-period items included) and targets after it. No model reads the future."""
    valid_cut, test_cut = cuts
    train_rows = ts < valid_cut
    train_count = np.bincount(user[train_rows], minlength=n_users)
    train_users = np.flatnonzero(train_count >= 2)
    keep = train_rows & np.isin(user, train_users)
    splits = {"train": csr_split(train_users, user[keep], item_ids[keep], ts[keep], None)}
    for split_name, (cut, end) in (("valid", (valid_cut, test_cut)), ("test", (test_cut, None))):
        before = ts < cut
        after = ~before if end is None else ~before & (ts < end)
        history = np.bincount(user[before], minlength=n_users)
        held = np.bincount(user[after], minlength=n_users)
        users = np.flatnonzero((history > 0) & (held > 0))
        rows = (before | after) & np.isin(user, users)
        splits[split_name] = csr_split(users, user[rows], item_ids[rows], ts[rows], history[users])
    for split_name, split in splits.items():
        if len(split.users) == 0:
            raise EmptyDatasetError(f"{name or 'dataset'}: the temporal {split_name} split has no user; move the cuts")
    return splits


def csr_split(users, row_user, items, stamps, history_len) -> SplitSequences:
    """A split of ``users`` (ascending) from rows already in (user, time) order."""
    lengths = np.bincount(np.searchsorted(users, row_user), minlength=len(users))
    return SplitSequences(
        users=users.astype(np.int64),
        indptr=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        items=items,
        timestamps=stamps,
        history_len=None if history_len is None else np.asarray(history_len, dtype=np.int64),
    )


def popularity_ids(row_counts: np.ndarray, train_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(item codes in id order, code -> id 1..n with 0 for absent codes): descending training count, ties by
    code (first appearance); ``row_counts``/``train_counts`` per item code over all kept / training rows."""
    present = np.flatnonzero(row_counts)
    ordered_codes = present[np.lexsort((present, -train_counts[present]))]
    new_id = np.zeros(len(row_counts), dtype=np.int64)
    new_id[ordered_codes] = np.arange(1, len(ordered_codes) + 1)
    return ordered_codes, new_id


def original_item_ids(item_vocab: pa.Array, ordered_codes: np.ndarray) -> np.ndarray:
    """[n_items + 1] object array: "" at padding, then the original id of each internal item id."""
    original = np.empty(len(ordered_codes) + 1, dtype=object)
    original[0] = ""
    original[1:] = item_vocab.take(pa.array(ordered_codes)).to_numpy(zero_copy_only=False)
    return original


def compact_categories(
    category_of_item: tuple[np.ndarray, pa.Array] | None, ordered_codes: np.ndarray
) -> tuple[np.ndarray | None, list[str] | None]:
    """(category per internal item id, -1 at padding and for none; the names of categories 0..C-1), the used
    categories only, in :func:`_category_order`; (None, None) without categories."""
    if category_of_item is None:
        return None, None
    item_cat, cat_vocab = category_of_item
    cat_order = _category_order(cat_vocab)
    cat_rank = np.empty(len(cat_vocab), dtype=np.int64)
    cat_rank[cat_order] = np.arange(len(cat_vocab))
    ranked = np.where(item_cat >= 0, cat_rank[np.maximum(item_cat, 0)], -1)[ordered_codes]
    used = np.flatnonzero(np.bincount(ranked[ranked >= 0], minlength=len(cat_vocab)))
    remap = np.full(len(cat_vocab), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))  # compact to 0..C-1 over the categories actually used
    item_categories = np.concatenate([[-1], np.where(ranked >= 0, remap[np.maximum(ranked, 0)], -1)])
    names_sorted = np.asarray(cat_vocab.to_numpy(zero_copy_only=False), dtype=object)[cat_order]
    return item_categories, [str(n) for n in names_sorted[used]]


def _first_category(table: pa.Table, item: np.ndarray, rows: np.ndarray, n_codes: int) -> tuple[np.ndarray, pa.Array]:
    """Per item code: the category code of its first kept row in input order (-1 none); and the vocabulary."""
    cat, cat_vocab = _encode(table.column("category"))
    first = np.full(n_codes, len(rows), dtype=np.int64)
    np.minimum.at(first, item, np.arange(len(rows)))  # rows ascend in input order here
    item_cat = np.full(n_codes, -1, dtype=np.int64)
    seen = first < len(rows)
    item_cat[seen] = cat[rows[first[seen]]]
    return item_cat, cat_vocab


def _filter_subset(
    user: np.ndarray, item: np.ndarray, keep: np.ndarray, options: PrepareOptions
) -> tuple[np.ndarray, int]:
    idx = np.flatnonzero(keep)
    mask, passes = kcore_filter(
        user[idx], item[idx], options.min_item_count, options.min_user_count, options.iterative_kcore
    )
    out = np.zeros(len(user), dtype=bool)
    out[idx[mask]] = True
    return out, passes


def check_output_folder(output: str | Path, inputs: Sequence[str | Path], overwrite: bool) -> None:
    """Refuse an output that would destroy data mirec did not create (raises ``FileExistsError``).

    An output that is or contains an input is always refused; an existing folder must be empty, or a
    prepared dataset of ours (its meta.json) replaced only with ``overwrite``.
    """
    out = Path(output).resolve()
    for given in inputs:
        source = Path(given).resolve()
        if source == out or out in source.parents:
            raise FileExistsError(f"--output {output} contains the input {given}; choose another output folder")
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise FileExistsError(f"--output {output} exists and is not a folder; choose another output folder")
    if is_prepared_dataset(out):
        if not overwrite:
            raise FileExistsError(f"--output {output} already holds a prepared dataset; pass --overwrite to replace it")
        foreign = foreign_entries(out)
        if foreign:  # the folder is replaced whole: what mirec did not write would go with it
            raise FileExistsError(
                f"--output {output} holds files mirec did not write ({', '.join(foreign[:5])}); "
                "move them out first or choose another output folder"
            )
        return
    if any(out.iterdir()):
        raise FileExistsError(
            f"--output {output} exists and is not a mirec dataset (no meta.json of ours); "
            "refusing to replace it: choose an empty or new folder"
        )


def output_lock_file(output: str | Path) -> Path:
    """The lock file of a dataset output (beside it: the folder itself is replaced by a rename)."""
    output = Path(output).resolve()
    return output.parent / f".{output.name}.lock"


def prepare(
    inputs: Sequence[str | Path] | str | Path,
    fmt: str,
    output: str | Path,
    *,
    name: str | None = None,
    options: PrepareOptions | None = None,
    on_bad_rows: str = "error",
    seed: int = DEFAULT_SEED,
    reader_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    timestamp_unit: str = "auto",
    frontend: Any = None,
    items: ItemTableOptions | None = None,
) -> PrepareReport:
    """Read ``inputs`` (format ``fmt``), prepare them and save the folder ``output`` atomically.

    ``frontend(files, fmt, name=, options=, seed=, meta=, on_bad_rows=, reader_options=, timestamp_unit=)``
    replaces this process's reading and cleaning (:func:`mirec.data.spark_prepare.prepare_with_spark` passes
    the Spark job's); the folder is the same.

    ``output`` must be new, empty, or (with ``overwrite``) a prepared dataset; it is locked for the whole
    run so two prepares into one folder cannot interleave. ``timestamp_unit``: auto | s | ms | us | ns.
    ``items``: an item table whose features, catalogue-only items and held-out cold items the folder keeps
    (:mod:`mirec.data.catalogue`); read and checked before the log.
    """
    paths = [Path(inputs)] if isinstance(inputs, str | Path) else [Path(p) for p in inputs]
    options = options or PrepareOptions()
    name = name or Path(output).name
    check_output_folder(output, paths, overwrite)  # before reading: fail in a second, not after the read
    with exclusive_lock(output_lock_file(output), f"dataset output {output}"):
        check_output_folder(output, paths, overwrite)  # again under the lock: another process may have written
        t0 = time.perf_counter()
        if items is not None and frontend is not None:
            raise ValueError("--items is not supported with --engine spark yet; prepare with the default engine")
        table = read_item_table(items.path, list(items.features), items.id_column) if items is not None else None
        log = None if frontend else read_interactions(paths, fmt, on_bad_rows=on_bad_rows, **(reader_options or {}))
        t1 = time.perf_counter()
        files = input_files(paths)
        sources = [{"path": str(f.resolve()), "bytes": f.stat().st_size, "sha256": sha256_file(f)} for f in files]
        meta = {
            "name": name,
            "format": fmt,
            "sources": sources,
            "reader_options": dict(reader_options or {}),
            "on_bad_rows": on_bad_rows,
        }
        if frontend is not None:
            dataset = frontend(
                [Path(s["path"]) for s in sources],
                fmt,
                name=name,
                options=options,
                seed=seed,
                meta=meta,
                on_bad_rows=on_bad_rows,
                reader_options=reader_options,
                timestamp_unit=timestamp_unit,
            )
        else:
            dataset = prepare_log(log, name=name, options=options, seed=seed, meta=meta, timestamp_unit=timestamp_unit)
        if table is not None:
            dataset = with_item_table(dataset, table, items.cold_fraction, seed)  # type: ignore[union-attr]
        t2 = time.perf_counter()
        dataset.save(output, overwrite=True)  # check_output_folder allowed it: new, empty, or ours with overwrite
        t3 = time.perf_counter()
    return PrepareReport(
        name=name,
        output=str(output),
        n_users=dataset.n_users,
        n_items=dataset.n_items,
        n_interactions=int(dataset.meta["n_interactions"]),
        splits=dataset.split_sizes(),
        read=dataset.meta["read"],
        clean=dataset.meta["clean"],
        seconds={"read": t1 - t0, "prepare": t2 - t1, "save": t3 - t2, "total": t3 - t0},
    )


def bundled_dataset(
    output: str | Path, *, options: PrepareOptions | None = None, seed: int = DEFAULT_SEED
) -> PrepareReport:
    """Prepare the bundled amazon-grocery file into ``output``."""
    path = bundled_path()
    if not path.exists():
        raise FileNotFoundError(f"bundled dataset {path} is missing from the installation")
    return prepare([path], "csv", output, name=BUNDLED, options=options, seed=seed)
