import json
from dataclasses import replace

import pytest

from mirec.config import ConfigError, apply_overrides, from_dict, load_config, parse_override, to_toml
from tests.conftest import FIXTURES


def test_parse_override_types():
    assert parse_override("train.lr=0.005") == (["train", "lr"], 0.005)
    assert parse_override("model.name=comirec-sa") == (["model", "name"], "comirec-sa")
    assert parse_override("graph.hop_weights=[1, 2]") == (["graph", "hop_weights"], [1, 2])


def test_overrides_and_bare_keys(tmp_path):
    config = from_dict(
        apply_overrides(
            {}, ["lr=0.01", "graph.hop_weights=[1, 2.5]", "eval.topk=[10]", "eval.early_stop_metric=recall@10"]
        )
    )
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
    config = config.with_values({"train.lr": 0.123})
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
    assert set(RECIPES) >= {"comirec-sa+gc", "pimi+gc", "sasrec+gc", "gemirec-over-sa+gc"}
    sasrec = load_config(model="sasrec+gc", dataset="amazon-beauty")
    assert sasrec.model.name == "sasrec" and sasrec.model.global_context is True
    # the recipe as measured (studies 20h-20i): without the preset's item dropout and full softmax
    preset = load_config(model="sasrec", dataset="amazon-beauty")
    assert sasrec.model.item_dropout == 0.0 and preset.model.item_dropout == 0.2
    assert sasrec.train.full_softmax_max_items == 0 and preset.train.full_softmax_max_items == 20000
    assert sasrec.train == replace(preset.train, full_softmax_max_items=0)
    recipe = load_config(model="gemirec-over-sa+gc", dataset="amazon-grocery")
    gemirec = recipe.model
    assert (gemirec.name, gemirec.base, gemirec.global_context) == ("gemirec", "comirec-sa", True)
    assert gemirec.item_table_gradient == "base" and gemirec.generated_diversity == 1.0
    assert recipe.eval.base_share_grid == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0] and recipe.eval.base_share == 0.0


# options added after the reference was written, with the defaults every preset must give them
NEW_OPTION_DEFAULTS = {
    "train.log_to": "",
    "train.tracking_uri": "",
    "train.tracking_experiment": "",
    "eval.interest_clusters": 64,
    "eval.generated_share": 0.0,
    "eval.base_share": 0.0,
    "eval.base_share_grid": [],
    "graph.engine": "embedded",
    "graph.spark_master": "local[2]",
    "train.window": "random_cut",
    "train.hard_negative_beta": 0.0,
    "train.gbce_t": 0.75,
    "train.row_negatives": 0,
    "train.full_softmax_max_items": 0,
    "train.adam_beta2": 0.999,
    "model.item_features": [],
    "model.item_id_embedding": True,
    "model.item_id_dropout": 0.0,
}
NEW_GEMIREC_DEFAULTS = {
    "model.base": "none",
    "model.generative": True,
    "model.item_table_gradient": "base",
    "model.generated_diversity": 0.0,
    "model.beam_diversity": 0.0,
}
NEW_GIMIREC_DEFAULTS = {"model.time_scale": 1.0}
# deliberate preset changes since the reference was taken (chosen on the valid splits; docs/experiments/12-*)
# GIMIRec always uses its global context: its config now shows it (the old files said false, unused)
CHANGED_PRESET_VALUES = {"gimirec": {"model": {"interest_values": "embedding", "global_context": True}}}


def test_every_preset_pair_resolves_as_the_old_per_pair_files_did():
    """tests/fixtures/preset_reference.json: load_config(model, dataset) of the 60 per-pair files of the old
    layout, written once by the old code; the layered presets (models + datasets + pairs) must give the same."""
    import json
    import math

    from mirec.config import load_config

    def plain(x):
        if isinstance(x, float) and math.isinf(x):
            return "inf"
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return [plain(v) for v in x] if isinstance(x, list) else x

    reference = json.loads((FIXTURES / "preset_reference.json").read_text())
    assert len(reference) == 60
    for pair, expected in reference.items():
        dataset, model = pair.split("/")
        got = plain(load_config(model=model, dataset=dataset).to_dict())
        assert set(got) == set(expected), pair
        for section, values in expected.items():  # options added since keep their defaults (checked below)
            values = values | CHANGED_PRESET_VALUES.get(model, {}).get(section, {})
            assert {k: got[section][k] for k in values} == values, pair
        added = {f"{s}.{k}": v for s, vs in got.items() for k, v in vs.items() if k not in expected[s]}
        per_model = {
            "gemirec": NEW_GEMIREC_DEFAULTS,
            "gimirec": NEW_GIMIREC_DEFAULTS,
            "comirec-sa": {"model.routing_reg": 0.0},
        }.get(model, {})
        assert added == NEW_OPTION_DEFAULTS | per_model, pair


