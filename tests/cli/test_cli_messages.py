"""Careless input on the command line gets one line that says what is wrong (never a raw Python error)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mirec.cli import main
from mirec.config import ConfigError, load_config

pytestmark = pytest.mark.usefixtures("one_thread")


def error_of(capsys, argv: list[str]) -> str:
    """The one stderr line of a failed command."""
    capsys.readouterr()
    assert main(argv) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "name,text,flags,expected",
    [
        (
            "log.csv",
            "user,item,timestamp\nu1,i1,1300000000\n",
            ["--format", "csv", "--reader-option", "sep=,"],
            "--reader-option sep: not an option of format csv; its options: "
            "delimiter, header, user, item, timestamp, category, column_names, encoding",
        ),
        (
            "UserBehavior.csv",
            "1,2,3,pv,1511544070\n",
            ["--format", "taobao", "--behaviors", "bogus"],
            "--behaviors bogus: unknown; expected some of pv, buy, cart, fav (comma-separated) or all",
        ),
    ],
)
def test_unknown_reader_options_and_behaviours_name_the_valid_ones(tmp_path, capsys, name, text, flags, expected):
    log = write(tmp_path / name, text)
    line = error_of(capsys, ["prepare", str(log), "--output", str(tmp_path / "o"), *flags])
    assert line == f"mirec prepare: error: ValueError: {expected}"


def test_a_file_of_only_malformed_rows_names_its_first_bad_line(tmp_path, capsys):
    rows = "".join(f"u{i},i{i},1300000000,extra\n" for i in range(20))
    log = write(tmp_path / "log.csv", "user,item,timestamp\n" + rows)
    argv = ["prepare", str(log), "--format", "csv", "--output", str(tmp_path / "o"), "--on-bad-rows", "skip"]
    line = error_of(capsys, argv)
    assert f"{log}" in line and "line 2" in line and "every row is malformed (20 skipped)" in line, line
    assert "expected 3 fields, got 4" in line and "no interaction left" not in line


def test_integer_lists_are_one_line_errors(run_dir, capsys):
    line = error_of(capsys, ["evaluate", str(run_dir), "--topk", "a,b"])
    assert line == "mirec evaluate: error: ValueError: --topk 'a,b': expected comma-separated integers, e.g. 20,50"
    line = error_of(capsys, ["recommend", str(run_dir), "--items", "i100,i101", "--timestamps", "abc"])
    assert (
        line == "mirec recommend: error: ValueError: --timestamps 'abc': expected comma-separated integers, e.g. 20,50"
    )


def test_newest_first_timestamps_and_an_infinite_lambda_are_refused(run_dir, capsys):
    line = error_of(
        capsys, ["recommend", str(run_dir), "--items", "i100,i101", "--timestamps", "1300086400,1300000000"]
    )
    assert "timestamps.1 = 1300000000 is before timestamps.0: give the history oldest first" in line
    line = error_of(capsys, ["recommend", str(run_dir), "--items", "i100", "--diversity-lambda", "inf"])
    assert line == "mirec recommend: error: ValueError: diversity_lambda = inf: a finite number in 0..1e+06"


def test_evaluate_says_a_bundle_has_no_dataset_and_refuses_a_cutoff_above_the_catalogue(run_dir, bundle, capsys):
    line = error_of(capsys, ["evaluate", str(bundle)])
    assert "a bundle holds no dataset to evaluate on; evaluate the run folder it was exported from" in line
    assert str(Path(run_dir).resolve()) in line
    line = error_of(capsys, ["evaluate", str(run_dir), "--topk", "10,100000"])
    assert "eval.topk = [10, 100000]: a cut-off above the catalogue's" in line


def test_graph_weights_below_zero_are_refused():
    for key in ("graph.a=-1", "graph.b=-0.5", "graph.hop_weights=[1.0, -2.0]"):
        with pytest.raises(ConfigError, match=key.split("=")[0].split(".")[1]):
            load_config(model="gimirec", overrides=[key])
    with pytest.raises(ConfigError, match="graph.b"):
        load_config(model="gimirec", overrides=["graph.a=0", "graph.b=0"])


def test_gimirec_shows_the_global_context_it_always_uses(capsys):
    assert load_config(model="gimirec").model.global_context is True
    assert main(["models", "gimirec"]) == 0
    out = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert out["options"]["model.global_context"]["default"] is True
    assert out["options"]["model.readout_power"]["default"] == "inf"


def test_models_prints_strict_json_for_every_model(capsys):
    from mirec.models import MODEL_PATHS

    for name in MODEL_PATHS:
        assert main(["models", name]) == 0
        json.loads(capsys.readouterr().out, parse_constant=lambda c, m=name: pytest.fail(f"{m}: {c} is not JSON"))


def test_a_warning_is_one_line_naming_the_command(tmp_path):
    log = write(tmp_path / "log.csv", "".join(f"u{u},i{i},{1000 + i}\n" for u in range(8) for i in range(8)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mirec", "prepare", str(log), "--format", "csv", "--output", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "before 1990" in line]
    assert len(warned) == 1 and warned[0].startswith("mirec prepare: warning: "), proc.stderr
    assert ".py:" not in proc.stderr and "warnings.warn" not in proc.stderr


def test_batch_recommend_names_the_users_it_skipped(run_dir, tmp_path, capsys):
    lines = [
        {"user": "kept", "history": ["i100", "i101"]},
        {"user": "empty", "history": []},
        {"user": "strangers", "history": ["nope", "nada"]},
    ]
    source = write(tmp_path / "h.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
    capsys.readouterr()
    argv = ["recommend", str(run_dir), "--input", str(source), "--output", str(tmp_path / "r.parquet"), "--quiet"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["skipped_unknown"] == 2 and report["skipped_users"] == ["empty", "strangers"]
    assert "skipped 2 users with an empty or all-unknown history: empty, strangers" in captured.err
