"""`mirec bench` grid specs, sweeps, flag precedence, results.csv and plots (no training: fake run folders)."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from mirec.cli import build_parser
from mirec.cli import main as cli_main
from mirec.config import load_config
from mirec.experiments.grid import (
    GridSpec,
    Sweep,
    Variant,
    check_variants,
    load_grid,
    plan,
    resolve_spec,
    shipped_grids,
    write_csv,
)
from mirec.utils import usable_cpus

PNG = b"\x89PNG\r\n\x1a\n"
BASELINES = ["dnn", "gru4rec", "mind", "comirec-dr", "comirec-sa", "pimi"]
PAPER_DATASETS = ["amazon-books", "amazon-hybrid", "taobao-buy"]


def _configs(name: str) -> list[tuple[Variant, object]]:
    spec = load_grid(name)
    variants = spec.expanded()
    check_variants(variants, spec.set)
    return [(v, load_config(model=v.model, overrides=[*spec.set, *v.overrides])) for v in variants]


# ----------------------------------------------------------------------------------------------------------
# Shipped specs


def test_shipped_grids_are_the_paper_experiments():
    assert shipped_grids() == sorted(
        [
            "gimirec-main",
            "gimirec-ablation",
            "gimirec-k",
            "gimirec-hops",
            "gimirec-ab",
            "gimirec-ltime",
            "gimirec-layers",
            "gimirec-transplant",
        ]
    )
    for name in shipped_grids():
        spec = load_grid(name)
        assert spec.description and spec.seeds == [1, 2, 3] and spec.set == []
        assert set(spec.datasets) <= set(PAPER_DATASETS)


def test_grid_main_tables_3_4():
    got = _configs("gimirec-main")
    assert [v.name for v, _ in got] == ["gru4rec", "dnn", "mind", "comirec-dr", "comirec-sa", "pimi", "gimirec"]
    assert all(v.model == v.name and v.overrides == [] and v.sweep_key is None for v, _ in got)
    assert load_grid("gimirec-main").datasets == PAPER_DATASETS


def test_grid_ablation_table_5():
    got = {v.name: c for v, c in _configs("gimirec-ablation")}
    assert list(got) == ["gimirec-INT", "gimirec-IN", "gimirec-I", "gimirec"]
    flags = {n: (c.graph.a, c.graph.b, c.graph.count_pairs, c.graph.use_threshold) for n, c in got.items()}
    assert flags["gimirec-I"] == (0.0, 1.0, True, True)
    assert flags["gimirec-IN"] == (0.0, 1.0, False, True)
    assert flags["gimirec-INT"] == (0.0, 1.0, False, False)
    default = load_config(model="gimirec").graph
    assert flags["gimirec"] == (default.a, default.b, True, True)


def test_grid_k_sweep_table_6():
    got = _configs("gimirec-k")
    ks = [1, 2, 4, 6, 8, 10, 12]
    assert [v.name for v, _ in got] == [f"gimirec[model.num_interests={k}]" for k in ks]
    assert [v.overrides for v, _ in got] == [[f"model.num_interests={k}"] for k in ks]
    assert [c.model.num_interests for _, c in got] == ks
    assert {(v.base, v.sweep_key) for v, _ in got} == {("gimirec", "model.num_interests")}
    assert [v.sweep_value for v, _ in got] == [str(k) for k in ks]


def test_grid_hop_weights_table_7():
    got = _configs("gimirec-hops")
    expected = [[1, 0, 0], [1, 1, 0], [1, 1, 1], [3, 2, 1], [4, 2, 1], [4.5, 2, 1], [4, 2.5, 1], [5, 2.5, 1], [5, 3, 1]]
    assert [c.graph.hop_weights for _, c in got] == [[float(x) for x in w] for w in expected]
    assert got[7][0].name == "gimirec[graph.hop_weights=[5.0,2.5,1.0]]"
    assert load_grid("gimirec-hops").datasets == ["amazon-hybrid"]


def test_grid_ab_table_8_ties_b_to_a():
    got = _configs("gimirec-ab")
    assert [(c.graph.a, c.graph.b) for _, c in got] == [(0.3, 0.7), (0.4, 0.6), (0.5, 0.5), (0.6, 0.4), (0.7, 0.3)]
    assert [v.name for v, _ in got][0] == "gimirec[graph.a=0.3]"
    assert [v.sweep_value for v, _ in got] == ["0.3", "0.4", "0.5", "0.6", "0.7"]


def test_grid_ltime_table_9_sets_both_thresholds():
    got = _configs("gimirec-ltime")
    assert [(c.graph.l_time, c.model.time_span) for _, c in got] == [(32.0, 32), (64.0, 64), (128.0, 128), (256.0, 256)]


def test_grid_layers_figure_4():
    got = _configs("gimirec-layers")
    assert [c.model.num_layers for _, c in got] == [1, 2, 3, 4, 5]


def test_grid_transplant_each_baseline_with_and_without_global_context():
    got = _configs("gimirec-transplant")
    assert [(v.model, c.model.global_context) for v, c in got] == [(m, g) for m in BASELINES for g in (False, True)]
    assert got[1][0].name == "dnn[model.global_context=true]"


# ----------------------------------------------------------------------------------------------------------
# Sweeps


def test_sweep_expansion_names_overrides_and_base():
    base = Variant.parse("g-I=gimirec:graph.a=0;graph.b=1")
    out = Sweep.parse("model.num_interests=1,8").expand(base)
    assert [v.name for v in out] == ["g-I[model.num_interests=1]", "g-I[model.num_interests=8]"]
    assert [v.overrides for v in out] == [
        ["graph.a=0", "graph.b=1", "model.num_interests=1"],
        ["graph.a=0", "graph.b=1", "model.num_interests=8"],
    ]
    assert all(v.model == "gimirec" and v.base == "g-I" for v in out)


def test_sweep_parse_lists_strings_and_tied_keys():
    s = Sweep.parse("graph.hop_weights=[1,0,0], [5.0,2.5,1]")
    assert s.key == "graph.hop_weights" and s.values == [[1, 0, 0], [5.0, 2.5, 1]]
    s = Sweep.parse("graph.a=0.3,0.5;graph.b=0.7,0.5")
    assert (s.key, s.values, s.tied) == ("graph.a", [0.3, 0.5], {"graph.b": [0.7, 0.5]})
    assert Sweep.parse("train.loss=full,sampled").values == ["full", "sampled"]
    assert Sweep.parse("model.global_context=false,true").values == [False, True]
    with pytest.raises(ValueError, match="tied graph.b has 1 values"):
        Sweep.parse("graph.a=0.3,0.5;graph.b=0.7")
    with pytest.raises(ValueError, match="KEY=v1"):
        Sweep.parse("model.num_interests")


def test_several_sweeps_are_a_union_and_names_must_be_unique():
    spec = GridSpec(
        variants=[Variant("a", "gimirec"), Variant("b", "pimi")],
        sweeps=[Sweep("model.num_interests", [2, 4]), Sweep("model.num_layers", [1])],
    )
    assert [v.name for v in spec.expanded()] == [
        "a[model.num_interests=2]",
        "a[model.num_interests=4]",
        "b[model.num_interests=2]",
        "b[model.num_interests=4]",
        "a[model.num_layers=1]",
        "b[model.num_layers=1]",
    ]
    with pytest.raises(ValueError, match="not unique"):
        GridSpec(variants=[Variant("a", "gimirec")], sweeps=[Sweep("model.num_interests", [2, 2])]).expanded()


def test_spec_errors_are_reported(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('models = ["gimirec"]\nseed = [1]\n')
    with pytest.raises(ValueError, match="unknown key"):
        load_grid(bad)
    with pytest.raises(ValueError, match="no grid spec 'nope'"):
        load_grid("nope")
    with pytest.raises(ValueError, match="variant 'gimirec\\[graph.count_pair=false\\]'"):
        check_variants(Sweep("graph.count_pair", [False]).expand(Variant("gimirec", "gimirec")), [])


# ----------------------------------------------------------------------------------------------------------
# Command-line precedence


SPEC = """
description = "test grid"
models = ["pimi"]
variants = ["gi=gimirec:graph.a=0"]
seeds = [1, 2]
set = ["train.eval_every=50", "train.lr=0.01"]
budget_minutes = 5
jobs = 2

