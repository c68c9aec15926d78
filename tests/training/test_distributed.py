"""Data-parallel training on CPU with 2 processes (gloo): the update equals one process's on the same global
batch, sharded evaluation equals one process's metrics, a 2-rank resume equals an uninterrupted 2-rank run,
every model trains, a dying rank ends the job, and `mirec train --nproc 2` runs torchrun."""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from mirec.config import load_config
from mirec.data.batching import Batch, TrainSampler
from mirec.data.dataset import load_dataset
from mirec.training.checkpoint import latest_checkpoint
from mirec.training.trainer import Trainer
from tests.training.test_trainer import cycle_dataset

TINY = [
    "train.batch_size=8",
    "train.eval_every=10",
    "train.num_negatives_factor=2",
    "train.device=cpu",
    "train.sparse_item_grad=false",
    "model.embedding_dim=8",
    "model.maxlen=8",
    "eval.topk=[5, 10]",
    "eval.early_stop_metric=recall@10",
    "eval.batch_size=16",
    "graph.l_time=64",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_config(model: str, *extra: str):
    return load_config(model=model, dataset="default", overrides=[*TINY, *extra])


class FixedBatches:
    """Global batch i = a seeded sampler's i-th draw of ``global_size`` rows; a rank takes its slice of it."""

    def __init__(self, dataset, maxlen: int, global_size: int, rank: int, world: int):
        self.source = TrainSampler(dataset.train, maxlen, global_size, seed=5)
        self.part = slice(rank * global_size // world, (rank + 1) * global_size // world)

    def sample(self) -> Batch:
        b = self.source.sample()
        return Batch(b.items[self.part], b.mask[self.part], b.days[self.part], b.targets[self.part])

    def state(self):
        return self.source.state()

    def set_state(self, state) -> None:
        self.source.set_state(state)


def _run_rank(rank: int, world: int, port: int, job: dict) -> None:
    """One rank of a test job (spawned): torchrun's environment, then a Trainer."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    os.environ["MIREC_DIST_TIMEOUT_S"] = "30"
    torch.set_num_threads(1)
    dataset = load_dataset(job["data"])
    # one process group for all the runs of this job (a Trainer starts one itself only when none exists)
    torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
    for i, (model, extra) in enumerate(job["runs"]):
        config = tiny_config(model, *extra)
        run_dir = Path(job["out"]) / f"{model}-{i}"
        trainer = Trainer(dataset, config, run_dir, progress=False, resume=job.get("resume", False))
        if job.get("fixed"):
            trainer.sampler = FixedBatches(dataset, config.model.maxlen, 2 * config.train.batch_size, rank, world)
        if job.get("die_at") is not None and rank == 1:
            trainer.train_step = _dying(trainer, job["die_at"])
        metrics = trainer.fit()
        (run_dir / f"rank{rank}.json").write_text(json.dumps(metrics))
    torch.distributed.destroy_process_group()
    # as the mirec console script does: leave without the interpreter's teardown, where a native thread pool
    # can abort the process ("terminate called without an active exception") after all the work is written
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _dying(trainer: Trainer, step: int):
    """Rank 1's train_step, raising at ``step``."""
    original = trainer.train_step

    def dying_step():
        if trainer.state.step == step:
            raise RuntimeError("rank 1 dies on purpose")
        return original()

    return dying_step


def spawn(job: dict, world: int = 2) -> None:
    mp.spawn(_run_rank, args=(world, free_port(), job), nprocs=world, join=True)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "cycle"
    cycle_dataset().save(path)
    return path


def last_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(run_dir) / "model.safetensors"))


