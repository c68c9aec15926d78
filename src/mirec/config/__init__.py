"""Typed run configuration: frozen dataclasses loaded from layered TOML presets and overridden with ``--set``.

A run config has four sections: ``[model]`` (a model-specific dataclass chosen by ``model.name``), ``[graph]``
(global context extraction, GIMIRec section 4.2), ``[train]`` and ``[eval]``. The package is torch-free, so a
config is built and checked before any model or data is loaded:

- :mod:`.checked`: the checking machinery (``Literal`` choices, ranges, cross-field rules);
- :mod:`.sections`: the sections and :class:`RunConfig`;
- :mod:`.models`: each model's options and the one model registry (:data:`MODEL_CONFIGS`);
- :mod:`.loading`: presets, aliases, recipes, overrides, :func:`load_config` / :func:`save_config`;
- :mod:`.toml`: TOML out.
"""

from mirec.config.checked import CheckedConfig, ConfigError
from mirec.config.loading import (
    PRESET_ALIASES,
    PRESET_ROOT,
    RECIPES,
    apply_overrides,
    dataset_preset,
    from_dict,
    load_config,
    parse_override,
    preset_datasets,
    preset_layers,
    save_config,
)
from mirec.config.models import (
    MODEL_CONFIGS,
    ComiRecDRConfig,
    ComiRecSAConfig,
    DNNConfig,
    GemiRecConfig,
    GIMIRecConfig,
    GRU4RecConfig,
    MINDConfig,
    PIMIConfig,
    SASRecConfig,
    describe_options,
)
from mirec.config.sections import (
    MAX_DIVERSITY_LAMBDA,
    TRACKERS,
    EvalConfig,
    GraphConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    check_diversity_lambda,
    check_list_shares,
)
from mirec.config.toml import to_toml, toml_literal

__all__ = [
    "CheckedConfig",
    "ConfigError",
    "PRESET_ALIASES",
    "PRESET_ROOT",
    "RECIPES",
    "apply_overrides",
    "dataset_preset",
    "from_dict",
    "load_config",
    "parse_override",
    "preset_datasets",
    "preset_layers",
    "save_config",
    "MODEL_CONFIGS",
    "ComiRecDRConfig",
    "ComiRecSAConfig",
    "DNNConfig",
    "GemiRecConfig",
    "SASRecConfig",
    "GIMIRecConfig",
    "GRU4RecConfig",
    "MINDConfig",
    "PIMIConfig",
    "describe_options",
    "MAX_DIVERSITY_LAMBDA",
    "TRACKERS",
    "EvalConfig",
    "GraphConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "check_diversity_lambda",
    "check_list_shares",
    "to_toml",
    "toml_literal",
]
