"""Training: the trainer loop (:mod:`mirec.training.trainer`) and its resume state (:mod:`.checkpoint`).

Run folders (who may write one, their file names, loading a finished run) are :mod:`mirec.runs`', which imports
nothing from here."""

from mirec.training.trainer import Trainer, train_run

__all__ = ["Trainer", "train_run"]
