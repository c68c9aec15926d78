"""A person at a terminal gets tables; a script (a pipe, or --json) gets the JSON it always got."""

from __future__ import annotations

import json
import sys

from mirec.cli import main
from mirec.console import metrics_table, table


def test_a_table_pads_each_column_to_its_widest_cell():
    text = table([["a", 1.23456], ["longer", "x"]], ["name", "value"])
    assert text.splitlines() == ["name    value", "------  ------", "a       1.2346", "longer  x"]


def test_nested_metrics_become_dotted_rows():
    lines = metrics_table({"recall@50": 0.5, "time": {"train_s": 12.0}}).splitlines()
    assert lines[2].split() == ["recall@50", "0.5000"] and lines[3].split() == ["time.train_s", "12.0000"]


def test_models_prints_a_table_at_a_terminal_and_json_otherwise(capsys, monkeypatch):
    main(["models"])
    piped = json.loads(capsys.readouterr().out)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    main(["models"])
    shown = capsys.readouterr().out.splitlines()
    assert shown[0].split() == ["model", "paper"] and set(shown[1]) == {"-", " "}
    assert [line.split()[0] for line in shown[2:10]] == list(piped)[:8]
    main(["models", "--json"])
    assert json.loads(capsys.readouterr().out) == piped
