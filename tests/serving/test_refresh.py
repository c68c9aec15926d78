"""New items through a bundle refresh: embedded from their features, served after a hot reload."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from mirec.config import load_config
from mirec.data.features import FeatureSpec
from mirec.data.prepare import ItemTableOptions, prepare
from mirec.serving.app import ServeSettings, create_app
from mirec.serving.bundle import BundleError, export_bundle, load_bundle
from mirec.serving.refresh import refresh_bundle
from mirec.tensors import load_tensors
from mirec.training.trainer import train_run
from tests.conftest import SMALL


def group(item: int) -> int:
    return (item - 100) // 15


@pytest.fixture(scope="module")
def feature_bundle(tmp_path_factory, one_thread):
    """A ComiRec-SA bundle over 4 item groups whose items carry their group as a 'brand' feature."""
    rng = np.random.default_rng(0)
    base = tmp_path_factory.mktemp("refresh")
    rows = ["user_id\titem_id\ttimestamp"]
    for user in range(240):
        for step in range(int(rng.integers(8, 16))):
            rows.append(f"u{user}\ti{100 + (user % 4) * 15 + int(rng.integers(0, 15))}\t{1_300_000_000 + step * 86400}")
    (base / "log.tsv").write_text("\n".join(rows) + "\n")
    table = "".join(f"i{i}\tg{group(i)}\n" for i in range(100, 160))
    (base / "items.tsv").write_text("item_id\tbrand\n" + table)
    spec = (FeatureSpec("brand", "categorical"),)
    prepare([base / "log.tsv"], "csv", base / "data", items=ItemTableOptions(base / "items.tsv", spec))
    config = load_config(model="comirec-sa", overrides=[*SMALL, 'model.item_features=["brand"]', "train.max_steps=160"])
    train_run(base / "data", config, base / "run", progress=False)
    export_bundle(base / "run", base / "bundle")
    return base


def test_refresh_adds_recommendable_items(feature_bundle, tmp_path):
    base = feature_bundle
    (tmp_path / "new.tsv").write_text("item_id\tbrand\ni100\tg3\nnew-a\tg0\nnew-b\tg9\n")
    manifest = refresh_bundle(base / "bundle", tmp_path / "new.tsv", tmp_path / "fresh")
    old = load_bundle(base / "bundle")
    fresh = load_bundle(tmp_path / "fresh")
    assert manifest["refresh"]["new_items"] == 2 and manifest["refresh"]["already_known"] == 1
    assert manifest["refresh"]["brand_unseen_values"] == 1  # g9: never seen, scored as "missing"
    assert fresh.n_items == old.n_items + 2 and manifest["model_version"] != old.manifest["model_version"]
    old_vectors = load_tensors(base / "bundle" / "item_vectors.safetensors")["item_vectors"]
    new_vectors = load_tensors(tmp_path / "fresh" / "item_vectors.safetensors")["item_vectors"]
    assert torch.equal(new_vectors[: len(old_vectors)], old_vectors)  # old items untouched, bit for bit
    # the new items' vectors are the model's features-only vectors: those of an item with a g0 brand, no id
    brand = fresh.model.feature_encoder.tables["brand"].weight
    g0 = old.model.feature_encoder.get_buffer("values_brand")[fresh.lookup(["i101"])[0]]
    torch.testing.assert_close(new_vectors[fresh.lookup(["new-a"])[0]], brand[g0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(new_vectors[fresh.lookup(["new-b"])[0]], brand[0], rtol=1e-6, atol=1e-6)

    # served after a hot reload: the new items are in the full list, and read in a history
    app = create_app(load_bundle(base / "bundle"), ServeSettings(token="t"), base / "bundle", loader=load_bundle)
    with TestClient(app) as client:
        auth = {"Authorization": "Bearer t"}
        body = {"history": ["i100", "i101", "i102", "new-a"], "n": fresh.n_items - 4}
        before = client.post("/v1/recommend", json=body, headers=auth)
        assert before.status_code == 200 and before.json()["unknown_items"] == ["new-a"]
        listed_before = [x["id"] for x in before.json()["items"]]
        assert "new-a" not in listed_before and "new-b" not in listed_before
        assert client.post("/admin/reload", json={"path": str(tmp_path / "fresh")}, headers=auth).status_code == 200
        after = client.post("/v1/recommend", json=body, headers=auth).json()
        listed = [x["id"] for x in after["items"]]
        assert after["unknown_items"] == [] and {"new-a", "new-b"} <= set(listed)
        assert after["model_version"] == manifest["model_version"]
        # a new item in the history is read through its features (the history has changed the interests)
        assert listed != listed_before


def test_refresh_refusals(feature_bundle, run_dir, bundle, tmp_path):
    base = feature_bundle
    (tmp_path / "same.tsv").write_text("item_id\tbrand\ni100\tg0\n")
    with pytest.raises(ValueError, match="already in"):
        refresh_bundle(base / "bundle", tmp_path / "same.tsv", tmp_path / "out")
    (tmp_path / "new.tsv").write_text("item_id\tbrand\nnew-a\tg0\n")
    with pytest.raises(BundleError, match="no item features"):
        refresh_bundle(bundle, tmp_path / "new.tsv", tmp_path / "out")  # an ids-only bundle
    with pytest.raises(FileExistsError, match="--overwrite"):
        refresh_bundle(base / "bundle", tmp_path / "new.tsv", base / "bundle")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a mirec bundle"):
        refresh_bundle(base / "bundle", tmp_path / "new.tsv", tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    assert not (tmp_path / "out").exists()
    json.loads((base / "bundle" / "manifest.json").read_text())  # the source is untouched


def test_onnx_export_refuses_feature_models_before_any_work(feature_bundle, tmp_path):
    with pytest.raises(ValueError, match="item features"):
        export_bundle(feature_bundle / "run", tmp_path / "onnx", onnx=True)
    assert not (tmp_path / "onnx").exists()


def test_ids_only_model_over_a_catalogue_with_table_only_items(feature_bundle, tmp_path):
    from mirec.data.dataset import load_dataset
    from mirec.serving.batch import recommend_dataset
    from mirec.serving.bundle import serving_model_of_run

    base = feature_bundle
    (tmp_path / "items.tsv").write_text((base / "items.tsv").read_text() + "only-in-table\tg1\n")
    spec = (FeatureSpec("brand", "categorical"),)
    prepare([base / "log.tsv"], "csv", tmp_path / "data", items=ItemTableOptions(tmp_path / "items.tsv", spec))
    config = load_config(model="comirec-sa", overrides=[*SMALL, "train.max_steps=40"])
    train_run(tmp_path / "data", config, tmp_path / "run", progress=False)
    served = serving_model_of_run(tmp_path / "run")
    data = load_dataset(tmp_path / "data")
    assert data.n_items == served.n_items + 1 and "only-in-table" not in set(served.item_original_ids)
    report = recommend_dataset(served, data, "test", tmp_path / "recs.parquet", n=10, progress=False)
    assert report["users"] == len(data.test)
