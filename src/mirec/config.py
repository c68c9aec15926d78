"""Typed run configuration: dataclasses loaded from TOML presets and overridden with ``--set key=value``.

A run config has four sections: ``[model]`` (a model-specific dataclass chosen by ``model.name``),
``[graph]`` (global context extraction, GIMIRec section 4.2), ``[train]`` and ``[eval]``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

PRESET_ROOT = Path(__file__).parent / "configs"
# Named recipes: a model plus options, usable wherever a model name is (train, bench, config show).
# "comirec-sa+gc" is the most accurate configuration measured (docs/results.md sections 4 and 4b: recall@50
# 0.1696 Grocery ComiRec split, 0.1626 Beauty, 0.1711 Yelp-B, 3 seeds each, +11% / +25% / +21% over GIMIRec).
RECIPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "comirec-sa+gc": ("comirec-sa", ("model.global_context=true",)),
    "pimi+gc": ("pimi", ("model.global_context=true",)),
}
# the evaluator's per-cut-off metrics (mirec.eval.metrics.METRIC_NAMES, plus diversity), for eval.early_stop_metric
EARLY_STOP_METRICS = ("recall", "ndcg", "ndcg_comirec", "hit_rate", "diversity")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


class ConfigError(ValueError):
    pass


class CheckedConfig:
    """Checks a config section when it is built (from TOML, ``--set`` or in code): every ``Literal`` field
    against its choices, then the section's own ranges and cross-field rules in :meth:`check`."""

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            annotation = hints[f.name]
            if typing.get_origin(annotation) is Literal:
                value, choices = getattr(self, f.name), typing.get_args(annotation)
                if value not in choices:
                    raise ConfigError(f"{self.section}.{f.name} = {value!r}; expected one of {list(choices)}")
        self.check()

    def check(self) -> None:
        """Ranges and cross-field rules; raise :class:`ConfigError` via :meth:`require`."""

    def require(self, condition: bool, name: str, rule: str) -> None:
        if not condition:
            raise ConfigError(f"{self.section}.{name} = {getattr(self, name)!r}; must be {rule}")


@dataclass
class ModelConfig(CheckedConfig):
    """Options shared by every model; each model extends it with its own dataclass."""

    section: ClassVar[str] = "model"
    name: str = "dnn"
    embedding_dim: int = 64
    num_interests: int = 4
    maxlen: int = 20
    # Replace the item-embedding lookup by E_global = A E_item (GIMIRec's transplantable GCE).
    global_context: bool = False
    # Training readout over the K interests, label-aware attention pow(scores, p) (MIND Eq. 7): inf = the hard
    # argmax of ComiRec's code (every multi-interest model's default); 1 = ComiRec's hard_readout=False
    readout_power: float = math.inf

    def check_with(self, run: RunConfig) -> None:
        """Rules across sections (e.g. GIMIRec's L_time in [model] and [graph]); a model overrides it."""

    def check(self) -> None:
        for name in ("embedding_dim", "num_interests", "maxlen"):
            self.require(getattr(self, name) >= 1, name, ">= 1")
        power = self.readout_power
        self.require((math.isinf(power) and power > 0) or (power >= 0 and float(power).is_integer()),
                     "readout_power", "inf (hard readout) or a non-negative integer")
        for f in dataclasses.fields(self):  # every model's dropout-like rate is a probability
            if "dropout" in f.name and isinstance(getattr(self, f.name), float):
                self.require(0.0 <= getattr(self, f.name) < 1.0, f.name, "in [0, 1)")


@dataclass
class GraphConfig(CheckedConfig):
    """Global context extraction (GIMIRec Eq. 1-7); used when the model asks for a global context."""

    l_time: float = 64.0  # days; pairs further apart are dropped (Eq. 1)
    a: float = 0.5  # interval weight (Eq. 2): p = a (L_time - dt) / L_time + b
    b: float = 0.5
    hop_weights: list[float] = field(default_factory=lambda: [5.0, 2.5, 1.0])  # alpha, beta, gamma (Eq. 5)
    count_pairs: bool = True  # False = GIMIRec-IN: q = 1 for a present pair
    use_threshold: bool = True  # False = GIMIRec-INT: no L_time threshold
    self_pairs: bool = True  # keep <i, i> pairs (same item n and n+k), as Eq. 1-4 do; False drops them
    section: ClassVar[str] = "graph"

    def check(self) -> None:
        self.require(self.l_time > 0, "l_time", "> 0 (days)")
        self.require(len(self.hop_weights) >= 1, "hop_weights", "a non-empty list (one weight per hop)")


