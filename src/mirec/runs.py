"""Run folders: what a training run writes, who may write it, and how a finished run is rebuilt.

A run folder holds ``config.toml``, ``data.json`` (the prepared dataset: a path relative to the run folder,
the absolute path and the checksum of its meta.json), ``model.safetensors`` (best weights),
``graph.safetensors`` (global context), ``checkpoints/`` (resume state, :mod:`mirec.training.checkpoint`),
``train.log``, ``history.jsonl``, ``metrics.json``, ``.lock`` and the marker ``.mirec-run.json`` (the run's id: what
proves that mirec made the folder). Rules that keep a user's data safe:

- a fresh run refuses a folder that holds anything; ``overwrite`` needs the marker and removes only the files a
  run writes (named above), after every check of the new run passed;
- ``resume`` needs a checkpoint and a config / dataset that match it (the options in :data:`RESUME_SAFE`
  may change and are logged);
- one process at a time: :func:`run_lock` holds an exclusive lock on ``.lock`` for the whole run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from mirec.config import RunConfig, load_config
from mirec.data.dataset import PreparedDataset, load_dataset
from mirec.data.features import ItemFeatures
from mirec.models import MultiInterestModel, get_model_class
from mirec.nn.item_features import ItemFeatureEncoder
from mirec.tensors import load_tensors
from mirec.utils import atomic_write_text, exclusive_lock, sha256_file

CHECKPOINT_DIR = "checkpoints"  # versioned resume states (mirec.training.checkpoint writes them)
LEGACY_CHECKPOINT_DIR = "checkpoint"  # mirec < 0.2: one folder swapped by two renames
CHECKPOINT_VERSION = re.compile(r"^\d{8}$")
LOCK_FILE = ".lock"
RUN_MARKER = ".mirec-run.json"
RUN_FILES = (
    "config.toml",
    "data.json",
    "init.json",
    "model.safetensors",
    "graph.safetensors",
    "train.log",
    "history.jsonl",
    "metrics.json",
    "mlflow_run.txt",
)
RUN_FOLDERS = (CHECKPOINT_DIR, LEGACY_CHECKPOINT_DIR, "tensorboard")
# Options a resumed run may change: budgets, cadence, placement and evaluation speed, not what is learnt.
RESUME_SAFE = frozenset(
    {
        "graph.engine",
        "graph.spark_master",
        "train.log_to",
        "train.tracking_uri",
        "train.tracking_experiment",
        "train.max_steps",
        "train.max_minutes",
        "train.patience",
        "train.eval_every",
        "train.log_every",
        "train.checkpoint_every",
        "train.device",
        "eval.batch_size",
    }
)


class RunFolderError(ValueError):
    """A run folder cannot be used as asked (it holds another run, has no checkpoint, or does not match)."""


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Exclusive lock of a run folder for one process (a second one fails at once, naming the first's PID)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(run_dir / LOCK_FILE, f"run folder {run_dir}"):
        yield


def checkpoint_versions(run_dir: str | Path) -> list[Path]:
    """The complete checkpoint versions of a run folder, oldest first."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and CHECKPOINT_VERSION.match(p.name))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The folder ``--resume`` continues from: the newest version, else an earlier mirec's ``checkpoint/``."""
    versions = checkpoint_versions(run_dir)
    if versions:
        return versions[-1]
    legacy = Path(run_dir) / LEGACY_CHECKPOINT_DIR
    return legacy if (legacy / "state.json").exists() else None


def clean_stale_files(run_dir: str | Path) -> list[str]:
    """Remove what killed writers left (temporary names of ours only); recover an earlier mirec's checkpoint
    from its moved-aside copy when a crash hit between its two renames. Call it holding the run lock."""
    run_dir = Path(run_dir)
    removed: list[str] = []
    legacy = run_dir / LEGACY_CHECKPOINT_DIR
    moved_aside = sorted(run_dir.glob(f".{LEGACY_CHECKPOINT_DIR}.old-*"))
    if moved_aside and not legacy.exists():
        os.replace(moved_aside.pop(), legacy)
        removed.append(f"recovered {legacy.name}/ from its moved-aside copy")
    stale = [*moved_aside, *run_dir.glob(f".{LEGACY_CHECKPOINT_DIR}.*.tmp"), *run_dir.glob(f"{CHECKPOINT_DIR}/.*.tmp")]
    stale += [p for p in run_dir.glob(".*.tmp") if p.is_file()]  # mirec.utils.atomic_path leftovers
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


