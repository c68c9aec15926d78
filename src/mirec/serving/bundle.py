"""Model bundles: a versioned folder that serves a trained run with nothing else (no dataset, no run folder).

Layout (every file listed with its size and SHA-256 in ``manifest.json``; loading verifies them all)::

    manifest.json             bundle format, model name, mirec version, creation time, training data checksum,
                              model_version (hash of config + weights), index_version (hash of index files),
                              n_items, dim, num_interests, files
    config.toml               the run's resolved config
    model.safetensors         weights
    graph.safetensors         the global context (models that have one)
    item_vectors.safetensors  the [n_items + 1, d] vectors the model scores against (row 0 = padding)
    items.parquet             row i = internal item i + 1: original_id, category (-1 = none)
    item_features.json, feature_*.npy   the item feature tables (models with model.item_features)
    index.json, index.faiss   the item index (Faiss's own format; never pickle)

Nothing is unpickled: tensors are safetensors, tables Parquet, settings TOML/JSON.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import save_file

from mirec.config import load_config, save_config
from mirec.data.features import load_item_features
from mirec.runs import build_model, dataset_checksum, load_run, load_state
from mirec.serving.index import IndexParams, ItemIndex, calibrate
from mirec.serving.model import ServingModel
from mirec.tensors import load_tensors
from mirec.utils import atomic_directory, exclusive_lock, read_format_json, resolve_device, sha256_file
from mirec.version import __version__

BUNDLE_FORMAT = 1
MANIFEST = "manifest.json"


class BundleError(ValueError):
    """A bundle is missing, tampered with, truncated or of another format (the message names the file)."""


def is_bundle(path: str | Path) -> bool:
    try:
        return json.loads((Path(path) / MANIFEST).read_text()).get("bundle_format") is not None
    except (OSError, ValueError, AttributeError):
        return False


def _check_export(run_dir: str | Path, output: Path, overwrite: bool, onnx: bool) -> None:
    """Before any work: the output may be replaced, and (``onnx``) the model can be exported."""
    if output.exists():
        if not output.is_dir() or (any(output.iterdir()) and not is_bundle(output)):
            raise FileExistsError(f"{output}: exists and is not a mirec bundle; choose a new or empty folder")
        if is_bundle(output) and not overwrite:
            raise FileExistsError(f"{output}: already holds a bundle; pass --overwrite to replace it")
    if onnx:  # a model that cannot be exported fails in a second
        from mirec.serving.onnx_export import check_exportable

        model_config = load_config(Path(run_dir) / "config.toml").model
        check_exportable(model_config.name, model_config.item_features)


def export_bundle(
    run_dir: str | Path,
    output: str | Path,
    *,
    index: IndexParams | None = None,
    data: str | Path | None = None,
    overwrite: bool = False,
    onnx: bool = False,
) -> dict[str, Any]:
    """Write the bundle of a finished run; returns its manifest. ``output`` must be new, empty, or (with
    ``overwrite``) a bundle. ``onnx``: the user tower as ONNX too, built inside the bundle before it is moved
    into place (so the manifest lists and checks it like every other file)."""
    output = Path(output)
    _check_export(run_dir, output, overwrite, onnx)
    model, dataset, config = load_run(run_dir, "cpu", data)
    params = (index or IndexParams()).resolved(model.n_catalogue)
    started = time.perf_counter()
    with torch.no_grad():
        vectors = model.output_embeddings().detach().float().cpu().contiguous()
    calibration: dict[str, Any] = {}
    if params.kind == "exact" and params.norm_tier >= 1:
        item_index = ItemIndex(vectors, params)
    else:  # the metric and search depth measured on the run's own validation users (never test)
        item_index, calibration = calibrate(vectors, params, validation_interests(model, dataset, config))
    build_seconds = time.perf_counter() - started
    with bundle_lock(output), atomic_directory(output) as tmp:
        save_config(config, tmp / "config.toml")
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors")
        )
        if model.global_context is not None:
            model.global_context.save(tmp / "graph.safetensors")
        save_file({"item_vectors": vectors}, str(tmp / "item_vectors.safetensors"))
        n = model.n_catalogue + 1  # an ids-only model cannot score held-out or table-only items
        write_items(
            tmp, dataset.item_original_ids[:n], None if dataset.item_categories is None else dataset.item_categories[:n]
        )
        if model.feature_encoder is not None:
            dataset.item_features.select(model.feature_encoder.names).save(tmp)
        index_files = item_index.save(tmp)
        manifest = {
            "bundle_format": BUNDLE_FORMAT,
            "model": config.model.name,
            "mirec_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source_run": str(Path(run_dir).resolve()),
            "dataset": {"name": dataset.name, "meta_sha256": dataset_checksum(dataset)},
            "index": {
                **item_index.params.__dict__,
                "build_seconds": round(build_seconds, 3),
                "calibration": calibration,
            },
            "n_items": model.n_catalogue,
            "n_id_items": model.n_items,
            "dim": int(vectors.shape[1]),
            "num_interests": int(config.model.num_interests),
            "maxlen": int(config.model.maxlen),
            "has_categories": dataset.item_categories is not None,
            "index_files": index_files,
        }
        if onnx:
            from mirec.serving.onnx_export import write_user_tower

            manifest["onnx"] = write_user_tower(model, config, model.n_catalogue, tmp)
        manifest = write_manifest(tmp, manifest)
    return manifest


def write_items(folder: Path, original_ids: np.ndarray, categories: np.ndarray | None) -> None:
    """items.parquet: row i = internal item i + 1 (original id, category or -1)."""
    categories = categories if categories is not None else np.full(len(original_ids), -1)
    columns = {
        "original_id": pa.array(np.asarray(original_ids[1:]).astype(str)),
        "category": pa.array(np.asarray(categories[1:], dtype=np.int64)),
    }
    pq.write_table(pa.table(columns), folder / "items.parquet")


def bundle_lock(output: str | Path):
    """The lock of a bundle folder (beside it: the folder itself is replaced by a rename)."""
    output = Path(output)
    return exclusive_lock(output.resolve().parent / f".{output.name}.lock", f"bundle output {output}")


def write_manifest(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """manifest.json listing every file in ``folder`` (size, SHA-256) with the model and index versions."""
    files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(folder.iterdir())}
    files.pop(MANIFEST, None)
    # the feature tables are part of the model: a refresh with new items is a new model version
    model_files = [
        "config.toml",
        "model.safetensors",
        *sorted(f for f in files if f.startswith(("item_features", "feature_"))),
    ]
    model_hash = hashlib.sha256("".join(files[f]["sha256"] for f in model_files).encode())
    index_files = manifest.get("index_files") or [f for f in ("index.json", "index.faiss") if f in files]
    index_hash = hashlib.sha256("".join(files[f]["sha256"] for f in index_files).encode())
    manifest = {
        **manifest,
        "model_version": model_hash.hexdigest()[:16],
        "index_version": index_hash.hexdigest()[:16],
        "files": files,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def validation_interests(model, dataset, config, max_users: int = 2000) -> torch.Tensor:
    """Interest vectors [U, K, d] of up to ``max_users`` validation users (their history parts)."""
    from mirec.data.batching import iter_eval_batches

    out, seen = [], 0
    with torch.no_grad():
        for eb in iter_eval_batches(dataset.valid, config.model.maxlen, 512):
            out.append(model(eb.batch).float().cpu())
            seen += len(eb.rows)
            if seen >= max_users:
                break
    return torch.cat(out)[:max_users]


def verify_bundle(path: str | Path) -> dict[str, Any]:
    """Read the manifest and check every listed file's size and SHA-256; raises :class:`BundleError`."""
    path = Path(path)
    manifest = read_format_json(
        path / MANIFEST,
        "bundle_format",
        BUNDLE_FORMAT,
        f"missing; is {path} a mirec bundle (mirec export)?",
        BundleError,
    )
    for name, expected in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"{file}: missing from the bundle")
        if file.stat().st_size != expected["bytes"]:
            raise BundleError(
                f"{file}: {file.stat().st_size} bytes, the manifest says {expected['bytes']} (truncated?)"
            )
        if sha256_file(file) != expected["sha256"]:
            raise BundleError(f"{file}: checksum differs from the manifest (modified or corrupt)")
    return manifest


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> ServingModel:
    """The serving model of a bundle, after verifying every file against the manifest."""
    path = Path(path)
    manifest = verify_bundle(path)
    device = resolve_device(str(device))
    config = load_config(path / "config.toml")
    graph = path / "graph.safetensors"
    n_id_items = int(manifest.get("n_id_items", manifest["n_items"]))
    features = load_item_features(path, mmap=False)
    model = build_model(config, None, graph if graph.exists() else None, n_items=n_id_items, item_features=features)
    load_state(model, load_tensors(path / "model.safetensors"), path / "model.safetensors")
    model.to(device).eval()
    vectors = load_tensors(path / "item_vectors.safetensors")["item_vectors"]
    items = pq.read_table(path / "items.parquet")
    original = np.array([""] + items.column("original_id").to_pylist(), dtype=object)
    categories = np.concatenate([[-1], items.column("category").to_numpy()]).astype(np.int64)
    return ServingModel(
        model,
        config,
        original,
        ItemIndex.load(path, vectors),
        item_categories=categories if manifest.get("has_categories") else None,
        manifest=manifest,
    )


