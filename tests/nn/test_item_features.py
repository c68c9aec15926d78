"""The pooled item vectors (MIND section 3.1) against a hand computation, and models built over features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mirec.config import load_config
from mirec.config.checked import ConfigError
from mirec.data.features import EncodedFeature, FeatureSpec, ItemFeatures
from mirec.nn.item_features import ItemFeatureEncoder
from mirec.runs import build_model
from mirec.training.losses import TrainingLoss
from tests.conftest import random_dataset


def small_features() -> ItemFeatures:
    """Items 0..3: a multi-valued feature over 3 values and a 2-d dense vector."""
    tags = EncodedFeature(
        FeatureSpec("tags", "multi"),
        ["a", "b", "c"],
        indptr=np.array([0, 1, 3, 4, 5]),
        values=np.array([0, 1, 2, 3, 0]),  # item 1: a, b; item 2: c; item 3: missing
    )
    vec = EncodedFeature(FeatureSpec("vec", "dense"), vectors=np.array([[0, 0], [1, 0], [0, 2], [3, 1]], np.float32))
    return ItemFeatures([tags, vec])


def test_pooling_by_hand():
    torch.manual_seed(0)
    encoder = ItemFeatureEncoder(small_features(), dim=3, n_id_items=2)
    ids_table = torch.nn.Embedding(3, 3)  # id rows for items 0..2 only: item 3 is cold
    bag, linear = encoder.tables["tags"].weight.detach(), encoder.tables["vec"].weight.detach()
    e = ids_table.weight.detach()
    dense = torch.tensor([[0, 0], [1, 0], [0, 2], [3, 1]], dtype=torch.float32) @ linear.T
    expected = torch.stack(
        [
            (e[0] + bag[0] + dense[0]) / 3,
            (e[1] + (bag[1] + bag[2]) / 2 + dense[1]) / 3,
            (e[2] + bag[3] + dense[2]) / 3,
            (bag[0] + dense[3]) / 2,  # cold: no id part, the missing row for its tags
        ]
    )
    got = encoder(torch.tensor([[0, 1], [2, 3]]), ids_table).reshape(4, 3)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    features_only = ItemFeatureEncoder(small_features(), dim=3, n_id_items=2, use_id=False)
    features_only.load_state_dict(encoder.state_dict())
    torch.testing.assert_close(
        features_only(torch.tensor([1]), ids_table)[0], ((bag[1] + bag[2]) / 2 + dense[1]) / 2, rtol=1e-6, atol=1e-6
    )


def test_id_dropout_only_in_training():
    torch.manual_seed(0)
    encoder = ItemFeatureEncoder(small_features(), dim=3, n_id_items=3, id_dropout=0.5)
    table = torch.nn.Embedding(4, 3)
    ids = torch.ones(2000, dtype=torch.long)
    encoder.eval()
    first = encoder(ids, table)
    assert torch.equal(first, first[:1].expand_as(first))  # evaluation never drops
    encoder.train()
    dropped = ~torch.isclose(encoder(ids, table), first).all(1)
    assert 0.4 < dropped.float().mean() < 0.6


def features_dataset():
    data = random_dataset(n_users=40, n_items=30)
    data.meta["n_id_items"] = 25  # items 26..30 are reached through features only: never in what models read
    for split in (data.train, data.valid, data.test):
        readable = split.history_mask()
        split.items[readable & (split.items > 25)] -= 25
    rng = np.random.default_rng(0)
    values = rng.integers(1, 6, size=31)
    values[0] = 0
    data.item_features = ItemFeatures(
        [EncodedFeature(FeatureSpec("brand", "categorical"), [f"b{i}" for i in range(5)], np.arange(32), values)]
    )
    return data


@pytest.mark.parametrize("name", ["comirec-sa", "gimirec", "sasrec"])
def test_models_over_features(name):
    data = features_dataset()
    overrides = ["model.embedding_dim=8", "train.batch_size=8", "train.num_negatives_factor=1"]
    ids_only = build_model(load_config(model=name, overrides=overrides), data)
    assert ids_only.output_embeddings().shape[0] == 26  # cold items cannot be scored by an ids-only model
    with_features = [*overrides, 'model.item_features=["brand"]']
    if name == "sasrec":  # its preset's item-table dropout is refused with features, naming the option
        with pytest.raises(ConfigError, match=r"model.item_dropout = 0.2; must be 0 with item features"):
            load_config(model=name, dataset="default", overrides=with_features)
    config = load_config(model=name, overrides=with_features)
    model = build_model(config, data)
    assert model.n_items == 25 and model.n_catalogue == 30 and model.output_embeddings().shape == (31, 8)
    # a cold item's vector is its brand embedding alone, whatever the model (global context passes it through)
    brand = model.feature_encoder.tables["brand"].weight
    torch.testing.assert_close(
        model.output_embeddings(torch.tensor([28]))[0], brand[data.item_features.features[0].values[28]]
    )
    # training never scores cold items: the full softmax's catalogue ends at n_id_items
    loss = TrainingLoss(config.train, model, data.n_id_items, torch.Generator())
    assert loss.items(False)(None).shape[0] == 26


def test_missing_feature_is_a_clear_error():
    data = features_dataset()
    with pytest.raises(ValueError, match=r"\['colour'\] not among the dataset's item features \['brand'\]"):
        build_model(load_config(model="dnn", overrides=['model.item_features=["colour"]']), data)
    from mirec.config.checked import ConfigError

    with pytest.raises(ConfigError, match="item_id_embedding"):
        load_config(model="dnn", overrides=["model.item_id_embedding=false"])
    with pytest.raises(ConfigError, match="GemiRec does not pool item features"):
        load_config(model="gemirec", overrides=['model.item_features=["brand"]'])
