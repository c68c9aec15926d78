"""The catalogue beyond the log: items of an item table that never occur in the log, and held-out cold items.

Item ids after :func:`with_item_table`: 1..n_id_items are the items a model trains on (the log's items, in the
prepared order, less the held-out ones), then the held-out cold items, then the table's items absent from the
log. Only items 1..n_id_items have an id embedding; the rest are reachable through their features alone.

Cold-start protocol (``cold_fraction``): a seeded random share of the log's items is held out: their rows leave
the training sequences and the valid/test histories, and they stay only as valid/test targets, so a model meets
them first at evaluation, through their features.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mirec.data.dataset import SPLITS, PreparedDataset, SplitSequences
from mirec.data.features import ItemTable, encode_item_table

COLD_SEED_OFFSET = 7919  # the cold draw uses its own stream: the same seed's user split is unchanged


def with_item_table(
    dataset: PreparedDataset, table: ItemTable, cold_fraction: float = 0.0, seed: int = 0
) -> PreparedDataset:
    """``dataset`` with the table's features, its catalogue-only items and (``cold_fraction`` > 0) held-out
    cold items; ids renumbered as the module says."""
    if not 0.0 <= cold_fraction < 1.0:
        raise ValueError(f"cold item fraction must be in [0, 1), got {cold_fraction}")
    n_log = dataset.n_items
    log_ids = [str(i) for i in dataset.item_original_ids[1:]]
    known = set(log_ids)
    extra = [item for item in table.ids if item not in known]
    rng = np.random.default_rng(seed + COLD_SEED_OFFSET)
    n_cold = int(round(cold_fraction * n_log))
    cold = np.zeros(n_log + 1, dtype=bool)
    cold[1 + rng.choice(n_log, size=n_cold, replace=False)] = True
    order = np.concatenate([[0], np.flatnonzero(~cold[1:]) + 1, np.flatnonzero(cold[1:]) + 1])  # new id -> old id
    new_of_old = np.empty(n_log + 1, dtype=np.int64)
    new_of_old[order] = np.arange(n_log + 1)
    original = np.concatenate([dataset.item_original_ids[order], np.array(extra, dtype=object)])
    categories = None
    if dataset.item_categories is not None:
        categories = np.concatenate([dataset.item_categories[order], np.full(len(extra), -1, dtype=np.int64)])
    splits = {name: _drop_cold(dataset.split(name), cold, new_of_old, name == "train") for name in SPLITS}
    n_items = n_log + len(extra)
    features = encode_item_table(table, {item: i for i, item in enumerate(original) if i > 0}, n_items)
    meta = dict(dataset.meta)
    meta["n_id_items"] = int(n_log - n_cold)
    meta["item_table"] = {
        "path": str(table.path),
        "features": [dataclasses.asdict(s) for s in table.specs],
        "catalogue_only_items": len(extra),
        "cold_items": n_cold,
        "cold_fraction": cold_fraction,
        **features.report,
    }
    return dataclasses.replace(
        dataset,
        n_items=n_items,
        item_original_ids=original,
        item_categories=categories,
        item_features=features,
        meta=meta,
        **splits,
    )


def _drop_cold(split: SplitSequences, cold: np.ndarray, new_of_old: np.ndarray, training: bool) -> SplitSequences:
    """The split with cold items' rows removed (training: all; valid/test: from the history part only)."""
    items = np.asarray(split.items)
    keep = ~cold[items] if training else ~(cold[items] & split.history_mask())
    lengths = np.asarray(split.lengths)
    row_user = np.repeat(np.arange(len(lengths)), lengths)
    new_lengths = np.bincount(row_user[keep], minlength=len(lengths))
    history_len = None
    if split.history_len is not None:
        dropped = np.bincount(row_user[~keep], minlength=len(lengths))  # only history rows are ever dropped here
        history_len = np.asarray(split.history_len, dtype=np.int64) - dropped
    return SplitSequences(
        users=np.asarray(split.users, dtype=np.int64),
        indptr=np.concatenate([[0], np.cumsum(new_lengths)]).astype(np.int64),
        items=new_of_old[items[keep]],
        timestamps=np.asarray(split.timestamps)[keep],
        history_len=history_len,
    )
