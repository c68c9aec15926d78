"""Serving: model bundles (:mod:`.bundle`), item indexes (:mod:`.index`), the serving model that answers batches
of histories (:mod:`.model`) and the HTTP service (:mod:`.app`, needs ``mirec[serve]``)."""

from typing import Any

_EXPORTS = {
    "ServingModel": "mirec.serving.model",
    "RecommendRequest": "mirec.serving.model",
    "IndexParams": "mirec.serving.index",
    "ItemIndex": "mirec.serving.index",
    "export_bundle": "mirec.serving.bundle",
    "load_bundle": "mirec.serving.bundle",
    "load_serving": "mirec.serving.bundle",
    "BundleError": "mirec.serving.bundle",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    # Lazy: the core install needs no FastAPI, and `import mirec.serving` stays cheap.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mirec.serving' has no attribute {name!r}")
