"""GemiRec (IDMM residual quantizer, MIPDM beam search, MIRM) against hand-computed cases and brute force."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from mirec.config import GemiRecConfig, load_config
from mirec.data.batching import Batch
from mirec.models.gemirec import GemiRec
from mirec.nn.quantizer import ResidualQuantizer, kmeans
from tests.conftest import FIXTURES


def tiny_config(**kw) -> GemiRecConfig:
    base = dict(
        embedding_dim=16,
        num_interests=4,
        maxlen=8,
        idmm_levels=2,
        idmm_codes=5,
        idmm_code_dim=8,
        beam_width=5,
        mipdm_layers=1,
        mipdm_heads=2,
        mipdm_dropout=0.0,
        maintenance_every=2,
    )
    base.update(kw)
    return GemiRecConfig(**base)


def make_batch(lengths: list[int], maxlen: int, n_items: int, seed: int = 0, pad_id: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, n_items + 1, (len(lengths), maxlen), generator=g)
    mask = (torch.arange(maxlen)[None] < torch.tensor(lengths)[:, None]).float()
    items = torch.where(mask > 0, items, torch.full_like(items, pad_id))
    targets = torch.randint(1, n_items + 1, (len(lengths),), generator=g)
    return Batch(items=items, mask=mask, days=mask.long(), targets=targets)


# ----------------------------------------------------------------------------- IDMM quantizer
def brute_force_codes(r: np.ndarray, books: np.ndarray) -> np.ndarray:
    """Slow greedy residual nearest-code search, one point and one code at a time."""
    n, levels = r.shape[0], books.shape[0]
    out = np.zeros((n, levels), dtype=np.int64)
    for i in range(n):
        res = r[i].astype(np.float64).copy()
        for c in range(levels):
            dists = [float(((res - books[c, j]) ** 2).sum()) for j in range(books.shape[1])]
            out[i, c] = int(np.argmin(dists))
            res = res - books[c, out[i, c]]
    return out


def test_assignment_equals_brute_force_search():
    torch.manual_seed(0)
    q = ResidualQuantizer(6, 4, levels=3, codes=7, encoder="mlp")
    x = torch.randn(60, 6)
    codes = q.assign(x)
    r = q.encoder(x).detach().numpy()
    expected = brute_force_codes(r, q.codebooks.detach().numpy())
    assert np.array_equal(codes.numpy(), expected)
    q.eval()
    assert torch.equal(q(x).codes, codes)  # eval forward = pure assignment
    # lookup is the concatenation of the chosen codes, level by level
    cat = q.lookup(codes[:2])
    assert torch.allclose(cat[1], torch.cat([q.codebooks[c, codes[1, c]] for c in range(3)]))


def quantisation_error(q: ResidualQuantizer, x: torch.Tensor) -> float:
    codes = q.assign(x)
    recon = sum(q.codebooks[c, codes[:, c]] for c in range(q.levels))
    return float(((x - recon) ** 2).sum(1).mean())


def test_kmeans_init_reduces_quantisation_error():
    torch.manual_seed(1)
    centers = torch.randn(8, 4) * 5
    x = centers[torch.randint(8, (400,))] + 0.1 * torch.randn(400, 4)
    random_q = ResidualQuantizer(4, 4, levels=2, codes=8, encoder="identity")  # randn codebooks
    rows_q = ResidualQuantizer(4, 4, levels=2, codes=8, encoder="identity", kmeans_iters=0)
    rows_q.initialize(x)  # random data rows, no Lloyd iteration
    km_q = ResidualQuantizer(4, 4, levels=2, codes=8, encoder="identity", kmeans_iters=15)
    km_q.initialize(x)
    e_random, e_rows, e_km = (quantisation_error(q, x) for q in (random_q, rows_q, km_q))
    assert e_km < e_rows and e_km < 0.5 * e_random
    assert e_km < 0.05  # 8 well-separated clusters of noise 0.1 in 4-d: error ~ 4 * 0.01, less with level 2
    # Lloyd on an easy case: two blobs, k=2 -> the two blob means
    pts = torch.tensor([[0.0, 0.0], [0.0, 1.0], [10.0, 10.0], [10.0, 11.0]])
    got = kmeans(pts, 2, 5)
    got = got[got[:, 0].argsort()]
    assert torch.allclose(got, torch.tensor([[0.0, 0.5], [10.0, 10.5]]))


def test_ema_update_moves_codes_toward_assigned_means():
    q = ResidualQuantizer(2, 2, levels=1, codes=2, encoder="identity", decay=0.5, dead_threshold=0.0)
    q.set_codebooks(torch.tensor([[[0.0, 0.0], [10.0, 10.0]]]))  # counts 1, sums = codes
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]])
    q.train()
    out = q(x)
    assert out.codes[:, 0].tolist() == [0, 0, 1]
    # by hand: N = .5*1 + .5*[2, 1] = [1.5, 1]; S0 = .5*0 + .5*(1, 1); S1 = .5*(10, 10) + .5*(9, 9)
    assert torch.allclose(q.cluster_size[0], torch.tensor([1.5, 1.0]))
    assert torch.allclose(q.codebooks[0], torch.tensor([[1 / 3, 1 / 3], [9.5, 9.5]]), atol=1e-4)
    # commitment is measured against the codes *before* the update: mean of ||x - e||^2 / dim
    assert out.commitment.item() == pytest.approx((1 + 1 + 2) / 6)
    # closer to the assigned means than before
    assert torch.dist(q.codebooks[0, 0], torch.tensor([0.5, 0.5])) < torch.dist(
        torch.zeros(2), torch.tensor([0.5, 0.5])
    )


def test_dead_codes_are_reseeded_from_current_residuals():
    torch.manual_seed(2)
    q = ResidualQuantizer(2, 2, levels=2, codes=3, encoder="identity", decay=0.1, dead_threshold=0.5)
    q.set_codebooks(torch.tensor([[[0.0, 0.0], [100.0, 100.0], [-100.0, 50.0]], [[0.0, 0.0], [0.1, 0.0], [0.0, 0.1]]]))
    x = torch.tensor([[0.5, 0.2], [0.3, -0.4], [-0.2, 0.1], [0.1, 0.6]])
    q.train()
    q(x)
    # level 0: codes 1 and 2 unused -> N = 0.1 < 0.5 -> replaced by rows of the level-0 residuals (= x)
    for j in (1, 2):
        assert any(torch.equal(q.codebooks[0, j], row) for row in x)
        assert q.cluster_size[0, j].item() == 1.0
    # the used code 0 follows the EMA: S = .1*0 + .9*sum(x), N = .1 + .9*4
    expected = 0.9 * x.sum(0) / (0.1 + 0.9 * 4)
    assert torch.allclose(q.codebooks[0, 0], expected, atol=1e-4)
    usage = q.codebook_usage()
    assert usage["used_share"][0] == 1.0


def test_codebook_usage_from_codes_by_hand():
    q = ResidualQuantizer(2, 2, levels=2, codes=4, encoder="identity")
    codes = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 3]])
    usage = q.codebook_usage(codes)
    assert usage["perplexity"] == pytest.approx([2.0, 4.0])
    assert usage["used_share"] == pytest.approx([0.5, 1.0])


def test_gradient_codebooks_get_codebook_loss_gradients():
    torch.manual_seed(3)
    q = ResidualQuantizer(4, 3, levels=2, codes=4, encoder="linear", update="grad")
    assert isinstance(q.codebooks, torch.nn.Parameter)
    q.train()
    out = q(torch.randn(32, 4))
    assert out.codebook_loss.item() > 0
    out.loss.backward()
    assert q.codebooks.grad is not None and q.codebooks.grad.abs().sum() > 0
    assert q.encoder.weight.grad.abs().sum() > 0


def hand_adam(q: ResidualQuantizer, x: torch.Tensor, steps: int, lr: float = 1e-3) -> None:
    """Adam (beta 0.9 / 0.999) written out: torch.optim's first use imports torch._dynamo (~7 s)."""
    params = [p for p in q.parameters() if p.requires_grad]
    m1 = [torch.zeros_like(p) for p in params]
    m2 = [torch.zeros_like(p) for p in params]
    g = torch.Generator().manual_seed(0)
    q.train()
    for t in range(1, steps + 1):
        out = q(x[torch.randint(len(x), (200,), generator=g)])
        for p in params:
            p.grad = None
        out.loss.backward()
        with torch.no_grad():
            for p, a, b in zip(params, m1, m2, strict=True):
                a.mul_(0.9).add_(p.grad, alpha=0.1)
                b.mul_(0.999).addcmul_(p.grad, p.grad, value=0.001)
                p.sub_(lr * (a / (1 - 0.9**t)) / ((b / (1 - 0.999**t)).sqrt() + 1e-8))


