"""Training that continues from a previous run (``mirec train --init-from RUN``), distinct from ``--resume``.

A new run on new data whose weights start from RUN's best weights:

- the item table is remapped by original item id: an item RUN trained on keeps its row bit for bit; a new item
  starts from its features-only vector when the model pools item features (the mean of its feature parts, the
  vector a bundle refresh would serve it with), else from the standard initialisation;
- feature tables are remapped by value text (a value RUN never saw starts fresh); dense projections are copied;
- every other parameter (the user side: attention, capsules, GRU, positions) is copied unchanged;
- the optimiser starts fresh: Adam's moments of the item table belong to rows that moved, and its bias
  correction restarts with the step count (as TorchEasyRec's ``fine_tune_checkpoint`` loads weights only).

RUN must hold the same model with the same parameter shapes; otherwise nothing is copied and the error lists
the option differences. The global context graph is rebuilt from the new data (it is a fact of the data).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import torch

from mirec.config import RunConfig, load_config
from mirec.data.dataset import PreparedDataset, load_dataset
from mirec.models import MultiInterestModel
from mirec.runs import resolve_run_data, run_marker
from mirec.tensors import load_tensors
from mirec.utils import sha256_file

ITEM_TABLE = "item_embedding.weight"
FEATURE_TABLE = "feature_encoder.tables."


def warm_start(model: MultiInterestModel, dataset: PreparedDataset, config: RunConfig, source: str | Path) -> dict:
    """Load ``source``'s weights into ``model`` (built for ``dataset``) as the module says; returns the record
    kept in the new run folder (``init.json``)."""
    source = Path(source)
    for name in ("config.toml", "model.safetensors", "data.json"):
        if not (source / name).exists():
            raise FileNotFoundError(f"{source / name}: missing; --init-from needs a finished mirec run folder")
    old_config = load_config(source / "config.toml")
    old_state = load_tensors(source / "model.safetensors")
    new_state = model.state_dict()
    tables = {id(table.weight) for table in model.item_tables()}
    item_keys = {key for key, value in model.named_parameters() if id(value) in tables}
    _check_compatible(old_config, config, old_state, new_state, source, item_keys)
    old_data = load_dataset(resolve_run_data(source))
    rows = old_state[ITEM_TABLE].shape[0], new_state[ITEM_TABLE].shape[0]
    new_rows, old_rows, counts = _item_row_map(*rows, old_data, dataset)  # one map for every item table
    state: dict[str, torch.Tensor] = {}
    for key, value in new_state.items():
        if key in item_keys:
            state[key] = _item_rows(value, old_state[key], new_rows, old_rows)
        elif key.startswith(FEATURE_TABLE):  # a feature RUN did not have starts fresh
            state[key] = _value_rows(key, value, old_state[key], old_data, dataset) if key in old_state else value
        else:
            state[key] = old_state[key]
    model.load_state_dict(state)
    if model.feature_encoder is not None and model.config.item_id_embedding:
        _features_start_new_rows(model, counts["new_ids"])
    marker = run_marker(source) or {}
    digest = hashlib.sha256((sha256_file(source / "config.toml") + sha256_file(source / "model.safetensors")).encode())
    return {
        "init_from": str(source.resolve()),
        "run_id": marker.get("run_id"),
        "model_version": digest.hexdigest()[:16],
        "kept_items": counts["kept"],
        "new_items": len(counts["new_ids"]),
        "dropped_items": counts["dropped"],
        "optimizer": "fresh",
    }


def _check_compatible(
    old: RunConfig, new: RunConfig, old_state: dict, new_state: dict, source: Path, item_keys: set[str]
) -> None:
    """Same model and the same shapes for everything but the item and feature tables, else a listed refusal."""
    old_options, new_options = dataclasses.asdict(old.model), dataclasses.asdict(new.model)
    differences = [
        f"model.{k}: {v!r} -> {new_options.get(k)!r}" for k, v in old_options.items() if new_options.get(k) != v
    ]

    def misfit(key: str) -> bool:  # item and feature tables may change rows; an item table may not be missing
        if key.startswith(FEATURE_TABLE):
            return False
        if key not in old_state or key not in new_state:
            return True
        return key not in item_keys and old_state[key].shape != new_state[key].shape

    structural = sorted(key for key in set(old_state) | set(new_state) if misfit(key))
    widths = old_state[ITEM_TABLE].shape[1] != new_state[ITEM_TABLE].shape[1]
    if old.model.name != new.model.name or structural or widths:
        raise ValueError(
            f"--init-from {source}: its model does not fit this run's ({'; '.join(differences) or 'shapes differ'}"
            f"{'; parameters ' + ', '.join(structural[:4]) if structural else ''})"
        )


def _item_row_map(
    n_old: int, n_new: int, old_data: PreparedDataset, data: PreparedDataset
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """(new rows, their old rows, counts): the items RUN trained on, matched by original id."""
    old_row = {str(o): i for i, o in enumerate(old_data.item_original_ids[:n_old]) if i > 0}
    found = [old_row.get(str(data.item_original_ids[item])) for item in range(1, n_new)]
    new_rows = [item for item, row in enumerate(found, start=1) if row is not None]
    old_rows = [row for row in found if row is not None]
    new_ids = [item for item, row in enumerate(found, start=1) if row is None]
    counts = {"kept": len(new_rows), "new_ids": new_ids, "dropped": len(old_row) - len(new_rows)}
    return torch.tensor(new_rows, dtype=torch.long), torch.tensor(old_rows, dtype=torch.long), counts


def _item_rows(fresh: torch.Tensor, old: torch.Tensor, new_rows: torch.Tensor, old_rows: torch.Tensor) -> torch.Tensor:
    """The new id table: rows of items RUN trained on copied by original id; the rest keep ``fresh``."""
    table = fresh.clone()
    table[0] = old[0]
    table[new_rows.to(table.device)] = old[old_rows].to(table.device)
    return table


def _value_rows(key: str, fresh: torch.Tensor, old: torch.Tensor, old_data: PreparedDataset, data: Any) -> torch.Tensor:
    """A feature's embedding rows copied by value text (row 0 = missing); a dense projection copied whole."""
    name = key[len(FEATURE_TABLE) :].rsplit(".", 1)[0]
    new_feature, old_feature = data.item_features.get(name), old_data.item_features.get(name)
    if new_feature.vectors is not None:
        return old
    old_row = {v: i + 1 for i, v in enumerate(old_feature.vocab)}
    table = fresh.clone()
    table[0] = old[0]
    for i, value in enumerate(new_feature.vocab, start=1):
        if value in old_row:
            table[i] = old[old_row[value]]
    return table


def _features_start_new_rows(model: MultiInterestModel, new_ids: list[int]) -> None:
    """A new item's id row = the mean of its feature parts (its features-only vector)."""
    if not new_ids:
        return
    encoder = model.feature_encoder
    ids = torch.tensor(new_ids, device=model.item_embedding.weight.device)
    with torch.no_grad():
        parts = sum(encoder.feature_part(name, ids) for name in encoder.names) / len(encoder.names)
        model.item_embedding.weight[ids] = parts