@dataclass
class TrainConfig(CheckedConfig):
    section: ClassVar[str] = "train"
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_steps: int = 1_000_000
    eval_every: int = 1000
    patience: int = 10  # evaluations without a better valid Recall@50
    max_minutes: float = 0.0  # 0 = no wall-clock budget
    loss: Literal["sampled", "full", "inbatch"] = "sampled"
    num_negatives_factor: int = 10  # sampled softmax draws factor * batch_size unique ids (TF default use)
    # True: negatives drawn from ids 1..n_items only (TF/ComiRec draw padding 0 too)
    sampler_exclude_padding: bool = False
    negative_sampler: Literal["log_uniform", "uniform"] = "log_uniform"  # TF/ComiRec | REMI's default
    negatives_unique: bool = True  # TF unique=True; REMI: False (1,280 draws with replacement)
    remove_accidental_hits: bool = True  # TF default; REMI: False
    # CPU: each item-table lookup adds its row gradients into one kept dense buffer (index_add_; same Adam update,
    # less memory traffic than a zero-filled [n_items, d] gradient per lookup); False = torch's dense backward
    sparse_item_grad: bool = True
    min_cut: int = 4  # ComiRec draws the cut position k uniformly in [4, len-1]
    seed: int = 19
    device: str = "auto"  # auto | cpu | cuda
    checkpoint_every: int = 0  # 0 = at every evaluation
    log_every: int = 100
    eval_users: int = 0  # 0 = all valid users during training evaluations

    def check(self) -> None:
        for name in ("batch_size", "eval_every", "log_every", "num_negatives_factor", "min_cut"):
            self.require(getattr(self, name) >= 1, name, ">= 1")
        for name in ("max_steps", "patience", "checkpoint_every", "eval_users", "weight_decay", "max_minutes"):
            self.require(getattr(self, name) >= 0, name, ">= 0")
        self.require(self.lr > 0 and math.isfinite(self.lr), "lr", "a finite number > 0")
        self.require(bool(DEVICE_PATTERN.match(self.device)), "device", "auto, cpu, cuda, cuda:N or mps")


@dataclass
class EvalConfig(CheckedConfig):
    section: ClassVar[str] = "eval"
    topk: list[int] = field(default_factory=lambda: [20, 50])
    backend: Literal["torch", "faiss"] = "torch"  # identical rankings; faiss is faster on CPU for big catalogues
    exclude_history: bool = False  # ComiRec keeps history items in the ranking
    diversity_lambda: float = 0.0
    batch_size: int = 1024
    # METRIC@N with METRIC in EARLY_STOP_METRICS and N in topk; "" = recall at the largest cut-off (ComiRec: @50)
    early_stop_metric: str = ""

    def check(self) -> None:
        self.require(len(self.topk) >= 1 and all(k >= 1 for k in self.topk), "topk", "a non-empty list of cut-offs >= 1")
        self.early_stop_metric = self.early_stop_metric or f"recall@{max(self.topk)}"
        self.require(self.batch_size >= 1, "batch_size", ">= 1")
        self.require(self.diversity_lambda >= 0, "diversity_lambda", ">= 0")
        metric, _, cut = self.early_stop_metric.partition("@")
        valid = metric in EARLY_STOP_METRICS and cut.isdigit() and int(cut) in self.topk
        self.require(valid, "early_stop_metric",
                     f"METRIC@N with METRIC in {list(EARLY_STOP_METRICS)} and N in eval.topk {self.topk}")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        self.model.check_with(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def describe_options(model_config: type[ModelConfig]) -> dict[str, dict[str, Any]]:
    """Every option of a model's run config: ``{"model.x": {"default": ..., "type": ..., "choices": [...]}}``."""
    out: dict[str, dict[str, Any]] = {}
    for section, cls in (("model", model_config), ("graph", GraphConfig), ("train", TrainConfig), ("eval", EvalConfig)):
        hints = typing.get_type_hints(cls)
        defaults = dataclasses.asdict(cls())
        for f in dataclasses.fields(cls):
            annotation = hints[f.name]
            entry: dict[str, Any] = {"default": defaults[f.name]}
            if typing.get_origin(annotation) is Literal:
                entry["choices"] = list(typing.get_args(annotation))
            else:
                entry["type"] = getattr(annotation, "__name__", str(annotation))
            out[f"{section}.{f.name}"] = entry
    return out


def _model_config_class(name: str) -> type[ModelConfig]:
    from mirec.models import get_model_class

    return get_model_class(name).config_class


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
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


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
    layers = [PRESET_ROOT / "models" / f"{model}.toml", PRESET_ROOT / "datasets" / f"{dataset}.toml",
              PRESET_ROOT / "pairs" / dataset / f"{model}.toml"]
    return [path for path in layers if path.exists()]


def preset_datasets() -> list[str]:
    """Dataset names that have settings of their own (others use ``default``)."""
    return sorted(p.stem for p in (PRESET_ROOT / "datasets").glob("*.toml"))


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


def toml_literal(value: Any, separator: str = ", ") -> str:
    """A TOML literal of a str, int, float, bool or list of those (``separator`` between list items)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + separator.join(toml_literal(v, separator) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as a TOML literal")


def to_toml(data: dict[str, Any]) -> str:
    """Minimal TOML writer for our flat sections (str, int, float, bool, lists of those)."""
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_literal(v)}" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)
