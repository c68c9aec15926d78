"""Model zoo: name -> class. Each model file names its paper."""

from __future__ import annotations

import importlib

from mirec.models.base import MultiInterestModel

# name -> "module:Class"; imported when first asked for (importing torch models is slow), and a model that fails
# to import is an error, never silently dropped.
MODEL_PATHS: dict[str, str] = {
    "dnn": "mirec.models.dnn:YouTubeDNN",
    "gru4rec": "mirec.models.gru4rec:GRU4Rec",
    "mind": "mirec.models.mind:MIND",
    "comirec-dr": "mirec.models.comirec_dr:ComiRecDR",
    "comirec-sa": "mirec.models.comirec_sa:ComiRecSA",
    "pimi": "mirec.models.pimi:PIMI",
    "gimirec": "mirec.models.gimirec:GIMIRec",
    "gemirec": "mirec.models.gemirec:GemiRec",
}


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
