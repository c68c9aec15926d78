"""Trainer: exact resumption, seeding, early stopping with the best weights kept, run folder, learning."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import mirec.config as config_module
import mirec.models as models_module
from mirec.config import EvalConfig, ModelConfig, RunConfig, TrainConfig
from mirec.data.dataset import PreparedDataset
from mirec.models.base import MultiInterestModel
from mirec.nn.candidate_sampling import UniformSampler
from mirec.runs import RunFolderError, load_run
from mirec.training.checkpoint import checkpoint_versions
from mirec.training.trainer import Trainer, train_run
from tests.conftest import dataset_of


class MeanLast(MultiInterestModel):
    """Tiny test model, K = 2 interests: W1 * masked mean of the history, W2 * the last item."""

    name = "meanlast"
    config_class = ModelConfig

    def __init__(self, config: ModelConfig, n_items: int):
        super().__init__(config, n_items)
        d = config.embedding_dim
        self.w_mean = nn.Linear(d, d, bias=False)
        self.w_last = nn.Linear(d, d, bias=False)
        self.steps_seen = 0

    def forward(self, batch):
        mask = batch.mask.unsqueeze(-1)
        x = self.embed_items(batch.items) * mask
        mean = x.sum(1) / mask.sum(1).clamp_min(1.0)
        last = x[torch.arange(len(x)), batch.mask.sum(1).long().clamp_min(1) - 1]
        return torch.stack([self.w_mean(mean), self.w_last(last)], dim=1)

    def on_step_end(self, step: int) -> None:
        self.steps_seen = step


@pytest.fixture(autouse=True)
def register_test_model(monkeypatch):
    monkeypatch.setitem(models_module.MODEL_PATHS, "meanlast", f"{__name__}:MeanLast")
    monkeypatch.setitem(config_module.MODEL_CONFIGS, "meanlast", ModelConfig)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread, bit-identical to child processes


def cycle_dataset(n_items: int = 120, n_users: int = 150, seed: int = 0) -> PreparedDataset:
    """Learnable: every user walks the item cycle 1..n from a random start (next item = last + 1)."""
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(n_users):
        start, length = rng.integers(0, n_items), rng.integers(8, 21)
        seqs.append(((start + np.arange(length)) % n_items + 1).tolist())
    times = [[86400 * (100 + 2 * j) for j in range(len(s))] for s in seqs]
    return dataset_of(seqs, times, [(0, 120), (120, 135), (135, 150)], n_items, "cycle")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "cycle"
    cycle_dataset().save(path)
    return path


def make_config(**train) -> RunConfig:
    base = dict(
        batch_size=16,
        lr=0.01,
        max_steps=120,
        eval_every=40,
        patience=100,
        num_negatives_factor=2,
        seed=7,
        device="cpu",
        log_every=20,
    )
    base.update(train)
    return RunConfig(
        model=ModelConfig(name="meanlast", embedding_dim=16, num_interests=2, maxlen=8),
        train=TrainConfig(**base),
        eval=EvalConfig(topk=[5, 10], early_stop_metric="recall@10", batch_size=64),
    )


def history(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_run_folder_and_learning(data_dir, tmp_path):
    run = tmp_path / "run"
    metrics = train_run(data_dir, make_config(max_steps=200, eval_every=50), run, progress=False)
    for name in (
        "config.toml",
        "data.json",
        "model.safetensors",
        "train.log",
        "history.jsonl",
        "metrics.json",
    ):
        assert (run / name).exists(), name
    (version,) = checkpoint_versions(run)
    assert sorted(p.name for p in version.iterdir()) == [
        "best.safetensors",
        "model.safetensors",
        "optimizer.safetensors",
        "rng.safetensors",
        "state.json",
    ]
    assert json.loads((run / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert {"valid", "test", "train"} <= metrics.keys()
    assert {"recall@10", "ndcg@10", "hit_rate@10"} <= metrics["test"].keys()
    train = metrics["train"]
    assert train["steps"] == 200 and train["stop_reason"] == "max_steps"
    assert train["samples_per_second"] > 0 and train["best_step"] in (50, 100, 150, 200)
    data = json.loads((run / "data.json").read_text())
    assert data["path"] == str(data_dir.resolve()) and len(data["meta_sha256"]) == 64
    rows = history(run)
    assert [r["step"] for r in rows] == [50, 100, 150, 200]
    # the next item is the last one + 1: the loss falls and retrieval becomes far better than chance (10/120)
    assert rows[-1]["train_loss"] < 0.6 * rows[0]["train_loss"]
    assert metrics["valid"]["recall@10"] > 0.5
    assert metrics["valid"]["recall@10"] == pytest.approx(max(r["recall@10"] for r in rows))
    # load_run rebuilds the best model
    model, dataset, config = load_run(run)
    assert config.to_dict() == make_config(max_steps=200, eval_every=50).to_dict()
    assert dataset.n_items == 120 and dataset.path == Path(data["path"])
    assert_same_weights({k: v for k, v in model.state_dict().items()}, weights(run / "model.safetensors"))


def latest(run: Path) -> Path:
    return checkpoint_versions(run)[-1]


@pytest.mark.parametrize("interruption", [RuntimeError, KeyboardInterrupt, "SIGINT", "SIGTERM"])
def test_resume_after_a_crash_equals_an_uninterrupted_run(data_dir, tmp_path, monkeypatch, interruption):
    """A crash mid-step leaves the checkpoint of step 80; a signal is acted on at the next step boundary
    (checkpoint of step 91, exit by KeyboardInterrupt). Either way --resume gives the uninterrupted run."""
    config = make_config()
    full = train_run(data_dir, config, tmp_path / "full", progress=False)

    original = Trainer.train_step

    def crash_at_90(self):
        if self.state.step == 90:  # the last checkpoint is at step 80
            if isinstance(interruption, str):
                os.kill(os.getpid(), getattr(signal, interruption))  # handled: the step still completes
            else:
                raise interruption("simulated")
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", crash_at_90)
    handler_before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job
    expected = RuntimeError if interruption is RuntimeError else KeyboardInterrupt
    with pytest.raises(expected):
        train_run(data_dir, config, tmp_path / "resumed", progress=False)
    state = json.loads((latest(tmp_path / "resumed") / "state.json").read_text())
    assert state["step"] == (91 if isinstance(interruption, str) else 80)
    assert signal.getsignal(signal.SIGINT) is handler_before  # the handler is restored
    with pytest.raises(RunFolderError, match="not empty"):  # a fresh run cannot clobber the interrupted one
        train_run(data_dir, config, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(Trainer, "train_step", original)
    resumed = train_run(data_dir, config, tmp_path / "resumed", resume=True, progress=False)

    assert history(tmp_path / "resumed") == history(tmp_path / "full")
    assert resumed["valid"] == full["valid"] and resumed["test"] == full["test"]
    assert resumed["train"]["steps"] == full["train"]["steps"] == 120
    assert resumed["train"]["best_step"] == full["train"]["best_step"]
    assert_same_weights(weights(tmp_path / "resumed/model.safetensors"), weights(tmp_path / "full/model.safetensors"))
    assert_same_weights(
        weights(latest(tmp_path / "resumed") / "model.safetensors"),
        weights(latest(tmp_path / "full") / "model.safetensors"),
    )
    assert_same_weights(
        weights(latest(tmp_path / "resumed") / "optimizer.safetensors"),
        weights(latest(tmp_path / "full") / "optimizer.safetensors"),
    )


def test_resume_extends_max_steps_like_one_long_run(data_dir, tmp_path):
    long = train_run(data_dir, make_config(max_steps=120), tmp_path / "long", progress=False)
    train_run(data_dir, make_config(max_steps=80), tmp_path / "short", progress=False)
    extended = train_run(data_dir, make_config(max_steps=120), tmp_path / "short", resume=True, progress=False)
    assert history(tmp_path / "short") == history(tmp_path / "long")
    assert extended["test"] == long["test"]


def test_same_seed_same_run_other_seed_differs(data_dir, tmp_path):
    config = make_config(max_steps=40, eval_every=20)
    a = train_run(data_dir, config, tmp_path / "a", progress=False)
    b = train_run(data_dir, config, tmp_path / "b", progress=False)
    train_run(data_dir, make_config(max_steps=40, eval_every=20, seed=8), tmp_path / "c", progress=False)
    assert history(tmp_path / "a") == history(tmp_path / "b")
    assert a["test"] == b["test"] and a["valid"] == b["valid"]
    assert_same_weights(weights(tmp_path / "a/model.safetensors"), weights(tmp_path / "b/model.safetensors"))
    assert [r["train_loss"] for r in history(tmp_path / "a")] != [r["train_loss"] for r in history(tmp_path / "c")]
    assert not torch.equal(
        weights(tmp_path / "a/model.safetensors")["item_embedding.weight"],
        weights(tmp_path / "c/model.safetensors")["item_embedding.weight"],
    )


def test_early_stopping_keeps_the_best_weights(data_dir, tmp_path, monkeypatch):
    """Scripted valid recall: best at the 2nd evaluation; patience 2 -> ComiRec stops when trials (3) > 2."""
    script = [0.1, 0.3, 0.2, 0.3, 0.25, 0.9, 0.9]
    snapshots: list[dict[str, torch.Tensor]] = []
    calls = {"train": 0}

    def fake_evaluate(model, dataset, split, config, *, maxlen, device, max_users=None):
        if calls["train"] < len(script) and not getattr(fake_evaluate, "final", False):
            value = script[calls["train"]]
            calls["train"] += 1
            snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
            return {"recall@10": value, "users": 15}
        return {"recall@10": -1.0, "users": 15}

    original_finish = Trainer._finish

    def finish(self):
        fake_evaluate.final = True
        return original_finish(self)

    monkeypatch.setattr(Trainer, "_finish", finish)
    metrics = train_run(
        data_dir,
        make_config(max_steps=1000, eval_every=10, patience=2),
        tmp_path / "es",
        progress=False,
        evaluate=fake_evaluate,
    )
    assert calls["train"] == 5  # evaluations at 10..50; 0.3 at step 20 is not beaten by 0.2, 0.3 (ties), 0.25
    assert metrics["train"]["steps"] == 50 and metrics["train"]["stop_reason"] == "patience"
    assert metrics["train"]["best_step"] == 20 and metrics["train"]["best_valid_metric"] == 0.3
    best = weights(tmp_path / "es/model.safetensors")
    assert_same_weights(best, snapshots[1])
    assert not torch.equal(best["item_embedding.weight"], snapshots[-1]["item_embedding.weight"])
    assert_same_weights(weights(latest(tmp_path / "es") / "best.safetensors"), snapshots[1])
    assert [r["step"] for r in history(tmp_path / "es")] == [10, 20, 30, 40, 50]


def test_stop_reason_names_the_limit_even_when_the_last_evaluation_exhausts_patience(data_dir, tmp_path, monkeypatch):
    """max_steps stops at 35; the final evaluation there is the 3rd without gain (> patience 2): still max_steps."""
    values = iter([0.5, 0.4, 0.4, 0.3])

    def fake_evaluate(model, dataset, split, config, *, maxlen, device, max_users=None):
        return {"recall@10": next(values, 0.0), "users": 15}

    metrics = train_run(
        data_dir,
        make_config(max_steps=35, eval_every=10, patience=2),
        tmp_path / "cap",
        progress=False,
        evaluate=fake_evaluate,
    )
    assert [r["step"] for r in history(tmp_path / "cap")] == [10, 20, 30, 35]
    assert metrics["train"]["stop_reason"] == "max_steps" and metrics["train"]["best_step"] == 10


def test_full_and_inbatch_losses_learn(data_dir, tmp_path):
    for loss in ("full", "inbatch"):
        train_run(data_dir, make_config(max_steps=80, eval_every=40, loss=loss), tmp_path / loss, progress=False)
        rows = history(tmp_path / loss)
        assert rows[-1]["train_loss"] < rows[0]["train_loss"], loss


def test_a_small_catalogue_switches_the_sampled_run_to_the_full_softmax_and_says_so(data_dir, tmp_path):
    # the cycle data's 120 items: 120 is covered, 119 is not (the switch never touches a run's other options)
    switched = train_run(data_dir, make_config(max_steps=20, eval_every=20, full_softmax_max_items=120), tmp_path / "a")
    full = train_run(data_dir, make_config(max_steps=20, eval_every=20, loss="full"), tmp_path / "b")
    assert switched["valid"] == full["valid"]  # same seed, same loss: the same run
    assert "loss: the full softmax (120 items" in (tmp_path / "a" / "train.log").read_text()
    kept = Trainer(data_dir, make_config(full_softmax_max_items=119), tmp_path / "c", progress=False)
    assert kept.loss.kind == "sampled"


def test_bad_config_is_a_clear_error(data_dir, tmp_path):
    with pytest.raises(ValueError, match="train.loss"):
        Trainer(data_dir, make_config(loss="bpr"), tmp_path / "x")
    with pytest.raises(ValueError, match="unique negatives"):
        Trainer(data_dir, make_config(num_negatives_factor=10), tmp_path / "x")  # 160 > 121 classes
    with pytest.raises(ValueError, match="train.negative_sampler = 'zipf'"):
        Trainer(data_dir, make_config(negative_sampler="zipf"), tmp_path / "x")


def test_adam_beta2_reaches_the_optimizer(data_dir, tmp_path):
    default = Trainer(data_dir, make_config(), tmp_path / "default", progress=False)
    assert default.optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    sasrec_pytorch = Trainer(data_dir, make_config(adam_beta2=0.98), tmp_path / "0.98", progress=False)
    assert sasrec_pytorch.optimizer.param_groups[0]["betas"] == (0.9, 0.98)
    with pytest.raises(ValueError, match="adam_beta2"):
        make_config(adam_beta2=1.0)


def test_remi_sampler_options_reach_the_loss_and_learn(data_dir, tmp_path):
    # REMI's default: uniform noise, draws with replacement (so more than the 121 classes is fine), hits kept
    remi = dict(negative_sampler="uniform", negatives_unique=False, remove_accidental_hits=False)
    trainer = Trainer(data_dir, make_config(num_negatives_factor=10, **remi), tmp_path / "remi", progress=False)
    assert isinstance(trainer.loss.negatives, UniformSampler) and trainer.loss.num_sampled == 160
    train_run(data_dir, make_config(max_steps=80, eval_every=40, **remi), tmp_path / "learn", progress=False)
    rows = history(tmp_path / "learn")
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    # the options change the loss: same seed and data, TF's default sampler gives other losses
    train_run(data_dir, make_config(max_steps=80, eval_every=40), tmp_path / "tf", progress=False)
    assert [r["train_loss"] for r in rows] != [r["train_loss"] for r in history(tmp_path / "tf")]


def test_on_step_end_is_called(data_dir, tmp_path):
    trainer = Trainer(data_dir, make_config(max_steps=3, eval_every=3), tmp_path / "hook", progress=False)
    trainer.fit()
    assert trainer.model.steps_seen == 3


def test_global_context_is_saved_and_reloaded(data_dir, tmp_path):
    config = make_config(max_steps=20, eval_every=10)
    config = config.with_values({"model.global_context": True})
    trainer = Trainer(data_dir, config, tmp_path / "gc", progress=False)
    trainer.fit()
    assert trainer.model.global_context is not None
    assert (tmp_path / "gc/graph.safetensors").exists()
    model, dataset, _ = load_run(tmp_path / "gc")
    assert model.global_context is not None and model.global_context.nnz == trainer.model.global_context.nnz
    ids = torch.arange(dataset.n_items + 1)
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.output_embeddings(ids), trainer.model.output_embeddings(ids))


def test_wall_clock_budget_stops_the_run(data_dir, tmp_path):
    metrics = train_run(data_dir, make_config(max_steps=10_000, max_minutes=1e-9), tmp_path / "t", progress=False)
    assert metrics["train"]["stop_reason"] == "max_minutes" and metrics["train"]["steps"] < 10_000
    assert [r["step"] for r in history(tmp_path / "t")] == [metrics["train"]["steps"]]  # the final evaluation


def test_sparse_item_grad_gives_the_dense_update(data_dir, tmp_path):
    """The kept sparse-row gradient buffer changes how the table gradient is built, not the Adam update."""
    trainers = {}
    for sparse in (False, True):
        trainer = Trainer(data_dir, make_config(sparse_item_grad=sparse), tmp_path / str(sparse), progress=False)
        table = trainer.model.item_embedding.weight
        buffer = table.grad
        for _ in range(6):
            trainer.train_step()
        assert (table.grad is buffer) == sparse  # sparse: one dense buffer reused across steps
        assert table.grad.layout == torch.strided  # Adam always sees a dense gradient
        trainers[sparse] = trainer
    dense, sparse = (dict(trainers[k].model.named_parameters()) for k in (False, True))
    untrained = Trainer(data_dir, make_config(), tmp_path / "fresh", progress=False).model.item_embedding.weight
    assert not torch.equal(dense["item_embedding.weight"], untrained)  # the table did move
    for name, value in dense.items():
        torch.testing.assert_close(sparse[name], value, rtol=1e-5, atol=1e-6, msg=name)


class MeanLastWithTerms(MeanLast):
    """MeanLast reporting one named term: the number of optimiser steps taken before this batch."""

    def training_output(self, batch):
        return super().training_output(batch)._replace(terms={"seen": torch.tensor(float(self.steps_seen))})


def test_a_models_named_terms_reach_train_log_and_history_as_interval_means(data_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(models_module.MODEL_PATHS, "meanlast", f"{__name__}:MeanLastWithTerms")
    train_run(data_dir, make_config(max_steps=20, eval_every=10, log_every=5), tmp_path / "terms", progress=False)
    # steps 1..10 see 0..9 earlier steps (mean 4.5), steps 11..20 see 10..19 (mean 14.5)
    assert [r["train_terms"] for r in history(tmp_path / "terms")] == [{"seen": 4.5}, {"seen": 14.5}]
    log = (tmp_path / "terms" / "train.log").read_text()
    assert [line.split("seen=")[1].split()[0] for line in log.splitlines() if "seen=" in line] == [
        "2.00000",
        "7.00000",
        "12.00000",
        "17.00000",
    ]


def test_an_evaluation_hook_stops_the_run_and_test_false_never_evaluates_test(data_dir, tmp_path):
    seen = []

    def hook(step, metrics):
        seen.append((step, metrics["recall@10"]))
        return "pruned" if step == 20 else None

    metrics = train_run(
        data_dir,
        make_config(max_steps=100, eval_every=10),
        tmp_path / "hook",
        progress=False,
        on_evaluation=hook,
        test=False,
    )
    assert [s for s, _ in seen] == [10, 20] and metrics["train"]["stop_reason"] == "pruned"
    assert metrics["train"]["steps"] == 20 and "test" not in metrics and "valid" in metrics
    assert [r["recall@10"] for r in history(tmp_path / "hook")] == [v for _, v in seen]


def test_a_custom_hook_sees_every_evaluation_stops_the_run_and_adds_to_the_metrics(data_dir, tmp_path):
    from mirec.training.hooks import TrainerHook

    class StopAtSecond(TrainerHook):
        def __init__(self):
            self.seen = []

        def on_evaluation(self, trainer, step, metrics):
            self.seen.append((step, metrics["recall@10"]))
            return "enough" if len(self.seen) == 2 else None

        def on_fit_end(self, trainer, metrics):
            metrics["hook"] = {"evaluations": len(self.seen)}

    hook = StopAtSecond()
    metrics = train_run(
        data_dir, make_config(max_steps=200, eval_every=20), tmp_path / "h", progress=False, hooks=[hook]
    )
    assert [s for s, _ in hook.seen] == [20, 40] and metrics["train"]["stop_reason"] == "enough"
    assert metrics["train"]["steps"] == 40 and metrics["hook"] == {"evaluations": 2}
    assert json.loads((tmp_path / "h" / "metrics.json").read_text())["hook"] == {"evaluations": 2}
    rows = history(tmp_path / "h")
    assert [r["recall@10"] for r in rows] == [v for _, v in hook.seen]
