"""Training speed beside a public PyTorch port, run as published, in interleaved rounds of one script.

    git clone https://github.com/Tokkiu/REMI            # the public port (DNN, GRU4Rec, MIND, ComiRec-DR/SA)
    mirec prepare PATH/comirec-split --format comirec --name amazon-grocery-comirec --output prep/grocery
    gunzip -k PATH/comirec-split/grocery_train.txt.gz
    python benchmarks/bench_public_ports.py --remi REMI/src --train-file PATH/grocery_train.txt --data prep/grocery
    git clone https://github.com/daniellaah/ComiRec daniellaah-comirec   # a second port (ComiRec-SA only)
    python benchmarks/bench_public_ports.py --daniellaah daniellaah-comirec --data prep/grocery --models comirec-sa

The same training data (ComiRec's Grocery split), batch 128, maxlen 20, d 64, K 4, and the same loss: REMI's
sampled softmax (1,280 uniform negatives shared by the batch, accidental hits kept), which mirec runs with
``train.negative_sampler=uniform``, ``train.negatives_unique=false``, ``train.remove_accidental_hits=false``.
A step on each side is what its training loop does: draw a batch (REMI's DataLoader; mirec's TrainSampler),
forward, loss, backward, Adam. Each round times every model on both sides, the side going first alternating;
medians and ranges over the rounds are printed at each thread count, with the ratio mirec / public of the medians
and the median of the ratios within each round (model steps); the public side is also timed on batches drawn
beforehand (its model, loss and Adam without its Python DataLoader), and so is mirec's (its trainer's step without
drawing the batch): the "model steps alone" ratio compares the same scope on both sides. Last in each round, the
two model steps take turns in ``--blocks`` pairs of ``--block-steps``-step blocks (one trainer, one port): on a VM
whose speed switches within seconds, both sides of each pair see the same moments; their ratio is printed as
"alternating blocks". The one change made to the public code: ``Tensor.cuda`` is a no-op in this process (its
noise table calls ``.cuda()``).

``--daniellaah``: github.com/daniellaah/ComiRec (ComiRec-SA only), run as published: its model, its
``SampledSoftmaxLoss`` (10 x batch unique log-uniform negatives, hits removed, log Q: ComiRec's loss, which is
mirec's default, so mirec runs its defaults beside it) and Adam, on batches mirec's sampler drew beforehand (its
loader reads its own JSONL preparation of Amazon Books, not this split): the "model step" columns only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_support import describe_machine, machine_info  # noqa: E402
from bench_train_throughput import DrawnBatches, measure_throughput, training_setup  # noqa: E402

from mirec.data.dataset import load_dataset  # noqa: E402

MODELS = {"dnn": "DNN", "gru4rec": "GRU4Rec", "mind": "MIND", "comirec-dr": "ComiRec-DR", "comirec-sa": "ComiRec-SA"}
REMI_LOSS = ["train.negative_sampler=uniform", "train.negatives_unique=false", "train.remove_accidental_hits=false"]
# REMI's own settings for the models where they differ from ComiRec's (its train.py / get_model defaults)
REMI_SHAPES = {
    "gru4rec": [
        "model.gru_hidden=128",
        "model.gru_bias=false",
        "model.embedding_dropout=0.2",
        "model.output_dense=true",
    ],
}


class PublicPort:
    """One REMI model with its DataLoader and optimiser, stepped as its ``train`` loop does."""

    def __init__(self, remi_src: Path, train_file: Path, model: str, item_count: int):
        sys.path.insert(0, str(remi_src))
        import utils  # REMI's src/utils.py

        # the one change to the public code: its noise table is built with .cuda() (BasicModel.build_uniform_noise)
        # and this machine has no GPU; on CPU the tensor stays where it is
        torch.Tensor.cuda = lambda tensor, *a, **k: tensor  # type: ignore[method-assign]
        args = utils.get_parser().parse_args([])
        args.model_type, args.dataset = model, "book"
        self.device = torch.device("cpu")
        self.loader = iter(utils.get_DataLoader(str(train_file), 128, 20, train_flag=1, args=args))
        self.model = utils.get_model("book", model, item_count, 128, 64, 4, 20, args=args, device=self.device)
        self.model.set_device(self.device)
        self.model.set_sampler(args, device=self.device)
        self.model.loss_fct = torch.nn.CrossEntropyLoss()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.001)
        self.kind = model
        self.to_tensor = utils.to_tensor

    def batch(self) -> tuple:
        """The next batch from its DataLoader, converted as its train loop does (utils.to_tensor)."""
        _, targets, items, mask, times = next(self.loader)
        pos, items, mask = (self.to_tensor(x, self.device) for x in (targets, items, mask))
        return pos, items, mask, tuple(self.to_tensor(t, self.device) for t in times)

    def step(self, batch: tuple | None = None) -> None:
        pos, items, mask, times = batch or self.batch()
        self.model.train()
        self.optimizer.zero_grad()
        interests = selection = None
        if self.kind == "ComiRec-SA":
            interests, _, _, readout, selection = self.model(items, pos, mask, times, self.device)
        elif self.kind == "ComiRec-DR":
            interests, _, readout = self.model(items, pos, mask, times, self.device)
        elif self.kind == "MIND":
            interests, _, readout, selection = self.model(items, pos, mask, times, self.device)
        else:
            readout, _ = self.model(items, pos, mask, times, self.device)
        loss = self.model.calculate_sampled_loss(readout, pos, selection, interests)
        loss.backward()
        self.optimizer.step()

    def samples_per_s(self, steps: int, warmup: int, batches_given: bool = False) -> float:
        """Samples/s of its training loop; ``batches_given``: the batches drawn beforehand (its model, loss and
        optimiser alone, without its DataLoader)."""
        for _ in range(warmup):
            self.step()
        given = [self.batch() for _ in range(steps)] if batches_given else [None] * steps
        return 128 * steps / seconds_stepping(self.step, given)


class DaniellaahPort:
    """daniellaah/ComiRec's ComiRec-SA stepped as its ``train_one_step`` does, on batches given to it."""

    def __init__(self, root: Path, dataset, item_count: int):
        sys.path.insert(0, str(root))
        from comirec.model import ComiRecSA, SampledSoftmaxLoss  # its package

        from mirec.data.batching import TrainSampler

        self.model = ComiRecSA(item_count, 64, 64, 4, 20)  # its defaults: d 64, hidden 64, K 4; maxlen 20
        self.loss = SampledSoftmaxLoss(item_count, num_sampled=10)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.sampler = TrainSampler(dataset.train, maxlen=20, batch_size=128, seed=1)

    def batch(self) -> tuple:
        drawn = self.sampler.sample()
        return drawn.items, drawn.mask, drawn.targets

    def step(self, batch: tuple) -> None:
        items, mask, targets = batch
        self.model.train()
        self.optimizer.zero_grad()
        loss = self.loss(self.model, self.model(items, mask, targets), targets)
        loss.backward()
        self.optimizer.step()

    def samples_per_s(self, steps: int, warmup: int, batches_given: bool = True) -> float:
        given = [self.batch() for _ in range(steps + warmup)]
        seconds_stepping(self.step, given[:warmup])
        return 128 * steps / seconds_stepping(self.step, given[warmup:])


