"""New items without retraining: a bundle refreshed with items it has never seen, embedded from their features.

The bundle's model must pool item features (``model.item_features``). The new items' feature values are encoded
with the bundle's own vocabularies (a value it never saw counts as missing), their vectors computed by the
bundle's weights (no id part: they have no id row), appended to the item table and the index, and the whole is
written as a new bundle version (a new ``model_version``: the feature tables are part of it). Items of the table
the bundle already holds are left as they are (reported), so old items keep their vectors bit for bit.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from mirec.data.features import encode_item_table, load_item_features, read_item_table
from mirec.runs import build_model, load_state
from mirec.serving.bundle import BundleError, bundle_lock, is_bundle, verify_bundle, write_items, write_manifest
from mirec.serving.index import IndexParams, ItemIndex
from mirec.tensors import load_tensors
from mirec.utils import atomic_directory

KEPT_FILES = ("config.toml", "model.safetensors", "graph.safetensors")  # unchanged by a refresh


def refresh_bundle(
    bundle: str | Path, items: str | Path, output: str | Path, id_column: str = "item_id", overwrite: bool = False
) -> dict[str, Any]:
    """Write ``output``: ``bundle`` plus the items of the table ``items`` it does not hold; returns the new
    manifest (with ``refresh``: counts and the source version). ``output`` may be ``bundle`` itself (with
    ``overwrite``): it is replaced whole under the bundle's lock, so a server reloading it sees one or the other."""
    bundle, output = Path(bundle), Path(output)
    _check_output(bundle, output, overwrite)
    with bundle_lock(output):
        manifest = verify_bundle(bundle)
        features = load_item_features(bundle, mmap=False)
        if features is None:
            raise BundleError(
                f"{bundle}: its model has no item features, so new items cannot be embedded; train with "
                "model.item_features (mirec prepare --items) to serve items that were not trained on"
            )
        from mirec.config import load_config

        config = load_config(bundle / "config.toml")
        table = read_item_table(items, [f.spec for f in features.features], id_column)
        original = np.array([""] + bundle_item_ids(bundle), dtype=object)
        known = set(original[1:].tolist())
        new_ids = [item for item in table.ids if item not in known]
        if not new_ids:
            raise ValueError(f"{items}: all {len(table.ids)} items are already in {bundle}; nothing to add")
        added = encode_item_table(table, {item: i + 1 for i, item in enumerate(new_ids)}, len(new_ids), like=features)
        extended = features.appended(added)
        vectors = _extended_vectors(bundle, manifest, config, extended, len(original) - 1)
        with atomic_directory(output) as tmp:
            for name in KEPT_FILES:
                if (bundle / name).exists():
                    shutil.copy2(bundle / name, tmp / name)
            save_file({"item_vectors": vectors}, str(tmp / "item_vectors.safetensors"))
            categories = np.concatenate([_categories(bundle), np.full(len(new_ids), -1, dtype=np.int64)])
            write_items(tmp, np.concatenate([original, np.array(new_ids, dtype=object)]), categories)
            extended.save(tmp)
            index = _index(manifest, vectors)
            refresh = {
                "from_model_version": manifest["model_version"],
                "items_file": str(Path(items).resolve()),
                "new_items": len(new_ids),
                "already_known": len(table.ids) - len(new_ids),
                **added.report,
            }
            kept = {k: v for k, v in manifest.items() if k not in ("files", "model_version", "index_version", "onnx")}
            return write_manifest(
                tmp,
                {
                    **kept,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "n_items": int(vectors.shape[0] - 1),
                    "index": {**kept["index"], **index.params.__dict__},
                    "index_files": index.save(tmp),
                    "refresh": refresh,
                },
            )


def _check_output(bundle: Path, output: Path, overwrite: bool) -> None:
    if not is_bundle(bundle):
        raise BundleError(f"{bundle}: not a mirec bundle (mirec export RUN --output DIR makes one)")
    if output.exists():
        if not output.is_dir() or (any(output.iterdir()) and not is_bundle(output)):
            raise FileExistsError(f"{output}: exists and is not a mirec bundle; choose a new or empty folder")
        if is_bundle(output) and not overwrite:
            raise FileExistsError(f"{output}: already holds a bundle; pass --overwrite to replace it")


def bundle_item_ids(bundle: Path) -> list[str]:
    """The original ids of a bundle's items, in internal-id order (row i = item i + 1)."""
    import pyarrow.parquet as pq

    return [str(x) for x in pq.read_table(bundle / "items.parquet").column("original_id").to_pylist()]


def _categories(bundle: Path) -> np.ndarray:
    import pyarrow.parquet as pq

    return np.concatenate([[-1], pq.read_table(bundle / "items.parquet").column("category").to_numpy()])


def _extended_vectors(bundle: Path, manifest: dict, config: Any, features: Any, n_old: int) -> torch.Tensor:
    """The bundle's item vectors (unchanged) followed by the new items', computed by its weights."""
    graph = bundle / "graph.safetensors"
    n_id_items = int(manifest.get("n_id_items", manifest["n_items"]))
    model = build_model(config, None, graph if graph.exists() else None, n_items=n_id_items, item_features=features)
    load_state(model, load_tensors(bundle / "model.safetensors"), bundle / "model.safetensors")
    model.eval()
    old = load_tensors(bundle / "item_vectors.safetensors")["item_vectors"]
    with torch.no_grad():
        new = model.output_embeddings(torch.arange(n_old + 1, features.n_items + 1)).float()
    return torch.cat([old, new]).contiguous()


def _index(manifest: dict, vectors: torch.Tensor) -> ItemIndex:
    """The bundle's index kind and settings over the extended table (search depth as calibrated at export)."""
    fields = IndexParams.__dataclass_fields__
    return ItemIndex(vectors, IndexParams(**{k: v for k, v in manifest["index"].items() if k in fields}))
