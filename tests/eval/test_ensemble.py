"""RunEnsemble: several models' interests, each scored against its own item table, merged as one list."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mirec.config import EvalConfig
from mirec.data.batching import iter_eval_batches
from mirec.eval.ensemble import RunEnsemble, evaluate_runs
from mirec.eval.evaluator import evaluate
from tests.eval.test_evaluator import MAXLEN, N_ITEMS, make_dataset, make_model

pytestmark = pytest.mark.usefixtures("one_thread")


def slow_ensemble_lists(models, dataset, split: str, n: int) -> list[list[str]]:
    """Per user: every interest of every model scored against that model's own table, item score = the max, top n."""
    lists = []
    with torch.no_grad():
        tables = [m.output_embeddings().numpy() for m in models]
        for eb in iter_eval_batches(dataset.split(split), MAXLEN, 7):
            per_model = [m(eb.batch).numpy() for m in models]
            for user in range(len(eb.rows)):
                best = np.full(N_ITEMS + 1, -np.inf)
                for interests, table in zip(per_model, tables, strict=True):
                    for vector in interests[user]:
                        best = np.maximum(best, table @ vector)
                best[0] = -np.inf  # the padding id is never recommended
                top = np.argsort(-best, kind="stable")[:n]
                lists.append([str(dataset.item_original_ids[i]) for i in top])
    return lists


def test_ensemble_lists_equal_a_slow_merge_of_every_models_own_scores(tmp_path):
    dataset = make_dataset(0)
    models = [make_model(seed=1, k=3), make_model(seed=2, k=2)]
    for m in models:  # distinct item tables, so that each block really is scored against its own
        torch.nn.init.normal_(m.item_embedding.weight)
    ensemble = RunEnsemble(models)
    assert ensemble.num_interests == 5
    result = evaluate(ensemble, dataset, "valid", EvalConfig(topk=[10]), maxlen=MAXLEN, dump_path=tmp_path / "d")
    dumped = [json.loads(line)["recommendations"] for line in open(tmp_path / "d")]
    assert dumped == slow_ensemble_lists(models, dataset, "valid", 10)
    assert result["users"] == len(dumped)


def test_a_model_with_itself_scores_as_the_model_alone():
    dataset = make_dataset(1)
    model = make_model(seed=3)
    alone = evaluate(model, dataset, "test", EvalConfig(topk=[5, 10]), maxlen=MAXLEN)
    doubled = evaluate(RunEnsemble([model, model]), dataset, "test", EvalConfig(topk=[5, 10]), maxlen=MAXLEN)
    for key in ("recall@5", "recall@10", "ndcg@10", "hit_rate@10"):
        assert doubled[key] == pytest.approx(alone[key])
    with pytest.raises(ValueError, match="at least 2"):
        RunEnsemble([model])


def test_evaluate_runs_loads_run_folders_and_refuses_another_catalogue(tmp_path):
    from mirec.data.prepare import prepare
    from mirec.training.trainer import train_run
    from tests.runs.test_safety import tiny_config, write_log

    data = tmp_path / "data"
    prepare([write_log(tmp_path / "log.tsv")], "csv", data)
    runs = [tmp_path / f"run{seed}" for seed in (1, 2)]
    for seed, run in zip((1, 2), runs, strict=True):
        train_run(data, tiny_config(f"train.seed={seed}"), run, progress=False)
    from mirec.api import load

    loaded = [load(run, device="cpu") for run in runs]
    expected = evaluate(
        RunEnsemble([r.model for r in loaded]),
        loaded[0].dataset,
        "test",
        loaded[0].config.eval,
        maxlen=loaded[0].config.model.maxlen,
    )
    assert evaluate_runs([str(r) for r in runs], "test") == expected
    other = tmp_path / "other"
    prepare([write_log(tmp_path / "log2.tsv", n_users=60, seed=5)], "csv", other)
    train_run(other, tiny_config(), tmp_path / "run-other", progress=False)
    with pytest.raises(ValueError, match="different catalogues|share one catalogue"):
        evaluate_runs([str(runs[0]), str(tmp_path / "run-other")], "test")
