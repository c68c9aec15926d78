"""One front door: mirec.load takes a run folder or a bundle; recommend takes one history or a batch."""

from __future__ import annotations

import pytest

import mirec
from tests.conftest import HISTORIES

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_run_folder_and_its_bundle_load_as_one_type_and_serve_the_same(run_dir, bundle):
    from_run, from_bundle = mirec.load(run_dir, device="cpu"), mirec.load(bundle, device="cpu")
    assert type(from_run) is type(from_bundle)
    for history in HISTORIES:
        assert (
            from_run.recommend(history, n=7)["recommendations"]
            == from_bundle.recommend(history, n=7)["recommendations"]
        )


def test_recommend_takes_a_batch_with_the_single_answers_and_none_for_an_unknown_history(bundle):
    rec = mirec.load(bundle, device="cpu")
    batch = rec.recommend([*HISTORIES, ["nope"]], n=5)
    assert batch[-1] is None
    for got, history in zip(batch[:-1], HISTORIES, strict=True):
        alone = rec.recommend(history, n=5)
        assert got["recommendations"] == alone["recommendations"] and got["interests"] == alone["interests"]
        # one batch against one user: other matrix shapes, other kernels, the last bits may differ
        assert got["scores"] == pytest.approx(alone["scores"], rel=1e-5, abs=1e-6)
    with pytest.raises(ValueError, match="none of the given items"):
        rec.recommend(["nope"], n=5)


def test_a_bundle_evaluates_given_its_dataset_as_its_run_does(run_dir, bundle, data_dir):
    with pytest.raises(ValueError, match="a bundle holds no dataset"):
        mirec.load(bundle, device="cpu").evaluate("test")
    from_bundle = mirec.load(bundle, device="cpu", data=data_dir).evaluate("test")
    from_run = mirec.load(run_dir, device="cpu").evaluate("test")
    assert from_bundle["recall@20"] == pytest.approx(from_run["recall@20"], abs=1e-9)