def seconds_stepping(step, batches: list) -> float:
    """Wall-clock seconds of ``step(batch)`` over ``batches`` (drawn before the clock starts)."""
    started = time.perf_counter()
    for batch in batches:
        step(batch)
    return time.perf_counter() - started


def rounds_of(name: str, port, dataset, overrides: list[str], args: argparse.Namespace) -> dict[str, list]:
    """Interleaved rounds (the side going first alternating) of mirec and the public port on one model: samples/s
    per round for each measurement, and under "blocks" the [mirec, public] seconds of each pair of blocks."""
    runs: dict[str, list] = {"mirec": [], "mirec_step": [], "public_step": [], "blocks": []}
    if isinstance(port, PublicPort):
        runs["public"] = []
    for round_ in range(args.rounds):
        for side in ["mirec", "public"] if round_ % 2 == 0 else ["public", "mirec"]:
            if side == "mirec":
                measured = measure_throughput(
                    name, dataset=dataset, steps=args.steps, warmup=args.warmup, overrides=overrides
                )
                runs["mirec"].append(measured["samples_per_s"])
                measured = measure_throughput(
                    name, dataset=dataset, steps=args.steps, warmup=args.warmup, overrides=overrides, batches_given=True
                )
                runs["mirec_step"].append(measured["samples_per_s"])
                continue
            if "public" in runs:  # its training loop with its own DataLoader
                runs["public"].append(port.samples_per_s(args.steps, args.warmup))
            runs["public_step"].append(port.samples_per_s(args.steps, args.warmup, batches_given=True))
        if args.blocks:
            runs["blocks"] += alternating_blocks(name, port, dataset, overrides, args, mirec_first=round_ % 2 == 0)
    return runs