def test_input_norm_l2_scale_invariance_and_reconstruction_target():
    torch.manual_seed(14)
    q = ResidualQuantizer(6, 4, levels=2, codes=5, encoder="mlp", recon_weight=1.0, input_norm="l2")
    x = torch.randn(40, 6)
    expected = q.encoder(x / x.norm(dim=1, keepdim=True) * 6**0.5)
    assert torch.allclose(q.encode(x), expected, atol=1e-6)
    # only the direction of an item vector matters; a power-of-two scale keeps the direction bit for bit
    assert torch.equal(q.assign(x), q.assign(2.0**-7 * x))
    q.eval()
    out = q(0.01 * x)
    target = x / x.norm(dim=1, keepdim=True) * 6**0.5  # the decoder reconstructs what the encoder sees
    assert out.reconstruction.item() == pytest.approx(F.mse_loss(q.decoder(out.quantized), target).item())
    with pytest.raises(ValueError, match="input_norm"):
        ResidualQuantizer(6, 4, input_norm="layer")


def test_glorot_scale_items_collapse_level_one_without_input_norm():
    """Glorot-scale item vectors (norm ~0.1): a fresh MLP encoder's output is dominated by its bias, and a
    few Adam steps move the whole tiny cloud onto one level-1 code; unit-norm inputs keep the codes in use."""
    ppl = {}
    for norm in ("none", "l2"):
        torch.manual_seed(15)
        x = (torch.rand(600, 16) * 2 - 1) * (6 / (600 + 16)) ** 0.5  # glorot_uniform rows
        q = ResidualQuantizer(16, 8, levels=2, codes=8, encoder="mlp", recon_weight=1.0, input_norm=norm)
        hand_adam(q, x, 30)
        ppl[norm] = q.codebook_usage(q.assign(x))["perplexity"][0]
    assert ppl["none"] < 2.5  # (nearly) the whole catalogue in one or two level-1 codes
    assert ppl["l2"] > 5.0  # of 8


# ----------------------------------------------------------------------------- MIPDM beam search
def enumerate_log_probs(model: GemiRec, h: torch.Tensor) -> tuple[list[tuple[int, ...]], torch.Tensor]:
    """Independent slow reference: log p of every tuple, head by head, one tuple at a time."""
    M, C = model.generator.codes_per_level, model.generator.levels
    tuples = list(itertools.product(range(M), repeat=C))
    out = torch.zeros(h.shape[0], len(tuples))
    for t, tup in enumerate(tuples):
        g = h.clone()
        for c in range(C):
            out[:, t] += F.log_softmax(model.generator.heads[c](g), dim=-1)[:, tup[c]]
            g = g + model.generator.prefix_embedding.weight[c * M + tup[c]]
    return tuples, out


@pytest.mark.parametrize("levels,codes", [(2, 4), (3, 3)])
def test_beam_search_returns_exact_top_tuples(levels, codes):
    torch.manual_seed(4)
    cfg = tiny_config(
        idmm_levels=levels,
        idmm_codes=codes,
        num_interests=5,
        beam_width=max(codes ** (levels - 1), 5),
        beam_distinct_prefix=False,  # the plain top-k search (5 interests from 4 first codes)
    )
    model = GemiRec(cfg, 20).eval()
    for p in model.generator.heads.parameters():  # sharper, tie-free distributions
        p.data.mul_(3.0)
    h = torch.randn(6, cfg.embedding_dim)
    with torch.no_grad():
        got, scores = model.beam_search(h, 5, distinct_prefix=False)
        tuples, logp = enumerate_log_probs(model, h)
    assert torch.allclose(logp.exp().sum(1), torch.ones(6), atol=1e-5)  # a distribution over M^C tuples
    best = logp.topk(5, dim=1)
    for b in range(6):
        expected = [tuples[i] for i in best.indices[b].tolist()]
        assert [tuple(r) for r in got[b].tolist()] == expected
        assert torch.allclose(scores[b], best.values[b], atol=1e-5)
    # scores are the teacher-forced log-probabilities of the returned tuples
    with torch.no_grad():
        assert torch.allclose(model.code_log_probs(h[:, None].expand(-1, 5, -1), got), scores, atol=1e-5)
    # a narrow beam still returns K distinct tuples with their true log-probabilities
    with torch.no_grad():
        narrow, narrow_scores = model.beam_search(h, 5, beam_width=5, distinct_prefix=False)
        assert torch.allclose(model.code_log_probs(h[:, None].expand(-1, 5, -1), narrow), narrow_scores, atol=1e-5)
    assert all(len({tuple(r) for r in narrow[b].tolist()}) == 5 for b in range(6))


def best_distinct_prefix_tuples(
    tuples: list[tuple[int, ...]], logp: torch.Tensor, k: int
) -> tuple[list[tuple[int, ...]], list[float]]:
    """Slow reference: the best tuple of every first code, then the k best of those (one row of logp)."""
    best: dict[int, tuple[tuple[int, ...], float]] = {}
    for tup, value in zip(tuples, logp.tolist(), strict=True):
        if tup[0] not in best or value > best[tup[0]][1]:
            best[tup[0]] = (tup, value)
    chosen = sorted(best.values(), key=lambda pair: -pair[1])[:k]
    return [t for t, _ in chosen], [v for _, v in chosen]


