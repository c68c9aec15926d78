"""Data-parallel training across processes (PyTorch DistributedDataParallel, launched by ``torchrun`` or
``mirec train --nproc N``): gloo on CPU, NCCL on CUDA.

What each rank does (docs/models.md section 7):
- draws its own training users, cut positions and sampled-softmax negatives from a rank-derived seed (rank 0
  keeps the run's seed, so one process is the ordinary run); each rank's batch is ``train.batch_size``, the
  global batch ``world * train.batch_size``; DDP averages the gradients, so the update is that of the mean loss
  over the global batch;
- evaluates its share of the valid/test users; the shares' sums are all-reduced, so every rank holds the
  metrics of all users and takes the same early-stopping decision;
- rank 0 alone writes the run folder (config, history, checkpoints with every rank's sampler and random
  states, metrics); ``--resume`` needs the same number of ranks.

The item table's kept row-gradient buffer (``train.sparse_item_grad``) writes ``.grad`` outside autograd, where
DDP's all-reduce does not see it: it is switched off under DDP. Collectives time out after
``MIREC_DIST_TIMEOUT_S`` seconds (default 600), so a rank that dies ends the job with an error, not a hang.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

RANK_SEED_STRIDE = 1_000_003  # rank r draws from seed + r * stride (rank 0: the run's own seed)


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def seed(self, seed: int) -> int:
        return seed + self.rank * RANK_SEED_STRIDE

    def device(self, device: torch.device) -> torch.device:
        """CUDA ranks use their own card (LOCAL_RANK); CPU ranks share the CPU."""
        if self.active and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def start(self, device: torch.device) -> None:
        if not self.active or torch.distributed.is_initialized():
            return
        timeout = datetime.timedelta(seconds=float(os.environ.get("MIREC_DIST_TIMEOUT_S", "600")))
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend, timeout=timeout)

    def agree_to_stop(self, requested: bool, limit: str) -> tuple[bool, str]:
        """One collective per step, so that every rank stops at the same step: (a stop was requested on any
        rank, the limit reached, "max_minutes" when only another rank's clock says so)."""
        if not self.active:
            return requested, limit
        flags = self.all_reduce_sum(np.array([float(requested), float(bool(limit))]))
        return bool(flags[0] > 0), limit or ("max_minutes" if flags[1] > 0 else "")

    def evaluation_shard(self) -> dict[str, Any]:
        """The evaluator's shard arguments: this rank's share of the users and the sum over the ranks."""
        return {"shard": (self.rank, self.world), "all_reduce": self.all_reduce_sum} if self.active else {}

    def stop(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    # ------------------------------------------------------------ collectives
    def _tensor_device(self) -> torch.device:
        return (
            torch.device("cuda", self.local_rank) if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
        )

    def all_reduce_sum(self, values: np.ndarray) -> np.ndarray:
        """Element-wise sum over the ranks of a float64 vector (identity in one process)."""
        if not self.active:
            return values
        tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).to(self._tensor_device())
        torch.distributed.all_reduce(tensor)
        return tensor.cpu().numpy()

    def gather_json(self, value: Any) -> list[Any] | None:
        """Every rank's JSON-able ``value``, on rank 0 (None elsewhere); JSON bytes, never pickles."""
        if not self.active:
            return [value]
        device = self._tensor_device()
        data = torch.tensor(list(json.dumps(value).encode()), dtype=torch.uint8, device=device)
        sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(self.world)]
        torch.distributed.all_gather(sizes, torch.tensor([len(data)], device=device))
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros(longest, dtype=torch.uint8, device=device)
        padded[: len(data)] = data
        chunks = [torch.zeros(longest, dtype=torch.uint8, device=device) for _ in range(self.world)]
        torch.distributed.all_gather(chunks, padded)
        if not self.main:
            return None
        return [
            json.loads(bytes(c[: int(s.item())].cpu().tolist()).decode()) for c, s in zip(chunks, sizes, strict=True)
        ]


def rank_random_state(sampler_state: dict, negatives: torch.Generator) -> dict[str, Any]:
    """A rank's resume state as JSON: its sampler's numpy bit generator, its negatives generator and torch's
    global CPU generator (byte states as lists of ints)."""
    return {
        "sampler": sampler_state,
        "negatives": negatives.get_state().tolist(),
        "torch_cpu": torch.get_rng_state().tolist(),
    }


def restore_rank_random_state(state: dict[str, Any], negatives: torch.Generator) -> None:
    negatives.set_state(torch.tensor(state["negatives"], dtype=torch.uint8))
    torch.set_rng_state(torch.tensor(state["torch_cpu"], dtype=torch.uint8))


class TrainingStep(torch.nn.Module):
    """The model and its loss as one module, so that DDP's gradient hooks cover the whole step."""

    def __init__(self, model: torch.nn.Module, loss: Any):
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, batch: Any) -> tuple[torch.Tensor, Any]:
        output = self.model.training_output(batch)
        loss = self.loss(output.user_vectors, batch.targets if output.targets is None else output.targets)
        if output.side_user_vectors is not None:
            loss = loss + self.loss(output.side_user_vectors, batch.targets, detach_items=True)
        if output.aux_loss is not None:
            loss = loss + output.aux_loss
        return loss, output.terms


def data_parallel(step: torch.nn.Module, device: torch.device, may_skip_parameters: bool) -> torch.nn.Module:
    """DDP over a model and its loss (:class:`TrainingStep`). The global context's sparse adjacency (identical on
    every rank, built from the data) is neither broadcast nor synced: gloo and NCCL do not broadcast sparse
    tensors. ``may_skip_parameters``: a step may use only some parameters (GemiRec's branches)."""
    from torch.nn.parallel import DistributedDataParallel

    sparse = [name for name, buffer in step.named_buffers() if buffer.is_sparse]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(step, sparse)
    devices = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(step, device_ids=devices, find_unused_parameters=may_skip_parameters)


__all__ = [
    "Distributed",
    "TrainingStep",
    "data_parallel",
    "rank_random_state",
    "restore_rank_random_state",
    "RANK_SEED_STRIDE",
]