def export_onnx(bundle: str | Path, n_check: int = 64, seed: int = 0) -> dict[str, Any]:
    """Add the user tower to an existing bundle: verified, rebuilt under a temporary name with the ONNX files and
    a new manifest, and swapped in whole under the bundle's lock; returns the ``onnx`` manifest entry."""
    from mirec.serving.onnx_export import check_exportable, write_user_tower

    bundle = Path(bundle)
    with bundle_lock(bundle):
        manifest = verify_bundle(bundle)
        check_exportable(manifest["model"], load_config(bundle / "config.toml").model.item_features)
        serving = load_bundle(bundle)
        with atomic_directory(bundle) as tmp:
            for name in manifest["files"]:
                if not name.startswith("user_tower.onnx"):
                    shutil.copy2(bundle / name, tmp / name)
            entry = write_user_tower(serving.model, serving.config, serving.n_items, tmp, n_check, seed)
            kept = {k: v for k, v in manifest.items() if k not in ("files", "model_version", "index_version")}
            write_manifest(tmp, {**kept, "onnx": entry})
    return entry


def serving_model_of_run(
    run_dir: str | Path, device: str = "cpu", data: str | Path | None = None, index: IndexParams | None = None
) -> ServingModel:
    """The serving model of a run folder (its dataset's id map; exact search unless ``index`` says otherwise)."""
    model, dataset, config = load_run(run_dir, resolve_device(device), data)
    return ServingModel.of_run(model, dataset, config, index, source=str(Path(run_dir).resolve()))


def load_serving(path: str | Path, device: str = "cpu", data: str | Path | None = None) -> ServingModel:
    """A bundle or a run folder, whichever ``path`` is."""
    return load_bundle(path, device) if is_bundle(path) else serving_model_of_run(path, device, data)


__all__ = [
    "export_bundle",
    "export_onnx",
    "load_bundle",
    "verify_bundle",
    "load_serving",
    "serving_model_of_run",
    "BundleError",
    "is_bundle",
    "BUNDLE_FORMAT",
]
