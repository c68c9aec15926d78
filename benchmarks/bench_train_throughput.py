"""Training throughput of every available model: forward + sampled softmax + backward + Adam step.

    python benchmarks/bench_train_throughput.py                       # synthetic data, all models
    python benchmarks/bench_train_throughput.py --models mind comirec-sa --steps 50 --threads 1
    python benchmarks/bench_train_throughput.py --data prepared/amazon-grocery --device cuda
    python benchmarks/bench_train_throughput.py --data prep/amazon-beauty --models sasrec --presets \
        --maxlen 50 --interests 1 --against-reference --rounds 3 --set train.full_softmax_max_items=0
        # per-row negatives, block-wise vs looked up (the preset trains Beauty with the full softmax)

Each step is ``mirec.training.trainer.Trainer.train_step``, the training loop's own step, on the model's default
config with batch 128, maxlen 20, d 64, the model's own K (4; SASRec 1; ``--interests`` sets it) (``--set``
adds overrides, e.g. ``train.sparse_item_grad=false``):
a ``TrainSampler`` batch (ComiRec's cut-and-window sampling, timed as the anchors' throughputs include each
code's batch building) over a synthetic ``PreparedDataset`` (Zipf-distributed items, like popularity-sorted
ids) or a prepared folder, the configured loss (default: TF ``sampled_softmax_loss`` with 10 x batch unique
log-uniform negatives, as ComiRec), backward and the fused Adam step. Prints ms/step and samples/s per model
after ``--warmup`` steps. ``--presets`` starts from the model's shipped preset (e.g. SASRec's full softmax up to
20,000 items, else 256 negatives per position, and item dropout) instead of its bare defaults;
``--against-reference`` times each model beside its reference form in interleaved rounds and prints the ratio.
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
from bench_support import PeakRSS, describe_machine, machine_info
from bench_time_interval import dense_attention, per_sample_time_interval

from mirec.config import load_config
from mirec.data.batching import Batch
from mirec.data.dataset import PreparedDataset, SplitSequences, load_dataset
from mirec.models import available_models
from mirec.nn.sampled_softmax import full_softmax_loss, row_sampled_logits
from mirec.training import losses
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


def looked_up_row_logits(*args: Any, **kwargs: Any) -> torch.Tensor:
    """row_sampled_logits with every row's negatives looked up as one block, whatever the catalogue's size."""
    return row_sampled_logits(*args, **{**kwargs, "catalogue_size": None})


def whole_logits_full_softmax(user_vectors: torch.Tensor, target_ids: torch.Tensor, output_fn: Any) -> torch.Tensor:
    """The full softmax as one [rows, items] cross-entropy (padding masked), the usual form."""
    logits = user_vectors @ output_fn(None).T
    logits[:, 0] = torch.finfo(logits.dtype).min
    return torch.nn.functional.cross_entropy(logits, target_ids.to(logits.device))


@contextlib.contextmanager
def reference_approach(model: torch.nn.Module) -> Iterator[None]:
    """Run PIMI / GIMIRec the way the official PIMI_Rec code computes them (same maths, slower forms):

    * the time-interval matrix by per-sample Python loops (PIMI_Rec ``data_iterator``), per batch;
    * the interval embeddings materialised as [B, L, L, d] (PIMI_Rec model.py) instead of the histogram;
    * the star graph over the stacked [B, L, 4, d] neighbour context (``StarGraph.forward_stacked``);
    and, for any model trained with ``train.row_negatives``, the negatives of every row looked up as one
    [rows, per_row, d] block (RecTools' form) instead of block-wise products over the whole table, and the full
    softmax as one cross-entropy over the [rows, items] logits. Undone on exit. Other models are left as they
    are (no reference form: the caller reports none).
    """
    losses.row_sampled_logits = looked_up_row_logits
    losses.full_softmax_loss = whole_logits_full_softmax
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
        losses.row_sampled_logits = row_sampled_logits
        losses.full_softmax_loss = full_softmax_loss
        if patched_matrix:
            module.time_interval_matrix = original
            del attention.forward
        if hasattr(model, "star_graph"):
            del model.star_graph.forward


def training_setup(
    name: str,
    dataset: PreparedDataset,
    *,
    batch_size: int = 128,
    maxlen: int = 20,
    dim: int = 64,
    interests: int | None = 4,
    device: str = "cpu",
    overrides: Sequence[str] = (),
    presets: bool = False,
) -> Trainer:
    """The trainer of model ``name`` at this shape, in training mode, ready for ``train_step``."""
    config = load_config(
        model=name,
        dataset="default" if presets else None,  # the shipped preset layers of the model
        overrides=[
            f"train.batch_size={batch_size}",
            f"model.maxlen={maxlen}",
            f"model.embedding_dim={dim}",
            *([] if interests is None else [f"model.num_interests={interests}"]),
            *overrides,
        ],
    )
    with tempfile.TemporaryDirectory() as run_dir:  # the trainer writes nothing before its first evaluation
        trainer = Trainer(dataset, config, run_dir, device=torch.device(device), progress=False)
    trainer.model.train()
    return trainer


class DrawnBatches:
    """Serves batches drawn beforehand, in order, where the trainer asks its sampler for the next one."""

    def __init__(self, batches: list[Batch]):
        self._batches = iter(batches)

    def sample(self) -> Batch:
        return next(self._batches)


def measure_throughput(
    name: str,
    *,
    users: int = 5000,
    items: int = 10000,
    data: str | None = None,
    batch_size: int = 128,
    maxlen: int = 20,
    dim: int = 64,
    interests: int | None = 4,
    steps: int = 20,
    warmup: int = 3,
    device: str = "cpu",
    overrides: Sequence[str] = (),
    reference: bool = False,
    dataset: PreparedDataset | None = None,
    presets: bool = False,
    batches_given: bool = False,
) -> dict[str, Any]:
    """Training samples/s of model ``name`` (forward + sampled softmax + backward + Adam step), timed over
    ``steps`` steps (each drawing its batch) after ``warmup``; ``reference`` runs it under :func:`reference_approach`;
    ``batches_given``: the timed steps take batches the sampler drew beforehand (batch drawing left out, as a
    public port's model step is timed). Peak RSS covers the timed steps (model, optimiser state and batches
    included)."""
    if dataset is None:
        dataset = load_dataset(data) if data else synthetic_dataset(users, items)
    trainer = training_setup(
        name,
        dataset,
        batch_size=batch_size,
        maxlen=maxlen,
        dim=dim,
        interests=interests,
        device=device,
        overrides=overrides,
        presets=presets,
    )
    config, model, on = trainer.config, trainer.model, trainer.device

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
        if batches_given:
            trainer.sampler = DrawnBatches([trainer.sampler.sample() for _ in range(steps)])
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
        "batches_given": batches_given,
        "ms_per_step": seconds / steps * 1e3,
        "samples_per_s": samples / seconds,
        "params": sum(p.numel() for p in model.parameters()),
        **peak.as_dict(),
    }
    if on.type == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated(on) / 2**20
    return out


def bench_model(name: str, dataset: PreparedDataset, args: argparse.Namespace, reference: bool) -> dict[str, Any]:
    """measure_throughput with the CLI's options."""
    return measure_throughput(
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
        reference=reference,
        presets=args.presets,
    )


def report_model(name: str, dataset: PreparedDataset, args: argparse.Namespace) -> str:
    """One printed line: ours (median over rounds) and, with --against-reference, the reference form beside it,
    the two alternating which goes first."""
    if not args.against_reference:
        out = bench_model(name, dataset, args, args.reference)
        return f"{name:<12} {out['params']:>10} {out['ms_per_step']:>9.1f} {out['samples_per_s']:>10.0f}"
    rates: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(args.rounds):
        for reference in (False, True) if round_ % 2 == 0 else (True, False):
            rates[reference].append(bench_model(name, dataset, args, reference)["samples_per_s"])
    ours, ref = float(np.median(rates[False])), float(np.median(rates[True]))
    return (
        f"{name:<12} ours {ours:>8,.0f} samples/s ({min(rates[False]):,.0f}-{max(rates[False]):,.0f})  "
        f"reference {ref:>8,.0f} ({min(rates[True]):,.0f}-{max(rates[True]):,.0f})  ratio {ours / ref:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="a prepared dataset folder (default: synthetic)")
    parser.add_argument("--models", nargs="*", default=None, help="default: mirec.models.available_models()")
    parser.add_argument("--users", type=int, default=5000, help="synthetic users")
    parser.add_argument("--items", type=int, default=10000, help="synthetic items")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--maxlen", type=int, default=20)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--interests", type=int, default=None, help="K (default: each model's own, 4 or SASRec's 1)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    parser.add_argument(
        "--set", action="extend", nargs="+", default=[], help="config overrides (repeatable), e.g. model.dropout=0"
    )
    parser.add_argument("--presets", action="store_true", help="start from each model's shipped preset")
    parser.add_argument(
        "--reference",
        action="store_true",
        help="the reference forms instead of ours: PIMI/GIMIRec as the official PIMI_Rec code computes them "
        "(per-sample Python time intervals, [B, L, L, d] interval embeddings, stacked star graph), per-row "
        "negatives looked up as one block, the full softmax over the whole logits; other models unchanged",
    )
    parser.add_argument("--against-reference", action="store_true", help="time ours and the reference forms")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds with --against-reference")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dataset = load_dataset(args.data) if args.data else synthetic_dataset(args.users, args.items)
    names = args.models or available_models()
    print(describe_machine(machine_info()))
    print(
        f"data={dataset.name} items={dataset.n_items} batch={args.batch_size} maxlen={args.maxlen} d={args.dim} "
        f"K={args.interests or 'default'} steps={args.steps} device={args.device} threads={torch.get_num_threads()}"
        + (" presets" if args.presets else "")
        + (" REFERENCE forms" if args.reference else "")
    )
    if not args.against_reference:
        print(f"{'model':<12} {'params':>10} {'ms/step':>9} {'samples/s':>10}")
    for name in names:
        try:
            print(report_model(name, dataset, args), flush=True)
        except Exception as exc:  # report and go on with the other models
            print(f"{name:<12} failed: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main()
