"""The service under hostile and careless input: a bad request fails alone, ids cost their size, metrics cannot be
forged or grow without bound, admin routes need a token and verified bundles, strict types and finite numbers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from mirec.config import MAX_DIVERSITY_LAMBDA
from mirec.serving.app import ServeSettings, create_app
from mirec.serving.bundle import BundleError, export_bundle, load_bundle
from mirec.serving.model import MAX_TIMESTAMP, RecommendRequest
from tests.conftest import HISTORIES, free_port, wait_until_healthy

pytestmark = pytest.mark.usefixtures("one_thread")
AUTH = {"Authorization": "Bearer t"}


def client_of(served, **settings) -> TestClient:
    return TestClient(create_app(served, ServeSettings(**settings)))


def items_of(response) -> list[str]:
    return [i["id"] for i in response.json()["items"]]


def samples(text: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


# ------------------------------------------------------------------------------------------------ batching


def test_a_poisoned_request_in_every_batch_fails_alone(served):
    """40 concurrent clients, each round one of them sends a timestamp above int64: every valid request is
    answered 200 with the items it gets alone."""
    alone = {i: served.recommend([RecommendRequest(h, n=6)])[0].items for i, h in enumerate(HISTORIES)}
    poison = {"history": ["i100", "i101"], "timestamps": [1, 2**64], "n": 6}
    valid_codes, wrong, poison_codes = [], [], []
    with client_of(served, microbatch_wait_ms=20, microbatch_size=64) as client:

        def call(k: int):
            if k % 40 == 0:
                poison_codes.append(client.post("/v1/recommend", json=poison).status_code)
                return
            h = k % len(HISTORIES)
            r = client.post("/v1/recommend", json={"history": HISTORIES[h], "n": 6})
            valid_codes.append(r.status_code)
            if r.status_code == 200 and items_of(r) != alone[h]:
                wrong.append(k)

        with ThreadPoolExecutor(40) as pool:
            list(pool.map(call, range(240)))
        sizes = [s for s in samples(client.get("/metrics").text) if s.name == "mirec_batch_size_count"]
    assert len(valid_codes) == 234 and set(valid_codes) == {200} and not wrong
    assert set(poison_codes) == {422}
    assert sizes[0].value < 240, "requests were batched together"


class FailsOnItem:
    """A serving model that raises inside ``recommend`` for any batch holding one item (a fault that passed
    validation): the batcher must serve the batch again one request at a time."""

    def __init__(self, served, bad_item: str):
        self.served, self.bad_item, self.manifest = served, bad_item, served.manifest

    def recommend(self, requests, skip_unknown=False):
        if any(self.bad_item in r.history for r in requests):
            raise RuntimeError("fault")
        return self.served.recommend(requests, skip_unknown)


def test_a_batch_that_raises_is_served_one_request_at_a_time(served):
    want = served.recommend([RecommendRequest(HISTORIES[0], n=5)])[0].items
    with TestClient(create_app(FailsOnItem(served, "i149"), ServeSettings(microbatch_wait_ms=50))) as client:
        with ThreadPoolExecutor(12) as pool:
            got = list(
                pool.map(
                    lambda k: client.post("/v1/recommend", json={"history": HISTORIES[0 if k % 4 else 3], "n": 5}),
                    range(24),
                )
            )
    assert [r.status_code for k, r in enumerate(got) if k % 4] == [200] * 18
    assert all(items_of(r) == want for k, r in enumerate(got) if k % 4)
    assert {r.status_code for k, r in enumerate(got) if k % 4 == 0} == {500}


# ------------------------------------------------------------------------------------------------ ids


def test_a_long_item_id_costs_its_size_not_the_catalogue_times_it(bundle):
    """Peak RSS of looking up one 4 MB id next to that of a short one, in fresh processes (the old sorted-array
    lookup widened every catalogue name to the query's length: 4 bytes x 4M chars x every item)."""
    script = textwrap.dedent(
        f"""
        import resource, sys
        from mirec.serving.bundle import BundleError, export_bundle, load_bundle
        served = load_bundle({str(bundle)!r})
        query = "x" * int(sys.argv[1])
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert served.lookup([query, "i100"]).tolist()[0] == 0
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
        """
    )
    growth = {
        n: int(
            subprocess.run([sys.executable, "-c", script, str(n)], capture_output=True, text=True, check=True).stdout
        )
        for n in (10, 4_000_000)
    }
    assert growth[4_000_000] - growth[10] < 32 * 1024, growth  # KiB: far below 60 items x 16 MB


def test_an_item_id_over_the_cap_is_refused_and_listed(served):
    with client_of(served, max_item_id_chars=20) as client:
        r = client.post("/v1/recommend", json={"history": ["i100", "x" * 21]})
        assert r.status_code == 422 and "history.1" in r.json()["error"] and "20 characters" in r.json()["error"]
        assert client.post("/v1/recommend", json={"history": ["i100", "x" * 20]}).status_code == 200
        assert client.get("/v1/metadata").json()["limits"]["max_item_id_chars"] == 20


# ------------------------------------------------------------------------------------------------ metrics


def test_metrics_cannot_be_forged_and_unknown_paths_share_one_label(served):
    forged = '/y"} 0\nmirec_requests_total{route="/v1/recommend",status="500"} 999999\n#'
    with client_of(served) as client:
        assert client.post("/v1/recommend", json={"history": ["i100"]}).status_code == 200
        client.get(quote(forged))  # the server decodes it into the request's path
        for k in range(300):
            client.get(f"/nothing/{k}")
        client.get("/v1/items/i100/similar?n=3")
        text = client.get("/metrics").text
    requests = {(s.labels["route"], s.labels["status"]): s.value for s in samples(text) if s.name.endswith("_total")}
    assert requests[("/v1/recommend", "200")] == 1 and ("/v1/recommend", "500") not in requests
    assert requests[("unmatched", "404")] == 301
    assert requests[("/v1/items/{item_id}/similar", "200")] == 1
    assert not any(s.value == 999999 for s in samples(text)) and len(text.splitlines()) < 200


# ------------------------------------------------------------------------------------------------ reload


def test_admin_routes_are_off_without_a_token(served, bundle):
    app = create_app(served, ServeSettings(), bundle, loader=load_bundle)
    with TestClient(app) as client:
        r = client.post("/admin/reload", json={"path": str(bundle)})
        assert r.status_code == 403 and "--token-file" in r.json()["error"]
        assert client.get("/v1/metadata").json()["limits"]["admin_routes"] is False


def test_reload_takes_only_verified_bundles_and_a_failure_shows(served, bundle, run_dir, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    (tampered / "items.parquet").write_bytes((tampered / "items.parquet").read_bytes() + b"x")
    app = create_app(served, ServeSettings(token="t"), bundle, loader=load_bundle)
    with TestClient(app) as client:
        for path in (run_dir, tampered):
            r = client.post("/admin/reload", json={"path": str(path)}, headers=AUTH)
            assert r.status_code == 422, r.text
        ready = client.get("/readyz").json()
        assert ready["last_reload_ok"] is False and "items.parquet" in ready["last_reload_error"]
        metrics = {
            (s.name, s.labels.get("outcome")): s.value for s in samples(client.get("/metrics", headers=AUTH).text)
        }
        assert metrics[("mirec_reloads_total", "failed")] == 2 and metrics[("mirec_last_reload_ok", None)] == 0
        assert client.post("/admin/reload", json={"path": str(bundle)}, headers=AUTH).status_code == 200
        assert client.get("/readyz").json()["last_reload_ok"] is True
        assert client.post("/v1/recommend", json={"history": ["i100"]}, headers=AUTH).status_code == 200


def test_a_failed_sighup_reload_logs_one_line_and_keeps_serving(bundle, tmp_path):
    served_copy = tmp_path / "bundle"
    shutil.copytree(bundle, served_copy)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mirec", "serve", str(served_copy), "--port", str(port), "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(port)
        (served_copy / "model.safetensors").write_bytes(b"not weights")
        proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 30
        while time.time() < deadline and "last_reload_ok" not in httpx.get(f"{base}/readyz", timeout=5).json():
            time.sleep(0.2)
        assert httpx.get(f"{base}/readyz", timeout=5).json()["last_reload_ok"] is False
        assert httpx.post(f"{base}/v1/recommend", json={"history": ["i100"]}, timeout=10).status_code == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    lines = [line for line in err.splitlines() if "reload" in line]
    assert len(lines) == 1 and "model.safetensors" in lines[0] and "Traceback" not in err, err


# ------------------------------------------------------------------------------------------------ edge cases


@pytest.mark.parametrize(
    "body,problem",
    [
        ({"history": ["i100"], "n": True}, "n"),
        ({"history": ["i100"], "n": 5.0}, "n"),
        ({"history": ["i100"], "diversity_lambda": 1e308}, "diversity_lambda"),
        ({"history": ["i100"], "diversity_lambda": "0.5"}, "diversity_lambda"),
        ({"history": ["i100"], "exclude_history": 1}, "exclude_history"),
        ({"history": [100]}, "history"),
        ({"history": ["i100", "i101"], "timestamps": [5, -1]}, "timestamps"),
        ({"history": ["i100", "i101"], "timestamps": [5, MAX_TIMESTAMP + 1]}, "timestamps"),
        ({"history": ["i100", "i101"], "timestamps": [1_300_086_400, 1_300_000_000]}, "oldest first"),
    ],
)
def test_strict_types_and_ranges_get_422_naming_the_field(served, body, problem):
    with client_of(served) as client:
        r = client.post("/v1/recommend", json=body)
        assert r.status_code == 422 and problem in r.json()["error"], r.text


def test_infinity_and_a_deeply_nested_body_get_422(served):
    with client_of(served) as client:
        inf = client.post(
            "/v1/recommend",
            content=b'{"history": ["i100"], "diversity_lambda": Infinity}',
            headers={"content-type": "application/json"},
        )
        assert inf.status_code == 422 and "diversity_lambda" in inf.json()["error"]
        nested = b'{"history": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        r = client.post("/v1/recommend", content=nested, headers={"content-type": "application/json"})
        assert r.status_code == 422 and "error" in r.json(), r.text
        assert client.post("/v1/recommend", json={"history": ["i100"]}).status_code == 200


@pytest.mark.parametrize("lam", [MAX_DIVERSITY_LAMBDA, 1e3, 0.5])
def test_any_allowed_diversity_lambda_returns_n_items(served, lam):
    n = served.n_items - 2
    with client_of(served) as client:
        r = client.post("/v1/recommend", json={"history": ["i100", "i101"], "n": n, "diversity_lambda": lam})
        assert r.status_code == 200 and len(set(items_of(r))) == n


def test_a_huge_diversity_lambda_is_a_category_round_robin(served):
    """At the cap the greedy takes one item per category before any second one (ComiRec's rule at its limit),
    each category's items in score order."""
    (rec,) = served.recommend([RecommendRequest(["i100", "i101"], n=20, diversity_lambda=MAX_DIVERSITY_LAMBDA)])
    index = {str(name): i for i, name in enumerate(served.item_original_ids)}
    cats = [int(served.item_categories[index[i]]) for i in rec.items]
    n_cats = len(set(cats))
    assert sorted(cats[:n_cats]) == sorted(set(cats)), cats
    for c in set(cats):
        own = [s for s, k in zip(rec.scores, cats, strict=True) if k == c]
        assert own == sorted(own, reverse=True)


def test_the_python_api_refuses_what_the_service_refuses(served):
    for bad in (
        dict(history=["i100"], n=True),
        dict(history=["i100"], diversity_lambda=float("inf")),
        dict(history=["i100", "i101"], timestamps=[2, 1]),
    ):
        with pytest.raises(ValueError):  # refused when the request is built, before any batch
            served.recommend([RecommendRequest(**bad)])


def test_the_threads_of_a_reload_and_traffic_stay_independent(served, bundle):
    """A reload that fails (a missing path) in the middle of traffic answers 422 and fails no request."""
    app = create_app(served, ServeSettings(token="t"), bundle, loader=load_bundle)
    failures, stop = [], threading.Event()
    with TestClient(app) as client:

        def traffic():
            while not stop.is_set():
                r = client.post("/v1/recommend", json={"history": ["i100"], "n": 3}, headers=AUTH)
                if r.status_code != 200:
                    failures.append(r.text)

        threads = [threading.Thread(target=traffic) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            for _ in range(3):
                r = client.post("/admin/reload", json={"path": "/nonexistent/bundle"}, headers=AUTH)
                assert r.status_code == 422 and json.loads(r.text)["error"].startswith("reload failed")
        finally:
            stop.set()
            for t in threads:
                t.join()
    assert not failures


# ------------------------------------------------------------------------------------------------ bundles


def test_an_onnx_bundle_lists_and_checks_every_file_and_stdout_is_json(run_dir, tmp_path):
    out = tmp_path / "bundle"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mirec", "export", str(run_dir), "--output", str(out), "--onnx"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)  # nothing but the JSON on stdout
    assert printed["onnx"]["file"] == "user_tower.onnx"
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["files"]) == sorted(p.name for p in out.iterdir() if p.name != "manifest.json")
    onnx_files = [name for name in manifest["files"] if name.startswith("user_tower.onnx")]
    assert onnx_files, manifest["files"]
    assert not list(tmp_path.glob(".*")), "no lock or temporary folder left beside the bundle"
    for name in onnx_files:  # a flipped byte in any ONNX file is caught
        damaged = tmp_path / f"damaged-{name}"
        shutil.copytree(out, damaged)
        raw = bytearray((damaged / name).read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        (damaged / name).write_bytes(bytes(raw))
        with pytest.raises(BundleError, match=name.replace(".", r"\.")):
            load_bundle(damaged)


def test_every_bundle_file_follows_the_umask(run_dir, tmp_path):
    old = os.umask(0o022)
    try:
        export_bundle(run_dir, tmp_path / "bundle")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "bundle").stat().st_mode) == 0o755
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "bundle").iterdir()}
    assert set(modes.values()) == {0o644}, modes
