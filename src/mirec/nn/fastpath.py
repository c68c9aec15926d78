"""One switch for the CPU fast paths (the self-attentive tanh folded into a sigmoid, attention on the valid rows
only, the packed GRU with its own backward, MIND's map on real rows): each is tested equal to its reference form,
and each branches on data or device, which graph exporters (ONNX, torch.export) cannot follow.
:func:`reference_paths` turns them all off for a block."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

_enabled = True


def use_cpu_fast_path(x: torch.Tensor) -> bool:
    """True when ``x`` is on the CPU and the fast paths are on (the default)."""
    return _enabled and x.device.type == "cpu"


@contextlib.contextmanager
def reference_paths() -> Iterator[None]:
    """Run the block with every fast path off (the plain formulation each one is tested against)."""
    global _enabled
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before
