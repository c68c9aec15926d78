"""The user tower (history -> K interest vectors) as ONNX, for callers that serve it outside Python/torch.

``user_tower.onnx`` takes ``items`` int64 [B, L], ``mask`` float32 [B, L], ``days`` int64 [B, L] (L = the
model's maxlen; left-aligned, 0-padded, days as in :class:`mirec.data.batching.Batch`) and returns
``interests`` float32 [B, K, d]; the batch axis is dynamic. Scoring stays with the bundle's item vectors and
index. A model with a global context is exported with its item rows E_global = A E_item precomputed (the
same numbers, a dense table instead of the sparse product). Not exported (a clear error says why): GemiRec
(its beam search is data-dependent control flow), MIND (fresh random routing logits in every forward) and,
not yet, GRU4Rec (its exported GRU failed the onnxruntime check at other batch sizes).

Every export is checked: onnxruntime and torch run the same real histories and the largest absolute
difference is recorded in the bundle's manifest (``onnx.max_abs_diff``).
"""

from __future__ import annotations

import contextlib
import copy
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mirec.data.batching import Batch
from mirec.nn.fastpath import reference_paths

NOT_EXPORTABLE = {
    "gemirec": "GemiRec's beam search over the interest dictionary is data-dependent control flow; "
    "serve it with torch (the bundle without --onnx)",
    "gru4rec": "not yet: the exported GRU graph (torch.onnx, dynamo and TorchScript exporters) failed the "
    "onnxruntime check at batch sizes other than the example's; serve it with torch",
    "mind": "MIND draws fresh random routing logits in every forward pass (ComiRec's MIND, at inference too), "
    "which an ONNX graph cannot reproduce; serve it with torch (the bundle without --onnx)",
}


class PrecomputedRows(nn.Module):
    """E_global lookup with the rows of A E_item computed once (inference only)."""

    def __init__(self, rows: torch.Tensor):
        super().__init__()
        self.register_buffer("rows", rows)

    def forward(self, ids: torch.Tensor, item_weight: torch.Tensor) -> torch.Tensor:
        return self.rows[ids]


class UserTower(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, items: torch.Tensor, mask: torch.Tensor, days: torch.Tensor) -> torch.Tensor:
        return self.model(Batch(items, mask, days))


def require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ImportError(f'--onnx needs the ONNX packages: pip install "mirec[onnx]" ({exc})') from None


def check_exportable(model_name: str, item_features: list[str] | tuple[str, ...] = ()) -> None:
    """Fail at once (before any work or writing) when the packages are missing or the model cannot be exported."""
    require_onnx()
    if model_name in NOT_EXPORTABLE:
        raise ValueError(f"--onnx: {model_name}: {NOT_EXPORTABLE[model_name]}")
    if item_features:  # the pooled feature lookups are not traced and checked yet
        raise ValueError(f"--onnx: models with item features ({list(item_features)}) are not exported yet")


def check_histories(n_items: int, maxlen: int, n_check: int, seed: int) -> tuple[torch.Tensor, ...]:
    """A check batch of random histories (items, mask, days), left-aligned as the service encodes them."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, maxlen + 1, size=n_check)
    items = np.zeros((n_check, maxlen), dtype=np.int64)
    days = np.zeros((n_check, maxlen), dtype=np.int64)
    for row, length in enumerate(lengths):  # not a hot path
        items[row, :length] = rng.integers(1, n_items + 1, size=length)
        days[row, :length] = np.sort(rng.integers(1, 200, size=length))
    mask = (items > 0).astype(np.float32)
    return torch.from_numpy(items), torch.from_numpy(mask), torch.from_numpy(days)


def write_user_tower(
    model: nn.Module, config: Any, n_items: int, folder: str | Path, n_check: int = 64, seed: int = 0
) -> dict[str, Any]:
    """Write ``user_tower.onnx`` (and its external data) into ``folder``, check it with onnxruntime against torch;
    returns the manifest's ``onnx`` entry. torch.onnx's progress lines go to stderr (stdout carries JSON)."""
    check_exportable(config.model.name, config.model.item_features)
    import onnxruntime as ort

    model = copy.deepcopy(model).cpu().eval()
    if model.global_context is not None:
        with torch.no_grad():
            model.global_context = PrecomputedRows(model.output_embeddings().detach().clone())
    tower = UserTower(model).eval()
    maxlen = int(config.model.maxlen)
    example = check_histories(n_items, maxlen, n_check, seed)
    path = Path(folder) / "user_tower.onnx"
    batch = torch.export.Dim.AUTO  # a named Dim made the GRU's batch axis static; AUTO keeps it dynamic
    # the CPU fast paths branch on data; the exported graph takes the plain form
    with reference_paths(), contextlib.redirect_stdout(sys.stderr):
        torch.onnx.export(
            tower,
            example,
            str(path),
            input_names=["items", "mask", "days"],
            output_names=["interests"],
            dynamic_shapes={"items": {0: batch}, "mask": {0: batch}, "days": {0: batch}},
            dynamo=True,
            verbose=False,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}  # an input the model never reads may be dropped
    feed_all = dict(zip(("items", "mask", "days"), (t.numpy() for t in example), strict=True))

    def run(rows: int) -> np.ndarray:
        return session.run(None, {k: v[:rows] for k, v in feed_all.items() if k in names})[0]

    onnx_out = run(n_check)
    with torch.no_grad():
        torch_out = tower(*example).numpy()
    small, single = run(3), run(1)  # other batch sizes: the batch axis is dynamic
    return {
        "file": path.name,
        "inputs": [f"{k} [B, L]" for k in ("items", "mask", "days") if k in names],
        "output": "interests float32 [B, K, d]",
        "maxlen": maxlen,
        "max_abs_diff": float(np.abs(onnx_out - torch_out).max()),
        "max_abs_diff_batch3": float(np.abs(small - torch_out[:3]).max()),
        "max_abs_diff_batch1": float(np.abs(single - torch_out[:1]).max()),
    }


__all__ = ["write_user_tower", "check_exportable", "NOT_EXPORTABLE"]
