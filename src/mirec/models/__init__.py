"""Model zoo: name -> class. Each model file names its paper."""

from __future__ import annotations

import importlib

from mirec.models.base import MultiInterestModel

# name -> "module:Class"; imported lazily so a broken optional model never breaks the others.
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
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"model {name!r} is not available yet ({exc})") from None


def available_models() -> list[str]:
    out = []
    for name in MODEL_PATHS:
        try:
            get_model_class(name)
            out.append(name)
        except ValueError:
            pass
    return out


__all__ = ["MultiInterestModel", "get_model_class", "available_models", "MODEL_PATHS"]