@pytest.mark.parametrize("levels,codes", [(2, 4), (3, 3), (2, 6), (1, 6)])
def test_distinct_prefix_beam_returns_the_best_tuples_with_distinct_first_codes(levels, codes):
    torch.manual_seed(12)
    k = 3
    width = max(codes, codes ** max(levels - 2, 0), k)  # wide enough to be exact
    cfg = tiny_config(idmm_levels=levels, idmm_codes=codes, num_interests=k, beam_width=width)
    model = GemiRec(cfg, 20).eval()
    for p in model.generator.heads.parameters():
        p.data.mul_(3.0)
    h = torch.randn(8, cfg.embedding_dim)
    with torch.no_grad():
        got, scores = model.beam_search(h, k, distinct_prefix=True)
        plain, _ = model.beam_search(h, k, distinct_prefix=False)
        tuples, logp = enumerate_log_probs(model, h)
    for b in range(8):
        expected, values = best_distinct_prefix_tuples(tuples, logp[b], k)
        assert [tuple(r) for r in got[b].tolist()] == expected
        assert torch.allclose(scores[b], torch.tensor(values), atol=1e-5)
        assert len(set(got[b, :, 0].tolist())) == k
    if levels > 1:  # the unconstrained top-k shares first codes somewhere, so the constraint is not vacuous
        assert any(len(set(plain[b, :, 0].tolist())) < k for b in range(8))


def slow_mmr(scores: list[float], unit: torch.Tensor, k: int, weight: float) -> list[int]:
    chosen: list[int] = []
    for _ in range(k):

        def value(g):
            penalty = max((float(unit[g] @ unit[c]) for c in chosen), default=0.0)
            return scores[g] - weight * penalty

        chosen.append(max((g for g in range(len(scores)) if g not in chosen), key=value))
    return chosen


@pytest.mark.parametrize("weight", [0.0, 0.3, 2.0, 50.0])
def test_diverse_selection_equals_a_slow_greedy_mmr(weight):
    from mirec.models.gemirec.generator import diverse_selection

    g = torch.Generator().manual_seed(3)
    scores = torch.randn(5, 7, generator=g, dtype=torch.float64)
    unit = F.normalize(torch.randn(5, 7, 3, generator=g, dtype=torch.float64), dim=-1)
    order, chosen = diverse_selection(scores, unit, 4, weight)
    for b in range(5):
        assert order[b].tolist() == slow_mmr(scores[b].tolist(), unit[b], 4, weight)
        assert chosen[b].tolist() == scores[b, order[b]].tolist()
    if weight == 0.0:  # no penalty: the plain top-k, best first
        assert order.tolist() == scores.topk(4, dim=1).indices.tolist()


def test_beam_diversity_picks_among_the_first_code_candidates_by_mmr():
    torch.manual_seed(8)
    model = GemiRec(tiny_config(num_interests=3, idmm_codes=5, beam_width=5), 40)
    model.train()
    batch = make_batch([2, 5, 8, 3, 6, 4], 8, 40, seed=9)
    model.training_output(batch)  # init the dictionary
    model.eval()
    with torch.no_grad():
        h, _ = model._encode(batch)
        h = h[torch.arange(6), batch.mask.sum(1).long() - 1]
        plain = model.beam_search(h, 3)
        model.config = dataclasses.replace(model.config, beam_diversity=1.5)
        codes, logp = model.beam_search(h, 3)
        candidates, cand_logp = model.generator.first_code_candidates(h, 5)
        unit = F.normalize(model.retrieval.interest_norm(model.dictionary.quantizer.lookup(candidates)), dim=-1)
    top = cand_logp.topk(3, dim=1).indices
    assert torch.equal(plain[0], candidates.gather(1, top[..., None].expand(-1, -1, 2)))  # weight 0 = top-k
    for b in range(6):
        expected = slow_mmr(cand_logp[b].tolist(), unit[b], 3, 1.5)
        assert codes[b].tolist() == candidates[b, expected].tolist()
        assert logp[b].tolist() == pytest.approx(cand_logp[b, expected].tolist())
        assert len(set(codes[b, :, 0].tolist())) == 3  # still distinct first codes
    assert not torch.equal(codes, plain[0])  # the penalty changed some user's choice (fixed seed)
    with pytest.raises(ValueError, match="beam_diversity"):
        GemiRec(tiny_config(beam_diversity=-0.1), 10)
    with pytest.raises(ValueError, match="beam_distinct_prefix"):
        GemiRec(tiny_config(beam_diversity=1.0, beam_distinct_prefix=False), 10)


def test_distinct_prefix_narrow_beam_and_default_switch():
    torch.manual_seed(13)
    cfg = tiny_config(idmm_levels=3, idmm_codes=5, num_interests=3, beam_width=3, beam_distinct_prefix=True)
    model = GemiRec(cfg, 20).eval()
    h = torch.randn(6, cfg.embedding_dim)
    with torch.no_grad():
        codes, scores = model.beam_search(h, 3)  # the config switch selects the constrained search
        top_first = F.log_softmax(model.generator.heads[0](h), -1).topk(3, dim=1).indices
        true = model.code_log_probs(h[:, None].expand(-1, 3, -1), codes)
    assert torch.allclose(true, scores, atol=1e-5)  # returned scores are the tuples' log-probabilities
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())  # best first
    for b in range(6):  # distinct first codes, drawn from the beam_width most probable ones
        assert sorted(codes[b, :, 0].tolist()) == sorted(top_first[b].tolist())


# ----------------------------------------------------------------------------- model contract
def test_generated_interests_are_distinct():
    torch.manual_seed(5)
    model = GemiRec(tiny_config(), 30).eval()
    batch = make_batch([3, 8, 1, 5], 8, 30)
    with torch.no_grad():
        codes, _ = model.generate(batch)
        interests = model(batch)
    assert interests.shape == (4, 4, 16)
    for b in range(4):
        assert len({tuple(r) for r in codes[b].tolist()}) == 4
        dist = torch.cdist(interests[b], interests[b])
        assert dist[~torch.eye(4, dtype=torch.bool)].min() > 1e-4


def test_padding_invariance_in_eval_mode():
    torch.manual_seed(6)
    cfg = tiny_config(maxlen=10)
    model = GemiRec(cfg, 30).eval()
    batch = make_batch([3, 6, 1], 6, 30)
    padded = Batch(
        items=torch.cat([batch.items, torch.randint(1, 31, (3, 4))], 1),  # garbage ids in padded slots
        mask=torch.cat([batch.mask, torch.zeros(3, 4)], 1),
        days=torch.cat([batch.days, torch.zeros(3, 4, dtype=torch.long)], 1),
    )
    padded.items[0, 3:6] = 7  # also garbage inside the original padding
    padded.mask[0, 3:6] = 0
    with torch.no_grad():
        a, b = model(batch), model(padded)
        alone = model(Batch(batch.items[1:2], batch.mask[1:2], batch.days[1:2]))
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a[1:2], alone, atol=1e-5)