def run_entries(run_dir: str | Path) -> list[str]:
    """Names in a run folder other than its lock file."""
    run_dir = Path(run_dir)
    return sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE) if run_dir.is_dir() else []


def run_marker(run_dir: str | Path) -> dict[str, Any] | None:
    """The marker a mirec run wrote into its folder (its id and creation time), or None."""
    try:
        marker = json.loads((Path(run_dir) / RUN_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("run_id"), str) else None


def is_run_folder(run_dir: str | Path) -> bool:
    return run_marker(run_dir) is not None


def mark_run_folder(run_dir: str | Path, keep_id: bool = False) -> str:
    """Write the marker (a new run id, or the existing one with ``keep_id``); returns the run id."""
    old = run_marker(run_dir) if keep_id else None
    if old is not None:
        return old["run_id"]
    run_id = uuid.uuid4().hex
    marker = {
        "run_id": run_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_text(Path(run_dir) / RUN_MARKER, json.dumps(marker, indent=2))
    return run_id


def check_run_folder(run_dir: str | Path, *, resume: bool, overwrite: bool) -> list[str]:
    """Check a run folder before training, removing nothing; returns the names ``overwrite`` will remove
    (:func:`clear_run_folder`, once every other check of the new run passed). Call it holding :func:`run_lock`."""
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite exclude each other")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"{run_dir}: exists and is not a folder")
    if resume:
        if latest_checkpoint(run_dir) is None:
            raise RunFolderError(
                f"{run_dir}: --resume found no checkpoint ({CHECKPOINT_DIR}/ is absent or empty); "
                "start a fresh run without --resume"
            )
        return []
    entries = run_entries(run_dir)
    if not entries:
        return []
    listed = f"{', '.join(entries[:5])}{', ...' if len(entries) > 5 else ''}"
    if run_marker(run_dir) is None:
        raise RunFolderError(
            f"{run_dir}: the run folder is not empty and no mirec run made it ({listed}; no {RUN_MARKER}); "
            "mirec replaces only its own runs: choose a new or empty folder"
        )
    if not overwrite:
        raise RunFolderError(
            f"{run_dir}: the run folder is not empty ({listed}); pass --resume to continue its run or "
            "--overwrite to replace it"
        )
    return [name for name in entries if name in {*RUN_FILES, *RUN_FOLDERS, RUN_MARKER}]


def clear_run_folder(run_dir: str | Path, names: list[str]) -> list[str]:
    """Remove an earlier run's files (from :func:`check_run_folder`); returns notes for the log."""
    run_dir = Path(run_dir)
    for name in names:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
    notes = [f"--overwrite removed {', '.join(names)}"] if names else []
    foreign = sorted(set(run_entries(run_dir)) - set(names))
    if foreign:
        notes.append(f"left alone (not written by mirec): {', '.join(foreign)}")
    return notes


def claim_run_folder(run_dir: str | Path, earlier_run: list[str], resume: bool, stale: list[str]) -> list[str]:
    """Once every check of a new run passed: remove what killed writers left and (``--overwrite``) the earlier
    run's files, then mark the folder ours; returns notes for the log."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stale = stale + clean_stale_files(run_dir)  # the folder is empty or a run of ours by now
    notes = [f"removed stale {name}" for name in stale] + clear_run_folder(run_dir, earlier_run)
    mark_run_folder(run_dir, keep_id=resume)
    return notes


def _flatten(config: RunConfig) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, values in config.to_dict().items() for key, value in values.items()}


def resume_differences(old: RunConfig, new: RunConfig) -> tuple[list[str], list[str]]:
    """(refused, applied) differences between a run's saved config and the one it is resumed with."""
    before, after = _flatten(old), _flatten(new)
    refused, applied = [], []
    for key in sorted(set(before) | set(after)):
        if before.get(key, "<absent>") == after.get(key, "<absent>"):
            continue
        line = f"{key}: {before.get(key, '<absent>')!r} -> {after.get(key, '<absent>')!r}"
        (applied if key in RESUME_SAFE else refused).append(line)
    return refused, applied


def check_resume(run_dir: str | Path, config: RunConfig, dataset: PreparedDataset) -> list[str]:
    """Refuse to resume with another model, dataset or learning config; returns the applied safe changes."""
    run_dir = Path(run_dir)
    config_file = run_dir / "config.toml"
    if not config_file.exists():
        raise RunFolderError(f"{config_file}: missing; the checkpoint cannot be matched to a config")
    refused, applied = resume_differences(load_config(config_file), config)
    if refused:
        raise RunFolderError(
            f"{run_dir}: --resume with a different config ({'; '.join(refused)}); only "
            f"{', '.join(sorted(RESUME_SAFE))} may change on resume. Use the run's own options, or a new run folder"
        )
    data_file = run_dir / "data.json"
    if data_file.exists():
        data = json.loads(data_file.read_text())
        checksum = dataset_checksum(dataset)
        if data.get("meta_sha256") and checksum and checksum != data["meta_sha256"]:
            raise RunFolderError(
                f"{run_dir}: --resume on another dataset ({dataset.path}: meta.json checksum differs from the one "
                f"in {data_file}); resume with the dataset the run started on"
            )
        if data.get("n_items") not in (None, dataset.n_items):
            raise RunFolderError(
                f"{run_dir}: --resume on a dataset with {dataset.n_items} items, the run has {data['n_items']}"
            )
    return applied


def dataset_checksum(dataset: PreparedDataset) -> str | None:
    if dataset.path is None or not (Path(dataset.path) / "meta.json").exists():
        return None
    return sha256_file(Path(dataset.path) / "meta.json")


def write_data_json(run_dir: str | Path, dataset: PreparedDataset) -> None:
    """data.json: the prepared folder (relative to the run folder and absolute) and its meta.json checksum."""
    info: dict[str, Any] = {
        "path": None,
        "relative_path": None,
        "meta_sha256": dataset_checksum(dataset),
        "name": dataset.name,
        "n_items": dataset.n_items,
    }
    if dataset.path is not None:
        absolute = Path(dataset.path).resolve()
        info["path"] = str(absolute)
        info["relative_path"] = os.path.relpath(absolute, Path(run_dir).resolve())
    atomic_write_text(Path(run_dir) / "data.json", json.dumps(info, indent=2))


def resolve_run_data(run_dir: str | Path, data: str | Path | None = None) -> Path:
    """The prepared dataset of a run: ``data`` when given, else data.json's path relative to the run folder
    (it survives moving both together), else its absolute path. The error says what is missing."""
    run_dir = Path(run_dir)
    data_file = run_dir / "data.json"
    info = json.loads(data_file.read_text()) if data_file.exists() else {}
    if data is not None:
        candidates = [Path(data)]
    else:
        if not info.get("path"):
            raise FileNotFoundError(
                f"{data_file}: no dataset recorded (trained on an in-memory dataset?); pass --data DIR"
            )
        candidates = [(run_dir / info["relative_path"]).resolve()] if info.get("relative_path") else []
        candidates.append(Path(info["path"]))
    for path in candidates:
        if (path / "meta.json").exists():
            checksum = sha256_file(path / "meta.json")
            if info.get("meta_sha256") and checksum != info["meta_sha256"]:
                warnings.warn(
                    f"{path / 'meta.json'}: checksum differs from {data_file} (data re-prepared?)", stacklevel=2
                )
            return path
    tried = " or ".join(str(p) for p in candidates)
    raise FileNotFoundError(
        f"{run_dir}: its prepared dataset is not at {tried} (moved or deleted?); pass --data DIR to point at it"
    )


def build_model(
    config: RunConfig,
    dataset: PreparedDataset | None,
    graph_path: str | Path | None = None,
    n_items: int | None = None,
    item_features: ItemFeatures | None = None,
) -> MultiInterestModel:
    """The configured model, with its GIMIRec global context and its item-feature encoder attached when needed:
    the graph loaded from ``graph_path``, else built from ``dataset``. A bundle has no dataset: it gives
    ``n_items`` (the items with an id row), its saved graph and its feature tables."""
    n_items = dataset.n_id_items if dataset is not None else n_items
    if n_items is None:
        raise ValueError("build_model needs a dataset or n_items")
    model = get_model_class(config.model.name)(config.model, n_items)
    if model.requires_global_context or config.model.global_context:
        from mirec.graph import GlobalContext, build_global_context

        if graph_path is not None and Path(graph_path).exists():
            model.global_context = GlobalContext.load(graph_path)
        elif dataset is not None:
            model.global_context = build_global_context(dataset, config.graph)
        else:
            raise FileNotFoundError(f"{graph_path}: the model needs its global-context graph and it is missing")
    if config.model.item_features:
        model.feature_encoder = feature_encoder(config, dataset.item_features if dataset else item_features, n_items)
    return model


def feature_encoder(config: RunConfig, features: ItemFeatures | None, n_id_items: int) -> ItemFeatureEncoder:
    """The encoder of ``model.item_features`` over the dataset's (or bundle's) feature tables."""
    names = list(config.model.item_features)
    have = features.names if features is not None else []
    missing = [n for n in names if n not in have]
    if missing:
        raise ValueError(
            f"model.item_features = {names}: {missing} not among the dataset's item features {have} "
            "(prepare it with --items FILE --item-feature NAME:KIND)"
        )
    model = config.model
    return ItemFeatureEncoder(
        features.select(names),  # type: ignore[union-attr]
        model.embedding_dim,
        n_id_items,
        model.item_id_embedding,
        model.item_id_dropout,
    )


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """``load_state_dict`` with a one-line error naming the file when the weights belong to another model."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        expected, given = set(model.state_dict()), set(state)
        missing, unexpected = sorted(expected - given), sorted(given - expected)
        shapes = [k for k in expected & given if model.state_dict()[k].shape != state[k].shape]
        detail = (
            "; ".join(
                part
                for part in (
                    f"missing {missing[:3]}" if missing else "",
                    f"unexpected {unexpected[:3]}" if unexpected else "",
                    f"other shapes for {sorted(shapes)[:3]}" if shapes else "",
                )
                if part
            )
            or str(exc).splitlines()[0]
        )
        raise ValueError(f"{source}: the weights do not fit model {type(model).__name__} ({detail})") from None


def load_run(
    run_dir: str | Path, device: str | torch.device = "cpu", data: str | Path | None = None
) -> tuple[MultiInterestModel, PreparedDataset, RunConfig]:
    """Rebuild a trained run: config.toml, data.json (dataset; ``data`` overrides its place), model.safetensors
    (+ graph.safetensors)."""
    run_dir = Path(run_dir)
    for name in ("config.toml", "data.json", "model.safetensors"):
        if not (run_dir / name).exists():
            raise FileNotFoundError(f"{run_dir / name}: missing; is {run_dir} a finished mirec run folder?")
    config = load_config(run_dir / "config.toml")
    dataset = load_dataset(resolve_run_data(run_dir, data))
    graph = run_dir / "graph.safetensors"
    model = build_model(config, dataset, graph if graph.exists() else None)
    load_state(model, load_tensors(run_dir / "model.safetensors"), run_dir / "model.safetensors")
    model.to(device)
    model.eval()
    return model, dataset, config


__all__ = [
    "RUN_FILES",
    "RESUME_SAFE",
    "RUN_MARKER",
    "RunFolderError",
    "run_lock",
    "run_marker",
    "is_run_folder",
    "mark_run_folder",
    "check_run_folder",
    "claim_run_folder",
    "clear_run_folder",
    "check_resume",
    "resume_differences",
    "write_data_json",
    "resolve_run_data",
    "build_model",
    "load_state",
    "load_run",
]