[[sweep]]
key = "model.num_interests"
values = [2, 4]
"""


def _bench_args(*extra: str):
    return build_parser().parse_args(["bench", "--data", "ds=x", "--output", "out", *extra])


def test_cli_flags_add_to_and_override_the_spec(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(SPEC)
    spec = resolve_spec(_bench_args("--grid", str(path)))
    assert (spec.seeds, spec.budget_minutes, spec.jobs) == ([1, 2], 5.0, 2)
    assert [v.name for v in spec.expanded()] == [
        "pimi[model.num_interests=2]",
        "pimi[model.num_interests=4]",
        "gi[model.num_interests=2]",
        "gi[model.num_interests=4]",
    ]

    spec = resolve_spec(
        _bench_args(
            "--grid",
            str(path),
            "--seeds",
            "7",
            "--budget-minutes",
            "0",
            "--jobs",
            "1",
            "--set",
            "train.lr=0.002",
            "--models",
            "dnn",
            "--variant",
            "gi=gimirec:graph.a=1",
            "--sweep",
            "model.num_interests=8",
        )
    )
    assert (spec.seeds, spec.budget_minutes, spec.jobs) == ([7], 0.0, 1)
    assert spec.set == ["train.eval_every=50", "train.lr=0.01", "train.lr=0.002"]  # the later one wins
    assert load_config(model="pimi", overrides=spec.set).train.lr == 0.002
    variants = {v.name: v for v in spec.expanded()}
    assert list(variants) == ["pimi[model.num_interests=8]", "gi[model.num_interests=8]", "dnn[model.num_interests=8]"]
    assert variants["gi[model.num_interests=8]"].overrides == ["graph.a=1", "model.num_interests=8"]

    spec = resolve_spec(_bench_args("--grid", str(path), "--sweep", "model.num_layers=1,2"))
    assert [s.key for s in spec.sweeps] == ["model.num_interests", "model.num_layers"]
    assert len(spec.expanded()) == 2 * 2 + 2 * 2


def test_cli_without_grid_keeps_the_old_defaults():
    spec = resolve_spec(_bench_args("--models", "dnn,gru4rec"))
    assert (spec.seeds, spec.budget_minutes, spec.jobs, spec.set) == ([1, 2, 3], 0.0, 1, [])
    assert [(v.name, v.model) for v in spec.expanded()] == [("dnn", "dnn"), ("gru4rec", "gru4rec")]
    with pytest.raises(ValueError, match="no variants"):
        resolve_spec(_bench_args())


def test_shipped_grid_by_name_with_cli_sweep():
    spec = resolve_spec(_bench_args("--grid", "gimirec-k", "--sweep", "model.num_interests=3", "--seeds", "1"))
    assert [v.name for v in spec.expanded()] == ["gimirec[model.num_interests=3]"]


# ----------------------------------------------------------------------------------------------------------
# Fake finished grid: results.csv and plots


def _fake_run(run_dir: Path, recall: float, ndcg: float, curve: list[tuple[int, float]], collapse: dict | None):
    run_dir.mkdir(parents=True)
    test = {"recall@20": recall / 2, "ndcg@20": ndcg / 2, "recall@50": recall, "ndcg@50": ndcg, "users": 10}
    test["novel_recall@50"] = recall / 4
    if collapse is not None:
        test["collapse"] = collapse
    metrics = {"valid": dict(test), "test": test, "train": {"seconds": 1.0, "samples_per_second": 5.0}}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "history.jsonl").write_text(
        "".join(json.dumps({"step": s, "train_loss": 1.0, "recall@50": v, "best": True}) + "\n" for s, v in curve)
    )


# per (K, seed): test recall@50, ndcg@50, valid curve, collapse
FAKE = {
    (2, 1): (
        0.10,
        0.04,
        [(100, 0.05), (200, 0.07)],
        {"interest_cosine": 0.5, "topk_jaccard": 0.2, "interest_share": [0.7, 0.3]},
    ),
    (2, 2): (
        0.14,
        0.06,
        [(100, 0.07), (200, 0.09), (300, 0.10)],
        {"interest_cosine": 0.7, "topk_jaccard": 0.4, "interest_share": [0.9, 0.1]},
    ),
    (4, 1): (
        0.20,
        0.08,
        [(100, 0.11)],
        {"interest_cosine": 0.1, "topk_jaccard": 0.1, "interest_share": [0.4, 0.3, 0.2, 0.1]},
    ),
    (4, 2): (
        0.30,
        0.11,
        [(100, 0.13)],
        {"interest_cosine": 0.3, "topk_jaccard": 0.3, "interest_share": [0.6, 0.2, 0.2, 0.0]},
    ),
}


@pytest.fixture
def fake_grid(tmp_path):
    spec = tmp_path / "k.toml"
    spec.write_text('models = ["gimirec"]\nseeds = [1, 2]\n[[sweep]]\nkey = "model.num_interests"\nvalues = [4, 2]\n')
    out = tmp_path / "out"
    for (k, seed), (recall, ndcg, curve, collapse) in FAKE.items():
        _fake_run(out / "ds" / f"gimirec[model.num_interests={k}]" / f"seed{seed}", recall, ndcg, curve, collapse)
    return spec, out


def test_tables_only_results_csv_has_the_swept_key_and_value(fake_grid, capsys):
    spec, out = fake_grid
    assert cli_main(["bench", "--grid", str(spec), "--data", "ds=unused", "--output", str(out), "--tables-only"]) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    test = [r for r in rows if r["split"] == "test"]
    assert len(test) == 4
    assert {(r["variant"], r["base_variant"], r["sweep_key"], r["sweep_value"], r["seed"]) for r in test} == {
        (f"gimirec[model.num_interests={k}]", "gimirec", "model.num_interests", str(k), str(s)) for k, s in FAKE
    }
    for r in test:
        recall, _, _, collapse = FAKE[(int(r["sweep_value"]), int(r["seed"]))]
        assert float(r["recall@50"]) == recall
        assert float(r["collapse_interest_cosine"]) == collapse["interest_cosine"]
    assert "gimirec[model.num_interests=4]" in (out / "results.md").read_text()
    assert not (out / "plots").exists()


def test_a_tracked_bench_mirrors_its_tables_and_plots_in_mlflow_and_tensorboard(fake_grid, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec, out = fake_grid
    argv = ["bench", "--grid", str(spec), "--data", "ds=unused", "--output", str(out), "--tables-only", "--plots"]
    assert cli_main([*argv, "--log", "mlflow,tensorboard"]) == 0
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")  # the grid's own store, beside its runs
    run_id = (out / "mlflow_run.txt").read_text().strip()
    artefacts = {a.path for a in client.list_artifacts(run_id)}
    plots = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert artefacts == {"results.md", "results.csv", *plots} and len(plots) == 5
    assert client.get_run(run_id).data.params["seeds"] == "[1, 2]"
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["images"]) == sorted(f"plots/{Path(p).stem}" for p in plots)


def test_plots_from_fake_run_folders_match_hand_means(fake_grid):
    spec, out = fake_grid
    assert (
        cli_main(
            ["bench", "--grid", str(spec), "--data", "ds=unused", "--output", str(out), "--tables-only", "--plots"]
        )
        == 0
    )
    names = sorted(p.name for p in (out / "plots").iterdir())
    assert names == [
        "bars_ds.png",
        "collapse_ds.png",
        "curves_ds.png",
        "sweep_ds_model.num_interests.png",
        "tradeoff_ds.png",
    ]
    for name in names:
        assert (out / "plots" / name).read_bytes()[:8] == PNG

    from mirec.experiments.grid import Cell, plan
    from mirec.experiments.plots import plot_grid

    cells: list[Cell] = plan(out, {"ds": "unused"}, load_grid(spec).expanded(), [1, 2])
    records = [
        {
            "dataset": c.dataset,
            "variant": c.variant.name,
            "base": c.variant.base,
            "sweep_key": c.variant.sweep_key,
            "sweep_value": c.variant.sweep_value,
            "seed": c.seed,
            "run_dir": c.run_dir,
        }
        for c in cells
    ]
    tmp = out / "plots2"
    drawn = plot_grid(records, tmp)
    k2, k4 = "gimirec[model.num_interests=2]", "gimirec[model.num_interests=4]"

    curves = drawn[tmp / "curves_ds.png"]
    # step 300 was reached by one seed only: left out, so the mean never jumps between seed counts
    assert curves[k2]["steps"] == [100, 200]
    np.testing.assert_allclose(curves[k2]["mean"], [(0.05 + 0.07) / 2, (0.07 + 0.09) / 2])
    assert curves[k2]["n"] == [2, 2]
    np.testing.assert_allclose(curves[k4]["mean"], [0.12])

    bars = drawn[tmp / "bars_ds.png"]
    assert bars[k4]["recall@50"]["mean"] == pytest.approx(0.25)
    assert bars[k4]["recall@50"]["std"] == pytest.approx(math.sqrt(((0.2 - 0.25) ** 2 + (0.3 - 0.25) ** 2) / 1))
    assert bars[k2]["ndcg@50"]["mean"] == pytest.approx(0.05)

    sweep = drawn[tmp / "sweep_ds_model.num_interests.png"]["gimirec"]
    assert sweep["recall@50"]["values"] == ["2", "4"]  # numeric: sorted, although the spec lists 4 first
    np.testing.assert_allclose(sweep["recall@50"]["mean"], [0.12, 0.25])
    np.testing.assert_allclose(sweep["ndcg@50"]["mean"], [0.05, 0.095])
    np.testing.assert_allclose(sweep["ndcg@50"]["std"], [np.std([0.04, 0.06], ddof=1), np.std([0.08, 0.11], ddof=1)])

    tradeoff = drawn[tmp / "tradeoff_ds.png"]  # (mean, std, n) of recall and novel recall over the seeds
    assert tradeoff[k4]["recall@50"] == pytest.approx((0.25, math.sqrt(0.005), 2))
    assert tradeoff[k2]["novel_recall@50"][0] == pytest.approx((0.10 + 0.14) / 2 / 4)

    collapse = drawn[tmp / "collapse_ds.png"]
    assert collapse[k2]["interest_cosine"][0] == pytest.approx(0.6)
    assert collapse[k2]["topk_jaccard"][0] == pytest.approx(0.3)
    np.testing.assert_allclose(collapse[k2]["interest_share"], [0.8, 0.2])
    np.testing.assert_allclose(collapse[k4]["interest_share"], [0.5, 0.25, 0.2, 0.05])


def test_plot_functions_directly(tmp_path):
    from mirec.experiments.plots import plot_collapse, plot_metric_bars, plot_sweep, plot_tradeoff

    panels = {
        "comirec split": {"a": {"recall@50": [0.2, 0.4], "novel_recall@50": [0.1, 0.1]}, "b": {"recall@50": [0.3]}},
        "temporal": {"a": {"recall@50": [0.05], "novel_recall@50": [0.02]}},
    }
    drawn = plot_tradeoff(panels, tmp_path / "t.png")
    assert set(drawn["comirec split"]) == {"a"}  # b has no novel recall: not drawn
    assert drawn["comirec split"]["a"]["recall@50"] == pytest.approx((0.3, math.sqrt(0.02), 2))
    assert drawn["temporal"]["a"]["novel_recall@50"] == pytest.approx((0.02, 0.0, 1))
    assert (tmp_path / "t.png").read_bytes()[:8] == PNG

    drawn = plot_metric_bars({"a": {"recall@50": [0.1], "ndcg@50": []}}, tmp_path / "b.png")
    assert drawn["a"]["recall@50"] == {"mean": 0.1, "std": 0.0, "n": 1}  # one seed: no spread
    assert math.isnan(drawn["a"]["ndcg@50"]["mean"]) and drawn["a"]["ndcg@50"]["n"] == 0

    hops = {"[1.0,0.0,0.0]": {"recall@50": [0.3, 0.5]}, "[5.0,2.5,1.0]": {"recall@50": [0.6]}}
    drawn = plot_sweep({"gimirec": hops}, tmp_path / "s.png", key="graph.hop_weights", metrics=["recall@50"])
    assert drawn["gimirec"]["recall@50"]["values"] == ["[1.0,0.0,0.0]", "[5.0,2.5,1.0]"]  # categorical: spec order
    np.testing.assert_allclose(drawn["gimirec"]["recall@50"]["mean"], [0.4, 0.6])

    drawn = plot_collapse(
        {
            "k1": [],
            "k3": [
                {"interest_cosine": 0.2, "topk_jaccard": 0.0, "interest_share": [0.5, 0.5]},
                {"interest_cosine": 0.4, "topk_jaccard": 0.2, "interest_share": [1.0, 0.0, 0.0]},
            ],
        },
        tmp_path / "c.png",
    )
    assert list(drawn) == ["k3"]  # no diagnostics for K = 1
    np.testing.assert_allclose(drawn["k3"]["interest_share"], [0.75, 0.25, 0.0])
    for name in ("b.png", "s.png", "c.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_published_table_is_drawn_from_its_summaries(tmp_path):
    from mirec.experiments.plots import plot_tradeoff_summaries, read_tradeoff_table

    table = tmp_path / "points.csv"
    table.write_text(
        "panel,variant,source,seeds,recall@50,recall@50 std,novel_recall@50,novel_recall@50 std\n"
        '"Beauty, temporal",sasrec,20k,2,0.0515,0.0004,0.0294,\n'
        '"Beauty, temporal",sa+gc,18,3,0.0527,0.0023,0.0328,0.0014\n'
        "Grocery,sasrec,20k,3,0.1984,0.0047,0.0843,0.0081\n"
    )
    panels = read_tradeoff_table(table)
    assert list(panels) == ["Beauty, temporal", "Grocery"]
    assert panels["Beauty, temporal"]["sasrec"] == {
        "recall@50": (0.0515, 0.0004, 2),
        "novel_recall@50": (0.0294, 0.0, 2),
    }
    assert panels["Grocery"]["sasrec"]["novel_recall@50"] == (0.0843, 0.0081, 3)
    assert plot_tradeoff_summaries(panels, tmp_path / "t.png") == panels
    assert (tmp_path / "t.png").read_bytes()[:8] == PNG

    table.write_text(table.read_text() + "Grocery,gimirec,18,three,0.1861,0.0031,0.0894,0.0043\n")
    with pytest.raises(ValueError, match=r"points\.csv:5: bad tradeoff row"):
        read_tradeoff_table(table)


def test_missing_matplotlib_is_a_one_line_error(fake_grid, monkeypatch, capsys):
    spec, out = fake_grid
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    rc = cli_main(
        ["bench", "--grid", str(spec), "--data", "ds=unused", "--output", str(out), "--tables-only", "--plots"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1
    assert "pip install 'mirec[plot]'" in err[0]
    assert not (out / "results.csv").exists()  # checked before anything else is done


def test_results_csv_quotes_names_with_commas(tmp_path):
    rows = [
        {
            "dataset": "ds",
            "variant": "g[graph.hop_weights=[1.0,0.0,0.0]]",
            "model": "gimirec",
            "seed": 1,
            "split": "test",
            "sweep_value": "[1.0,0.0,0.0]",
            "recall@50": 0.25,
            "users": None,
        }
    ]
    write_csv(rows, tmp_path / "r.csv")
    (back,) = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert back["variant"] == rows[0]["variant"] and back["sweep_value"] == "[1.0,0.0,0.0]"
    assert back["recall@50"] == "0.25" and back["users"] == ""
    assert list(back)[:5] == ["dataset", "model", "seed", "split", "sweep_value"]


def test_plan_is_seed_major():
    variants = [Variant("dnn", "dnn"), Variant("gru4rec", "gru4rec")]
    cells = plan(Path("out"), {"x": "px", "y": "py"}, variants, [1, 2])
    assert [(c.seed, c.dataset, c.variant.name) for c in cells] == [
        (1, "x", "dnn"),
        (1, "x", "gru4rec"),
        (1, "y", "dnn"),
        (1, "y", "gru4rec"),
        (2, "x", "dnn"),
        (2, "x", "gru4rec"),
        (2, "y", "dnn"),
        (2, "y", "gru4rec"),
    ]
    assert cells[5].run_dir == Path("out/x/gru4rec/seed2")


def test_budget_cut_cells_are_in_the_csv_and_named_under_the_table(fake_grid):
    spec, out = fake_grid
    cut = out / "ds" / "gimirec[model.num_interests=2]" / "seed2" / "metrics.json"
    metrics = json.loads(cut.read_text())
    metrics["train"].update(steps=1234, best_step=1000, stop_reason="max_minutes")
    cut.write_text(json.dumps(metrics))
    done = out / "ds" / "gimirec[model.num_interests=4]" / "seed1" / "metrics.json"
    metrics = json.loads(done.read_text())
    metrics["train"].update(steps=900, best_step=300, stop_reason="patience")
    done.write_text(json.dumps(metrics))
    assert cli_main(["bench", "--grid", str(spec), "--data", "ds=unused", "--output", str(out), "--tables-only"]) == 0
    test = {(r["variant"], r["seed"]): r for r in csv.DictReader((out / "results.csv").open()) if r["split"] == "test"}
    assert test[("gimirec[model.num_interests=2]", "2")]["stop_reason"] == "max_minutes"
    assert test[("gimirec[model.num_interests=2]", "2")]["steps"] == "1234"
    assert test[("gimirec[model.num_interests=4]", "1")]["best_step"] == "300"
    text = (out / "results.md").read_text()
    assert (
        "Stopped by the wall-clock budget (still improving or not): gimirec[model.num_interests=2] seed 2 (1,234 steps)"
        in text
    )
    assert "num_interests=4] seed 1 (" not in text  # stopped by patience: not listed


def test_thread_share_follows_the_cpu_affinity_not_the_machine(monkeypatch):
    # under `taskset -c 0-2` a 16-core machine offers 3 CPUs; os.cpu_count() would say 16
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert usable_cpus() == 3
    monkeypatch.delattr("os.sched_getaffinity", raising=False)
    assert usable_cpus() == 16


def test_bench_threads_reach_every_cell_and_default_to_the_cores_shared_by_the_jobs(monkeypatch, tmp_path):
    import mirec.experiments.grid as grid

    seen: list[int] = []

    def fake_cell(cell, common, budget, threads, config):
        seen.append(threads)
        return {"ok": True, "cell": str(cell.run_dir), "seconds": 0.0, "reason": ""}

    monkeypatch.setattr(grid, "run_cell", fake_cell)
    monkeypatch.setattr("mirec.utils.usable_cpus", lambda: 8)
    cells = grid.plan(tmp_path, {"ds": "x"}, [grid.Variant("a", "dnn", [])], [1, 2])
    grid.run_grid(cells, [], 0.0, 2, tmp_path)
    assert seen == [4, 4]  # 8 cores shared by 2 jobs
    seen.clear()
    grid.run_grid(cells, [], 0.0, 2, tmp_path, threads=1)  # `mirec bench --threads 1`
    assert seen == [1, 1]


def test_a_tiny_grid_runs_in_process_from_python(tmp_path):
    """Grid(...).run() from Python: two variants x one seed trained here, a results table, and a rerun that
    trains nothing (every cell done)."""
    from mirec.experiments.grid import Grid, GridSpec
    from tests.training.test_trainer import cycle_dataset

    data = tmp_path / "cycle"
    cycle_dataset().save(data)
    tiny = ["train.batch_size=16", "train.max_steps=20", "train.eval_every=10", "train.num_negatives_factor=2"]
    tiny += ["model.embedding_dim=8", "model.maxlen=8", "eval.topk=[5,10]", "eval.early_stop_metric=recall@10"]
    spec = GridSpec(variants=[Variant.parse("dnn"), Variant.parse("k2=dnn:model.num_interests=2")], seeds=[1], set=tiny)
    grid = Grid(spec, {"cycle": str(data)}, tmp_path / "grid", in_process=True, ks=[5, 10])
    results = grid.run()
    assert sorted((r["variant"], r["split"]) for r in results.rows) == [
        ("dnn", "test"),
        ("dnn", "valid"),
        ("k2", "test"),
        ("k2", "valid"),
    ]
    assert all(r["steps"] == 20 for r in results.rows) and "| dnn |" in results.markdown()
    assert (tmp_path / "grid" / "results.csv").exists() and (tmp_path / "grid" / "grid.json").exists()
    assert not grid.todo()
    before = (tmp_path / "grid" / "cycle" / "dnn" / "seed1" / "metrics.json").stat().st_mtime_ns
    assert Grid(spec, {"cycle": str(data)}, tmp_path / "grid", in_process=True, ks=[5, 10]).run().rows == results.rows
    assert (tmp_path / "grid" / "cycle" / "dnn" / "seed1" / "metrics.json").stat().st_mtime_ns == before
