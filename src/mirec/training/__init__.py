"""Training: the trainer loop (:mod:`mirec.training.trainer`) and its resume state (:mod:`.checkpoint`).

Run folders (who may write one, loading a finished run) are :mod:`mirec.runs`'."""

from typing import Any

__all__ = ["Trainer", "train_run"]


def __getattr__(name: str) -> Any:
    # Lazy, so that mirec.runs can import .checkpoint without importing the trainer (which imports mirec.runs).
    if name in __all__:
        from mirec.training import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'mirec.training' has no attribute {name!r}")
