"""Pure helpers of benchmarks/ (bench_support, the reference paths the benchmarks compare against).

No timing assertions: only the arithmetic of the table and of the fits, and that the slow reference forms
compute the same thing as the library.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

from bench_support import (  # noqa: E402
    PeakRSS,
    Result,
    format_quantity,
    format_ratio,
    format_table,
    loglog_fit,
    run_isolated,
    speedup,
    table_rows,
)


@pytest.mark.parametrize("exponent, prefactor", [(1.0, 2e-6), (1.7, 3.0), (0.5, 40.0), (-1.0, 7.0)])
def test_loglog_fit_recovers_exact_power_law(exponent: float, prefactor: float) -> None:
    n = np.array([1e6, 3e6, 9e6, 2.7e7])
    p, c = loglog_fit(n, prefactor * n**exponent)
    assert p == pytest.approx(exponent, abs=1e-9)
    assert c == pytest.approx(prefactor, rel=1e-6)


def test_loglog_fit_least_squares_on_noisy_points_and_errors() -> None:
    # log y = 2 log x + r, residuals (+d, -d, -d, +d) even about the centre of the symmetric log x: slope exactly 2
    x = np.array([1.0, 10.0, 100.0, 1000.0])
    y = x**2 * np.exp(np.array([0.1, -0.1, -0.1, 0.1]))
    assert loglog_fit(x, y)[0] == pytest.approx(2.0, abs=1e-9)
    # non-positive points are ignored, the rest still define the line
    assert loglog_fit([1, 2, 4, 8], [0, 2, 4, 8])[0] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        loglog_fit([5.0], [1.0])
    with pytest.raises(ValueError):
        loglog_fit([2.0, 2.0], [1.0, 3.0])


def test_speedup_is_naive_over_ours_for_times_and_ours_over_naive_for_rates() -> None:
    assert speedup(2.0, 10.0, lower_is_better=True) == pytest.approx(5.0)  # seconds
    assert speedup(1000.0, 250.0) == pytest.approx(4.0)  # rows/s
    assert speedup(1.0, None) is None
    assert speedup(None, 1.0) is None
    assert speedup(0.0, 1.0) is None
    assert speedup(float("nan"), 1.0) is None


def test_table_ratio_column_equals_naive_over_ours() -> None:
    results = [
        Result("prepare", "200k rows", "rows/s", 800_000.0, 100_000.0, peak_mib=300.0, naive_peak_mib=500.0),
        Result("gce", "200k", "s", 0.25, 3.0, lower_is_better=True, peak_mib=200.0),
        Result("train dnn", "B128", "samples/s", 5000.0, note="no reference"),
        Result("broken", "x", "users/s", None, error="RuntimeError: boom\ntraceback"),
    ]
    rows = table_rows(results)
    assert [r[4] for r in rows] == [format_ratio(800_000 / 100_000), format_ratio(3.0 / 0.25), "—", "—"]
    assert rows[0][4] == "8.00x" and rows[1][4] == "12.0x"
    assert results[1].ratio == pytest.approx(12.0)  # naive time / our time
    assert rows[0][2] == "800k rows/s" and rows[0][3] == "100k rows/s" and rows[0][5] == "300 / 500"
    assert rows[2][3] == "—" and rows[2][6] == "no reference"
    assert rows[3][2] == "FAILED" and "boom" in rows[3][6]
    text = format_table(results)
    lines = text.splitlines()
    assert len(lines) == 2 + len(results)
    assert len({len(line) for line in lines}) == 1  # padded columns
    assert "| 8.00x " in lines[2]


def test_format_quantity() -> None:
    assert format_quantity(1_234_567, "rows/s") == "1.23M rows/s"
    assert format_quantity(45_600, "users/s") == "45.6k users/s"
    assert format_quantity(512, "samples/s") == "512 samples/s"
    assert format_quantity(0.01234, "s") == "0.0123 s"
    assert format_quantity(1234.5, "GFLOP/s") == "1234 GFLOP/s"  # no prefix on these units
    assert format_quantity(None, "s") == "—"
    assert format_ratio(None) == "—" and format_ratio(250.0) == "250x"


def test_peak_rss_sees_an_allocation() -> None:
    with PeakRSS() as probe:
        block = np.ones(2**25)  # 256 MiB of float64, touched
        del block
    assert probe.baseline_mib > 0 and probe.peak_mib >= probe.baseline_mib
    if not probe.reset:  # then the peak would be the process's past, not this block's
        pytest.skip("this kernel does not reset the peak-RSS watermark (/proc/self/clear_refs)")
    assert probe.peak_mib - probe.baseline_mib > 200


def test_run_isolated_returns_the_child_result_or_its_error() -> None:
    ok = run_isolated("bench_support", "machine_info", {}, timeout=60)
    assert ok["cpu_count"] >= 1 and ok["wall_s"] >= 0
    failed = run_isolated("bench_support", "loglog_fit", {"x": [1.0], "y": [1.0]}, timeout=60)
    assert failed["error"].startswith("ValueError")


def test_per_sample_time_interval_matches_the_batched_matrix() -> None:
    from bench_time_interval import example_batch, per_sample_time_interval

    from mirec.nn.time_interval import time_interval_matrix

    days, lengths = example_batch(16, 12, seed=3)
    mask = torch.from_numpy((np.arange(12)[None] < lengths[:, None]).astype(np.float32))
    days_t = torch.from_numpy(days)
    assert torch.equal(per_sample_time_interval(days_t, mask, 30), time_interval_matrix(days_t, mask, 30))


@pytest.mark.parametrize("name", ["pimi", "gimirec"])
def test_reference_approach_computes_the_same_interests(name: str) -> None:
    import bench_train_throughput as btt

    from mirec.config import load_config
    from mirec.data.batching import TrainSampler
    from mirec.runs import build_model

    dataset = btt.synthetic_dataset(60, 50, seed=1)
    config = load_config(model=name, overrides=["model.maxlen=10", "model.embedding_dim=16"])
    torch.manual_seed(0)
    model = build_model(config, dataset).eval()
    batch = TrainSampler(dataset.train, 10, 8, seed=0).sample()
    module = sys.modules[type(model).__module__]
    original = module.time_interval_matrix
    with torch.no_grad():
        ours = model(batch)
        with btt.reference_approach(model):
            assert module.time_interval_matrix is not original
            reference = model(batch)
        again = model(batch)
    assert module.time_interval_matrix is original and "forward" not in vars(model.star_graph)
    torch.testing.assert_close(reference, ours, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(again, ours)


def test_books_like_csr_is_time_sorted_per_user() -> None:
    from bench_gce import books_like_csr

    indptr, items, days, n_items = books_like_csr(3000, seed=2)
    assert indptr[0] == 0 and indptr[-1] == len(items) == len(days) == 3000
    assert np.all(np.diff(indptr) >= 5)  # >= 5 interactions per user
    assert items.min() >= 1 and items.max() <= n_items
    starts = np.zeros(len(items), dtype=bool)
    starts[indptr[:-1]] = True
    assert np.all((np.diff(days) >= 0) | starts[1:])  # sorted within each user


def test_best_of_repeats_keeps_the_fastest_run_and_the_largest_memory() -> None:
    from run_all import best_run
    from scaling import best_of

    runs = [
        {"seconds": 2.0, "rows_per_s": 50.0, "peak_mib": 300.0, "baseline_mib": 100.0},
        {"seconds": 1.0, "rows_per_s": 100.0, "peak_mib": 250.0, "baseline_mib": 100.0},
        {"seconds": 1.5, "rows_per_s": 66.0, "peak_mib": 280.0, "baseline_mib": 100.0},
    ]
    best = best_of(runs)
    assert best["seconds"] == 1.0 and best["seconds_all"] == [2.0, 1.0, 1.5] and best["peak_mib"] == 300.0
    rate = best_run(runs, "rows_per_s")
    assert rate["rows_per_s"] == 100.0 and rate["peak_mib"] == 300.0 and rate["rows_per_s_all"] == [50.0, 100.0, 66.0]
    assert best_run(runs, "seconds", lower_is_better=True)["seconds"] == 1.0


def test_reference_approach_looks_up_every_rows_negatives() -> None:
    import bench_train_throughput as btt

    from mirec.config import TrainConfig
    from mirec.training import losses

    class Table(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.item_embedding = torch.nn.Embedding(31, 8)
            self.looked_up: list[int] = []

        def output_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
            self.looked_up.append(len(ids))
            return self.item_embedding(ids)

    model = Table()
    config = TrainConfig(row_negatives=16, negative_sampler="uniform", sampler_exclude_padding=True)
    users, targets = torch.randn(6, 8), torch.tensor([1, 5, 5, 9, 17, 30])

    def loss() -> float:
        return float(losses.TrainingLoss(config, model, 30, torch.Generator().manual_seed(3))(users, targets).detach())

    ours = loss()
    with btt.reference_approach(model):
        reference = loss()
    assert model.looked_up == [31, 6 * 17]  # the whole table once, then the drawn rows as one block
    assert losses.row_sampled_logits is btt.row_sampled_logits  # restored on exit
    assert reference == pytest.approx(ours, rel=1e-6)


def test_batches_drawn_beforehand_feed_every_timed_step_in_the_samplers_order() -> None:
    import bench_train_throughput as btt

    out = btt.measure_throughput("dnn", users=60, items=80, steps=4, warmup=1, batch_size=8, batches_given=True)
    assert out["batches_given"] and out["steps"] == 4 and out["samples_per_s"] > 0
    drawn = btt.DrawnBatches(["a", "b"])
    assert [drawn.sample(), drawn.sample()] == ["a", "b"]
    with pytest.raises(StopIteration):  # a timed step past the drawn batches fails instead of drawing one
        drawn.sample()


def test_alternating_blocks_take_turns_and_step_every_drawn_batch_in_order(monkeypatch) -> None:
    import argparse

    import bench_public_ports as bpp
    import bench_train_throughput as btt

    log: list[str] = []

    class RecordingPort:  # the public side's interface: draw a batch, step on it
        def __init__(self) -> None:
            self.drawn, self.stepped = 0, []

        def batch(self) -> int:
            self.drawn += 1
            return self.drawn

        def step(self, batch: int) -> None:
            self.stepped.append(batch)
            log.append("public")

    def recorded_setup(*args, **kwargs):
        trainer = btt.training_setup(*args, **kwargs)
        step = trainer.train_step
        trainer.train_step = lambda: (log.append("mirec"), step())[1]
        return trainer

    monkeypatch.setattr(bpp, "training_setup", recorded_setup)
    port = RecordingPort()
    args = argparse.Namespace(warmup=2, blocks=3, block_steps=4)
    dataset = btt.synthetic_dataset(60, 80)
    pairs = bpp.alternating_blocks("dnn", port, dataset, bpp.REMI_LOSS, args, mirec_first=False)
    assert len(pairs) == 3 and all(mirec > 0 and public > 0 for mirec, public in pairs)
    assert port.stepped == list(range(1, 2 + 3 * 4 + 1))  # warm-up, then every block's batches, none skipped
    assert log[4:] == (["public"] * 4 + ["mirec"] * 4) * 3  # after the warm-up, blocks of 4 taking turns
