import pytest

from mirec.config import ConfigError, apply_overrides, from_dict, load_config, parse_override, to_toml


def test_parse_override_types():
    assert parse_override("train.lr=0.005") == (["train", "lr"], 0.005)
    assert parse_override("model.name=comirec-sa") == (["model", "name"], "comirec-sa")
    assert parse_override("graph.hop_weights=[1, 2]") == (["graph", "hop_weights"], [1, 2])


def test_overrides_and_bare_keys(tmp_path):
    config = from_dict(apply_overrides({}, ["lr=0.01", "graph.hop_weights=[1, 2.5]", "eval.topk=[10]", "eval.early_stop_metric=recall@10"]))
    assert config.train.lr == 0.01
    assert config.graph.hop_weights == [1.0, 2.5]
    assert config.eval.topk == [10]


def test_unknown_and_badly_typed_options_are_errors():
    with pytest.raises(ConfigError, match="unknown option"):
        from_dict({"train": {"learning_rate": 1}})
    with pytest.raises(ConfigError, match="expected int"):
        from_dict({"train": {"batch_size": "big"}})
    with pytest.raises(ConfigError, match="unknown"):
        apply_overrides({}, ["nonsense=1"])


def test_toml_roundtrip(tmp_path):
    config = from_dict({"model": {"name": "comirec-sa", "num_interests": 8}})
    config.train.lr = 0.123
    path = tmp_path / "c.toml"
    path.write_text(to_toml(config.to_dict()))
    again = load_config(path)
    assert again == config


def test_a_recipe_is_its_model_with_its_options_and_user_overrides_win():
    from mirec.config import RECIPES, load_config

    config = load_config(model="comirec-sa+gc", dataset="amazon-beauty")
    plain = load_config(model="comirec-sa", dataset="amazon-beauty")
    assert config.model.name == "comirec-sa" and config.model.global_context is True
    assert {**config.to_dict()["model"], "global_context": False} == plain.to_dict()["model"]
    assert config.train == plain.train  # the preset of the recipe's model
    assert load_config(model="comirec-sa+gc", overrides=["model.global_context=false"]).model.global_context is False
    assert set(RECIPES) >= {"comirec-sa+gc", "pimi+gc"}


def test_every_preset_pair_resolves_as_the_old_per_pair_files_did():
    """tests/fixtures/preset_reference.json: load_config(model, dataset) of the 60 per-pair files of the old
    layout, written once by the old code; the layered presets (models + datasets + pairs) must give the same."""
    import json
    import math
    from pathlib import Path

    from mirec.config import load_config

    def plain(x):
        if isinstance(x, float) and math.isinf(x):
            return "inf"
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return [plain(v) for v in x] if isinstance(x, list) else x

    reference = json.loads((Path(__file__).parent / "fixtures" / "preset_reference.json").read_text())
    assert len(reference) == 60
    for pair, expected in reference.items():
        dataset, model = pair.split("/")
        got = plain(load_config(model=model, dataset=dataset).to_dict())
        assert got == expected, pair
