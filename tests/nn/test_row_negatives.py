"""Negatives drawn for each row (RecTools' CatalogUniformSampler) against a per-row loop of the formulas."""

import math

import pytest
import torch

from mirec.config import ConfigError, TrainConfig
from mirec.nn.candidate_sampling import make_candidate_sampler
from mirec.nn.sampled_softmax import gbce_from_logits, row_sampled_logits
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


def lookup(table: torch.Tensor):
    """An output function over a plain table: rows by id, or the whole table for None."""
    return lambda ids: table if ids is None else table[ids]


@pytest.mark.parametrize("kind", ["uniform", "log_uniform"])
@pytest.mark.parametrize("hits_removed", [False, True])
@pytest.mark.parametrize("catalogue_size", [None, 13])  # 13 < 5 x 9 draws: the block-wise products
def test_row_logits_are_each_rows_own_negatives(kind, hits_removed, catalogue_size):
    torch.manual_seed(0)
    users, table = torch.randn(5, 8, dtype=torch.float64), torch.randn(13, 8, dtype=torch.float64)
    targets = torch.tensor([1, 2, 3, 4, 12])
    sampler = make_candidate_sampler(kind, 12, offset=1)
    got = row_sampled_logits(
        users, targets, lookup(table), sampler, 9, torch.Generator().manual_seed(4), hits_removed,
        catalogue_size=catalogue_size,
    )  # fmt: skip
    drawn = sampler.draw(5 * 9, torch.Generator().manual_seed(4)).view(5, 9)
    assert bool((drawn[:, :, None] == targets[:, None, None]).any())  # the case holds hits
    assert len({tuple(row) for row in drawn.tolist()}) == 5  # every row its own draws
    expected = logits_by_hand(users, table, targets, drawn, sampler, 9, hits_removed, log_q=True)
    floor = torch.finfo(torch.float64).min
    expected = torch.tensor(expected, dtype=torch.float64).clamp(min=floor)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_block_wise_products_give_the_lookups_gradients(monkeypatch):
    import mirec.nn.sampled_softmax as ss

    monkeypatch.setattr(ss, "ROW_BLOCK_FLOATS", 3 * 9 * 8)  # blocks of 3 rows: 7 rows make 3 blocks
    torch.manual_seed(2)
    users0, table0 = torch.randn(7, 8, dtype=torch.float64), torch.randn(11, 8, dtype=torch.float64)
    targets = torch.tensor([1, 2, 2, 5, 7, 9, 10])
    sampler = make_candidate_sampler("uniform", 10, offset=1)
    weights = torch.randn(7, 10, dtype=torch.float64)  # a loss that weighs every logit differently
    grads = []
    for catalogue_size in (None, 11):
        users, table = users0.clone().requires_grad_(), table0.clone().requires_grad_()
        logits = row_sampled_logits(
            users,
            targets,
            lookup(table),
            sampler,
            9,
            torch.Generator().manual_seed(5),
            True,
            catalogue_size=catalogue_size,
        )
        (logits.clamp(min=-1e6) * weights).sum().backward()  # hits (-FLOAT_MAX) clamped: a finite sum
        grads.append((logits.detach(), users.grad, table.grad))
    drawn = sampler.draw(7 * 9, torch.Generator().manual_seed(5))
    assert len(set(drawn.tolist())) < len(drawn)  # repeated ids: their gradients add up
    for looked_up, block_wise in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(block_wise, looked_up, rtol=1e-12, atol=1e-12)  # float64, sums reordered


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


def test_a_catalogue_within_full_softmax_max_items_trains_with_the_full_softmax():
    torch.manual_seed(3)
    table, users = torch.randn(21, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    targets = torch.tensor([3, 8, 8, 20])
    # by hand: cross-entropy of u . w_i over items 1..20 (padding row 0 is never a class)
    scores = users @ table[1:].T
    expected = sum(math.log(sum(math.exp(float(x)) for x in row)) - float(row[t - 1]) for row, t in zip(
        scores, targets.tolist(), strict=True)) / 4  # fmt: skip
    common = dict(row_negatives=7, negative_sampler="uniform", sampler_exclude_padding=True)
    for limit, kind in [(20, "full"), (100, "full"), (19, "sampled"), (0, "sampled")]:
        loss = TrainingLoss(
            TrainConfig(full_softmax_max_items=limit, **common), Table(table), 20, torch.Generator().manual_seed(1)
        )
        assert loss.kind == kind
        if kind == "full":
            assert float(loss(users, targets)) == pytest.approx(expected, rel=1e-9)
    gbce = TrainConfig(loss="gbce", full_softmax_max_items=100, **common)
    assert TrainingLoss(gbce, Table(table), 20, None).kind == "gbce"  # only the sampled softmax switches
    with pytest.raises(ConfigError, match="full_softmax_max_items"):
        TrainConfig(full_softmax_max_items=100, hard_negative_beta=1.0)
    with pytest.raises(ConfigError, match="full_softmax_max_items"):
        TrainConfig(full_softmax_max_items=-1)
