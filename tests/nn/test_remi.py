"""REMI's two options, each against a slow transcription of the reference code (Tokkiu/REMI)."""

from __future__ import annotations

import math

import pytest
import torch

from mirec.config import ComiRecSAConfig, TrainConfig
from mirec.config.checked import ConfigError
from mirec.data.batching import Batch
from mirec.models.comirec_sa import ComiRecSA
from mirec.nn.candidate_sampling import make_candidate_sampler
from mirec.nn.regularizers import routing_penalty
from mirec.nn.sampled_softmax import hard_negative_sampled_softmax_loss, sampled_softmax_loss


def remi_loss_one_row(x: list[float], beta: float) -> float:
    """REMI BasicModel.sampled_softmax_loss, beta != 0, for one row of logits [true, sampled...], in floats."""
    top = max(x)
    x = [v - top for v in x]
    pos, neg = math.exp(x[0]), [math.exp(v) for v in x[1:]]
    top_b = max(beta * v for v in x[1:])
    imp = [math.exp(beta * v - top_b) for v in x[1:]]
    reweighted = sum(i * n for i, n in zip(imp, neg, strict=True)) / (sum(imp) / len(imp))
    return -(x[0] - math.log(pos + reweighted))


@pytest.mark.parametrize("beta", [0.1, 1.0, 10.0])
def test_the_hard_negative_loss_is_remis_formula(beta):
    torch.manual_seed(0)
    users, table = torch.randn(6, 8), torch.randn(41, 8)
    targets = torch.tensor([1, 5, 9, 13, 17, 40])
    sampler = make_candidate_sampler("uniform", 41, offset=0)  # REMI's sampler: log Q is one constant, it cancels
    got = hard_negative_sampled_softmax_loss(
        users,
        targets,
        lambda ids: table[ids],
        sampler,
        12,
        beta,
        torch.Generator().manual_seed(3),
        remove_accidental_hits=False,
        unique=False,
    )
    sampled = sampler.sample(12, targets, torch.Generator().manual_seed(3), False).sampled
    rows = [[float(users[b] @ table[targets[b]])] + [float(users[b] @ table[s]) for s in sampled] for b in range(6)]
    expected = sum(remi_loss_one_row(row, beta) for row in rows) / 6
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_beta_near_zero_is_the_plain_sampled_softmax():
    torch.manual_seed(1)
    users, table = torch.randn(5, 8), torch.randn(30, 8)
    targets = torch.tensor([2, 4, 6, 8, 10])
    sampler = make_candidate_sampler("log_uniform", 30)
    hard = hard_negative_sampled_softmax_loss(
        users, targets, lambda ids: table[ids], sampler, 10, 1e-9, torch.Generator().manual_seed(5)
    )
    plain = sampled_softmax_loss(users, targets, lambda ids: table[ids], sampler, 10, torch.Generator().manual_seed(5))
    assert float(hard) == pytest.approx(float(plain), rel=1e-5)


def remi_atten_loss(attention: torch.Tensor, hidden_size: int) -> torch.Tensor:
    """Tokkiu/REMI src/REMI.py ``calculate_atten_loss``, as written there."""
    c_mean = torch.mean(attention, dim=2, keepdim=True)
    c_reg = attention - c_mean
    c_reg = torch.bmm(c_reg, c_reg.transpose(1, 2)) / hidden_size
    dr = torch.diagonal(c_reg, dim1=-2, dim2=-1)
    return (torch.norm(dr, dim=1) ** 2).sum()


def test_the_routing_penalty_is_remis_and_reaches_comirec_sas_loss():
    attention = torch.softmax(torch.randn(3, 4, 7), dim=-1)
    torch.testing.assert_close(routing_penalty(attention, 16), remi_atten_loss(attention, 16), rtol=1e-5, atol=1e-9)
    torch.manual_seed(0)
    model = ComiRecSA(ComiRecSAConfig(embedding_dim=16, num_interests=4, maxlen=6, routing_reg=100.0), n_items=20)
    items = torch.tensor([[1, 2, 3, 0, 0, 0], [4, 5, 6, 7, 8, 9]])
    batch = Batch(items, (items > 0).float(), (items > 0).long(), torch.tensor([5, 3]))
    output = model.training_output(batch)
    _, attention = model.interests_and_attention(batch)
    torch.testing.assert_close(output.aux_loss, 100.0 * remi_atten_loss(attention, 16))
    assert ComiRecSA(ComiRecSAConfig(embedding_dim=16, maxlen=6), 20).training_output(batch).aux_loss is None


def test_hard_negatives_need_the_sampled_loss():
    with pytest.raises(ConfigError, match="hard_negative_beta"):
        TrainConfig(loss="full", hard_negative_beta=1.0)
    with pytest.raises(ConfigError, match="routing_reg"):
        ComiRecSAConfig(routing_reg=-1.0)


@pytest.mark.usefixtures("one_thread")
def test_remi_options_train_and_one_interest_controls_run(tmp_path):
    from mirec.config import load_config
    from mirec.training.trainer import train_run
    from tests.training.test_trainer import cycle_dataset

    data = tmp_path / "cycle"
    cycle_dataset().save(data)
    small = [
        "train.batch_size=16",
        "train.max_steps=60",
        "train.eval_every=30",
        "train.num_negatives_factor=2",
        "model.maxlen=8",
        "model.embedding_dim=16",
        "train.lr=0.01",
        "eval.topk=[5]",
        'eval.early_stop_metric="recall@5"',
    ]
    remi = ["train.hard_negative_beta=1.0", "model.routing_reg=100.0"]
    train_run(data, load_config(model="comirec-sa", overrides=[*small, *remi]), tmp_path / "remi", progress=False)
    rows = [__import__("json").loads(line) for line in (tmp_path / "remi" / "history.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] and "routing_penalty" in rows[0]["train_terms"]
    for model in ("comirec-sa", "gimirec"):  # the one-interest control of each architecture
        config = load_config(model=model, overrides=[*small, "model.num_interests=1"])
        metrics = train_run(data, config, tmp_path / model, progress=False)
        assert 0 <= metrics["test"]["recall@5"] <= 1