def train_steps(model: GemiRec, steps: int, n_items: int) -> None:
    model.train()
    for step in range(1, steps + 1):
        batch = make_batch([2, 5, 8, 3, 6, 4], model.config.maxlen, n_items, seed=step)
        output = model.training_output(batch)
        user, aux = output.user_vectors, output.aux_loss
        logits = user @ model.output_embeddings().T
        loss = F.cross_entropy(logits, batch.targets) + aux
        model.zero_grad()
        loss.backward()
        with torch.no_grad():  # plain SGD by hand: torch.optim's first use imports torch._dynamo (~7 s)
            for p in model.parameters():
                if p.grad is not None:
                    p.sub_(0.1 * p.grad)
        model.on_step_end(step)


def test_state_dict_round_trip_via_safetensors(tmp_path):
    torch.manual_seed(7)
    model = GemiRec(tiny_config(), 40)
    train_steps(model, 3, 40)
    model.eval()
    batch = make_batch([4, 8, 2], 8, 40, seed=99)
    with torch.no_grad():
        before = model(batch)
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(path))
    state = load_file(str(path))
    for key in (
        "dictionary.quantizer.codebooks",
        "dictionary.quantizer.cluster_size",
        "dictionary.quantizer.initialized",
        "dictionary.item_codes",
    ):
        assert key in state
    torch.manual_seed(123)
    fresh = GemiRec(tiny_config(), 40)
    fresh.load_state_dict(state, strict=True)
    fresh.eval()
    with torch.no_grad():
        after = fresh(batch)
    assert torch.equal(fresh.dictionary.item_codes, model.dictionary.item_codes)
    assert torch.allclose(before, after, atol=1e-6)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"mirm_fusion": "gated", "user_encoder": "separate", "idmm_update": "grad"},
        {"mirm_fusion": "code"},
        {"mipdm_input": "code", "idmm_recon_weight": 0.0},
        {"idmm_input_norm": "l2", "beam_distinct_prefix": True},
    ],
)
def test_training_output_teacher_forcing_and_gradients(options):
    torch.manual_seed(8)
    cfg = tiny_config(lambda_mipdm=0.7, lambda_idmm=1.3, idmm_encoder="linear", mirm_teacher_prob=1.0, **options)
    model = GemiRec(cfg, 40)
    model.train()
    batch = make_batch([2, 5, 8, 3], 8, 40, seed=3)
    model.training_output(batch)  # first call: k-means init on this batch + catalogue assignment
    assert bool(model.dictionary.quantizer.initialized) and bool(model.dictionary.codes_ready)
    model.zero_grad()
    expected_codes = model.dictionary.quantizer.assign(
        model.embed_items(batch.targets)
    )  # before this step's EMA update
    output = model.training_output(batch)
    user, aux, terms = output.user_vectors, output.aux_loss, output.terms
    with torch.no_grad():
        h, u_seq = model._encode(batch)
        ref = model.interest_vectors(u_seq, expected_codes[:, None])[:, 0]
        ce = -model.code_log_probs(h[torch.arange(4), batch.mask.sum(1).long() - 1], expected_codes).mean()
    assert torch.allclose(user, ref, atol=1e-6)
    assert torch.isfinite(aux)
    losses = {k: float(v) for k, v in terms.items()}
    assert losses["mipdm_ce"] == pytest.approx(float(ce), rel=1e-5)
    idmm = losses["codebook"] + 0.25 * losses["commitment"] + cfg.idmm_recon_weight * losses["reconstruction"]
    assert (losses["codebook"] > 0) == (cfg.idmm_update == "grad")  # EMA codebooks: no codebook loss
    assert aux.item() == pytest.approx(0.7 * losses["mipdm_ce"] + 1.3 * idmm, rel=1e-5)
    (aux + user.sum()).backward()
    groups = {
        "interest encoder": model.dictionary.quantizer.encoder.parameters(),
        "sequence encoder": model.generator.sequence.parameters(),
        "MIPDM heads": model.generator.heads.parameters(),
        "MIRM fusion": model.retrieval.fusion.parameters(),
    }
    if cfg.mipdm_input != "code" or cfg.user_encoder == "separate":
        groups["item table"] = [model.item_embedding.weight]
    if cfg.mipdm_input != "item":
        groups["code embeddings"] = [model.generator.code_embedding.weight]
    if cfg.user_encoder == "separate":
        groups["user encoder"] = model.generator.user_sequence.parameters()
    for name, params in groups.items():
        assert sum(float(p.grad.abs().sum()) for p in params if p.grad is not None) > 0, name


def test_code_fusion_gives_one_vector_per_tuple_whatever_the_user():
    from mirec.models.gemirec.retrieval import InterestRetrieval

    torch.manual_seed(5)
    retrieval = InterestRetrieval(tiny_config(mirm_fusion="code"))
    width = retrieval.interest_norm.normalized_shape[0]
    codes = torch.randn(3, width)
    interests = codes[torch.tensor([[0, 1, 2], [2, 0, 0]])]  # user 1 holds tuple 2 then tuple 0 twice
    u_seq = torch.randn(2, tiny_config().embedding_dim, requires_grad=True)
    out = retrieval(u_seq, interests)
    assert torch.allclose(out[0, 0], out[1, 1]) and torch.allclose(out[1, 1], out[1, 2])  # tuple 0, any user
    assert torch.allclose(out[0, 2], out[1, 0]) and not torch.allclose(out[0, 0], out[0, 1])
    assert torch.allclose(out, retrieval(torch.randn_like(u_seq), interests))  # the user vector is not read
    mlp = InterestRetrieval(tiny_config(mirm_fusion="mlp"))
    assert not torch.allclose(mlp(u_seq, interests)[0, 0], mlp(u_seq, interests)[1, 1])  # "mlp" reads the user


@pytest.mark.parametrize("teacher", [0.0, 0.5])
def test_readout_over_generated_interests(teacher):
    torch.manual_seed(16)
    cfg = tiny_config(mirm_teacher_prob=teacher, beam_distinct_prefix=True, idmm_input_norm="l2")
    model = GemiRec(cfg, 40)
    model.train()
    batch = make_batch([2, 5, 8, 3, 6, 4, 7, 1], 8, 40, seed=6)
    model.training_output(batch)  # init
    target_codes = model.dictionary.quantizer.assign(model.embed_items(batch.targets))
    torch.manual_seed(17)
    output = model.training_output(batch)
    user, aux = output.user_vectors, output.aux_loss
    with torch.no_grad():  # mipdm_dropout = 0: the reference pass sees the same encodings
        h, u_seq = model._encode(batch)
        generated, _ = model.beam_search(h[torch.arange(8), batch.mask.sum(1).long() - 1], cfg.num_interests)
        interests = model.interest_vectors(u_seq, generated)  # [B, K, d]
        target_vectors = model.output_embeddings(batch.targets)
        teacher_vectors = model.interest_vectors(u_seq, target_codes[:, None])[:, 0]
    assert all(len(set(generated[b, :, 0].tolist())) == cfg.num_interests for b in range(8))
    kinds = []
    for b in range(8):  # slow reference: the generated interest with the largest inner product, row by row
        best = max(range(cfg.num_interests), key=lambda j: float(interests[b, j] @ target_vectors[b]))
        is_read = torch.allclose(user[b], interests[b, best], atol=1e-5)
        is_teacher = torch.allclose(user[b], teacher_vectors[b], atol=1e-5)
        assert is_read or (teacher > 0 and is_teacher), b
        kinds.append((is_read, is_teacher))
    if teacher == 0.5:  # both kinds of rows occur (fixed seed)
        assert (True, False) in kinds and (False, True) in kinds
    if teacher == 0.0:
        assert all(
            torch.allclose(user[b], interests[b, int((interests[b] @ target_vectors[b]).argmax())], atol=1e-5)
            for b in range(8)
        )
    model.zero_grad()
    (aux + user.sum()).backward()
    for name, params in {
        "MIRM fusion": model.retrieval.fusion.parameters(),
        "sequence encoder": model.generator.sequence.parameters(),
        "MIPDM heads": model.generator.heads.parameters(),
    }.items():
        assert sum(float(p.grad.abs().sum()) for p in params if p.grad is not None) > 0, name


