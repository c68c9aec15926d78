"""TF sampled_softmax_loss reproduction: sampler distribution, unique sampling, expected counts, logits, losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import mirec.nn.sampled_softmax as sampled_softmax_module
from mirec.nn.candidate_sampling import LogUniformSampler, SampledCandidates, UniformSampler, make_candidate_sampler
from mirec.nn.sampled_softmax import full_softmax_loss, inbatch_softmax_loss, sampled_logits, sampled_softmax_loss


def tf_probability(k: np.ndarray, range_max: int) -> np.ndarray:
    """TF LogUniformSampler::Probability, written independently: log((k+2)/(k+1)) / log(range_max+1)."""
    return (np.log(k + 2.0) - np.log(k + 1.0)) / np.log(range_max + 1.0)


def test_probability_matches_formula_and_sums_to_one():
    sampler = LogUniformSampler(37)
    p = sampler.probability(torch.arange(37)).numpy()
    np.testing.assert_allclose(p, tf_probability(np.arange(37), 37), rtol=1e-12)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)  # telescoping sum: log(R+1)/log(R+1)
    assert sampler.probability(torch.tensor([-1, 37])).tolist() == [0.0, 0.0]


def test_draw_empirical_distribution_chi_square():
    range_max, n = 20, 200_000
    sampler = LogUniformSampler(range_max)
    draws = sampler.draw(n, torch.Generator().manual_seed(3)).numpy()
    assert draws.min() >= 0 and draws.max() < range_max
    observed = np.bincount(draws, minlength=range_max)
    expected = n * tf_probability(np.arange(range_max), range_max)
    chi2, pvalue = stats.chisquare(observed, expected)
    assert pvalue > 1e-3, (chi2, pvalue)


def test_offset_excludes_padding():
    sampler = LogUniformSampler(15, offset=1)  # ids 1..15
    draws = sampler.draw(50_000, torch.Generator().manual_seed(0))
    assert draws.min() >= 1 and draws.max() <= 15
    assert float(sampler.probability(torch.tensor([1]))) == pytest.approx(math.log(2) / math.log(16))
    assert float(sampler.probability(torch.tensor([0]))) == 0.0
    frequency = (draws == 1).double().mean().item()
    assert frequency == pytest.approx(math.log(2) / math.log(16), abs=0.01)


def slow_unique_reference(sampler: LogUniformSampler, num_sampled: int, seed: int):
    """TF RangeSampler unique loop, one draw at a time over the same random stream as the sampler."""
    g = torch.Generator().manual_seed(seed)
    chunk = sampler._first_chunk(num_sampled)
    stream: list[int] = []
    seen: list[int] = []
    tries = 0
    while True:
        stream += sampler.draw(chunk, g).tolist()
        while tries < len(stream) and len(seen) < num_sampled:
            value = stream[tries]
            tries += 1
            if value not in seen:
                seen.append(value)
        if len(seen) == num_sampled:
            return seen, tries
        chunk *= 2


@pytest.mark.parametrize("path", ["scatter", "sort"])  # small id ranges: first-draw table; large: unique+argsort
@pytest.mark.parametrize(("range_max", "num_sampled", "seed"), [(50, 10, 0), (50, 45, 1), (1000, 300, 2), (8, 8, 3)])
def test_sample_unique_matches_sequential_tf_loop(range_max, num_sampled, seed, path):
    sampler = LogUniformSampler(range_max, offset=1 if seed == 2 else 0)
    sampler.scatter_limit = range_max if path == "scatter" else 0
    out = sampler.sample_unique(num_sampled, torch.tensor([1, 2]), torch.Generator().manual_seed(seed))
    ref_ids, ref_tries = slow_unique_reference(sampler, num_sampled, seed)
    assert out.sampled.tolist() == ref_ids
    assert out.num_tries == ref_tries
    assert len(set(out.sampled.tolist())) == num_sampled


@pytest.mark.parametrize("path", ["table", "formula"])
def test_expected_count_helper_hand_values(path):
    sampler = LogUniformSampler(9)  # log(10) denominator
    shifted = LogUniformSampler(9, offset=1)  # ids 1..9; the padding id 0 has probability 0
    if path == "formula":  # large id ranges compute P(id) per call instead of looking it up
        sampler.scatter_limit = shifted.scatter_limit = 0
    ids = torch.tensor([0, 4])
    p = np.log([2.0, 6.0 / 5.0]) / np.log(10.0)
    # no repeated draw (num_tries == batch): p * batch, TF's shortcut
    np.testing.assert_allclose(sampler.expected_count(ids, 3, 3).numpy(), 3 * p, rtol=1e-12)
    # otherwise 1 - (1 - p)^num_tries
    np.testing.assert_allclose(sampler.expected_count(ids, 3, 7).numpy(), 1 - (1 - p) ** 7, rtol=1e-12)
    shifted_p = np.array([0.0, *p])
    np.testing.assert_allclose(shifted.expected_count(torch.tensor([0, 1, 5]), 3, 7).numpy(), 1 - (1 - shifted_p) ** 7)
    # an id beyond the range (never drawn) has probability 0 on both paths
    assert sampler.expected_count(torch.tensor([3, 12]), 3, 7)[1].item() == 0.0


def test_expected_count_formula_against_brute_force():
    """-expm1(T log1p(-p)) is the probability that id k appears among T log-uniform draws."""
    range_max, tries, runs = 12, 9, 40_000
    sampler = LogUniformSampler(range_max)
    draws = sampler.draw(tries * runs, torch.Generator().manual_seed(5)).view(runs, tries)
    present = torch.zeros(runs, range_max, dtype=torch.bool)
    present.scatter_(1, draws, True)
    simulated = present.double().mean(0).numpy()
    formula = sampler.expected_count(torch.arange(range_max), 4, tries).numpy()
    np.testing.assert_allclose(simulated, formula, atol=0.01)


def test_sample_unique_reports_counts_for_true_and_sampled():
    sampler = LogUniformSampler(100)
    targets = torch.tensor([3, 50, 3])
    out = sampler.sample_unique(20, targets, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out.true_expected_count, sampler.expected_count(targets, 20, out.num_tries))
    torch.testing.assert_close(out.sampled_expected_count, sampler.expected_count(out.sampled, 20, out.num_tries))
    assert out.num_tries >= 20


def test_too_many_negatives_is_a_clear_error():
    with pytest.raises(ValueError, match="num_sampled=11"):
        LogUniformSampler(10).sample_unique(11, torch.tensor([1]))


def _tiny_case():
    table = torch.tensor(
        [[0.0, 0.0], [1.0, 0.5], [-0.5, 1.0], [0.3, -0.2], [2.0, 1.0], [-1.0, -1.0]], dtype=torch.float64
    )
    users = torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=torch.float64)
    targets = torch.tensor([1, 4])
    return table, users, targets


@pytest.mark.parametrize("hit_lookup", ["table", "binary_search"])
def test_sampled_logits_log_q_and_accidental_hits_hand_computed(hit_lookup, monkeypatch):
    if hit_lookup == "binary_search":
        monkeypatch.setattr(sampled_softmax_module, "SMALL_ID_RANGE", 0)
    table, users, targets = _tiny_case()
    sampled = torch.tensor([4, 2, 5])  # 4 is row 1's target: an accidental hit for row 1 only
    q_true = torch.tensor([0.4, 0.2], dtype=torch.float64)
    q_sampled = torch.tensor([0.2, 0.5, 0.1], dtype=torch.float64)
    cand = SampledCandidates(sampled, q_sampled, q_true, num_tries=5)
    calls = []

    def output_fn(ids):
        calls.append(ids.clone())
        return table[ids]

    logits = sampled_logits(users, targets, output_fn, cand)
    assert len(calls) == 1 and calls[0].tolist() == [1, 4, 4, 2, 5]  # one call: the targets, then the sampled ids
    # row 0: u=(1,2): true e1 -> 2.0; sampled e4 -> 4.0, e2 -> 1.5, e5 -> -3.0
    row0 = [2.0 - math.log(0.4), 4.0 - math.log(0.2), 1.5 - math.log(0.5), -3.0 - math.log(0.1)]
    np.testing.assert_allclose(logits[0].numpy(), row0, rtol=1e-12)
    # row 1: u=(.5,-1): true e4 -> 0.0; e4 is a hit -> -FLOAT_MAX; e2 -> -1.25, e5 -> 0.5
    assert logits[1, 0].item() == pytest.approx(0.0 - math.log(0.2))
    assert logits[1, 1].item() <= torch.finfo(torch.float64).min / 2
    np.testing.assert_allclose(logits[1, 2:].numpy(), [-1.25 - math.log(0.5), 0.5 - math.log(0.1)], rtol=1e-12)

    # the loss: mean cross-entropy with label 0; the hit column has no probability mass
    def ce(row):
        row = np.asarray(row)
        return -(row[0] - np.log(np.exp(row).sum()))

    row1 = [0.0 - math.log(0.2), -1.25 - math.log(0.5), 0.5 - math.log(0.1)]  # hit column removed
    expected = 0.5 * (ce(row0) + ce(row1))
    loss = torch.nn.functional.cross_entropy(logits, torch.zeros(2, dtype=torch.int64))
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    probs = torch.softmax(logits, dim=1)
    assert probs[1, 1].item() == 0.0

    # without log Q and without hit removal
    plain = sampled_logits(users, targets, output_fn, cand, remove_accidental_hits=False, subtract_log_q=False)
    np.testing.assert_allclose(plain.numpy(), [[2.0, 4.0, 1.5, -3.0], [0.0, 0.0, -1.25, 0.5]], rtol=1e-12)


def test_accidental_hit_gets_no_gradient():
    table, users, targets = _tiny_case()
    weights = table.clone().requires_grad_(True)
    sampled = torch.tensor([4, 2])
    q = torch.full((2,), 0.3, dtype=torch.float64)
    cand = SampledCandidates(sampled, q, q[:1], num_tries=4)
    logits = sampled_logits(users[1:], targets[1:], lambda ids: weights[ids], cand)  # row target 4 = a hit
    torch.nn.functional.cross_entropy(logits, torch.zeros(1, dtype=torch.int64)).backward()
    # e4 receives the true-class gradient only: -(1 - p_true) * u
    p_true = torch.softmax(logits.detach(), 1)[0, 0]
    torch.testing.assert_close(weights.grad[4], -(1 - p_true) * users[1])


def test_sampled_softmax_loss_is_seeded_and_matches_its_parts():
    torch.manual_seed(0)
    table = torch.randn(31, 4)
    users, targets = torch.randn(5, 4), torch.tensor([1, 7, 7, 30, 2])
    sampler = LogUniformSampler(31)
    g = torch.Generator().manual_seed(11)
    loss = sampled_softmax_loss(users, targets, lambda ids: table[ids], sampler, 12, g)
    cand = sampler.sample_unique(12, targets, torch.Generator().manual_seed(11))
    logits = sampled_logits(users, targets, lambda ids: table[ids], cand)
    expected = -(torch.log_softmax(logits, 1)[:, 0]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # the loss never builds the [B, 1 + S] matrix; its gradient is still the cross-entropy's
    u1, u2 = users.clone().requires_grad_(True), users.clone().requires_grad_(True)
    fused = sampled_softmax_loss(u1, targets, lambda ids: table[ids], sampler, 12, torch.Generator().manual_seed(11))
    plain = torch.nn.functional.cross_entropy(
        sampled_logits(u2, targets, lambda ids: table[ids], cand), torch.zeros(5, dtype=torch.int64)
    )
    fused.backward()
    plain.backward()
    torch.testing.assert_close(u1.grad, u2.grad, rtol=1e-5, atol=1e-7)
    again = sampled_softmax_loss(users, targets, lambda ids: table[ids], sampler, 12, torch.Generator().manual_seed(11))
    assert again.item() == loss.item()
    with pytest.raises(ValueError, match="expected user_vectors"):
        sampled_softmax_loss(users, targets[:3], lambda ids: table[ids], sampler, 12, g)


def test_full_softmax_hand_computed_and_padding_masked():
    table, users, targets = _tiny_case()
    loss = full_softmax_loss(users, targets, lambda ids: table if ids is None else table[ids])
    scores = users.numpy() @ table.numpy().T
    scores = scores[:, 1:]  # id 0 (padding) is masked out
    lse = np.log(np.exp(scores).sum(1))
    expected = np.mean(lse - scores[[0, 1], targets.numpy() - 1])
    assert loss.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("mask_padding", [True, False])
def test_full_softmax_over_row_blocks_is_cross_entropy_on_the_whole_logits(monkeypatch, mask_padding):
    import mirec.nn.sampled_softmax as ss

    monkeypatch.setattr(ss, "ROW_BLOCK_FLOATS", 3 * 9)  # 9 items: blocks of 3 rows, 8 rows make 3 blocks
    monkeypatch.setattr(ss, "FULL_SOFTMAX_MIN_ROWS", 1)
    torch.manual_seed(4)
    users0, table0 = torch.randn(8, 5, dtype=torch.float64), torch.randn(9, 5, dtype=torch.float64)
    targets = torch.tensor([1, 3, 3, 8, 2, 5, 5, 7])
    results = []
    for blocked in (True, False):
        users, table = users0.clone().requires_grad_(), table0.clone().requires_grad_()
        if blocked:
            loss = full_softmax_loss(users, targets, lambda ids, t=table: t if ids is None else t[ids], mask_padding)
        else:  # the whole [8, 9] logits at once
            logits = users @ table.T
            if mask_padding:
                logits = torch.cat([torch.full_like(logits[:, :1], -torch.inf), logits[:, 1:]], dim=1)
            loss = torch.nn.functional.cross_entropy(logits, targets)
        (3.0 * loss).backward()  # a non-unit upstream gradient
        results.append((loss.detach(), users.grad, table.grad))
    for blocked, whole in zip(*results, strict=True):
        torch.testing.assert_close(blocked, whole, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # no gradient wanted: the loss alone
        alone = full_softmax_loss(users0, targets, lambda ids: table0 if ids is None else table0[ids], mask_padding)
    torch.testing.assert_close(alone, results[1][0], rtol=1e-12, atol=1e-12)


def test_inbatch_softmax_hand_computed_with_duplicate_targets():
    table, _, _ = _tiny_case()
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    targets = torch.tensor([2, 4, 2])
    loss = inbatch_softmax_loss(users, targets, lambda ids: table[ids])
    t = table[targets].numpy()
    s = users.numpy() @ t.T
    # row 0 and row 2 share target 2: each other's column is an accidental hit (dropped)
    rows = [s[0, [0, 1]], s[1, [1, 0, 2]], s[2, [2, 1]]]
    expected = np.mean([np.log(np.exp(r).sum()) - r[0] for r in rows])
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_uniform_sampler_distribution_offset_and_factory():
    sampler = UniformSampler(12, offset=1)  # ids 1..12
    assert sampler.probability(torch.tensor([0, 1, 12, 13])).tolist() == [0.0, 1 / 12, 1 / 12, 0.0]
    draws = sampler.draw(60_000, torch.Generator().manual_seed(2)).numpy()
    assert draws.min() == 1 and draws.max() == 12
    chi2, pvalue = stats.chisquare(np.bincount(draws - 1, minlength=12))  # expected: flat
    assert pvalue > 1e-3, (chi2, pvalue)
    assert isinstance(make_candidate_sampler("uniform", 5), UniformSampler)
    assert isinstance(make_candidate_sampler("log_uniform", 5), LogUniformSampler)
    with pytest.raises(ValueError, match="unknown negative sampler 'zipf'"):
        make_candidate_sampler("zipf", 5)


def test_sampling_with_replacement_keeps_repeats_and_counts_p_times_n():
    sampler = LogUniformSampler(6)
    true_ids = torch.tensor([0, 5])
    out = sampler.sample(40, true_ids, torch.Generator().manual_seed(4), unique=False)
    assert len(out.sampled) == 40 and not out.distinct and out.num_tries == 40
    assert len(torch.unique(out.sampled)) < 40  # 40 draws from 6 ids must repeat
    np.testing.assert_allclose(out.sampled_expected_count.numpy(), 40 * tf_probability(out.sampled.numpy(), 6))
    np.testing.assert_allclose(out.true_expected_count.numpy(), 40 * tf_probability(np.array([0, 5]), 6))
    same = sampler.draw(40, torch.Generator().manual_seed(4))
    assert torch.equal(out.sampled, same)  # exactly the first 40 draws of the stream


def test_accidental_hits_with_repeated_ids_match_a_per_row_loop():
    torch.manual_seed(5)
    table = torch.randn(7, 3, dtype=torch.float64)
    users = torch.randn(4, 3, dtype=torch.float64)
    targets = torch.tensor([2, 2, 6, 1])
    sampled = torch.tensor([2, 6, 2, 3, 0, 6])  # 2 twice (rows 0, 1 hit twice), 6 twice (row 2)
    q = torch.rand(6, dtype=torch.float64) + 0.1
    q_true = torch.rand(4, dtype=torch.float64) + 0.1
    cand = SampledCandidates(sampled, q, q_true, num_tries=6, distinct=False)
    logits = sampled_logits(users, targets, lambda ids: table[ids], cand)
    floor = torch.finfo(torch.float64).min
    for row in range(4):  # TF compute_accidental_hits: every sampled copy of the label is removed
        expected = [float(users[row] @ table[targets[row]] - torch.log(q_true[row]))]
        for col, item in enumerate(sampled.tolist()):
            score = float(users[row] @ table[item] - torch.log(q[col]))
            expected.append(floor if item == int(targets[row]) else score)
        np.testing.assert_allclose(logits[row].numpy(), expected, rtol=1e-12)
    assert (logits == floor).sum().item() == 2 + 2 + 2 + 0


def test_remi_uniform_loss_is_plain_softmax_over_target_and_draws():
    """REMI's default (uniform noise, 1,280 shared draws, no hit removal): log Q is one constant, so the loss is
    the cross-entropy of the raw scores [target, draws...] with label 0, repeats and hits included."""
    torch.manual_seed(6)
    table, users = torch.randn(9, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    targets = torch.tensor([1, 8, 4])
    sampler = UniformSampler(9)
    loss = sampled_softmax_loss(
        users,
        targets,
        lambda ids: table[ids],
        sampler,
        30,
        torch.Generator().manual_seed(7),
        remove_accidental_hits=False,
        unique=False,
    )
    draws = sampler.draw(30, torch.Generator().manual_seed(7))
    scores = torch.cat([(users * table[targets]).sum(1, keepdim=True), users @ table[draws].T], dim=1)
    expected = (torch.logsumexp(scores, 1) - scores[:, 0]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize(
    ("unique", "remove_hits", "subtract_log_q"),
    [(True, True, True), (True, False, True), (False, True, True), (False, False, False), (True, True, False)],
)
def test_loss_backward_matches_autograd_of_the_logits(unique, remove_hits, subtract_log_q):
    """The loss's hand-written backward against autograd through sampled_logits + cross-entropy (float64):
    gradients of the user vectors and of every table row, accidental hits and repeated targets included."""
    torch.manual_seed(3)
    table = torch.randn(12, 5, dtype=torch.float64)
    users = torch.randn(6, 5, dtype=torch.float64)
    targets = torch.tensor([1, 0, 3, 3, 11, 2])  # a 12-id range and 8 negatives: hits are certain
    sampler = LogUniformSampler(12)
    cand = sampler.sample(8, targets, torch.Generator().manual_seed(5), unique)
    assert bool(torch.isin(targets, cand.sampled).any())
    grads = []
    for fused in (True, False):
        weights, u = table.clone().requires_grad_(True), users.clone().requires_grad_(True)
        if fused:
            loss = sampled_softmax_loss(
                u,
                targets,
                lambda ids, w=weights: w[ids],
                sampler,
                8,
                torch.Generator().manual_seed(5),
                remove_accidental_hits=remove_hits,
                subtract_log_q=subtract_log_q,
                unique=unique,
            )
        else:
            logits = sampled_logits(u, targets, lambda ids, w=weights: w[ids], cand, remove_hits, subtract_log_q)
            loss = torch.nn.functional.cross_entropy(logits, torch.zeros(6, dtype=torch.int64))
        (2.5 * loss).backward()  # a non-unit upstream gradient
        grads.append((loss.detach(), u.grad, weights.grad))
    for fused_value, reference in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(fused_value, reference, rtol=1e-10, atol=1e-12)


def test_loss_second_backward_is_a_clear_error():
    table, users = torch.randn(12, 5), torch.randn(3, 5, requires_grad=True)
    loss = sampled_softmax_loss(users, torch.tensor([1, 2, 3]), lambda ids: table[ids], LogUniformSampler(12), 6)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        loss.backward()