def test_two_ranks_update_as_one_process_on_the_same_global_batch_and_evaluate_alike(data_dir, tmp_path):
    steps = ["train.max_steps=12", "train.loss=full"]  # full softmax: no per-rank negatives
    spawn({"data": str(data_dir), "out": str(tmp_path / "ddp"), "runs": [("comirec-sa", steps)], "fixed": True})
    dataset = load_dataset(data_dir)
    config = tiny_config("comirec-sa", *steps)
    config = replace(config, train=replace(config.train, batch_size=2 * config.train.batch_size))
    single = Trainer(dataset, config, tmp_path / "single", progress=False)
    single.sampler = FixedBatches(dataset, config.model.maxlen, config.train.batch_size, 0, 1)
    torch.set_num_threads(1)
    single.fit()
    ddp, one = last_weights(tmp_path / "ddp" / "comirec-sa-0"), last_weights(tmp_path / "single")
    assert set(ddp) == set(one)
    for name in one:
        if name == "extractor.w2.bias":  # softmax over positions ignores it: its true gradient is 0, and Adam
            continue  # turns the rounding noise of a 0 gradient into steps of size lr
        torch.testing.assert_close(ddp[name], one[name], rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    # every rank returns the metrics of all users; they equal one process's on the same (best) weights
    ranks = [json.loads((tmp_path / "ddp" / "comirec-sa-0" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["valid"] == ranks[1]["valid"] and ranks[0]["test"] == ranks[1]["test"]
    from mirec.api import load

    reference = load(tmp_path / "ddp" / "comirec-sa-0", device="cpu").evaluate("test")
    for key, value in reference.items():
        if isinstance(value, float):
            assert ranks[0]["test"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert ranks[0]["test"]["users"] == reference["users"]
    collapse, expected = ranks[0]["test"]["collapse"], reference["collapse"]
    assert collapse.keys() == expected.keys() and collapse["dead_dims"] == expected["dead_dims"]
    for key in ("interest_cosine", "topk_jaccard"):
        assert collapse[key] == pytest.approx(expected[key], rel=1e-9)
    assert collapse["interest_share"] == pytest.approx(expected["interest_share"], rel=1e-9)


def test_a_two_rank_resume_equals_an_uninterrupted_two_rank_run(data_dir, tmp_path):
    spawn({"data": str(data_dir), "out": str(tmp_path / "whole"), "runs": [("dnn", ["train.max_steps=30"])]})
    spawn({"data": str(data_dir), "out": str(tmp_path / "cut"), "runs": [("dnn", ["train.max_steps=20"])]})
    state = json.loads((latest_checkpoint(tmp_path / "cut" / "dnn-0") / "state.json").read_text())
    assert len(state["rank_states"]) == 2 and state["rank_states"][0] != state["rank_states"][1]
    spawn(
        {"data": str(data_dir), "out": str(tmp_path / "cut"), "runs": [("dnn", ["train.max_steps=30"])], "resume": True}
    )
    whole, resumed = last_weights(tmp_path / "whole" / "dnn-0"), last_weights(tmp_path / "cut" / "dnn-0")
    for name in whole:
        assert torch.equal(whole[name], resumed[name]), name
    history = [json.loads(line)["step"] for line in (tmp_path / "cut" / "dnn-0" / "history.jsonl").open()]
    assert history == [10, 20, 30]
    # one process cannot continue a two-process checkpoint
    with pytest.raises(RuntimeError, match="written by 2 process"):
        Trainer(
            load_dataset(data_dir),
            tiny_config("dnn", "train.max_steps=40"),
            tmp_path / "cut" / "dnn-0",
            progress=False,
            resume=True,
        ).fit()


def test_every_model_trains_and_evaluates_with_two_ranks(data_dir, tmp_path):
    from mirec.models import MODEL_PATHS

    runs = [(name, ["train.max_steps=10"]) for name in MODEL_PATHS]
    runs.append(("comirec-sa", ["train.max_steps=10", "model.global_context=true"]))
    spawn({"data": str(data_dir), "out": str(tmp_path / "all"), "runs": runs})
    for i, (name, _) in enumerate(runs):
        metrics = json.loads((tmp_path / "all" / f"{name}-{i}" / "metrics.json").read_text())
        assert metrics["train"]["steps"] == 10 and np.isfinite(metrics["test"]["recall@10"]), name


def test_a_rank_that_dies_ends_the_job_with_an_error(data_dir, tmp_path):
    started = time.time()
    with pytest.raises(Exception, match="rank 1 dies on purpose"):
        spawn(
            {
                "data": str(data_dir),
                "out": str(tmp_path / "dies"),
                "runs": [("dnn", ["train.max_steps=50"])],
                "die_at": 3,
            }
        )
    assert time.time() - started < 60


def test_mirec_train_nproc_runs_torchrun(data_dir, tmp_path):
    out = tmp_path / "cli"
    argv = [sys.executable, "-m", "mirec.cli", "train", "--nproc", "2", "--data", str(data_dir), "--model", "dnn"]
    argv += ["--output", str(out), "--quiet", "--set", "train.max_steps=10"] + [a for s in TINY for a in ("--set", s)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = json.loads(proc.stdout)  # one JSON document: rank 0 prints, rank 1 does not
    assert printed == json.loads((out / "metrics.json").read_text())
    assert "2 process" not in proc.stderr and printed["train"]["steps"] == 10
