"""Never lose a user's data: refused clobbers, crash-safe checkpoints (fault injection with real kills), resume
checks, locks, bad input caught with one clean line, deterministic exit codes, Ctrl-C, file modes, moved data."""

from __future__ import annotations

import gzip
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from mirec.cli import main
from mirec.config import ConfigError, load_config
from mirec.data.prepare import output_lock_file, prepare
from mirec.runs import RunFolderError, load_run, run_lock
from mirec.training.checkpoint import checkpoint_versions, latest_checkpoint
from mirec.training.trainer import train_run
from mirec.utils import LockedError, exclusive_lock
from tests.conftest import REPO

# A tiny DNN run that a child process can also build (no test-only model): evaluations at 40, 80, 120.
TINY = [
    "model.embedding_dim=8",
    "train.batch_size=16",
    "train.num_negatives_factor=1",
    "train.eval_every=40",
    "train.max_steps=120",
    "train.log_every=10",
    'train.device="cpu"',
    "eval.topk=[5,10]",
    "eval.early_stop_metric=recall@10",
]

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread, bit-identical to child processes


def write_log(path: Path, n_users: int = 90, seed: int = 0, scale: int = 1) -> Path:
    """A TSV log (header user_id item_id timestamp) of clustered users; timestamps in seconds * ``scale``."""
    rng = np.random.default_rng(seed)
    rows = ["user_id\titem_id\ttimestamp"]
    for user in range(n_users):
        start = 1_300_000_000 + int(rng.integers(0, 10_000_000))
        for step in range(int(rng.integers(8, 14))):
            item = 100 + (user % 3) * 12 + int(rng.integers(0, 12))
            rows.append(f"u{user}\ti{item}\t{(start + step * 86400) * scale}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def log_file(tmp_path_factory) -> Path:
    return write_log(tmp_path_factory.mktemp("log") / "log.tsv")


@pytest.fixture(scope="module")
def data_dir(log_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prep") / "data"
    prepare([log_file], "csv", out)
    return out


def tiny_config(*extra: str):
    return load_config(model="dnn", overrides=[*TINY, *extra])


def run_cli(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "mirec", *args], capture_output=True, text=True, timeout=timeout, env=env, **kwargs
    )


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def history(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]


# ----------------------------------------------------------------------------------------------- 1. prepare


def test_prepare_never_replaces_an_input_or_a_foreign_folder(log_file, tmp_path):
    own = tmp_path / "mydata"
    own.mkdir()
    source = own / "log.tsv"
    source.write_bytes(log_file.read_bytes())
    # the case: the output folder holds the input log
    assert main(["prepare", str(source), "--format", "csv", "--output", str(own)]) == 1
    assert main(["prepare", str(source), "--format", "csv", "--output", str(own), "--overwrite"]) == 1
    assert source.read_bytes() == log_file.read_bytes()
    # a folder that is not a mirec dataset, with or without --overwrite
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    for extra in ([], ["--overwrite"]):
        assert main(["prepare", str(log_file), "--format", "csv", "--output", str(foreign), *extra]) == 1
    assert (foreign / "keep.txt").read_text() == "precious" and sorted(os.listdir(foreign)) == ["keep.txt"]
    # a file given as output
    assert main(["prepare", str(log_file), "--format", "csv", "--output", str(foreign / "keep.txt")]) == 1
    assert (foreign / "keep.txt").read_text() == "precious"


def test_prepare_replaces_a_dataset_only_with_overwrite(log_file, tmp_path, capsys):
    out = tmp_path / "prep"
    assert main(["prepare", str(log_file), "--format", "csv", "--output", str(out)]) == 0
    first = (out / "meta.json").read_text()
    capsys.readouterr()
    assert main(["prepare", str(log_file), "--format", "csv", "--output", str(out), "--seed", "5"]) == 1
    assert "--overwrite" in capsys.readouterr().err and (out / "meta.json").read_text() == first
    assert main(["prepare", str(log_file), "--format", "csv", "--output", str(out), "--seed", "5", "--overwrite"]) == 0
    assert json.loads((out / "meta.json").read_text())["seed"] == 5
    assert not list(tmp_path.glob(".*")), "no lock or temporary file is left beside the output"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["prepare", str(log_file), "--format", "csv", "--output", str(empty)]) == 0  # an empty folder is fine


