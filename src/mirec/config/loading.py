"""Building a config: layered presets (models, datasets, dataset x model pairs), aliases, recipes, a TOML file,
``--set key=value`` overrides; and saving one."""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path
from typing import Any

from mirec.config.checked import ConfigError
from mirec.config.models import MODEL_CONFIGS
from mirec.config.sections import EvalConfig, GraphConfig, ModelConfig, RunConfig, TrainConfig
from mirec.config.toml import parse_toml_literal, to_toml

PRESET_ROOT = Path(__file__).parent.parent / "configs"
# Datasets that share another's presets (the ComiRec-format split of Grocery is the same log).
PRESET_ALIASES = {"amazon-grocery-comirec": "amazon-grocery"}
# Named recipes: a model plus options, usable wherever a model name is (train, bench, config show); the measured
# comparison is in docs/results.md.
RECIPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "comirec-sa+gc": ("comirec-sa", ("model.global_context=true",)),
    "pimi+gc": ("pimi", ("model.global_context=true",)),
    # SASRec on GIMIRec's global context: the best row on every log of docs/results.md (studies 20h-20i), measured
    # with the sampled softmax and without the item dropout, both of which the sasrec preset gained later (20k, 20m)
    "sasrec+gc": (
        "sasrec",
        ("model.global_context=true", "model.item_dropout=0.0", "train.full_softmax_max_items=0"),
    ),
    # GemiRec's generated interests beside ComiRec-SA + gc, kept apart by the diversity term, the base's list share
    # chosen on valid after training (docs/models.md 5.3)
    "gemirec-over-sa+gc": (
        "gemirec",
        (
            "model.base=comirec-sa",
            "model.global_context=true",
            "model.generated_diversity=1.0",
            "eval.base_share_grid=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]",
        ),
    ),
}


def _model_config_class(name: str) -> type[ModelConfig]:
    if name not in MODEL_CONFIGS:
        raise ConfigError(f"model.name = {name!r}; expected one of {list(MODEL_CONFIGS)}")
    return MODEL_CONFIGS[name]


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check and convert a TOML value to the dataclass field's annotated type."""
    origin = typing.get_origin(annotation)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool):
        if annotation is int and isinstance(value, bool) or not isinstance(value, annotation):
            raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")
        return value
    if origin is list:
        (inner,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, inner, where) for v in value]
    return value


def _build(cls: type, values: dict[str, Any], section: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"[{section}]: unknown option(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def from_dict(data: dict[str, Any]) -> RunConfig:
    unknown = set(data) - {"model", "graph", "train", "eval"}
    if unknown:
        raise ConfigError(f"unknown config section(s) {sorted(unknown)}")
    model_values = dict(data.get("model", {}))
    model_cls = _model_config_class(model_values.get("name", ModelConfig.name))
    return RunConfig(
        model=_build(model_cls, model_values, "model"),
        graph=_build(GraphConfig, data.get("graph", {}), "graph"),
        train=_build(TrainConfig, data.get("train", {}), "train"),
        eval=_build(EvalConfig, data.get("eval", {}), "eval"),
    )


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.lr=0.005`` -> (["train", "lr"], 0.005); values are TOML literals, bare words are strings."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    return key.strip().split("."), parse_toml_literal(raw)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides; a bare ``key`` is resolved when exactly one section has it."""
    sections = {
        "model": {f.name for f in dataclasses.fields(_model_config_class(data.get("model", {}).get("name", "dnn")))},
        "graph": {f.name for f in dataclasses.fields(GraphConfig)},
        "train": {f.name for f in dataclasses.fields(TrainConfig)},
        "eval": {f.name for f in dataclasses.fields(EvalConfig)},
    }
    for text in overrides:
        path, value = parse_override(text)
        if len(path) == 1:
            owners = [s for s, names in sections.items() if path[0] in names]
            if len(owners) != 1:
                raise ConfigError(f"--set {text}: option {path[0]!r} is {'ambiguous' if owners else 'unknown'}")
            path = [owners[0], path[0]]
        if len(path) != 2 or path[0] not in sections:
            raise ConfigError(f"--set {text}: expected section.key with section in {sorted(sections)}")
        data.setdefault(path[0], {})[path[1]] = value
    return data


def preset_layers(dataset: str, model: str) -> list[Path]:
    """The preset files of a (dataset, model) pair, in the order they apply (RecBole's layering): the model's
    defaults (the paper's values, ``configs/models/``), the dataset's settings (batch size, maxlen, evaluation
    cadence, graph values; ``configs/datasets/``), then a per-pair override only where a paper gives one
    (``configs/pairs/<dataset>/``). Missing layers are skipped."""
    layers = [
        PRESET_ROOT / "models" / f"{model}.toml",
        PRESET_ROOT / "datasets" / f"{dataset}.toml",
        PRESET_ROOT / "pairs" / dataset / f"{model}.toml",
    ]
    return [path for path in layers if path.exists()]


def preset_datasets() -> list[str]:
    """Dataset names that have settings of their own (others use ``default``)."""
    return sorted(p.stem for p in (PRESET_ROOT / "datasets").glob("*.toml"))


def dataset_preset(name: str) -> str:
    """The preset folder of a prepared dataset called ``name`` (``mirec prepare --name``): itself, or the dataset
    it is an alias of, when settings of that name exist; else ``default``."""
    name = PRESET_ALIASES.get(name, name)
    return name if name in preset_datasets() else "default"


def load_config(
    path: str | Path | None = None,
    *,
    model: str | None = None,
    dataset: str | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    """Build a RunConfig from (in order) the preset layers of (dataset, model), a TOML file, and overrides.
    ``model`` may name a recipe (:data:`RECIPES`): its model's presets, then the recipe's options."""
    if model in RECIPES:
        model, recipe = RECIPES[model]
        overrides = [*recipe, *(overrides or [])]
    data: dict[str, Any] = {}
    if dataset and model:
        for layer in preset_layers(dataset, model):
            data = _merge(data, tomllib.loads(layer.read_text()))
    if path is not None:
        try:
            data = _merge(data, tomllib.loads(Path(path).read_text()))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if model:
        data.setdefault("model", {})["name"] = model
    return from_dict(apply_overrides(data, list(overrides or [])))


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in extra.items():
        if isinstance(value, dict):
            out.setdefault(key, {}).update(value)
        else:
            out[key] = value
    return out


def save_config(config: RunConfig, path: str | Path) -> None:
    from mirec.utils import atomic_write_text

    atomic_write_text(path, to_toml(config.to_dict()))
