"""Tensors on disk: safetensors files written atomically and read with a one-line error naming the file.

The one home of weight I/O: run folders (:mod:`mirec.runs`), checkpoints (:mod:`mirec.training.checkpoint`) and
bundles (:mod:`mirec.serving.bundle`) read and write through it. Nothing is pickled.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mirec.utils import atomic_path


def cpu_copy(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Independent contiguous CPU copies (safetensors refuses shared storage)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomically write a safetensors file."""
    with atomic_path(path) as tmp:
        save_file(cpu_copy(tensors), str(tmp), metadata=metadata)


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing, truncated or corrupt file is an error naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0]})") from None


__all__ = ["save_tensors", "load_tensors", "cpu_copy"]
