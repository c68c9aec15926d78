"""What mirec may delete: only folders a mirec run or preparation made (a marker, not a file name), only the files
it wrote, only after every check of the new run passed; bench names never become paths outside --output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mirec.cli import main
from mirec.runs import RUN_MARKER, RunFolderError
from mirec.training.trainer import train_run
from tests.runs.test_safety import data_dir, log_file, tiny_config  # noqa: F401 - module fixtures

pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".lock"}


def test_overwrite_refuses_a_folder_no_mirec_run_made(data_dir, tmp_path, capsys):  # noqa: F811
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.toml").write_text("my own settings")
    (mine / "train.log").write_text("my own log")
    args = ["train", "--data", str(data_dir), "--model", "dnn", "--output", str(mine), "--max-steps", "20"]
    assert main([*args, "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "no mirec run made it" in err and RUN_MARKER in err
    assert snapshot(mine) == {"config.toml": b"my own settings", "train.log": b"my own log"}
    assert main(args) == 1 and "--overwrite" not in capsys.readouterr().err  # no advice to destroy it


def test_a_run_writes_its_marker_and_overwrite_removes_only_its_own_files(data_dir, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    train_run(data_dir, tiny_config("train.max_steps=40"), run, progress=False)
    first_id = json.loads((run / RUN_MARKER).read_text())["run_id"]
    (run / "notes.md").write_text("mine")
    train_run(data_dir, tiny_config("train.max_steps=40"), run, overwrite=True, progress=False)
    assert json.loads((run / RUN_MARKER).read_text())["run_id"] != first_id  # a new run
    assert (run / "notes.md").read_text() == "mine"


@pytest.mark.parametrize(
    "bad",
    [
        ["--device", "cuda:7"],  # no such device here (there is no GPU on CI; a GPU machine has no 8th)
        ["--set", "eval.topk=[10,100000]", "--set", "eval.early_stop_metric=recall@10"],  # above the catalogue
        ["--set", "train.num_negatives_factor=1000"],  # more unique negatives than items
    ],
)
def test_overwrite_keeps_the_old_run_when_a_check_of_the_new_one_fails(data_dir, tmp_path, bad):  # noqa: F811
    run = tmp_path / "run"
    train_run(data_dir, tiny_config("train.max_steps=40"), run, progress=False)
    before = snapshot(run)
    args = ["train", "--data", str(data_dir), "--model", "dnn", "--output", str(run), "--overwrite", *bad]
    assert main(args) == 1
    assert snapshot(run) == before and (run / "checkpoints").is_dir()


def test_an_empty_lock_left_by_a_kill_is_harmless(data_dir, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text("")  # kill -9 between open and write
    train_run(data_dir, tiny_config("train.max_steps=20"), run, progress=False)
    assert (run / "metrics.json").exists()


def test_prepare_overwrite_refuses_a_prepared_folder_holding_foreign_files(log_file, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "prep"
    assert main(["prepare", str(log_file), "--format", "csv", "--output", str(out)]) == 0
    (out / "NOTES.txt").write_text("precious")
    before = snapshot(out)
    capsys.readouterr()
    assert main(["prepare", str(log_file), "--format", "csv", "--output", str(out), "--overwrite", "--seed", "5"]) == 1
    assert "NOTES.txt" in capsys.readouterr().err and snapshot(out) == before
    (out / "NOTES.txt").unlink()
    assert main(["prepare", str(log_file), "--format", "csv", "--output", str(out), "--overwrite", "--seed", "5"]) == 0


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--variant", "{victim}=dnn"),
        ("--variant", "../up=dnn"),
        ("--data", "../../x={data}"),
        ("--data", "{victim}={data}"),
        ("--sweep", 'train.tracking_experiment="../../x"'),
    ],
)
def test_bench_names_never_become_paths_outside_the_output(data_dir, tmp_path, capsys, flag, value):  # noqa: F811
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "config.toml").write_text("mine")
    text = value.format(victim=victim, data=data_dir)
    args = ["bench", "--output", str(tmp_path / "b"), "--seeds", "1", "--set", "train.max_steps=20"]
    args += [flag, text] + ([] if flag == "--data" else ["--data", f"d={data_dir}"])
    args += [] if flag == "--variant" else ["--models", "dnn"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "names are letters" in err or "may not hold" in err, err
    assert not (tmp_path / "b").exists() and os.listdir(victim) == ["config.toml"]


def test_bench_never_overwrites_a_cell_folder_it_did_not_create(data_dir, tmp_path, capsys):  # noqa: F811
    cell = tmp_path / "b" / "d" / "dnn" / "seed1"
    cell.mkdir(parents=True)
    (cell / "config.toml").write_text("mine")
    args = ["bench", "--output", str(tmp_path / "b"), "--seeds", "1", "--models", "dnn", "--data", f"d={data_dir}"]
    assert main([*args, "--set", "train.max_steps=20"]) == 1
    assert "1 of 1 cells failed" in capsys.readouterr().err
    assert snapshot(cell) == {"config.toml": b"mine"}


def test_a_failed_fresh_run_leaves_a_run_folder_bench_may_replace(data_dir, tmp_path):  # noqa: F811
    """A cell cut before its first checkpoint holds the marker: bench's --overwrite (its own run) goes through."""
    run = tmp_path / "run"
    with pytest.raises(RunFolderError):
        train_run(data_dir, tiny_config(), run, resume=True, progress=False)
    run.mkdir(exist_ok=True)
    (run / RUN_MARKER).write_text(json.dumps({"run_id": "x"}))
    (run / "train.log").write_text("cut short")
    train_run(data_dir, tiny_config("train.max_steps=20"), run, overwrite=True, progress=False)
    assert "cut short" not in (run / "train.log").read_text()
