"""Model zoo: name -> class. Each model file names its paper."""

from __future__ import annotations

import importlib

from mirec.config import MODEL_CONFIGS
from mirec.models.base import MultiInterestModel

# name -> "module:Class", read from the one registry (each options class names its model); imported when first asked
# for (importing torch models is slow), and a model that fails to import is an error, never silently dropped.
MODEL_PATHS: dict[str, str] = {name: options.model_path for name, options in MODEL_CONFIGS.items()}


def get_model_class(name: str) -> type[MultiInterestModel]:
    if name not in MODEL_PATHS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(MODEL_PATHS)}")
    module, cls = MODEL_PATHS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def available_models() -> list[str]:
    """Every registered model (each one imported, so a broken model fails here rather than being skipped)."""
    for name in MODEL_PATHS:
        get_model_class(name)
    return list(MODEL_PATHS)


__all__ = ["MultiInterestModel", "get_model_class", "available_models", "MODEL_PATHS"]