def test_prepare_while_another_prepare_holds_the_output_fails_at_once(log_file, tmp_path):
    out = tmp_path / "prep"
    with exclusive_lock(output_lock_file(out), "test holder"):
        started = time.perf_counter()
        proc = run_cli("prepare", str(log_file), "--format", "csv", "--output", str(out))
        assert proc.returncode == 1 and f"PID {os.getpid()}" in proc.stderr, proc.stderr
        assert time.perf_counter() - started < 60 and not out.exists()
    assert run_cli("prepare", str(log_file), "--format", "csv", "--output", str(out)).returncode == 0


# ----------------------------------------------------------------------------------------------- 2. run folders


def test_fresh_train_into_a_finished_run_is_refused_and_overwrite_replaces_only_ours(data_dir, tmp_path):
    run = tmp_path / "run"
    train_run(data_dir, tiny_config(), run, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    (run / "my-notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="--resume .* or --overwrite"):
        train_run(data_dir, tiny_config("train.lr=0.01"), run, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.name != "my-notes.txt"} == before
    old_checkpoint = latest_checkpoint(run)
    train_run(data_dir, tiny_config("train.lr=0.01", "train.max_steps=40"), run, overwrite=True, progress=False)
    assert old_checkpoint is not None and not old_checkpoint.exists() or latest_checkpoint(run) != old_checkpoint
    state = json.loads((latest_checkpoint(run) / "state.json").read_text())
    assert state["step"] == 40 and len(checkpoint_versions(run)) == 1
    assert load_config(run / "config.toml").train.lr == 0.01
    assert (run / "my-notes.txt").read_text() == "mine"  # not ours: left alone
    assert "left alone (not written by mirec): my-notes.txt" in (run / "train.log").read_text()
    with pytest.raises(RunFolderError, match="exclude"):
        train_run(data_dir, tiny_config(), run, overwrite=True, resume=True, progress=False)


def test_resume_without_a_checkpoint_is_an_error_not_a_fresh_start(data_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"best weights of an earlier run")
    with pytest.raises(RunFolderError, match="found no checkpoint"):
        train_run(data_dir, tiny_config(), run, resume=True, progress=False)
    assert (run / "model.safetensors").read_bytes() == b"best weights of an earlier run"


def test_resume_refuses_a_changed_config_or_dataset_and_applies_safe_changes(data_dir, log_file, tmp_path):
    run = tmp_path / "run"
    train_run(data_dir, tiny_config("train.max_steps=40"), run, progress=False)
    config_before = (run / "config.toml").read_text()
    with pytest.raises(RunFolderError, match=r"train\.lr: 0\.001 -> 0\.005"):
        train_run(data_dir, tiny_config("train.max_steps=40", "train.lr=0.005"), run, resume=True, progress=False)
    with pytest.raises(RunFolderError, match="model.name"):
        train_run(data_dir, load_config(model="comirec-sa", overrides=TINY), run, resume=True, progress=False)
    assert (run / "config.toml").read_text() == config_before  # a refused resume rewrites nothing
    other = tmp_path / "other"
    prepare([write_log(tmp_path / "other.tsv", seed=1)], "csv", other, name="data")
    with pytest.raises(RunFolderError, match="another dataset"):
        train_run(other, tiny_config("train.max_steps=40"), run, resume=True, progress=False)
    metrics = train_run(
        data_dir, tiny_config("train.max_steps=80", "train.patience=3"), run, resume=True, progress=False
    )
    assert metrics["train"]["steps"] == 80
    assert load_config(run / "config.toml").train.max_steps == 80
    log = (run / "train.log").read_text()
    assert "resume applies train.max_steps: 40 -> 80" in log and "resume applies train.patience" in log


# ----------------------------------------------------------------------------------------------- 3. crash safety

CHILD = textwrap.dedent("""
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from mirec.config import load_config
    from mirec.training import checkpoint
    from mirec.training.trainer import train_run

    stage, when, data, run = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    calls = {"save": 0}
    real_save_file, real_fsync = checkpoint.save_file, checkpoint.fsync_path

    def kill():
        os.kill(os.getpid(), signal.SIGKILL)

    def save_file(tensors, path, metadata=None):
        if stage == "mid-write" and calls["save"] == when and path.endswith("optimizer.safetensors"):
            kill()
        return real_save_file(tensors, path, metadata=metadata)

    def fsync_path(path):
        name = os.path.basename(str(path))
        if calls["save"] == when and stage == "before-rename" and name.endswith(".tmp"):
            kill()  # every file written and synced; the one rename not done
        if calls["save"] == when and stage == "after-rename" and name == "checkpoints":
            kill()  # the new version renamed in; the older one not removed yet
        return real_fsync(path)

    real_save = checkpoint.save_checkpoint
    def save_checkpoint(*args, **kwargs):
        calls["save"] += 1
        return real_save(*args, **kwargs)

    checkpoint.save_file, checkpoint.fsync_path = save_file, fsync_path
    import mirec.training.trainer as trainer
    trainer.save_checkpoint = save_checkpoint
    config = load_config(model="dnn", overrides=sys.argv[5:])
    train_run(data, config, run, progress=False)
    print("finished without being killed")
""")


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("full") / "run"
    train_run(data_dir, tiny_config(), run, progress=False)
    return run


@pytest.mark.parametrize("stage,resumes_from", [("mid-write", 40), ("before-rename", 40), ("after-rename", 80)])
def test_kill_during_the_checkpoint_swap_then_resume_equals_an_uninterrupted_run(
    stage, resumes_from, data_dir, uninterrupted, tmp_path
):
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, stage, "2", str(data_dir), str(run), *TINY],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert latest_checkpoint(run) is not None
    assert json.loads((latest_checkpoint(run) / "state.json").read_text())["step"] == resumes_from
    leftovers = list((run / "checkpoints").glob(".*.tmp"))
    assert bool(leftovers) == (stage != "after-rename")
    metrics = train_run(data_dir, tiny_config(), run, resume=True, progress=False)
    assert not list((run / "checkpoints").glob(".*.tmp")), "stale temporary folders are cleaned on start"
    assert len(checkpoint_versions(run)) == 1
    assert "removed stale" in (run / "train.log").read_text() or stage == "after-rename"
    full = json.loads((uninterrupted / "metrics.json").read_text())
    assert metrics["test"] == full["test"] and metrics["valid"] == full["valid"]
    assert history(run) == history(uninterrupted)
    assert same_weights(weights(run / "model.safetensors"), weights(uninterrupted / "model.safetensors"))
    assert same_weights(
        weights(latest_checkpoint(run) / "optimizer.safetensors"),
        weights(latest_checkpoint(uninterrupted) / "optimizer.safetensors"),
    )


def test_a_run_folder_of_an_earlier_mirec_is_recovered_from_its_moved_aside_checkpoint(
    data_dir, uninterrupted, tmp_path
):
    """mirec < 0.2 swapped checkpoint/ by two renames; a crash between them left only .checkpoint.old-PID."""
    run = tmp_path / "run"
    train_run(data_dir, tiny_config("train.max_steps=80"), run, progress=False)
    version = latest_checkpoint(run)
    os.rename(version, run / ".checkpoint.old-4242")  # the old layout, mid-swap: no checkpoint/ at all
    version.parent.rmdir()
    (run / ".checkpoint.x1y2.tmp").mkdir()  # the half-written new one
    metrics = train_run(data_dir, tiny_config(), run, resume=True, progress=False)
    assert "recovered checkpoint/" in (run / "train.log").read_text()
    assert not (run / "checkpoint").exists() and not list(run.glob(".checkpoint*"))
    assert metrics["test"] == json.loads((uninterrupted / "metrics.json").read_text())["test"]


def test_a_corrupt_checkpoint_is_a_clear_error_naming_the_file(data_dir, tmp_path):
    run = tmp_path / "run"
    train_run(data_dir, tiny_config("train.max_steps=40"), run, progress=False)
    target = latest_checkpoint(run) / "optimizer.safetensors"
    target.write_bytes(target.read_bytes()[:100])
    with pytest.raises(ValueError, match="optimizer.safetensors: not a readable safetensors file"):
        train_run(data_dir, tiny_config("train.max_steps=80"), run, resume=True, progress=False)


# ----------------------------------------------------------------------------------------------- 4. locks


def test_a_second_training_into_a_locked_run_folder_fails_at_once_naming_the_holder(data_dir, tmp_path):
    run = tmp_path / "run"
    with run_lock(run):
        proc = run_cli(
            "train",
            "--data",
            str(data_dir),
            "--model",
            "dnn",
            "--output",
            str(run),
            "--quiet",
            *[a for s in TINY for a in ("--set", s)],
        )
        assert proc.returncode == 1 and f"PID {os.getpid()}" in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") <= 2
        with pytest.raises(LockedError, match=str(os.getpid())):
            train_run(data_dir, tiny_config(), run, progress=False)
    assert sorted(os.listdir(run)) == []  # the lock file goes with its holder


def test_the_lock_is_released_by_a_killed_holder(tmp_path):
    lock = tmp_path / ".lock"
    code = (
        f"from mirec.utils import exclusive_lock\nimport os, signal\nwith exclusive_lock({str(lock)!r}, 'x'):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == -signal.SIGKILL
    with exclusive_lock(lock, "x"):  # the kernel released it
        assert lock.read_text().strip() == str(os.getpid())


# ----------------------------------------------------------------------------------------------- 5. input


@pytest.mark.parametrize("scale,unit", [(1, "s"), (1000, "ms"), (1_000_000, "us"), (1_000_000_000, "ns")])
def test_timestamp_unit_is_detected_converted_and_recorded(tmp_path, scale, unit):
    plain = prepare([write_log(tmp_path / "s.tsv")], "csv", tmp_path / "s")
    scaled = prepare([write_log(tmp_path / "x.tsv", scale=scale)], "csv", tmp_path / "x")
    meta = json.loads((tmp_path / "x" / "meta.json").read_text())
    assert meta["timestamp_unit"] == unit and scaled.clean["timestamp_unit"] == unit
    for split in ("train", "valid", "test"):
        a = np.load(tmp_path / "s" / f"{split}_timestamps.npy")
        b = np.load(tmp_path / "x" / f"{split}_timestamps.npy")
        assert np.array_equal(a, b)  # stored in seconds whatever the input's unit
    assert plain.n_interactions == scaled.n_interactions


def test_timestamp_unit_can_be_stated_and_implausible_dates_warn(tmp_path, capsys):
    log = write_log(tmp_path / "ms.tsv", scale=1000)
    assert (
        main(["prepare", str(log), "--format", "csv", "--output", str(tmp_path / "a"), "--timestamp-unit", "ms"]) == 0
    )
    assert json.loads((tmp_path / "a" / "meta.json").read_text())["timestamp_unit"] == "ms"
    with pytest.warns(UserWarning, match="in the future"):  # ms read as seconds: the year 43,000
        prepare([log], "csv", tmp_path / "b", timestamp_unit="s")
    small = tmp_path / "small.tsv"
    small.write_text(
        "user_id\titem_id\ttimestamp\n" + "".join(f"u{u}\ti{i}\t{5000 + i}\n" for u in range(40) for i in range(6))
    )
    with pytest.warns(UserWarning, match="1970-01-01.*before 1990"):  # e.g. category ids taken as timestamps
        report = prepare([small], "csv", tmp_path / "c", options=None)
    assert "timestamp_warning" in report.clean


def bad_utf8_log(tmp_path: Path, log_file: Path) -> Path:
    lines = log_file.read_bytes().split(b"\n")
    lines[5] = lines[5].replace(b"\t", b"\xe9\t", 1)  # a Latin-1 e-acute in the user id of line 6
    path = tmp_path / "latin.tsv"
    path.write_bytes(b"\n".join(lines))
    return path


def test_invalid_utf8_names_its_line_is_skipped_with_skip_and_read_with_encoding(log_file, tmp_path, capsys):
    bad = bad_utf8_log(tmp_path, log_file)
    assert main(["prepare", str(bad), "--format", "csv", "--output", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "latin.tsv line 6: invalid UTF-8 (byte 0xe9" in err and len(err.strip().splitlines()) == 1
    assert main(["prepare", str(bad), "--format", "csv", "--output", str(tmp_path / "b"), "--on-bad-rows", "skip"]) == 0
    report = json.loads(capsys.readouterr().out)
    n_rows = len(log_file.read_text().splitlines()) - 1
    assert report["read"]["rows_skipped"] == 1 and report["clean"]["rows_in"] == n_rows - 1
    assert main(["prepare", str(bad), "--format", "csv", "--output", str(tmp_path / "c"), "--encoding", "latin-1"]) == 0
    users = pq.read_table(tmp_path / "c" / "users.parquet").column("original_id").to_pylist()
    line6_user = log_file.read_text().splitlines()[5].split("\t")[0]
    assert f"{line6_user}\u00e9" in users or n_rows > 0  # the user may be filtered out; the read itself succeeded
    json_file = tmp_path / "reviews.json"
    json_file.write_bytes(b'{"reviewerID": "a", "asin": "b", "unixReviewTime": 1300000000}\n{"reviewerID": "\xff"}\n')
    assert main(["prepare", str(json_file), "--format", "amazon-2018", "--output", str(tmp_path / "d")]) == 1
    assert "reviews.json line 2: not valid utf-8" in capsys.readouterr().err


def test_taobao_behaviors_all_keeps_every_row(tmp_path):
    from mirec.data.readers import read_interactions

    path = tmp_path / "UserBehavior.csv"
    path.write_text("1,10,5,pv,1511544070\n1,11,5,buy,1511544071\n2,10,5,cart,1511544072\n2,12,6,fav,1511544073\n")
    assert len(read_interactions([path], "taobao", behaviors=["all"])) == 4
    assert len(read_interactions([path], "taobao", behaviors="all")) == 4
    assert len(read_interactions([path], "taobao", behaviors=["pv", "buy"])) == 2


def test_whole_file_problems_are_one_clean_line(tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    parquet_named = tmp_path / "log.parquet"
    parquet_named.write_text("user,item,timestamp\n1,2,3\n")
    garbage = tmp_path / "UserBehavior.csv"
    garbage.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 400, dtype=np.uint8)))
    cases = [
        (empty, "csv", "empty file"),
        (parquet_named, "parquet", "not a readable Parquet file"),
        (garbage, "taobao", "invalid UTF-8"),
    ]
    for path, fmt, expected in cases:
        assert main(["prepare", str(path), "--format", fmt, "--output", str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err
        assert expected in err and str(path.name) in err, err
        assert len(err.strip().splitlines()) == 1 and "\x00" not in err and "Exception ignored" not in err
        assert all(c.isprintable() or c == "\n" for c in err)


def test_a_bad_config_fails_before_training_with_the_choices(data_dir, tmp_path, capsys):
    cases = {
        "eval.backend=fiass": "['torch', 'faiss']",
        "eval.early_stop_metric=recal@50": "METRIC@N",
        "eval.topk=[0]": ">= 1",
        "train.num_negatives_factor=0": ">= 1",
        "model.num_interests=0": ">= 1",
        "model.embedding_dim=0": ">= 1",
        "model.maxlen=0": ">= 1",
        "train.loss=bpr": "'sampled'",
        "eval.topk=[20,5000]": "catalogue",
    }
    for override, expected in cases.items():
        run = tmp_path / override.replace("=", "_")
        extra = ["--set", "eval.early_stop_metric=recall@20"] if "topk=[20" in override else []
        assert (
            main(
                [
                    "train",
                    "--data",
                    str(data_dir),
                    "--model",
                    "comirec-sa",
                    "--output",
                    str(run),
                    "--quiet",
                    "--set",
                    override,
                    *extra,
                ]
            )
            == 1
        )
        err = capsys.readouterr().err
        assert expected in err, (override, err)
        assert not run.exists() or not [p for p in run.iterdir() if p.name != ".lock"], "no half-made run folder"
    with pytest.raises(ConfigError, match="expected one of"):
        load_config(model="gimirec", overrides=["model.interest_values=aggregate"])


# ----------------------------------------------------------------------------------------------- 6. process


def test_error_exit_codes_are_deterministic(log_file, tmp_path):
    bad = bad_utf8_log(tmp_path, log_file)
    garbage = tmp_path / "UserBehavior.csv"
    garbage.write_bytes(bytes(np.random.default_rng(1).integers(0, 256, 400, dtype=np.uint8)))
    for path, fmt in [(bad, "csv"), (garbage, "taobao")] * 5:
        proc = run_cli("prepare", str(path), "--format", fmt, "--output", str(tmp_path / "out"))
        assert proc.returncode == 1 and "terminate called" not in proc.stderr, proc.stderr
    for _ in range(2):  # with torch loaded too
        proc = run_cli("train", "--data", str(tmp_path / "missing"), "--model", "dnn", "--output", str(tmp_path / "r"))
        assert proc.returncode == 1 and "terminate called" not in proc.stderr, proc.stderr


def test_ctrl_c_during_training_checkpoints_and_exits_130_then_resumes(data_dir, tmp_path):
    run = tmp_path / "run"
    overrides = [*TINY, "train.max_steps=100000", "train.eval_every=1000"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mirec",
            "train",
            "--data",
            str(data_dir),
            "--model",
            "dnn",
            "--output",
            str(run),
            "--quiet",
            *[a for s in overrides for a in ("--set", s)],
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.time() + 120
    while time.time() < deadline and "step 20 " not in (
        (run / "train.log").read_text() if (run / "train.log").exists() else ""
    ):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    state = json.loads((latest_checkpoint(run) / "state.json").read_text())
    assert state["step"] >= 20 and state["stop_reason"] == "interrupted"
    assert "interrupted at step" in (run / "train.log").read_text()
    resumed = run_cli(
        "train",
        "--data",
        str(data_dir),
        "--model",
        "dnn",
        "--output",
        str(run),
        "--quiet",
        "--resume",
        *[
            a
            for s in [*overrides[:-2], f"train.max_steps={state['step'] + 10}", "train.eval_every=1000"]
            for a in ("--set", s)
        ],
    )
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "metrics.json").read_text())["train"]["steps"] == state["step"] + 10


def test_bench_checks_data_first_and_fails_when_cells_fail(data_dir, tmp_path, capsys):
    assert (
        main(["bench", "--data", f"d={tmp_path / 'nothing'}", "--models", "dnn", "--output", str(tmp_path / "b")]) == 1
    )
    assert "not a prepared dataset" in capsys.readouterr().err and not (tmp_path / "b").exists()
    # every cell fails (a 1-item catalogue cannot hold top-10): exit 1, naming the count
    code = main(
        [
            "bench",
            "--data",
            f"d={data_dir}",
            "--models",
            "dnn",
            "--seeds",
            "1",
            "--output",
            str(tmp_path / "b"),
            "--set",
            "eval.topk=[10,100000]",
            "--set",
            "eval.early_stop_metric=recall@10",
        ]
    )
    assert code == 1 and "1 of 1 cells failed" in capsys.readouterr().err


def test_the_python_api_is_not_shadowed_by_subpackages(data_dir, tmp_path):
    import mirec
    import mirec.runs  # noqa: F401
    import mirec.training.trainer  # noqa: F401

    assert callable(mirec.train) and callable(mirec.load) and callable(mirec.prepare)
    metrics = mirec.train(data_dir, "dnn", tmp_path / "run", overrides=TINY[:-1] + ["eval.early_stop_metric=recall@10"])
    assert callable(mirec.train) and "test" in metrics
    assert mirec.load(tmp_path / "run", device="cpu").recommend(["i100"], n=3)["recommendations"]


def test_outputs_follow_the_umask_not_0700(log_file, data_dir, tmp_path):
    old = os.umask(0o022)
    try:
        prepare([log_file], "csv", tmp_path / "prep")
        train_run(data_dir, tiny_config("train.max_steps=40"), tmp_path / "run", progress=False)
    finally:
        os.umask(old)
    for folder in (tmp_path / "prep", latest_checkpoint(tmp_path / "run")):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, folder
        for file in folder.iterdir():
            assert stat.S_IMODE(file.stat().st_mode) == 0o644, file
    assert stat.S_IMODE((tmp_path / "run" / "model.safetensors").stat().st_mode) == 0o644


def test_a_moved_dataset_is_found_beside_its_run_or_given_with_data(log_file, tmp_path, capsys):
    base = tmp_path / "project"
    prepare([log_file], "csv", base / "data")
    train_run(base / "data", tiny_config("train.max_steps=40"), base / "run", progress=False)
    moved = tmp_path / "moved"
    os.rename(base, moved)  # run and data moved together: the relative path still resolves
    assert load_run(moved / "run")[1].path == (moved / "data").resolve()
    os.rename(moved / "data", tmp_path / "elsewhere")
    assert main(["recommend", str(moved / "run"), "--items", "i100"]) == 1
    err = capsys.readouterr().err
    assert "pass --data DIR" in err and "run mirec prepare first" not in err
    assert main(["recommend", str(moved / "run"), "--items", "i100", "--data", str(tmp_path / "elsewhere")]) == 0
    assert main(["evaluate", str(moved / "run"), "--data", str(tmp_path / "elsewhere"), "--topk", "5"]) == 0


def test_pyarrow_floor_excludes_the_vulnerable_release():
    text = (REPO / "pyproject.toml").read_text()
    assert '"pyarrow>=14.0.1"' in text and pa.__version__ != "14.0.0"


def test_gzip_input_with_bad_bytes_names_the_line(log_file, tmp_path, capsys):
    bad = bad_utf8_log(tmp_path, log_file)
    gz = tmp_path / "latin.tsv.gz"
    gz.write_bytes(gzip.compress(bad.read_bytes()))
    assert main(["prepare", str(gz), "--format", "csv", "--output", str(tmp_path / "a")]) == 1
    assert "latin.tsv.gz line 6" in capsys.readouterr().err


def test_replacing_a_folder_is_one_atomic_exchange(tmp_path, monkeypatch):
    """--overwrite of a dataset swaps old and new in one renameat2 call: a crash at any point leaves a whole
    folder at the path (old before the swap, new after); here the clean-up after the swap is made to fail."""
    from mirec import utils

    target = tmp_path / "data"
    target.mkdir()
    (target / "meta.json").write_text("old")
    removed = []
    monkeypatch.setattr(utils.shutil, "rmtree", lambda path, ignore_errors=False: removed.append(Path(path)))
    with utils.atomic_directory(target) as tmp:
        (tmp / "meta.json").write_text("new")
    assert (target / "meta.json").read_text() == "new"
    (old,) = removed  # the old folder was swapped to the temporary name, never missing from the path
    assert (old / "meta.json").read_text() == "old" and old.name.startswith(".data.")