@pytest.mark.parametrize("base", ["none", "comirec-sa"])
def test_generated_diversity_adds_the_weighted_mean_pairwise_cosine_of_the_generated_interests(base):
    import copy

    torch.manual_seed(21)
    model = GemiRec(tiny_config(base=base, num_interests=3), 40)
    model.train()
    batch = make_batch([2, 5, 8, 3, 6, 4], 8, 40, seed=7)
    model.training_output(batch)  # init the dictionary
    penalised = copy.deepcopy(model)
    penalised.config = dataclasses.replace(model.config, generated_diversity=0.7)
    plain = model.training_output(batch)
    out = penalised.training_output(batch)
    assert "generated_cosine" not in plain.terms
    with torch.no_grad():  # slow reference on the same state: cosine of every pair of generated interests
        h, u_seq = penalised._encode(batch)
        generated, _ = penalised.beam_search(h[torch.arange(6), batch.mask.sum(1).long() - 1], 3)
        interests = penalised.interest_vectors(u_seq, generated)
    per_user = []
    for b in range(6):
        pairs = [(i, j) for i in range(3) for j in range(i + 1, 3)]
        cos = [
            float(interests[b, i] @ interests[b, j] / (interests[b, i].norm() * interests[b, j].norm()))
            for i, j in pairs
        ]
        per_user.append(sum(cos) / len(cos))
    expected = sum(per_user) / len(per_user)
    assert float(out.terms["generated_cosine"]) == pytest.approx(expected, abs=1e-5)
    assert float((out.aux_loss - plain.aux_loss).detach()) == pytest.approx(0.7 * expected, abs=1e-5)
    penalised.zero_grad()
    out.aux_loss.backward()  # the fusion enters aux through the penalty only
    assert sum(float(p.grad.abs().sum()) for p in penalised.retrieval.fusion.parameters()) > 0
    with pytest.raises(ValueError, match="generated_diversity"):
        GemiRec(tiny_config(generated_diversity=-1.0), 10)


def test_maintenance_schedule_refreshes_catalogue_codes():
    torch.manual_seed(9)
    model = GemiRec(tiny_config(maintenance_every=5), 25)
    model.refresh_assignments()
    with torch.no_grad():
        model.dictionary.quantizer.codebooks.mul_(-1.0)  # the dictionary moved
    target = model.dictionary.quantizer.assign(model.output_embeddings())
    assert not torch.equal(target, model.dictionary.item_codes)
    model.on_step_end(3)
    assert not torch.equal(target, model.dictionary.item_codes)
    model.on_step_end(5)
    assert torch.equal(target, model.dictionary.item_codes)
    usage = model.codebook_usage()
    assert len(usage["perplexity"]) == 2 and all(1.0 <= p <= 5.0 for p in usage["perplexity"])


@pytest.mark.parametrize("dataset", ["default", "amazon-grocery", "amazon-beauty", "yelp-b"])
def test_presets_load(dataset):
    config = load_config(model="gemirec", dataset=dataset)
    assert isinstance(config.model, GemiRecConfig)
    config.model.check()


def test_bad_config_is_rejected_with_a_clear_message():
    with pytest.raises(ValueError, match="beam_width"):
        GemiRec(tiny_config(beam_width=2), 10)
    with pytest.raises(ValueError, match="mirm_fusion"):
        GemiRec(tiny_config(mirm_fusion="sum"), 10)
    with pytest.raises(ValueError, match="beam_distinct_prefix"):
        GemiRec(tiny_config(idmm_codes=3, beam_distinct_prefix=True), 10)  # 3 first codes for 4 interests
    with pytest.raises(ValueError, match="mirm_teacher_prob"):
        GemiRec(tiny_config(mirm_teacher_prob=1.5), 10)
    with pytest.raises(ValueError, match="idmm_input_norm"):
        GemiRec(tiny_config(idmm_input_norm="batch"), 10)


def test_all_positions_cross_entropy_by_hand():
    torch.manual_seed(10)
    model = GemiRec(tiny_config(mipdm_all_positions=True), 30)
    model.train()
    batch = make_batch([3, 1, 5], 8, 30, seed=4)
    model.training_output(batch)  # init
    target_codes = model.dictionary.quantizer.assign(model.embed_items(batch.targets))
    logged = model.training_output(batch).terms
    with torch.no_grad():
        h, _ = model._encode(batch)
        terms = []
        for b, n in enumerate([3, 1, 5]):  # slow reference: one position at a time
            for t in range(n):
                nxt = model.dictionary.item_codes[batch.items[b, t + 1]] if t < n - 1 else target_codes[b]
                terms.append(-model.code_log_probs(h[b, t], nxt))
    assert float(logged["mipdm_ce"]) == pytest.approx(float(torch.stack(terms).mean()), rel=1e-5)


def test_uniform_catalogue_items_enter_the_idmm_update():
    torch.manual_seed(11)
    model = GemiRec(tiny_config(idmm_uniform_items=400, idmm_dead_threshold=0.0), 40)
    model.train()
    batch = make_batch([2, 3], 8, 40, seed=5)
    model.training_output(batch)  # init
    before = model.dictionary.quantizer.cluster_size.sum(1).clone()
    model.training_output(batch)
    # EMA counts: N <- 0.99 N + 0.01 n, and n sums to the 40 distinct catalogue items (400 uniform draws)
    expected = 0.99 * before + 0.01 * 40
    assert torch.allclose(model.dictionary.quantizer.cluster_size.sum(1), expected, atol=1e-4)


