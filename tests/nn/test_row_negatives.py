"""Negatives drawn for each row (RecTools' CatalogUniformSampler) against a per-row loop of the formulas."""

import math

import pytest
import torch

from mirec.config import ConfigError, TrainConfig
from mirec.nn.sampled_softmax import gbce_from_logits, make_candidate_sampler, row_sampled_logits
from mirec.training.losses import TrainingLoss


class Table(torch.nn.Module):
    """Just an output table: what TrainingLoss reads from a model."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.item_embedding = torch.nn.Embedding.from_pretrained(table)

    def output_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        return self.item_embedding(ids)


def logits_by_hand(users, table, targets, drawn, sampler, per_row: int, hits_removed: bool, log_q: bool):
    """Row b: [u_b . w_target, u_b . w_j for its own j], each minus log(p * per_row) when log_q; hits at -inf."""
    rows = []
    for b, target in enumerate(targets.tolist()):
        q = (lambda i: math.log(float(sampler.probability(torch.tensor([i]))) * per_row)) if log_q else (lambda i: 0.0)
        row = [float(users[b] @ table[target]) - q(target)]
        for item in drawn[b].tolist():
            row.append(-math.inf if hits_removed and item == target else float(users[b] @ table[item]) - q(item))
        rows.append(row)
    return rows


@pytest.mark.parametrize("kind", ["uniform", "log_uniform"])
@pytest.mark.parametrize("hits_removed", [False, True])
def test_row_logits_are_each_rows_own_negatives(kind, hits_removed):
    torch.manual_seed(0)
    users, table = torch.randn(5, 8, dtype=torch.float64), torch.randn(13, 8, dtype=torch.float64)
    targets = torch.tensor([1, 2, 3, 4, 12])
    sampler = make_candidate_sampler(kind, 12, offset=1)
    got = row_sampled_logits(
        users, targets, lambda ids: table[ids], sampler, 9, torch.Generator().manual_seed(4), hits_removed
    )
    drawn = sampler.draw(5 * 9, torch.Generator().manual_seed(4)).view(5, 9)
    assert bool((drawn[:, :, None] == targets[:, None, None]).any())  # the case holds hits
    assert len({tuple(row) for row in drawn.tolist()}) == 5  # every row its own draws
    expected = logits_by_hand(users, table, targets, drawn, sampler, 9, hits_removed, log_q=True)
    floor = torch.finfo(torch.float64).min
    expected = torch.tensor(expected, dtype=torch.float64).clamp(min=floor)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def softplus(x: float) -> float:
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def test_training_loss_with_row_negatives_is_the_softmax_or_gbce_of_those_logits():
    torch.manual_seed(1)
    table = torch.randn(21, 6)
    users, targets = torch.randn(4, 6), torch.tensor([3, 8, 8, 20])
    sampler = make_candidate_sampler("uniform", 20, offset=1)
    drawn = sampler.draw(4 * 7, torch.Generator().manual_seed(9)).view(4, 7)
    rows = logits_by_hand(users, table, targets, drawn, sampler, 7, hits_removed=False, log_q=False)
    common = dict(row_negatives=7, negative_sampler="uniform", sampler_exclude_padding=True)
    softmax = TrainingLoss(
        TrainConfig(remove_accidental_hits=False, **common), Table(table), 20, torch.Generator().manual_seed(9)
    )
    # uniform: log Q is one constant per row, so the softmax is that of the raw scores
    expected = sum(math.log(sum(math.exp(x) for x in row)) - row[0] for row in rows) / 4
    assert float(softmax(users, targets)) == pytest.approx(expected, rel=1e-5)
    gbce = TrainingLoss(
        TrainConfig(loss="gbce", gbce_t=0.5, remove_accidental_hits=False, **common),
        Table(table),
        20,
        torch.Generator().manual_seed(9),
    )
    alpha = 7 / 19
    beta = alpha * (0.5 * (1 - 1 / alpha) + 1 / alpha)
    total = sum(beta * softplus(-row[0]) + sum(softplus(x) for x in row[1:]) for row in rows)
    assert float(gbce(users, targets)) == pytest.approx(total / (4 * 8), rel=1e-5)
    assert float(gbce_from_logits(torch.tensor(rows), 0.5, 20)) == pytest.approx(total / (4 * 8), rel=1e-5)


def test_row_negatives_are_checked():
    with pytest.raises(ConfigError, match="row_negatives"):
        TrainConfig(row_negatives=8, loss="full")
    with pytest.raises(ConfigError, match="row_negatives"):
        TrainConfig(row_negatives=8, hard_negative_beta=1.0)
    with pytest.raises(ConfigError, match="row_negatives"):
        TrainConfig(row_negatives=-1)