def test_the_option_registry_and_the_model_registry_name_the_same_models():
    from mirec.config import MODEL_CONFIGS
    from mirec.models import MODEL_PATHS, get_model_class

    assert list(MODEL_CONFIGS) == list(MODEL_PATHS)
    for name, options in MODEL_CONFIGS.items():
        assert get_model_class(name).config_class is options
        assert options().name == name
    with pytest.raises(ConfigError, match="expected one of"):
        from_dict({"model": {"name": "comirec-sb"}})


def test_a_config_is_built_without_importing_torch_or_any_model():
    import subprocess
    import sys

    code = (
        "import sys; from mirec.config import load_config; "
        "load_config(model='gimirec', dataset='amazon-grocery', overrides=['model.dropout=0.2']); "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('mirec.models')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_misspelled_choice_fails_before_the_dataset_is_read(tmp_path, monkeypatch, capsys):
    import json

    import mirec.data.dataset
    from mirec.cli import main

    (tmp_path / "meta.json").write_text(json.dumps({"name": "amazon-grocery"}))

    def refuse(*args, **kwargs):
        raise AssertionError("the dataset was read before the config was checked")

    monkeypatch.setattr(mirec.data.dataset, "load_dataset", refuse)
    code = main(
        [
            "train",
            "--data",
            str(tmp_path),
            "--model",
            "gimirec",
            "--set",
            "eval.backend=fiass",
            "--output",
            str(tmp_path / "run"),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "eval.backend = 'fiass'; expected one of ['torch', 'faiss']" in err
    assert not (tmp_path / "run").exists()


def test_a_share_grid_with_the_diversity_greedy_is_refused_and_configs_are_frozen(tmp_path):
    """The defect: a run chose eval.base_share from its grid by assignment on a live config with
    diversity_lambda > 0 and wrote a config.toml that load_config refuses. Now the grid itself is refused with the
    greedy, configs are frozen, and a changed config is a new one, checked as a loaded one."""
    import dataclasses

    from mirec.config import save_config

    over = ["model.base=comirec-sa", "eval.diversity_lambda=0.5"]
    with pytest.raises(ConfigError, match="base_share_grid"):
        load_config(model="gemirec", overrides=[*over, "eval.base_share_grid=[0.2, 0.4]"])
    config = load_config(model="gemirec", overrides=over)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.eval.base_share = 0.2  # type: ignore[misc]
    with pytest.raises(ConfigError, match="base_share"):
        config.with_values({"eval.base_share": 0.2})
    fine = load_config(model="gemirec", overrides=["model.base=comirec-sa", "eval.base_share_grid=[0.2, 0.4]"])
    chosen = fine.with_values({"eval.base_share": 0.2})
    save_config(chosen, tmp_path / "config.toml")
    assert load_config(tmp_path / "config.toml") == chosen and fine.eval.base_share == 0.0


def test_every_option_of_every_model_has_a_one_line_description(capsys):
    from mirec.cli import main
    from mirec.config import MODEL_CONFIGS, describe_options

    for name, options in MODEL_CONFIGS.items():
        described = describe_options(options)
        missing = [key for key, entry in described.items() if not entry["description"].strip()]
        assert not missing, (name, missing)
    assert main(["models", "gemirec"]) == 0
    printed = json.loads(capsys.readouterr().out)["options"]
    assert "only the base's own loss" in printed["model.item_table_gradient"]["description"]
    assert printed["model.base"]["choices"] == ["none", "mind", "comirec-dr", "comirec-sa", "pimi", "gimirec"]


def test_one_model_registry_names_each_models_class():
    from mirec.config import MODEL_CONFIGS
    from mirec.models import MODEL_PATHS, get_model_class

    assert MODEL_PATHS == {name: options.model_path for name, options in MODEL_CONFIGS.items()}
    for name, options in MODEL_CONFIGS.items():
        assert get_model_class(name).config_class is options, name
