"""Training: the trainer loop and run-folder checkpoints."""

from mirec.train.checkpoint import load_run
from mirec.train.trainer import Trainer, train_run

__all__ = ["Trainer", "train_run", "load_run"]
