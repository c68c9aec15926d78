"""End-to-end command-line contract: prepare -> train -> evaluate -> recommend, exit codes and messages."""

import json

import numpy as np
import pytest

from mirec.cli import main


@pytest.fixture(scope="module")
def log_file(tmp_path_factory):
    """A small TSV log (header user_id item_id timestamp) with clustered users so a model can learn."""
    rng = np.random.default_rng(0)
    rows = ["user_id\titem_id\ttimestamp"]
    for user in range(120):
        cluster = user % 4
        start = 1_300_000_000 + int(rng.integers(0, 10_000_000))
        for step in range(int(rng.integers(8, 16))):
            item = 100 + cluster * 10 + int(rng.integers(0, 10))
            rows.append(f"u{user}\ti{item}\t{start + step * 86400}")
    path = tmp_path_factory.mktemp("log") / "log.tsv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def run_dir(log_file, tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    assert main(["prepare", str(log_file), "--format", "csv", "--output", str(base / "data")]) == 0
    code = main(
        [
            "train",
            "--data",
            str(base / "data"),
            "--model",
            "comirec-sa",
            "--output",
            str(base / "run"),
            "--max-steps",
            "60",
            "--set",
            "train.eval_every=30",
            "--set",
            "train.batch_size=32",
            "--set",
            "train.num_negatives_factor=1",
            "--set",
            "eval.topk=[10,20]",
            "--set",
            "eval.early_stop_metric=recall@20",
            "--quiet",
        ]
    )  # 40 items: a cut-off of 50 would be refused
    assert code == 0
    return base / "run"


def test_train_writes_metrics_contract(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for split in ("valid", "test"):
        for n in (10, 20):
            for name in ("recall", "ndcg", "ndcg_comirec", "hit_rate"):
                value = metrics[split][f"{name}@{n}"]
                assert 0.0 <= value <= 1.0
    # 40 items in 4 clusters of 10: the top 10 must beat chance (10/40 of a user's targets)
    assert metrics["test"]["recall@10"] > 0.4


def test_evaluate_prints_same_metrics_and_dumps_original_ids(run_dir, capsys, tmp_path):
    dump = tmp_path / "recs.jsonl"
    assert main(["evaluate", str(run_dir), "--split", "test", "--dump-recs", str(dump)]) == 0
    printed = json.loads(capsys.readouterr().out)
    stored = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert printed["recall@20"] == pytest.approx(stored["recall@20"])
    lines = [json.loads(line) for line in dump.read_text().splitlines()]
    assert lines and all(str(u["user"]).startswith("u") for u in lines)
    assert all(i.startswith("i") for u in lines for i in u["history"] + u["targets"] + u["recommendations"])


def test_recommend_reports_unknown_items(run_dir, capsys):
    assert main(["recommend", str(run_dir), "--items", "i100,i101,nope", "-n", "5"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert len(out["recommendations"]) == 5 and out["unknown_items"] == ["nope"]
    assert "nope" in captured.err


def test_recommend_accepts_run_option_like_the_positional(run_dir, capsys):
    assert main(["recommend", str(run_dir), "--items", "i100,i101", "-n", "7"]) == 0
    positional = json.loads(capsys.readouterr().out)
    assert main(["recommend", "--run", str(run_dir), "--items", "i100,i101", "-n", "7"]) == 0
    assert json.loads(capsys.readouterr().out)["recommendations"] == positional["recommendations"]
    assert main(["recommend", "--items", "i100"]) == 1
    assert "needs a run folder" in capsys.readouterr().err


def test_bad_input_exits_nonzero_with_one_line_reason(tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("user_id\titem_id\ttimestamp\nu1\ti1\t1300000000\nu2\ti2\n")
    code = main(["prepare", str(bad), "--format", "csv", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1 and "bad.tsv" in err and "line 3" in err
    assert not (tmp_path / "out").exists()


def test_the_parquet_layout_is_refused_without_the_spark_engine(tmp_path, capsys):
    log = tmp_path / "log.tsv"
    log.write_text("user_id\titem_id\ttimestamp\nu1\ti1\t1300000000\n")
    assert main(["prepare", str(log), "--format", "csv", "--layout", "parquet", "--output", str(tmp_path / "o")]) == 1
    assert "--layout parquet is written by --engine spark only" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_drop_duplicates_on_the_command_line(tmp_path, capsys):
    from mirec.data.dataset import load_dataset

    rows = [f"u{u}\ti{i}\t{1300000000 + 86400 * i}" for u in range(6) for i in range(6)]
    log = tmp_path / "log.tsv"
    log.write_text("user_id\titem_id\ttimestamp\n" + "\n".join(rows + rows[:3]) + "\n")  # 3 repeated rows
    for flag, dropped in (([], None), (["--drop-duplicates"], 3)):
        out = tmp_path / f"out{len(flag)}"
        assert main(["prepare", str(log), "--format", "csv", "--output", str(out), *flag]) == 0
        assert load_dataset(out).meta["clean"].get("dropped_duplicates") == dropped


def test_unknown_model_and_missing_data_are_clear_errors(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nothing"), "--model", "dnn", "--output", str(tmp_path / "r")]) == 1
    assert "no such prepared folder" in capsys.readouterr().err


def test_python_api_matches_cli(run_dir, capsys):
    import mirec

    rec = mirec.load(run_dir, device="cpu")
    api = rec.recommend(["i100", "i101"], n=7)
    assert main(["recommend", str(run_dir), "--items", "i100,i101", "-n", "7", "--device", "cpu"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert api["recommendations"] == cli["recommendations"] and len(api["recommendations"]) == 7
    assert api["scores"] == sorted(api["scores"], reverse=True)
    assert rec.evaluate("test")["recall@20"] == pytest.approx(
        json.loads((run_dir / "metrics.json").read_text())["test"]["recall@20"]
    )
