"""The CUDA path: every model, the global context, retrieval and a trained run give on the GPU what they give
on the CPU. Skipped where no GPU is present (CI); run on a lent GPU machine with ``pytest tests/test_cuda.py``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mirec.config import GraphConfig, load_config
from mirec.data.batching import TrainSampler
from mirec.eval.retrieval import ExactRetriever
from mirec.graph import build_global_context
from mirec.models import available_models
from mirec.runs import build_model, load_run
from mirec.training.trainer import train_run
from tests.conftest import assert_same_top_lists

from .conftest import random_dataset

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

CUDA = torch.device("cuda")
# MIND draws its routing logits afresh at every call (as ComiRec): compared for shape and finiteness only
STOCHASTIC = {"mind"}


def small_config(name: str, **extra: str):
    overrides = [
        "model.embedding_dim=16",
        "model.num_interests=3",
        "model.maxlen=10",
        "train.batch_size=16",
        "train.num_negatives_factor=2",
    ]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return load_config(model=name, overrides=overrides)


@pytest.mark.parametrize("name", available_models())
def test_model_on_cuda_matches_cpu(name):
    dataset = random_dataset(n_users=80, n_items=50, seed=3)
    config = small_config(name)
    torch.manual_seed(0)
    model = build_model(config, dataset).eval()
    batch = TrainSampler(dataset.train, maxlen=10, batch_size=16, seed=1).sample()
    with torch.no_grad():
        on_cpu = model(batch)
        model_gpu = model.to(CUDA)
        on_gpu = model_gpu(batch.to(CUDA))
    assert on_gpu.device.type == "cuda" and on_gpu.shape == on_cpu.shape
    assert torch.isfinite(on_gpu).all()
    if name not in STOCHASTIC:
        torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-4, atol=1e-4)


def test_global_context_rows_on_cuda_match_cpu():
    dataset = random_dataset(n_users=80, n_items=50, seed=4)
    context = build_global_context(dataset, GraphConfig())
    table = torch.randn(51, 8)
    ids = torch.tensor([[0, 1, 7], [50, 7, 3]])
    full_cpu, rows_cpu = context.full(table), context.rows(ids, table)
    context_gpu = context.to(CUDA)
    table_gpu = table.to(CUDA).requires_grad_(True)
    full_gpu = context_gpu.full(table_gpu)
    rows_gpu = context_gpu.rows(ids.to(CUDA), table_gpu)
    torch.testing.assert_close(full_gpu.detach().cpu(), full_cpu, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rows_gpu.detach().cpu(), rows_cpu, rtol=1e-5, atol=1e-5)
    # the gradient reaches the item table through the sparse product on the GPU (Eq. 7)
    (full_gpu.sum() + rows_gpu.sum()).backward()
    assert table_gpu.grad is not None and torch.count_nonzero(table_gpu.grad) > 0


def test_torch_retrieval_on_cuda_ranks_like_cpu():
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(301, 16, generator=generator)
    interests = torch.randn(40, 4, 16, generator=generator)
    exclude = [np.array([1, 2, 3])] * 40
    scores_cpu, ids_cpu = ExactRetriever(table, "torch").search(interests, 25, exclude)
    scores_gpu, ids_gpu = ExactRetriever(table, "torch").search(interests.to(CUDA), 25, exclude)
    assert ids_gpu.device.type == "cuda"
    assert_same_top_lists(ids_gpu.cpu(), scores_gpu.cpu(), ids_cpu, scores_cpu, tol=1e-5)


@pytest.mark.parametrize("name", ["comirec-sa", "gimirec"])
def test_training_run_on_cuda_resumes_and_reloads_on_cpu(name, tmp_path):
    data_dir = random_dataset(n_users=120, n_items=60, seed=5).save(tmp_path / "data")
    config = small_config(name, **{"train.max_steps": "40", "train.eval_every": "20", "train.device": "cuda"})
    run = tmp_path / "run"
    first = train_run(data_dir, config, run, progress=False)
    assert first["train"]["steps"] == 40 and first["train"]["device"].startswith("cuda")
    longer = small_config(name, **{"train.max_steps": "60", "train.eval_every": "20", "train.device": "cuda"})
    resumed = train_run(data_dir, longer, run, progress=False, resume=True)
    assert resumed["train"]["steps"] == 60
    assert 0 <= resumed["test"]["recall@50"] <= 1 and np.isfinite(resumed["test"]["ndcg@50"])
    # weights written from the GPU reload on the CPU and give the same interests
    model_cpu, dataset, _ = load_run(run, device="cpu")
    model_gpu, _, _ = load_run(run, device="cuda")
    batch = TrainSampler(dataset.test, maxlen=10, batch_size=8, seed=2).sample()
    with torch.no_grad():
        torch.testing.assert_close(model_gpu(batch.to(CUDA)).cpu(), model_cpu(batch), rtol=1e-4, atol=1e-4)
    assert json.loads((run / "metrics.json").read_text())["train"]["steps"] == 60
