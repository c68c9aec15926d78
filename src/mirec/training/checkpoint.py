"""Resume state without pickle: weights, optimiser state and RNG states in safetensors, scalars in JSON.

``checkpoints/NNNNNNNN/`` (the last training state, for ``--resume``; the highest number is the current one)
holds::

    model.safetensors      current weights
    best.safetensors       best weights so far (absent before the first evaluation)
    optimizer.safetensors  optimiser state tensors, keys "<param index>.<name>"
    rng.safetensors        torch CPU RNG, the negative sampler's torch.Generator (and CUDA RNGs), uint8
    state.json             step, best metric, patience counter, clocks, the TrainSampler's numpy state,
                           optimiser param_groups and non-tensor state

Crash safety: a version is written under ``checkpoints/.NNNNNNNN.*.tmp`` (files fsynced), renamed into place
in one atomic step, and only then are the older versions removed; so at every instant the highest complete
number is a whole checkpoint, whatever the moment of a kill or power cut. Stale ``.tmp`` folders are removed
by :func:`clean_stale_files` under the run lock. Run folders of earlier mirec versions hold one ``checkpoint/``
folder; it is still read, and recovered from its moved-aside copy when a crash hit its two-rename swap.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from mirec.runs import (
    CHECKPOINT_DIR,
    LEGACY_CHECKPOINT_DIR,
    checkpoint_versions,
    clean_stale_files,
    latest_checkpoint,
)
from mirec.tensors import cpu_copy, load_tensors, save_tensors
from mirec.utils import current_umask, fsync_path, read_format_json

CHECKPOINT_FORMAT = 1


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
    # the loss of the steps since the last evaluation (a checkpoint taken between evaluations, e.g. on Ctrl-C)
    interval_loss_sum: float = 0.0
    interval_steps: int = 0
    # distributed runs: every rank's sampler and random states (mirec.training.distributed), rank order
    rank_states: list[dict[str, Any]] = field(default_factory=list)


def save_checkpoint(
    run_dir: str | Path,
    *,
    model_state: dict[str, torch.Tensor],
    best_state: dict[str, torch.Tensor] | None,
    optimizer: torch.optim.Optimizer,
    negative_generator: torch.Generator,
    state: TrainState,
) -> Path:
    """Write a new checkpoint version of ``run_dir`` crash-safely; returns its folder."""
    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    opt_tensors, opt_rest = optimizer_to_tensors(optimizer)
    rng = {"torch_cpu": torch.get_rng_state(), "negatives": negative_generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["torch_cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    payload = dict(state.__dict__)
    payload["best_metric"] = None if state.best_metric == float("-inf") else state.best_metric
    payload.update(format=CHECKPOINT_FORMAT, optimizer=opt_rest, has_best=best_state is not None)
    older = checkpoint_versions(run_dir)
    name = f"{int(older[-1].name) + 1 if older else 1:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=root))
    try:
        files = {"model.safetensors": model_state, "optimizer.safetensors": opt_tensors, "rng.safetensors": rng}
        if best_state is not None:
            files["best.safetensors"] = best_state
        for file_name, tensors in files.items():
            save_file(cpu_copy(tensors), str(tmp / file_name))
        (tmp / "state.json").write_text(json.dumps(payload, indent=1))
        for child in tmp.iterdir():
            os.chmod(child, 0o666 & ~current_umask())  # safetensors writes 0600: a team should read a checkpoint
            fsync_path(child)
        os.chmod(tmp, 0o777 & ~current_umask())
        fsync_path(tmp)
        os.rename(tmp, root / name)  # the one atomic step: before it the old version is current, after it the new
        fsync_path(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for path in older:
        shutil.rmtree(path, ignore_errors=True)
    legacy = Path(run_dir) / LEGACY_CHECKPOINT_DIR
    if (legacy / "state.json").exists():
        shutil.rmtree(legacy, ignore_errors=True)  # an earlier mirec's checkpoint, superseded by this version
    return root / name


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
    if not (path / "state.json").exists():
        raise FileNotFoundError(f"{path / 'state.json'}: no checkpoint to resume from")
    payload = read_format_json(path / "state.json", "format", CHECKPOINT_FORMAT, "no checkpoint to resume from")
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


def restore_training_state(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    sampler: Any,
    generator: torch.Generator,
    dist: Any,
) -> tuple[TrainState, dict[str, torch.Tensor] | None]:
    """Put a checkpoint's weights, optimiser state, sampler and random states back; returns (state, best weights).
    Under torchrun every rank takes its own sampler and random states; another world size is refused."""
    from mirec.runs import load_state
    from mirec.training.distributed import restore_rank_random_state

    ckpt = load_checkpoint(path)
    load_state(model, ckpt.model_state, path / "model.safetensors")
    optimizer_from_tensors(optimizer, ckpt.optimizer_tensors, ckpt.optimizer_rest)
    sampler.set_state(ckpt.state.sampler_state)
    torch.set_rng_state(ckpt.rng["torch_cpu"])
    generator.set_state(ckpt.rng["negatives"])
    ranks = len(ckpt.state.rank_states) or 1
    if ranks != dist.world:
        raise RuntimeError(f"{path}: the checkpoint was written by {ranks} process(es); resume it with --nproc {ranks}")
    if dist.active:
        mine = ckpt.state.rank_states[dist.rank]
        sampler.set_state(mine["sampler"])
        restore_rank_random_state(mine, generator)
    if "torch_cuda" in ckpt.rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(ckpt.rng["torch_cuda"]))
    return ckpt.state, ckpt.best_state


__all__ = [
    "restore_training_state",
    "TrainState",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "checkpoint_versions",
    "clean_stale_files",
    "save_tensors",
    "load_tensors",
    "optimizer_to_tensors",
    "optimizer_from_tensors",
]
