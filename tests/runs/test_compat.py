"""Run folders and bundles written by release 0.1 (tests/fixtures/release-0.1, made by the code of commit 9d80287:
a ComiRec-SA run and a GemiRec over ComiRec-SA run whose base share was chosen on valid, their bundles, and what
that code served) still load, serve the same lists and evaluate to the metrics they recorded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import mirec
from mirec.serving.bundle import load_serving
from mirec.serving.model import RecommendRequest
from tests.conftest import FIXTURES

FIXTURE = FIXTURES / "release-0.1"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def old(tmp_path_factory) -> Path:
    """A copy: loading must not need to write, but a test must never risk the fixture."""
    copy = tmp_path_factory.mktemp("compat") / "release-0.1"
    shutil.copytree(FIXTURE, copy)
    return copy


@pytest.mark.parametrize("source", sorted(EXPECTED["served"]))
def test_an_old_run_or_bundle_serves_the_lists_it_served(old, source):
    served = load_serving(old / source)
    requests = [
        RecommendRequest(h, t, n=EXPECTED["n"])
        for h, t in zip(EXPECTED["histories"], EXPECTED["timestamps"], strict=True)
    ]
    for got, want in zip(served.recommend(requests), EXPECTED["served"][source], strict=True):
        assert got.items == want["items"] and got.interests == want["interests"]
        # written on one CPU, read on any: the kernels may round differently in the last bits
        torch.testing.assert_close(torch.tensor(got.scores), torch.tensor(want["scores"]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("run", ["run-comirec-sa", "run-gemirec-over-sa"])
def test_an_old_run_evaluates_to_the_metrics_it_recorded(old, run):
    recorded = json.loads((old / run / "metrics.json").read_text())["test"]
    got = mirec.load(old / run, device="cpu").evaluate("test")
    for key in ("recall@5", "recall@10", "ndcg@10", "hit_rate@10"):
        assert got[key] == pytest.approx(recorded[key], abs=1e-9), key
    if run == "run-gemirec-over-sa":  # the share it chose on valid is the one it serves with
        assert mirec.load(old / run, device="cpu").config.eval.base_share == 0.5