def test_the_logged_code_perplexity_is_that_of_the_batch_codes():
    torch.manual_seed(12)
    model = GemiRec(tiny_config(), 30)
    model.train()
    batch = make_batch([3, 4, 2], 8, 30, seed=6)
    model.training_output(batch)  # init
    ids = torch.unique(torch.cat([batch.targets, batch.items[batch.mask > 0]]))
    codes = model.dictionary.quantizer.assign(model.embed_items(ids))
    terms = model.training_output(batch).terms
    for level in range(codes.shape[1]):  # slow reference: exp(entropy) of the code frequencies
        _, counts = torch.unique(codes[:, level], return_counts=True)
        p = counts.double() / counts.sum()
        expected = float(torch.exp(-(p * p.log()).sum()))
        assert float(terms[f"code_perplexity_l{level + 1}"]) == pytest.approx(expected, rel=1e-6)


def test_a_gemirec_saved_before_the_module_split_loads_and_serves_identically():
    """tests/fixtures/gemirec_before_split.safetensors: weights and served interests written by the one-file
    GemiRec (commit a69ee81 + the training-output change) after three training steps."""
    state = load_file(str(FIXTURES / "gemirec_before_split.safetensors"))
    expected = state.pop("expected_interests")
    assert "heads.0.1.weight" in state and "quantizer.codebooks" in state  # the old names
    model = GemiRec(tiny_config(user_encoder="separate"), 30)
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        got = model(make_batch([4, 6, 1], 8, 30, seed=9))
    # written on another CPU: its kernels round differently (7.5e-8 seen on an AMD EPYC), so not bit-equal
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert bool(model.dictionary.codes_ready)


# ----------------------------------------------------------------------------- GemiRec over a base model
BASES = ["comirec-sa", "comirec-dr", "mind", "pimi", "gimirec"]


def base_pair(base: str, generative: bool, seed: int = 0, n_items: int = 30, **gemirec_options):
    """A plain base model and a GemiRec over the same base holding the same weights (one shared global context)."""
    from mirec.models import get_model_class
    from tests.models.test_gimirec import DenseContext

    cls = get_model_class(base)
    torch.manual_seed(seed)
    options = dict(embedding_dim=16, num_interests=3, maxlen=8)
    plain = cls(cls.config_class(name=base, **options), n_items)
    wrapped = GemiRec(tiny_config(base=base, generative=generative, num_interests=3, **gemirec_options), n_items)
    if base == "gimirec":
        A = torch.rand(n_items + 1, n_items + 1)
        context = DenseContext(A / A.sum(1, keepdim=True))
        plain.global_context = context
        wrapped.global_context = context
    state = {("" if k == "item_embedding.weight" else "base.") + k: v for k, v in plain.state_dict().items()}
    if generative:
        wrapped.load_state_dict(state, strict=False)
    else:
        wrapped.load_state_dict(state)  # strict: exactly the base's parameters, the item table once
    return plain, wrapped


@pytest.mark.parametrize("base", BASES)
def test_gemirec_without_its_generative_part_is_its_base(base):
    plain, wrapped = base_pair(base, generative=False)
    assert wrapped.num_interests == plain.num_interests == 3
    assert sum(p.numel() for p in wrapped.parameters()) == sum(p.numel() for p in plain.parameters())
    batch = make_batch([3, 8, 5, 1], 8, 30, seed=2)
    for mode in ("eval", "train"):  # dropout draws made equal by the seed
        getattr(plain, mode)()
        getattr(wrapped, mode)()
        torch.manual_seed(5)
        expected = plain(batch), plain.training_output(batch)
        torch.manual_seed(5)
        got = wrapped(batch), wrapped.training_output(batch)
        assert torch.equal(got[0], expected[0])
        assert torch.equal(got[1].user_vectors, expected[1].user_vectors) and got[1].aux_loss is None


@pytest.mark.parametrize("base", ["comirec-sa", "gimirec"])
def test_gemirec_over_a_base_serves_the_bases_interests_then_the_generated_ones(base):
    plain, wrapped = base_pair(base, generative=True)
    wrapped.eval()
    plain.eval()
    batch = make_batch([3, 8, 5], 8, 30, seed=3)
    with torch.no_grad():
        served = wrapped(batch)
        assert served.shape == (3, 6, 16) and wrapped.num_interests == 6
        assert torch.equal(served[:, :3], plain(batch))  # the base's K interests come first, unchanged
    wrapped.train()
    out = wrapped.training_output(batch)
    assert torch.isfinite(out.aux_loss) and "mipdm_ce" in out.terms
    (out.user_vectors.sum() + out.aux_loss).backward()
    assert wrapped.item_embedding.weight.grad is not None  # one table, trained through both parts


def full_loss(model, detach_items: bool = False):
    """Full softmax of user vectors against the model's items (detached: no gradient reaches them)."""
    from mirec.nn.sampled_softmax import full_softmax_loss

    def items(ids=None):
        vectors = model.output_embeddings(ids)
        return vectors.detach() if detach_items else vectors

    return lambda user_vectors, targets: full_softmax_loss(user_vectors, targets, items)


@pytest.mark.parametrize("base", ["comirec-sa", "gimirec"])
def test_with_item_table_gradient_base_only_the_bases_loss_trains_the_item_table(base):
    plain, wrapped = base_pair(base, generative=True, item_table_gradient="base")
    plain.eval(), wrapped.eval()  # no dropout draws: the base's forward must be the same computation
    batch = make_batch([3, 8, 5, 6], 8, 30, seed=4)
    out = wrapped.training_output(batch)
    assert out.side_user_vectors is not None and out.side_user_vectors.shape == (4, 16)
    assert torch.equal(out.user_vectors, plain.training_output(batch).user_vectors)  # the base's own readout
    loss = full_loss(wrapped)(out.user_vectors, batch.targets) + full_loss(wrapped, detach_items=True)(
        out.side_user_vectors, batch.targets
    )
    (loss + out.aux_loss).backward()
    full_loss(plain)(plain.training_output(batch).user_vectors, batch.targets).backward()
    assert torch.allclose(wrapped.item_embedding.weight.grad, plain.item_embedding.weight.grad, atol=1e-7)
    generator_grads = [p.grad for p in wrapped.generator.parameters() if p.grad is not None]
    assert generator_grads and any(float(g.abs().sum()) > 0 for g in generator_grads)  # the generator still learns
    # "all" (joint training): the generator's losses reach the table
    _, joint = base_pair(base, generative=True, item_table_gradient="all")
    joint.eval()
    out = joint.training_output(batch)
    out.aux_loss.backward()
    assert float(joint.item_embedding.weight.grad.abs().sum()) > 0


def test_the_trainers_detached_loss_leaves_the_item_table_alone(tmp_path):
    from mirec.training.trainer import Trainer
    from tests.training.test_trainer import cycle_dataset

    cycle_dataset().save(tmp_path / "data")
    options = ["model.embedding_dim=8", "model.maxlen=8", "train.batch_size=4", "train.device=cpu"]
    config = load_config(model="comirec-sa", overrides=options)
    trainer = Trainer(tmp_path / "data", config, tmp_path / "run", progress=False, test=False)
    user = torch.randn(4, 8, requires_grad=True)
    targets = torch.tensor([1, 2, 3, 4])
    trainer.generator.manual_seed(3)  # the same negatives for both
    attached = trainer.loss(user, targets)
    attached.backward()
    user_grad, user.grad = user.grad.clone(), None
    assert float(trainer.model.item_embedding.weight.grad.abs().sum()) > 0
    trainer.model.zero_grad(set_to_none=True)
    trainer.generator.manual_seed(3)
    detached = trainer.loss(user, targets, detach_items=True)
    detached.backward()
    assert trainer.model.item_embedding.weight.grad is None
    assert float(detached.detach()) == pytest.approx(float(attached.detach()))
    assert torch.allclose(user.grad, user_grad)


