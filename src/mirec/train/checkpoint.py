"""Run-folder persistence without pickle: weights, optimiser state and RNG states in safetensors, scalars in JSON.

``checkpoint/`` (the last training state, for ``--resume``) holds::

    model.safetensors      current weights
    best.safetensors       best weights so far (absent before the first evaluation)
    optimizer.safetensors  optimiser state tensors, keys "<param index>.<name>"
    rng.safetensors        torch CPU RNG, the negative sampler's torch.Generator (and CUDA RNGs), uint8
    state.json             step, best metric, patience counter, clocks, the TrainSampler's numpy state,
                           optimiser param_groups and non-tensor state

The folder is built under a temporary name and renamed into place (``mirec.utils.atomic_directory``).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mirec.config import RunConfig, load_config
from mirec.data.dataset import PreparedDataset, load_dataset
from mirec.models import MultiInterestModel, get_model_class
from mirec.utils import atomic_directory, atomic_path, atomic_write_text

CHECKPOINT_FORMAT = 1


def _cpu_copy(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Independent contiguous CPU copies (safetensors refuses shared storage)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


def save_tensors(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Atomically write a safetensors file."""
    with atomic_path(path) as tmp:
        save_file(_cpu_copy(tensors), str(tmp), metadata=metadata)


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing")
    return load_file(str(path), device=str(device))


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors ("<index>.<name>") and a JSON-able rest."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], rest: dict[str, Any]
) -> None:
    """Inverse of :func:`optimizer_to_tensors`; ``load_state_dict`` moves state to the parameters' device."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in rest.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": rest["param_groups"]})


@dataclass
class TrainState:
    """Everything a resumed run needs besides the model/optimiser tensors."""

    step: int = 0
    best_metric: float = float("-inf")
    best_step: int = 0
    bad_evals: int = 0  # evaluations since the last improvement (ComiRec ``trials``)
    last_eval_step: int = 0
    stop_reason: str = ""
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    elapsed_seconds: float = 0.0
    sampler_state: dict[str, Any] = field(default_factory=dict)  # numpy bit_generator.state (JSON ints)
    extra: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(
    path: str | Path,
    *,
    model_state: dict[str, torch.Tensor],
    best_state: dict[str, torch.Tensor] | None,
    optimizer: torch.optim.Optimizer,
    negative_generator: torch.Generator,
    state: TrainState,
) -> Path:
    """Write the checkpoint folder atomically (a new folder renamed over the old one)."""
    path = Path(path)
    opt_tensors, opt_rest = optimizer_to_tensors(optimizer)
    rng = {"torch_cpu": torch.get_rng_state(), "negatives": negative_generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["torch_cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    payload = dict(state.__dict__)
    payload["best_metric"] = None if state.best_metric == float("-inf") else state.best_metric
    payload.update(format=CHECKPOINT_FORMAT, optimizer=opt_rest, has_best=best_state is not None)
    with atomic_directory(path) as tmp:
        save_file(_cpu_copy(model_state), str(tmp / "model.safetensors"))
        if best_state is not None:
            save_file(_cpu_copy(best_state), str(tmp / "best.safetensors"))
        save_file(_cpu_copy(opt_tensors), str(tmp / "optimizer.safetensors"))
        save_file(_cpu_copy(rng), str(tmp / "rng.safetensors"))
        (tmp / "state.json").write_text(json.dumps(payload, indent=1))
    return path


@dataclass
class Checkpoint:
    model_state: dict[str, torch.Tensor]
    best_state: dict[str, torch.Tensor] | None
    optimizer_tensors: dict[str, torch.Tensor]
    optimizer_rest: dict[str, Any]
    rng: dict[str, torch.Tensor]
    state: TrainState


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint folder (CPU tensors); raises FileNotFoundError / ValueError naming the file."""
    path = Path(path)
    state_file = path / "state.json"
    if not state_file.exists():
        raise FileNotFoundError(f"{state_file}: no checkpoint to resume from")
    payload = json.loads(state_file.read_text())
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{state_file}: checkpoint format {payload.get('format')} != {CHECKPOINT_FORMAT}")
    names = set(TrainState.__dataclass_fields__)
    state = TrainState(**{k: v for k, v in payload.items() if k in names})
    if state.best_metric is None:
        state.best_metric = float("-inf")
    return Checkpoint(
        model_state=load_tensors(path / "model.safetensors"),
        best_state=load_tensors(path / "best.safetensors") if payload.get("has_best") else None,
        optimizer_tensors=load_tensors(path / "optimizer.safetensors"),
        optimizer_rest=payload["optimizer"],
        rng=load_tensors(path / "rng.safetensors"),
        state=state,
    )


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_data_json(run_dir: str | Path, dataset: PreparedDataset) -> None:
    """data.json: the prepared folder the run used and the checksum of its meta.json."""
    info: dict[str, Any] = {
        "path": None,
        "meta_sha256": None,
        "name": dataset.name,
        "n_items": dataset.n_items,
    }
    if dataset.path is not None:
        info["path"] = str(Path(dataset.path).resolve())
        if (Path(dataset.path) / "meta.json").exists():
            info["meta_sha256"] = file_sha256(Path(dataset.path) / "meta.json")
    atomic_write_text(Path(run_dir) / "data.json", json.dumps(info, indent=2))


def build_model(
    config: RunConfig, dataset: PreparedDataset, graph_path: str | Path | None = None
) -> MultiInterestModel:
    """The configured model, with its GIMIRec global context attached when needed (loaded or built)."""
    model = get_model_class(config.model.name)(config.model, dataset.n_items)
    if model.requires_global_context or config.model.global_context:
        from mirec.graph import GlobalContext, build_global_context

        if graph_path is not None and Path(graph_path).exists():
            model.global_context = GlobalContext.load(graph_path)
        else:
            model.global_context = build_global_context(dataset, config.graph)
    return model


def load_run(
    run_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[MultiInterestModel, PreparedDataset, RunConfig]:
    """Rebuild a trained run: config.toml, data.json (dataset), model.safetensors (+ graph.safetensors)."""
    run_dir = Path(run_dir)
    for name in ("config.toml", "data.json", "model.safetensors"):
        if not (run_dir / name).exists():
            raise FileNotFoundError(f"{run_dir / name}: missing; is {run_dir} a finished mirec run folder?")
    config = load_config(run_dir / "config.toml")
    data = json.loads((run_dir / "data.json").read_text())
    if not data.get("path"):
        raise ValueError(f"{run_dir / 'data.json'}: the run was trained on an in-memory dataset (no path)")
    dataset = load_dataset(data["path"])
    meta = Path(data["path"]) / "meta.json"
    if data.get("meta_sha256") and file_sha256(meta) != data["meta_sha256"]:
        warnings.warn(
            f"{meta}: checksum differs from {run_dir / 'data.json'} (data re-prepared?)", stacklevel=2
        )
    graph = run_dir / "graph.safetensors"
    model = build_model(config, dataset, graph if graph.exists() else None)
    model.load_state_dict(load_tensors(run_dir / "model.safetensors"))
    model.to(device)
    model.eval()
    return model, dataset, config


__all__ = [
    "TrainState",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "save_tensors",
    "load_tensors",
    "optimizer_to_tensors",
    "optimizer_from_tensors",
    "write_data_json",
    "build_model",
    "load_run",
]
