"""--init-from: a new run on new data starting from an earlier run's weights, items remapped by original id."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mirec.config import load_config
from mirec.data.dataset import load_dataset
from mirec.data.features import FeatureSpec
from mirec.data.prepare import ItemTableOptions, prepare
from mirec.runs import build_model
from mirec.tensors import load_tensors
from mirec.training.trainer import train_run
from mirec.training.warm_start import warm_start
from tests.conftest import SMALL

SPEC = (FeatureSpec("brand", "categorical"),)


def write_log(path, n_users, items, seed):
    rng = np.random.default_rng(seed)
    rows = ["user_id\titem_id\ttimestamp"]
    for user in range(n_users):
        for step in range(int(rng.integers(8, 14))):
            rows.append(f"u{user}\ti{int(rng.choice(items))}\t{1_300_000_000 + step * 86400}")
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def two_days(tmp_path_factory, one_thread):
    """Day 1: items i0..i39; day 2: items i10..i59 (i0..i9 gone, i40..i59 new, popularity reshuffled)."""
    base = tmp_path_factory.mktemp("warm")
    (base / "items.tsv").write_text("item_id\tbrand\n" + "".join(f"i{i}\tb{i % 7}\n" for i in range(60)))
    write_log(base / "day1.tsv", 150, np.arange(40), 0)
    write_log(base / "day2.tsv", 150, np.arange(10, 60), 1)
    for day in ("day1", "day2"):
        prepare([base / f"{day}.tsv"], "csv", base / f"data-{day}", items=ItemTableOptions(base / "items.tsv", SPEC))
    overrides = [*SMALL, 'model.item_features=["brand"]', "train.max_steps=40"]
    train_run(base / "data-day1", load_config(model="comirec-sa", overrides=overrides), base / "run1", progress=False)
    return base, overrides


def test_rows_kept_by_original_id(two_days):
    base, overrides = two_days
    old_data, new_data = load_dataset(base / "data-day1"), load_dataset(base / "data-day2")
    old_state = load_tensors(base / "run1" / "model.safetensors")
    torch.manual_seed(0)
    model = build_model(load_config(model="comirec-sa", overrides=overrides), new_data)
    record = warm_start(model, new_data, load_config(model="comirec-sa", overrides=overrides), base / "run1")
    new_state = model.state_dict()
    old_row = {o: i for i, o in enumerate(old_data.item_original_ids) if i > 0 and i <= old_data.n_id_items}
    kept = 0
    for item in range(1, new_data.n_id_items + 1):
        original = new_data.item_original_ids[item]
        if original in old_row:
            assert torch.equal(
                new_state["item_embedding.weight"][item], old_state["item_embedding.weight"][old_row[original]]
            )
            kept += 1
    assert kept == record["kept_items"] == 30 and record["new_items"] == new_data.n_id_items - 30 == 20
    assert record["dropped_items"] == 10 and record["optimizer"] == "fresh"
    assert not np.array_equal(old_data.item_original_ids[1:31], new_data.item_original_ids[1:31])  # really remapped
    # the user side is copied unchanged; brand rows by value text
    for key in old_state:
        if not key.startswith(("item_embedding", "feature_encoder")):
            assert torch.equal(new_state[key], old_state[key]), key
    old_vocab, new_vocab = old_data.item_features.get("brand").vocab, new_data.item_features.get("brand").vocab
    bag_old, bag_new = (
        old_state["feature_encoder.tables.brand.weight"],
        new_state["feature_encoder.tables.brand.weight"],
    )
    for i, value in enumerate(new_vocab, start=1):
        assert torch.equal(bag_new[i], bag_old[old_vocab.index(value) + 1])
    # a new item starts from its features-only vector
    new_item = next(i for i in range(1, new_data.n_id_items + 1) if new_data.item_original_ids[i] not in old_row)
    brand = new_data.item_features.get("brand").values[new_item]
    assert torch.equal(new_state["item_embedding.weight"][new_item], bag_new[brand])


def test_incompatible_runs_are_refused(two_days):
    base, overrides = two_days
    new_data = load_dataset(base / "data-day2")
    other = load_config(model="comirec-sa", overrides=[*overrides, "model.embedding_dim=8", "model.num_interests=2"])
    with pytest.raises(ValueError, match=r"model.embedding_dim: 16 -> 8; model.num_interests: 4 -> 2"):
        warm_start(build_model(other, new_data), new_data, other, base / "run1")
    dnn = load_config(model="dnn", overrides=overrides)
    with pytest.raises(ValueError, match="model.name: 'comirec-sa' -> 'dnn'"):
        warm_start(build_model(dnn, new_data), new_data, dnn, base / "run1")


def test_init_from_run_records_its_origin(two_days):
    base, overrides = two_days
    config = load_config(model="comirec-sa", overrides=overrides)
    train_run(base / "data-day2", config, base / "run2", progress=False, init_from=base / "run1")
    record = json.loads((base / "run2" / "init.json").read_text())
    marker = json.loads((base / "run1" / ".mirec-run.json").read_text())
    assert record["init_from"] == str((base / "run1").resolve()) and record["kept_items"] == 30
    assert record["run_id"] == marker["run_id"]
    with pytest.raises(ValueError, match="--resume continues"):
        train_run(base / "data-day2", config, base / "run2", progress=False, init_from=base / "run1", resume=True)


def test_a_separate_output_table_is_remapped_like_the_item_table(two_days):
    base, overrides = two_days
    sasrec = [*SMALL, "train.max_steps=20", 'model.output_table="separate"', "model.num_blocks=1"]
    train_run(base / "data-day1", load_config(model="sasrec", overrides=sasrec), base / "sasrec1", progress=False)
    old_data, new_data = load_dataset(base / "data-day1"), load_dataset(base / "data-day2")
    old_state = load_tensors(base / "sasrec1" / "model.safetensors")
    config = load_config(model="sasrec", overrides=sasrec)
    model = build_model(config, new_data)
    record = warm_start(model, new_data, config, base / "sasrec1")
    new_state = model.state_dict()
    old_row = {o: i for i, o in enumerate(old_data.item_original_ids) if 0 < i <= old_data.n_id_items}
    kept = [i for i in range(1, new_data.n_id_items + 1) if new_data.item_original_ids[i] in old_row]
    assert len(kept) == record["kept_items"] == 30
    for table in ("item_embedding.weight", "output_item_embedding.weight"):
        for item in kept:
            assert torch.equal(new_state[table][item], old_state[table][old_row[new_data.item_original_ids[item]]])
    shared = load_config(model="sasrec", overrides=[*SMALL, "model.num_blocks=1"])
    with pytest.raises(ValueError, match="model.output_table: 'separate' -> 'shared'"):
        warm_start(build_model(shared, new_data), new_data, shared, base / "sasrec1")
