"""Training throughput of every available model: forward + sampled softmax + backward + Adam step.

    python benchmarks/bench_train_throughput.py                       # synthetic data, all models
    python benchmarks/bench_train_throughput.py --models mind comirec-sa --steps 50 --threads 1
    python benchmarks/bench_train_throughput.py --data prepared/amazon-grocery --device cuda

Each model is built as the trainer builds it (``mirec.train.checkpoint.build_model``: a GIMIRec global
context is attached when the model needs one) from its default config with batch 128, maxlen 20, d 64, K 4
(``--set`` adds overrides). Batches come from ``TrainSampler`` (ComiRec's cut-and-window sampling) over a
synthetic ``PreparedDataset`` (Zipf-distributed items, like popularity-sorted ids) or a prepared folder.
The loss is ``mirec.nn.sampled_softmax.sampled_softmax_loss`` with 10 x batch unique log-uniform negatives
(TF ``sampled_softmax_loss`` as ComiRec). Prints ms/step and samples/s per model after ``--warmup`` steps.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mirec.config import load_config
from mirec.data.batching import TrainSampler
from mirec.data.dataset import PreparedDataset, SplitSequences, load_dataset
from mirec.models import available_models
from mirec.nn.sampled_softmax import LogUniformSampler, sampled_softmax_loss
from mirec.train.checkpoint import build_model


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


def bench_model(name: str, dataset: PreparedDataset, args: argparse.Namespace) -> tuple[float, float, int]:
    overrides = [
        f"train.batch_size={args.batch_size}",
        f"model.maxlen={args.maxlen}",
        f"model.embedding_dim={args.dim}",
        f"model.num_interests={args.interests}",
        *args.set,
    ]
    config = load_config(model=name, overrides=overrides)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build_model(config, dataset).to(device)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    sampler = TrainSampler(dataset.train, config.model.maxlen, config.train.batch_size, seed=0)
    negatives = LogUniformSampler(dataset.n_items + 1)
    num_sampled = config.train.num_negatives_factor * config.train.batch_size
    generator = torch.Generator().manual_seed(0)
    batches = [sampler.sample() for _ in range(args.warmup + args.steps)]

    def step(batch) -> None:
        batch = batch.to(device)
        vectors, aux = model.training_vectors(batch)
        loss = sampled_softmax_loss(vectors, batch.targets, model.output_embeddings, negatives, num_sampled, generator)
        if aux is not None:
            loss = loss + aux
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.on_step_end(0)

    for batch in batches[: args.warmup]:
        step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    samples = 0
    for batch in batches[args.warmup :]:
        step(batch)
        samples += len(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    n_params = sum(p.numel() for p in model.parameters())
    return seconds / args.steps * 1e3, samples / seconds, n_params


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
    parser.add_argument("--set", nargs="*", default=[], help="extra config overrides, e.g. model.dropout=0")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dataset = load_dataset(args.data) if args.data else synthetic_dataset(args.users, args.items)
    names = args.models or available_models()
    print(
        f"data={dataset.name} items={dataset.n_items} batch={args.batch_size} maxlen={args.maxlen} d={args.dim} "
        f"K={args.interests} steps={args.steps} device={args.device} threads={torch.get_num_threads()}"
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