def test_a_generated_share_gives_the_generated_interests_their_slots(tmp_path):
    import json

    from mirec.config import EvalConfig
    from mirec.data.batching import iter_eval_batches
    from mirec.eval.diversity import interest_cosine
    from mirec.eval.evaluator import evaluate
    from mirec.eval.retrieval import ExactRetriever, merge_interests_full, merge_with_reserved_share
    from tests.training.test_trainer import cycle_dataset

    assert "generated" not in GemiRec(tiny_config(), 30).interest_groups()  # standalone: nothing is extracted
    assert "generated" not in base_pair("comirec-sa", generative=False)[1].interest_groups()
    _, wrapped = base_pair("comirec-sa", generative=True, n_items=120)
    assert wrapped.interest_groups()["generated"] == slice(3, 6)  # after the base's 3 interests
    wrapped.eval()
    with torch.no_grad():  # small generated interests: the plain merge would give them few slots
        for parameter in wrapped.retrieval.parameters():
            parameter.mul_(0.1)
    dataset = cycle_dataset()
    # the expected lists, by hand: every test user's 6 interests, exact search, the merge with 8 of 10 reserved
    retriever = ExactRetriever(wrapped.output_embeddings().detach())
    expected, from_generated, plain_from_generated, base_cosines, cross_cosines = [], [], [], [], []
    with torch.no_grad():
        for eb in iter_eval_batches(dataset.split("test"), 8, 1024):
            interests = wrapped(eb.batch)
            scores, ids = retriever.search(interests, 10)
            out_ids, _, source = merge_with_reserved_share(scores, ids, 10, slice(3, None), 0.8)
            base_cosines += [float(interest_cosine(interests[u, :3][None])[0]) for u in range(len(interests))]
            cross_cosines += [
                float(F.cosine_similarity(interests[u, :3, None], interests[u, None, 3:], dim=2).mean())
                for u in range(len(interests))
            ]
            expected += [[str(dataset.item_original_ids[i]) for i in row if i > 0] for row in out_ids.tolist()]
            from_generated += (source >= 3).sum(1).tolist()
            plain_from_generated += (merge_interests_full(scores, ids, 10)[2] >= 3).sum(1).tolist()
    assert min(from_generated) >= 8 > min(plain_from_generated)  # round(0.8 * 10) slots, which the plain merge
    config = EvalConfig(topk=[10], generated_share=0.8)
    result = evaluate(wrapped, dataset, "test", config, maxlen=8, dump_path=tmp_path / "r")
    assert [json.loads(line)["recommendations"] for line in open(tmp_path / "r")] == expected
    assert result["collapse"]["generated_list_share"] == pytest.approx(np.mean(from_generated) / 10)
    assert result["collapse"]["interest_cosine_base"] == pytest.approx(np.mean(base_cosines), abs=1e-6)
    assert result["collapse"]["interest_cosine_cross"] == pytest.approx(np.mean(cross_cosines), abs=1e-6)
    with pytest.raises(Exception, match="generated_share"):
        load_config(model="gemirec", overrides=["eval.generated_share=1.5"])
    for model, extra in (
        ("comirec-sa", []),
        ("gemirec", []),
        ("gemirec", ["model.base=pimi", "model.generative=false"]),
    ):
        with pytest.raises(Exception, match="needs a model that serves generated interests"):
            load_config(model=model, overrides=["eval.generated_share=0.2", *extra])
    over_sa = ["model.base=comirec-sa", "eval.generated_share=0.2"]
    assert load_config(model="gemirec", overrides=over_sa).eval.generated_share == 0.2
    with pytest.raises(ValueError, match="needs a model that serves generated interests"):
        evaluate(GemiRec(tiny_config(), 120), dataset, "test", EvalConfig(topk=[10], generated_share=0.2), maxlen=8)


def test_a_full_base_share_serves_exactly_the_bases_list_and_a_partial_one_caps_the_generated(tmp_path):
    import json

    from mirec.config import EvalConfig
    from mirec.eval.evaluator import evaluate
    from tests.training.test_trainer import cycle_dataset

    plain, wrapped = base_pair("comirec-sa", generative=True, n_items=120)
    plain.eval()
    wrapped.eval()
    with torch.no_grad():  # large generated interests: the plain merge gives them most of the list
        for parameter in wrapped.retrieval.parameters():
            parameter.mul_(3.0)
    dataset = cycle_dataset()

    def lists(model, name, **shares):
        result = evaluate(model, dataset, "test", EvalConfig(topk=[10], **shares), maxlen=8, dump_path=tmp_path / name)
        return result, [json.loads(line)["recommendations"] for line in open(tmp_path / name)]

    base_result, base_lists = lists(plain, "plain")
    full_result, full_lists = lists(wrapped, "full", base_share=1.0)
    assert full_lists == base_lists  # the base's own ranking, from the wrapped model's first K interests
    assert full_result["recall@10"] == pytest.approx(base_result["recall@10"])
    assert full_result["collapse"]["generated_list_share"] == 0.0
    merged_result, _ = lists(wrapped, "merged")
    capped_result, _ = lists(wrapped, "capped", base_share=0.6)
    assert merged_result["collapse"]["generated_list_share"] > 0.4  # the premise: the merge favours them
    assert capped_result["collapse"]["generated_list_share"] <= 0.4 + 1e-9  # round(0.6 * 10) slots for the base
    with pytest.raises(Exception, match="base_share"):
        load_config(model="gemirec-over-sa+gc", overrides=["eval.base_share=0.5", "eval.generated_share=0.2"])
    with pytest.raises(Exception, match="base_share = 0.5 needs a model that serves generated interests"):
        load_config(model="comirec-sa", overrides=["eval.base_share=0.5"])