def alternating_blocks(
    name: str, port, dataset, overrides: list[str], args: argparse.Namespace, mirec_first: bool
) -> list[list[float]]:
    """[mirec, public] seconds of each pair of blocks: the two model steps (batches drawn beforehand on both
    sides) take turns every ``--block-steps`` steps, so both see the same moments of a machine whose speed
    switches within seconds."""
    trainer = training_setup(name, dataset, overrides=overrides)
    sampler = trainer.sampler
    for _ in range(args.warmup):
        trainer.train_step()
        port.step(port.batch())
    pairs = []
    for _ in range(args.blocks):
        seconds = {}
        for side in ("mirec", "public") if mirec_first else ("public", "mirec"):
            if side == "mirec":  # the trainer's own step, its sampler serving the batches drawn here
                batches = [sampler.sample() for _ in range(args.block_steps)]
                trainer.sampler = DrawnBatches(batches)
                seconds[side] = seconds_stepping(lambda _: trainer.train_step(), batches)
            else:
                seconds[side] = seconds_stepping(port.step, [port.batch() for _ in range(args.block_steps)])
        pairs.append([seconds["mirec"], seconds["public"]])
    return pairs


def report(name: str, threads: int, runs: dict[str, list]) -> None:
    blocks = runs["blocks"]
    rates = {k: v for k, v in runs.items() if k != "blocks"}
    medians = {k: float(np.median(v)) for k, v in rates.items()}
    spread = {k: f"{min(v):,.0f}-{max(v):,.0f}" for k, v in rates.items()}
    line = f"{name:11s} {threads} thread(s): mirec {medians['mirec']:8,.0f} ({spread['mirec']})"
    if "public" in runs:
        ratio = medians["mirec"] / medians["public"]
        line += f"  public {medians['public']:7,.0f} ({spread['public']}) ratio {ratio:.1f}x;"
    ratio, paired = against_public_step(rates, medians, "mirec")
    line += f"  public without its loader {medians['public_step']:7,.0f} ({spread['public_step']}) ratio {ratio}"
    line += f", paired by round {paired}"
    ratio, paired = against_public_step(rates, medians, "mirec_step")
    line += (
        f"; model steps alone (batches drawn beforehand on both sides): mirec {medians['mirec_step']:8,.0f} "
        f"({spread['mirec_step']}) ratio {ratio}, paired {paired}"
    )
    if blocks:
        per_pair = [public / mirec for mirec, public in blocks]
        total = sum(public for _, public in blocks) / sum(mirec for mirec, _ in blocks)
        line += (
            f"; alternating blocks ({len(blocks)} pairs): ratio of the summed times {total:.2f}x, per pair "
            f"{np.median(per_pair):.2f}x ({min(per_pair):.2f}-{max(per_pair):.2f})"
        )
    print(line, flush=True)


def against_public_step(runs: dict[str, list[float]], medians: dict[str, float], side: str) -> tuple[str, str]:
    """``side`` against the public model step: the ratio of the medians, and the median (range) of the per-round
    ratios."""
    paired = paired_ratios(runs[side], runs["public_step"])
    ratio = medians[side] / medians["public_step"]
    return f"{ratio:.2f}x", f"{np.median(paired):.2f}x ({min(paired):.2f}-{max(paired):.2f})"


def paired_ratios(ours: list[float], theirs: list[float]) -> list[float]:
    """mirec / public within each round: the two sides ran seconds apart, so a machine whose speed drifts between
    rounds (two-thread steps on a 2-vCPU VM switch between two speeds) moves both sides of a ratio together."""
    return [a / b for a, b in zip(ours, theirs, strict=True)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    port_kind = parser.add_mutually_exclusive_group(required=True)
    port_kind.add_argument("--remi", type=Path, help="REMI's src folder")
    port_kind.add_argument("--daniellaah", type=Path, help="daniellaah/ComiRec's checkout (ComiRec-SA only)")
    parser.add_argument("--train-file", type=Path, help="--remi: ComiRec-format training file (user,item,time)")
    parser.add_argument("--data", type=Path, required=True, help="the same split prepared by mirec")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--blocks", type=int, default=4, help="pairs of alternating blocks per round (0: none)")
    parser.add_argument("--block-steps", type=int, default=20, help="steps in each alternating block")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.remi and not args.train_file:
        parser.error("--remi needs --train-file")
    if args.daniellaah and args.models != "comirec-sa":
        parser.error("daniellaah/ComiRec has ComiRec-SA only: pass --models comirec-sa")
    print(describe_machine(machine_info()), flush=True)
    dataset = load_dataset(args.data)
    item_count = dataset.n_items + 1  # the public ports' item_count: the table size (ids 0..n)
    results: dict = {}
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for name in args.models.split(","):
            if args.remi:
                port = PublicPort(args.remi, args.train_file, MODELS[name], item_count)
                overrides = [*REMI_LOSS, *REMI_SHAPES.get(name, [])]
            else:  # its loss is ComiRec's, mirec's default
                port, overrides = DaniellaahPort(args.daniellaah, dataset, item_count), []
            results[f"{name} @{threads}"] = runs = rounds_of(name, port, dataset, overrides, args)
            report(name, threads, runs)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
