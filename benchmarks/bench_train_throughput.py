"""Training throughput of every available model: forward + sampled softmax + backward + Adam step.

    python benchmarks/bench_train_throughput.py                       # synthetic data, all models
    python benchmarks/bench_train_throughput.py --models mind comirec-sa --steps 50 --threads 1
    python benchmarks/bench_train_throughput.py --data prepared/amazon-grocery --device cuda

Each step is ``mirec.training.trainer.Trainer.train_step``, the training loop's own step, on the model's default
config with batch 128, maxlen 20, d 64, K 4 (``--set`` adds overrides, e.g. ``train.sparse_item_grad=false``):
a ``TrainSampler`` batch (ComiRec's cut-and-window sampling, timed as the anchors' throughputs include each
code's batch building) over a synthetic ``PreparedDataset`` (Zipf-distributed items, like popularity-sorted
ids) or a prepared folder, the configured loss (default: TF ``sampled_softmax_loss`` with 10 x batch unique
log-uniform negatives, as ComiRec), backward and the fused Adam step. Prints ms/step and samples/s per model
after ``--warmup`` steps.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from bench_support import PeakRSS
from bench_time_interval import dense_attention, per_sample_time_interval

from mirec.config import load_config
from mirec.data.dataset import PreparedDataset, SplitSequences, load_dataset
from mirec.models import available_models
from mirec.training.trainer import Trainer


def synthetic_dataset(n_users: int, n_items: int, seed: int = 0) -> PreparedDataset:
    """Users with 5..60 interactions over Zipf(1.1)-popular items, one day apart; 8:1:1 user split."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 61, size=n_users)
    items = np.minimum(rng.zipf(1.1, size=int(lengths.sum())), n_items).astype(np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    position = np.arange(len(items)) - np.repeat(indptr[:-1], lengths)
    stamps = (1_300_000_000 + 86400 * position).astype(np.int64)
    bounds = [0, int(0.8 * n_users), int(0.9 * n_users), n_users]
    splits = []
    for k in range(3):
        lo, hi = bounds[k], bounds[k + 1]
        sub_ptr = indptr[lo : hi + 1] - indptr[lo]
        sl = slice(indptr[lo], indptr[hi])
        history = None if k == 0 else (0.8 * lengths[lo:hi]).astype(np.int64)
        splits.append(SplitSequences(np.arange(lo, hi), sub_ptr, items[sl], stamps[sl], history))
    return PreparedDataset(
        n_items=n_items,
        train=splits[0],
        valid=splits[1],
        test=splits[2],
        item_original_ids=np.array([""] + [str(i) for i in range(1, n_items + 1)], dtype=object),
        user_original_ids=np.array([str(u) for u in range(n_users)], dtype=object),
        meta={"name": "synthetic"},
    )


REFERENCE_MODELS = ("pimi", "gimirec")  # models with a reference (official PIMI_Rec) formulation to compare


@contextlib.contextmanager
def reference_approach(model: torch.nn.Module) -> Iterator[None]:
    """Run PIMI / GIMIRec the way the official PIMI_Rec code computes them (same maths, slower forms):

    * the time-interval matrix by per-sample Python loops (PIMI_Rec ``data_iterator``), per batch;
    * the interval embeddings materialised as [B, L, L, d] (PIMI_Rec model.py) instead of the histogram;
    * the star graph over the stacked [B, L, 4, d] neighbour context (``StarGraph.forward_stacked``).
    Undone on exit. Other models are left as they are (no reference form: the caller reports none).
    """
    module = sys.modules[type(model).__module__]
    patched_matrix = hasattr(module, "time_interval_matrix") and hasattr(model, "time_attention")
    if patched_matrix:
        original = module.time_interval_matrix
        module.time_interval_matrix = per_sample_time_interval
        attention = model.time_attention
        attention.forward = functools.partial(dense_attention, attention)
    if hasattr(model, "star_graph"):
        model.star_graph.forward = model.star_graph.forward_stacked
    try:
        yield
    finally:
        if patched_matrix:
            module.time_interval_matrix = original
            del attention.forward
        if hasattr(model, "star_graph"):
            del model.star_graph.forward


def measure_throughput(
    name: str,
    *,
    users: int = 5000,
    items: int = 10000,
    data: str | None = None,
    batch_size: int = 128,
    maxlen: int = 20,
    dim: int = 64,
    interests: int = 4,
    steps: int = 20,
    warmup: int = 3,
    device: str = "cpu",
    overrides: Sequence[str] = (),
    reference: bool = False,
    dataset: PreparedDataset | None = None,
) -> dict[str, Any]:
    """Training samples/s of model ``name`` (forward + sampled softmax + backward + Adam step), timed over
    ``steps`` steps (each drawing its batch) after ``warmup``; ``reference`` runs it under :func:`reference_approach`.
    Peak RSS covers the timed steps (model, optimiser state and batches included)."""
    if dataset is None:
        dataset = load_dataset(data) if data else synthetic_dataset(users, items)
    config = load_config(
        model=name,
        overrides=[
            f"train.batch_size={batch_size}",
            f"model.maxlen={maxlen}",
            f"model.embedding_dim={dim}",
            f"model.num_interests={interests}",
            *overrides,
        ],
    )
    on = torch.device(device)
    with tempfile.TemporaryDirectory() as run_dir:  # the trainer writes nothing before its first evaluation
        trainer = Trainer(dataset, config, run_dir, device=on, progress=False)
    model = trainer.model
    model.train()

    def step() -> int:
        """The trainer's own step: draw the batch (timed, as the anchors count batch building), forward, the
        configured loss, zero the gradients, backward, Adam."""
        trainer.train_step()
        return config.train.batch_size

    with reference_approach(model) if reference else contextlib.nullcontext():
        for _ in range(warmup):
            step()
        if on.type == "cuda":
            torch.cuda.synchronize(on)
            torch.cuda.reset_peak_memory_stats(on)
        with PeakRSS() as peak:
            start = time.perf_counter()
            samples = 0
            for _ in range(steps):
                samples += step()
            if on.type == "cuda":
                torch.cuda.synchronize(on)
            seconds = time.perf_counter() - start
    out = {
        "model": name,
        "reference": reference,
        "device": str(on),
        "data": dataset.name,
        "n_items": dataset.n_items,
        "batch_size": batch_size,
        "maxlen": maxlen,
        "dim": dim,
        "interests": interests,
        "steps": steps,
        "ms_per_step": seconds / steps * 1e3,
        "samples_per_s": samples / seconds,
        "params": sum(p.numel() for p in model.parameters()),
        **peak.as_dict(),
    }
    if on.type == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated(on) / 2**20
    return out


def bench_model(name: str, dataset: PreparedDataset, args: argparse.Namespace) -> tuple[float, float, int]:
    """(ms/step, samples/s, parameters) with the CLI's options."""
    result = measure_throughput(
        name,
        dataset=dataset,
        batch_size=args.batch_size,
        maxlen=args.maxlen,
        dim=args.dim,
        interests=args.interests,
        steps=args.steps,
        warmup=args.warmup,
        device=args.device,
        overrides=args.set,
        reference=getattr(args, "reference", False),
    )
    return result["ms_per_step"], result["samples_per_s"], result["params"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="a prepared dataset folder (default: synthetic)")
    parser.add_argument("--models", nargs="*", default=None, help="default: mirec.models.available_models()")
    parser.add_argument("--users", type=int, default=5000, help="synthetic users")
    parser.add_argument("--items", type=int, default=10000, help="synthetic items")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--maxlen", type=int, default=20)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--interests", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    parser.add_argument(
        "--set", action="extend", nargs="+", default=[], help="config overrides (repeatable), e.g. model.dropout=0"
    )
    parser.add_argument(
        "--reference",
        action="store_true",
        help="PIMI/GIMIRec as the official PIMI_Rec code computes them (per-sample Python time intervals, "
        "[B, L, L, d] interval embeddings, stacked star graph); other models unchanged",
    )
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dataset = load_dataset(args.data) if args.data else synthetic_dataset(args.users, args.items)
    names = args.models or available_models()
    print(
        f"data={dataset.name} items={dataset.n_items} batch={args.batch_size} maxlen={args.maxlen} d={args.dim} "
        f"K={args.interests} steps={args.steps} device={args.device} threads={torch.get_num_threads()}"
        + (" REFERENCE forms (PIMI_Rec)" if args.reference else "")
    )
    print(f"{'model':<12} {'params':>10} {'ms/step':>9} {'samples/s':>10}")
    for name in names:
        try:
            ms, rate, n_params = bench_model(name, dataset, args)
        except Exception as exc:  # report and go on with the other models
            print(f"{name:<12} failed: {type(exc).__name__}: {exc}")
            continue
        print(f"{name:<12} {n_params:>10} {ms:>9.1f} {rate:>10.0f}")


if __name__ == "__main__":
    main()