def test_a_gemirec_over_a_base_trains_saves_and_loads(tmp_path):
    from mirec.api import load
    from mirec.training.trainer import train_run
    from tests.training.test_trainer import cycle_dataset

    cycle_dataset().save(tmp_path / "data")
    config = load_config(
        model="gemirec",
        dataset="default",
        overrides=[
            "model.base=comirec-sa",
            "model.embedding_dim=16",
            "model.maxlen=8",
            "model.num_interests=2",
            "model.idmm_codes=4",
            "model.idmm_code_dim=8",
            "model.beam_width=4",
            "model.mipdm_heads=2",
            "train.batch_size=16",
            "train.max_steps=20",
            "train.eval_every=10",
            "train.num_negatives_factor=2",
            "eval.topk=[5, 10]",
            "eval.early_stop_metric=recall@10",
        ],
    )
    metrics = train_run(tmp_path / "data", config, tmp_path / "run", progress=False)
    assert len(metrics["test"]["collapse"]["interest_share"]) == 4  # 2 base + 2 generated interests served
    again = load(tmp_path / "run", device="cpu").evaluate("test")
    assert again["recall@10"] == pytest.approx(metrics["test"]["recall@10"])
    with pytest.raises(Exception, match="generative"):
        load_config(model="gemirec", overrides=["model.generative=false"])

    # the base's list share chosen on valid after training: the first best of the grid, kept in config.toml
    grid = [0.0, 0.5, 1.0]
    config = config.with_values({"eval.base_share_grid": grid})
    metrics = train_run(tmp_path / "data", config, tmp_path / "run-share", progress=False)
    rec = load(tmp_path / "run-share", device="cpu")
    by_share = {share: rec.evaluate("valid", base_share=share)["recall@10"] for share in grid}
    assert metrics["base_share_choice"]["valid"] == pytest.approx({str(s): v for s, v in by_share.items()})
    best = max(grid, key=by_share.get)
    assert metrics["base_share_choice"]["chosen"] == best == rec.config.eval.base_share
    assert rec.evaluate("test")["recall@10"] == pytest.approx(metrics["test"]["recall@10"])
    assert metrics["valid"]["recall@10"] == pytest.approx(by_share[best])
    with pytest.raises(Exception, match="base_share_grid"):
        load_config(model="comirec-sa", overrides=["eval.base_share_grid=[0.5]"])


def test_generator_hit_rate_by_level_by_hand(monkeypatch):
    model = GemiRec(tiny_config(num_interests=2), 30)
    codes = torch.zeros(31, 2, dtype=torch.long)
    codes[5], codes[6], codes[7] = torch.tensor([1, 2]), torch.tensor([1, 3]), torch.tensor([4, 0])
    model.dictionary.item_codes.copy_(codes)
    model.dictionary.codes_ready.fill_(True)
    generated = torch.tensor([[[1, 2], [4, 1]], [[0, 0], [3, 3]]])  # user 0: (1,2), (4,1); user 1: (0,0), (3,3)
    monkeypatch.setattr(model, "generate", lambda batch: (generated, torch.zeros(2, 2)))
    got = model.diagnostics(make_batch([2, 2], 8, 30), [torch.tensor([5, 6, 7]), torch.tensor([7])])
    # user 0: item 5 (1,2) full hit; 6 (1,3) level-1 hit only; 7 (4,0) level-1 hit only -> 3/3 and 1/3
    # user 1: item 7 (4,0) matches no first code -> 0 and 0
    assert got["generator_hit_l1"].tolist() == [1.0, 0.0]
    assert got["generator_hit_l2"].tolist() == pytest.approx([1 / 3, 0.0])
    # the generated tuples' similarity before the fusion, by hand from the codebooks
    with torch.no_grad():
        model.dictionary.quantizer.codebooks.copy_(torch.randn_like(model.dictionary.quantizer.codebooks))
        got = model.diagnostics(make_batch([2, 2], 8, 30), [torch.tensor([5, 6, 7]), torch.tensor([7])])
        books = model.dictionary.quantizer.codebooks
        for user in range(2):
            (a1, a2), (b1, b2) = generated[user].tolist()
            first = F.cosine_similarity(books[0, a1], books[0, b1], dim=0)
            concat_a = model.retrieval.interest_norm(torch.cat([books[0, a1], books[1, a2]]))
            concat_b = model.retrieval.interest_norm(torch.cat([books[0, b1], books[1, b2]]))
            whole = F.cosine_similarity(concat_a, concat_b, dim=0)
            assert float(got["generated_first_code_cosine"][user]) == pytest.approx(float(first), abs=1e-6)
            assert float(got["generated_code_cosine"][user]) == pytest.approx(float(whole), abs=1e-6)


def test_the_evaluator_reports_gemirecs_diagnostics(tmp_path):
    from mirec.config import EvalConfig
    from mirec.eval.evaluator import evaluate
    from tests.training.test_trainer import cycle_dataset

    dataset = cycle_dataset()
    model = GemiRec(tiny_config(num_interests=2, maxlen=8), dataset.n_items)
    result = evaluate(model, dataset, "valid", EvalConfig(topk=[5], interest_clusters=0), maxlen=8, per_user=True)
    hits = result["diagnostics"]
    assert (
        set(hits) == {"generator_hit_l1", "generator_hit_l2", "generated_first_code_cosine", "generated_code_cosine"}
        and 0 <= hits["generator_hit_l2"] <= hits["generator_hit_l1"] <= 1
    )
    for name in hits:
        assert hits[name] == pytest.approx(result["per_user"][f"diagnostics.{name}"].mean()), name


def test_idmm_forward_follows_the_equations_on_a_hand_built_case():
    """r_1 = z_enc(sg[v]); m_c = argmin ||r_c - e_c^j||^2; r_{c+1} = r_c - sg[e_c^{m_c}]; the interest embedding
    is the concatenation (width C * d); no gradient from the IDMM reaches the item vectors."""
    q = ResidualQuantizer(2, 2, 2, 3, encoder="identity", update="grad", input_norm="none", recon_weight=0.0)
    with torch.no_grad():
        q.codebooks.copy_(torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]], [[0.1, 0.0], [0.0, 0.1], [1.0, 1.0]]]))
        q.initialized.fill_(True)
    q.eval()
    v = torch.tensor([[1.2, 0.1], [0.1, 0.9]], requires_grad=True)
    out = q(v)
    # v0: level 1 -> (1, 0), residual (0.2, 0.1) -> level 2 (0.1, 0); v1: (0, 1), residual (0.1, -0.1) -> (0.1, 0)
    assert out.codes.tolist() == [[0, 0], [1, 0]]
    torch.testing.assert_close(out.residuals[:, 1], torch.tensor([[0.2, 0.1], [0.1, -0.1]]))
    assert out.quantized.shape == (2, 4)  # concat(e_1, e_2): C * d = 2 * 2
    torch.testing.assert_close(out.quantized, torch.tensor([[1.0, 0.0, 0.1, 0.0], [0.0, 1.0, 0.1, 0.0]]))
    expected = ((v.detach() - torch.tensor([[1.0, 0.0], [0.0, 1.0]])) ** 2).mean() + (
        (torch.tensor([[0.2, 0.1], [0.1, -0.1]]) - 0.1 * torch.tensor([[1.0, 0.0], [1.0, 0.0]])) ** 2
    ).mean()
    assert float(out.commitment) == pytest.approx(float(expected), rel=1e-5)
    (out.loss + out.quantized.sum()).backward()
    assert v.grad is None or not v.grad.any()  # sg[v]: the item table is trained by retrieval only
    assert q.codebooks.grad is not None and q.codebooks.grad.abs().sum() > 0  # codebook loss ||sg[r_c] - e_c||^2
