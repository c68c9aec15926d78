"""gSASRec's gBCE against a per-row loop of its formula (asash/gSASRec-pytorch gbce.py)."""

import math

import pytest
import torch

from mirec.config import ConfigError, TrainConfig
from mirec.nn.candidate_sampling import make_candidate_sampler
from mirec.nn.sampled_softmax import gbce_loss


def softplus(x: float) -> float:
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def gbce_by_hand(users, table, targets, sampled, t: float, n_items: int, hits_removed: bool) -> float:
    """Sum over rows of beta * softplus(-s_pos) + sum_j softplus(s_j), divided by the B x (1 + S) logits."""
    alpha = len(sampled) / (n_items - 1)
    beta = alpha * (t * (1 - 1 / alpha) + 1 / alpha)
    total = 0.0
    for b, target in enumerate(targets.tolist()):
        total += beta * softplus(-float(users[b] @ table[target]))
        for item in sampled.tolist():
            if hits_removed and item == target:
                continue
            total += softplus(float(users[b] @ table[item]))
    return total / (len(targets) * (1 + len(sampled)))


@pytest.mark.parametrize("t", [0.0, 0.75, 1.0])
@pytest.mark.parametrize("hits_removed", [False, True])
def test_gbce_is_its_formula(t, hits_removed):
    torch.manual_seed(0)
    users, table = torch.randn(6, 8), torch.randn(41, 8)
    targets = torch.tensor([1, 5, 9, 13, 17, 40])
    sampler = make_candidate_sampler("uniform", 40, offset=1)
    got = gbce_loss(
        users,
        targets,
        lambda ids: table[ids],
        sampler,
        20,
        t,
        40,
        torch.Generator().manual_seed(3),
        remove_accidental_hits=hits_removed,
    )
    sampled = sampler.sample(20, targets, torch.Generator().manual_seed(3), True).sampled
    assert hits_removed is False or bool(torch.isin(targets, sampled).any())  # the case exercises a hit
    expected = gbce_by_hand(users, table, targets, sampled, t, 40, hits_removed)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_t_sets_the_positive_weight_between_one_and_the_sampling_rate():
    """t = 0: beta = 1 (plain BCE); t = 1: beta = alpha = S / (n_items - 1) = 5 / 9."""
    users, table = torch.zeros(2, 4), torch.zeros(11, 4)  # every score 0: softplus(0) = log 2
    targets = torch.tensor([1, 2])
    sampler = make_candidate_sampler("uniform", 10, offset=1)
    for t, beta in ((0.0, 1.0), (1.0, 5 / 9)):
        got = gbce_loss(users, targets, lambda ids: table[ids], sampler, 5, t, 10, remove_accidental_hits=False)
        assert float(got) == pytest.approx((beta + 5) * math.log(2) / 6, rel=1e-6)


def test_gbce_t_is_checked():
    with pytest.raises(ConfigError, match="gbce_t"):
        TrainConfig(loss="gbce", gbce_t=1.5)
