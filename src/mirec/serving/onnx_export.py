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

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mirec.data.batching import Batch
from mirec.nn.fastpath import reference_paths
from mirec.serving.bundle import MANIFEST, load_bundle
from mirec.utils import sha256_file

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


def export_onnx(bundle: str | Path, n_check: int = 64, seed: int = 0) -> dict[str, Any]:
    """Write ``user_tower.onnx`` into a bundle, check it with onnxruntime, update the manifest; returns the
    ``onnx`` manifest entry."""
    require_onnx()
    import onnxruntime as ort

    bundle = Path(bundle)
    serving = load_bundle(bundle)
    name = serving.config.model.name
    if name in NOT_EXPORTABLE:
        raise ValueError(f"--onnx: {name}: {NOT_EXPORTABLE[name]}")
    model = serving.model.cpu().eval()
    if model.global_context is not None:
        with torch.no_grad():
            model.global_context = PrecomputedRows(model.output_embeddings().detach().clone())
    tower = UserTower(model).eval()
    maxlen = serving.maxlen
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, maxlen + 1, size=n_check)
    items = np.zeros((n_check, maxlen), dtype=np.int64)
    days = np.zeros((n_check, maxlen), dtype=np.int64)
    for row, length in enumerate(lengths):  # a check batch of random histories (not a hot path)
        items[row, :length] = rng.integers(1, serving.n_items + 1, size=length)
        days[row, :length] = np.sort(rng.integers(1, 200, size=length))
    mask = (items > 0).astype(np.float32)
    example = (torch.from_numpy(items), torch.from_numpy(mask), torch.from_numpy(days))
    path = bundle / "user_tower.onnx"
    batch = torch.export.Dim.AUTO  # a named Dim made the GRU's batch axis static; AUTO keeps it dynamic
    with reference_paths():  # the CPU fast paths branch on data; the exported graph takes the plain form
        torch.onnx.export(
            tower,
            example,
            str(path),
            input_names=["items", "mask", "days"],
            output_names=["interests"],
            dynamic_shapes={"items": {0: batch}, "mask": {0: batch}, "days": {0: batch}},
            dynamo=True,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}  # an input the model never reads may be dropped

    def run(rows: int) -> np.ndarray:
        feed = {"items": items[:rows], "mask": mask[:rows], "days": days[:rows]}
        return session.run(None, {k: v for k, v in feed.items() if k in names})[0]

    onnx_out = run(n_check)
    with torch.no_grad():
        torch_out = tower(*example).numpy()
    small, single = run(3), run(1)  # other batch sizes: the batch axis is dynamic
    entry = {
        "file": path.name,
        "inputs": [f"{k} [B, L]" for k in ("items", "mask", "days") if k in names],
        "output": "interests float32 [B, K, d]",
        "maxlen": maxlen,
        "max_abs_diff": float(np.abs(onnx_out - torch_out).max()),
        "max_abs_diff_batch3": float(np.abs(small - torch_out[:3]).max()),
        "max_abs_diff_batch1": float(np.abs(single - torch_out[:1]).max()),
    }
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["files"][path.name] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    manifest["onnx"] = entry
    tmp = bundle / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(bundle / MANIFEST)
    return entry


__all__ = ["export_onnx", "NOT_EXPORTABLE"]
