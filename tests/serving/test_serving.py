"""The retrieval stage: bundles (round trip, tampering), ANN indexes against exact search, the HTTP service
(routes, bad input, limits, auth, micro-batching, reload under traffic, a real server), batch recommendation."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from fastapi.testclient import TestClient

import mirec
from mirec.config import load_config
from mirec.serving.app import ServeSettings, create_app
from mirec.serving.batch import recommend_dataset, recommend_file
from mirec.serving.bundle import BundleError, export_bundle, load_bundle, load_serving
from mirec.serving.index import IndexParams, ItemIndex, augment_items, augment_queries
from mirec.serving.model import RecommendRequest, ServingModel
from mirec.training.trainer import train_run
from tests.conftest import HISTORIES, SMALL, assert_same_top_lists, free_port, wait_until_healthy

pytestmark = pytest.mark.usefixtures("one_thread")
# ------------------------------------------------------------------------------------------------ bundles


def test_bundle_round_trip_gives_the_run_folders_recommendations(run_dir, bundle):
    served = mirec.load(bundle, device="cpu").serving()
    rec = mirec.load(run_dir, device="cpu")
    for history in HISTORIES:
        for exclude in (False, True):
            want = rec.recommend(history, n=15, exclude_history=exclude)
            (got,) = served.recommend([RecommendRequest(history, n=15, exclude_history=exclude)])
            assert got.items == want["recommendations"] and got.interests == want["interests"]
            np.testing.assert_allclose(got.scores, want["scores"], rtol=1e-6)
            if exclude:
                assert not set(got.items) & set(history)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model"] == "comirec-sa" and manifest["n_items"] == served.n_items == 60
    assert {"config.toml", "model.safetensors", "item_vectors.safetensors", "items.parquet", "index.json"} <= set(
        manifest["files"]
    )
    assert len(manifest["model_version"]) == 16 and manifest["dataset"]["meta_sha256"]


def test_bundle_of_a_model_with_a_global_context_needs_no_dataset(data_dir, tmp_path):
    run = tmp_path / "gimirec"
    train_run(
        data_dir,
        load_config(model="gimirec", overrides=[*SMALL, "train.max_steps=20", "train.eval_every=20"]),
        run,
        progress=False,
    )
    export_bundle(run, tmp_path / "bundle")
    moved = tmp_path / "elsewhere"
    (tmp_path / "bundle").rename(moved)
    data_dir_copy = tmp_path / "gone"
    assert not data_dir_copy.exists()
    (got,) = load_bundle(moved).recommend([RecommendRequest(["i100", "i101"], [1_300_000_000, 1_300_086_400], n=5)])
    want = mirec.load(run, device="cpu").recommend(["i100", "i101"], [1_300_000_000, 1_300_086_400], n=5)
    assert got.items == want["recommendations"]


def test_a_bundle_serves_the_base_share_its_run_chose(data_dir, tmp_path):
    # a grid of one share (1 = the base's own list) makes the choice known; the bundle must honour it
    over_sa = ["model.base=comirec-sa", "model.num_interests=2", "model.idmm_codes=8", "model.beam_width=4"]
    config = load_config(model="gemirec", overrides=[*SMALL, *over_sa, "train.max_steps=20", "train.eval_every=20"])
    config = config.with_values({"eval.base_share_grid": [1.0]})
    train_run(data_dir, config, tmp_path / "run", progress=False)
    export_bundle(tmp_path / "run", tmp_path / "bundle")
    served = load_bundle(tmp_path / "bundle")
    assert served.config.eval.base_share == 1.0
    base_only = mirec.load(tmp_path / "run", device="cpu")
    # the same weights, the generated interests off (configs are frozen: a new one, checked)
    plain = base_only.config.with_values(
        {"model.generative": False, "eval.base_share": 0.0, "eval.base_share_grid": []}
    )
    base_only.model.config = plain.model
    base_serving = ServingModel.of_run(base_only.model, base_only.dataset, plain)
    for history in HISTORIES:
        (got,) = served.recommend([RecommendRequest(history, n=15)])
        assert got.items == base_serving.recommend([RecommendRequest(history, n=15)])[0].items
        assert max(got.interests) < 2  # every item from one of the base's 2 interests, none from the generated


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "manifest"])
def test_a_tampered_bundle_is_refused_naming_the_file(bundle, tmp_path, damage):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    target = copy / ("manifest.json" if damage == "manifest" else "model.safetensors")
    data = bytearray(target.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(bytes(data[:-10]))
    elif damage == "delete":
        target.unlink()
    else:
        target.write_text("{not json")
    with pytest.raises(BundleError, match=target.name):
        load_bundle(copy)


def test_export_refuses_foreign_folders_and_needs_overwrite(run_dir, bundle, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a mirec bundle"):
        export_bundle(run_dir, foreign)
    assert (foreign / "keep.txt").read_text() == "x"
    copy = tmp_path / "copy"
    export_bundle(run_dir, copy)
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_bundle(run_dir, copy)
    export_bundle(run_dir, copy, index=IndexParams(kind="hnsw"), overwrite=True)
    assert json.loads((copy / "manifest.json").read_text())["index"]["kind"] == "hnsw"


# ------------------------------------------------------------------------------------------------ indexes


def skewed_table(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Item vectors with very unequal norms (log-normal), the case where plain HNSW on inner product fails."""
    g = torch.Generator().manual_seed(seed)
    vectors = torch.randn(n + 1, d, generator=g) * torch.exp(torch.randn(n + 1, 1, generator=g))
    vectors[0] = 0
    return vectors


def test_inner_product_to_l2_transform_preserves_the_order():
    table = skewed_table(50, 6)[1:].numpy()
    x, top = augment_items(table)
    q = np.random.default_rng(1).normal(size=(3, 6)).astype(np.float32)
    l2 = ((augment_queries(q)[:, None, :] - x[None]) ** 2).sum(-1)
    ip = q @ table.T
    np.testing.assert_allclose(l2, (q**2).sum(1)[:, None] + top**2 - 2 * ip, rtol=1e-4, atol=1e-3)
    assert (np.argsort(l2, 1)[:, :10] == np.argsort(-ip, 1)[:, :10]).all()


def clustered_table(n: int, d: int, clusters: int = 30, seed: int = 0) -> torch.Tensor:
    """Items around cluster centres (as trained item tables are), with log-normal norms."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=g)
    vectors = centres[torch.randint(clusters, (n + 1,), generator=g)] + 0.5 * torch.randn(n + 1, d, generator=g)
    vectors *= torch.exp(0.5 * torch.randn(n + 1, 1, generator=g))
    vectors[0] = 0
    return vectors


@pytest.mark.parametrize("kind,metric", [("hnsw", "ip"), ("hnsw", "l2"), ("ivf", "ip"), ("ivf", "l2")])
def test_ann_indexes_against_exact_search(kind, metric, tmp_path):
    table = clustered_table(3000, 16)
    queries = torch.randn(20, 3, 16, generator=torch.Generator().manual_seed(2))
    exact = ItemIndex(table)
    ann = ItemIndex(table, IndexParams(kind=kind, metric=metric, hnsw_ef_search=256, ivf_nprobe=16))
    s_exact, i_exact = exact.search(queries, 20)
    s_ann, i_ann = ann.search(queries, 20)
    overlap = np.mean(
        [
            len(set(a.tolist()) & set(b.tolist())) / 20
            for a, b in zip(i_ann.reshape(-1, 20), i_exact.reshape(-1, 20), strict=True)
        ]
    )
    assert overlap >= 0.9, overlap
    # scores are exact inner products of the returned ids
    torch.testing.assert_close(s_ann, torch.einsum("ukd,uknd->ukn", queries, table[i_ann]), rtol=1e-5, atol=1e-4)
    # exclusions hold, saved and reloaded with Faiss's reader, the same answers
    ex = [np.asarray(i_exact[u, 0, :5]) for u in range(20)]
    _, i_ex = ann.search(queries, 20, ex)
    assert all(not set(ex[u].tolist()) & set(i_ex[u].reshape(-1).tolist()) for u in range(20))
    ann.save(tmp_path)
    again = ItemIndex.load(tmp_path, table)
    assert torch.equal(again.search(queries, 20)[1], i_ann)
    if kind == "ivf":  # probing every list is exhaustive: the exact search (Faiss and torch differ in float paths)
        full = ItemIndex(table, IndexParams(kind="ivf", metric=metric, ivf_nlist=8, ivf_nprobe=8))
        s_full, i_full = full.search(queries, 20)
        assert_same_top_lists(i_full, s_full, i_exact, s_exact)


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_a_misshaped_query_is_refused_before_its_exclusions_are_read(kind):
    table = clustered_table(200, 8)
    index = ItemIndex(table, IndexParams(kind=kind))
    one_user = torch.randn(4, 8)  # one user's [K, d] without the users axis, with that user's exclusions
    # read first, the exclusions would fail as "1 per-user arrays for 4 users", naming the wrong problem
    with pytest.raises(ValueError, match=r"interests must be \[users, K, 8\], got \(4, 8\)"):
        index.search(one_user, 5, [np.array([1])])
    with pytest.raises(ValueError, match=r"interests must be \[users, K, 8\], got \(2, 3, 4\)"):
        index.search(torch.randn(2, 3, 4), 5, [np.array([1])] * 2)


def test_calibration_keeps_the_fastest_index_within_the_tolerance():
    from mirec.serving.index import calibrate, overlap

    table = skewed_table(3000, 16)  # log-normal norms, no clusters: raw inner product does better here
    queries = torch.randn(30, 3, 16, generator=torch.Generator().manual_seed(3))
    index, report = calibrate(table, IndexParams(kind="hnsw"), queries, n=20, target=1.01)  # try every efSearch
    candidates = report["candidates"]
    assert {(c["metric"], c["hnsw_ef_search"]) for c in candidates} == {
        (m, ef) for m in ("ip", "l2") for ef in (64, 128, 256, 512, 1024)
    }
    best = max(c["overlap"] for c in candidates)
    eligible = [c for c in candidates if c["overlap"] >= best - report["tolerance"]]
    chosen = report["chosen"]
    assert chosen in eligible and all(chosen["queries_per_s"] >= c["queries_per_s"] for c in eligible)
    assert (index.params.metric, index.params.hnsw_ef_search) == (chosen["metric"], chosen["hnsw_ef_search"])
    exact = ItemIndex(table).search(queries, 20)[1]
    assert overlap(index.search(queries, 20)[1], exact) == pytest.approx(chosen["overlap"], abs=1e-4)
    assert overlap(exact, exact) == 1.0
    strict, strict_report = calibrate(table, IndexParams(kind="hnsw"), queries, n=20, target=1.01, tolerance=0.0)
    assert strict_report["chosen"]["overlap"] == best  # no tolerance: the best overlap, whatever it costs
    fixed, fixed_report = calibrate(table, IndexParams(kind="hnsw", metric="l2", hnsw_ef_search=64), queries, n=20)
    assert fixed.params.metric == "l2" and [(c["metric"], c["hnsw_ef_search"]) for c in fixed_report["candidates"]] == [
        ("l2", 64)
    ]


def test_exported_hnsw_never_pays_for_overlap_within_the_tolerance(run_dir, tmp_path):
    manifest = export_bundle(run_dir, tmp_path / "hnsw", index=IndexParams(kind="hnsw"))
    calibration = manifest["index"]["calibration"]
    best = max(c["overlap"] for c in calibration["candidates"])
    eligible = [c for c in calibration["candidates"] if c["overlap"] >= best - calibration["tolerance"]]
    assert all(calibration["chosen"]["queries_per_s"] >= c["queries_per_s"] for c in eligible)
    assert manifest["index"]["metric"] == calibration["chosen"]["metric"]
    assert manifest["index"]["hnsw_ef_search"] == calibration["chosen"]["hnsw_ef_search"]


# ------------------------------------------------------------------------------------------------ service


def client_of(served, **settings) -> TestClient:
    return TestClient(create_app(served, ServeSettings(**settings)))


def test_recommend_route_answers_as_the_serving_model(served):
    with client_of(served) as client:
        response = client.post("/v1/recommend", json={"history": ["i100", "i101", "nope"], "n": 7})
        assert response.status_code == 200
        body = response.json()
        (want,) = served.recommend([RecommendRequest(["i100", "i101", "nope"], n=7)])
        assert [i["id"] for i in body["items"]] == want.items and body["unknown_items"] == ["nope"]
        assert [i["interest"] for i in body["items"]] == want.interests
        assert body["model_version"] == served.manifest["model_version"] and body["index_version"]
        batch = client.post("/v1/recommend/batch", json={"requests": [{"history": h, "n": 5} for h in HISTORIES]})
        assert [[i["id"] for i in r["items"]] for r in batch.json()["results"]] == [
            r.items for r in served.recommend([RecommendRequest(h, n=5) for h in HISTORIES])
        ]
        interests = client.post("/v1/interests", json={"history": ["i100", "i101"]}).json()["interests"]
        assert np.array(interests).shape == (4, 16)
        similar = client.get("/v1/items/i100/similar?n=4").json()["items"]
        assert len(similar) == 4 and "i100" not in [s["id"] for s in similar]
        assert client.get("/v1/items/nope/similar").status_code == 404
        meta = client.get("/v1/metadata").json()
        assert meta["limits"]["max_n"] == 1000 and meta["manifest"]["model"] == "comirec-sa"
        text = client.get("/metrics").text
        assert 'mirec_requests_total{route="/v1/recommend",status="200"} 1' in text
        assert "mirec_request_seconds_bucket" in text and "mirec_batch_size_count" in text


@pytest.mark.parametrize(
    "body,status",
    [
        (b"{not json", 422),
        ({"history": "i100"}, 422),
        ({"history": [], "n": 5}, 422),
        ({"history": ["nope", "nada"]}, 422),
        ({"history": ["i100"], "n": 0}, 422),
        ({"history": ["i100"], "n": 51}, 422),
        ({"history": ["i100"] * 11}, 413),
        ({"history": ["i100", "i101"], "timestamps": [1]}, 422),
        ({"history": ["i100"], "diversity_lambda": -1}, 422),
    ],
)
def test_bad_input_gets_a_json_4xx_and_nothing_breaks(served, body, status):
    with client_of(served, max_n=50, max_history=10) as client:
        kwargs = (
            {"content": body, "headers": {"content-type": "application/json"}}
            if isinstance(body, bytes)
            else {"json": body}
        )
        response = client.post("/v1/recommend", **kwargs)
        assert response.status_code == status and "error" in response.json(), response.text
        assert client.post("/v1/recommend", json={"history": ["i100"]}).status_code == 200


def test_limits_on_body_and_batch_size(served):
    with client_of(served, max_body_bytes=300, max_batch=2) as client:
        big = {"history": ["i100"] * 200}
        assert client.post("/v1/recommend", json=big).status_code == 413
        many = {"requests": [{"history": ["i100"]}] * 3}
        assert client.post("/v1/recommend/batch", json=many).status_code == 413
        assert client.post("/v1/recommend/batch", json={"requests": [{"history": ["i100"]}] * 2}).status_code == 200
        chunked = client.post(
            "/v1/recommend", content=iter([json.dumps(big).encode()]), headers={"content-type": "application/json"}
        )  # no Content-Length
        assert chunked.status_code == 413 and "error" in chunked.json()
        small = client.post(
            "/v1/recommend", content=iter([b'{"history": ["i100"]}']), headers={"content-type": "application/json"}
        )
        assert small.status_code == 200


def test_bearer_token_guards_all_but_health(served):
    with client_of(served, token="s3cret") as client:
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            assert client.post("/v1/recommend", json={"history": ["i100"]}, headers=headers).status_code == 401
            assert client.get("/metrics", headers=headers).status_code == 401
        ok = client.post("/v1/recommend", json={"history": ["i100"]}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_concurrent_requests_are_micro_batched_with_the_same_answers(served):
    requests = [{"history": HISTORIES[i % len(HISTORIES)], "n": 5 + i % 3} for i in range(24)]
    want = [
        [i for i in r.items] for r in served.recommend([RecommendRequest(r["history"], n=r["n"]) for r in requests])
    ]
    with client_of(served, microbatch_wait_ms=100, microbatch_size=64) as client:
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda r: client.post("/v1/recommend", json=r).json(), requests))
        text = client.get("/metrics").text
    assert [[i["id"] for i in g["items"]] for g in got] == want
    count = float(next(line.split()[-1] for line in text.splitlines() if line.startswith("mirec_batch_size_count")))
    assert count < len(requests), "some requests shared a forward pass"


def test_reload_under_traffic_loses_no_request(run_dir, bundle, tmp_path):
    other = tmp_path / "hnsw"
    export_bundle(run_dir, other, index=IndexParams(kind="hnsw"))
    versions = {load_bundle(bundle).manifest["index_version"], load_bundle(other).manifest["index_version"]}
    app = create_app(load_bundle(bundle), ServeSettings(token="t"), bundle, loader=load_bundle)
    failures, seen, stop = [], set(), threading.Event()
    with TestClient(app) as client:
        auth = {"Authorization": "Bearer t"}

        def traffic():
            while not stop.is_set():
                r = client.post("/v1/recommend", json={"history": ["i100", "i101"], "n": 5}, headers=auth)
                if r.status_code != 200 or len(r.json()["items"]) != 5:
                    failures.append(r.text)
                else:
                    seen.add(r.json()["index_version"])

        threads = [threading.Thread(target=traffic) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            for path in (other, bundle, other):
                assert client.post("/admin/reload", json={"path": str(path)}, headers=auth).status_code == 200
                time.sleep(0.05)
            missing = client.post("/admin/reload", json={"path": str(tmp_path / "missing")}, headers=auth)
            assert missing.status_code == 422, missing.text
            assert client.post("/admin/reload", json={}).status_code == 401
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert client.get("/v1/metadata", headers=auth).json()["reloads"] == 3
    assert not failures and seen <= versions and len(seen) == 2


def test_the_real_server_on_loopback(bundle, served, tmp_path):
    port = free_port()
    token = tmp_path / "token"
    token.write_text("abc\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mirec", "serve", str(bundle), "--port", str(port), "--token-file", str(token)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until_healthy(port)
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/recommend",
            json={"history": ["i100", "i101"], "n": 6},
            headers={"Authorization": "Bearer abc"},
            timeout=10,
        )
        assert r.status_code == 200
        assert [i["id"] for i in r.json()["items"]] == served.recommend([RecommendRequest(["i100", "i101"], n=6)])[
            0
        ].items
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ------------------------------------------------------------------------------------------------ batch


def test_batch_recommendation_from_files_and_for_a_dataset(run_dir, bundle, data_dir, tmp_path, served):
    jsonl = tmp_path / "h.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"user": f"x{i}", "history": h}) + "\n" for i, h in enumerate(HISTORIES))
        + json.dumps({"user": "ghost", "history": ["nope"]})
        + "\n"
    )
    report = recommend_file(served, jsonl, tmp_path / "a.parquet", n=5, chunk=3, progress=False)
    assert report["users"] == 5 and report["skipped_unknown"] == 1 and report["rows"] == 20
    table = pq.read_table(tmp_path / "a.parquet").to_pylist()
    first = [r["item"] for r in table if r["user"] == "x0"]
    assert first == served.recommend([RecommendRequest(HISTORIES[0], n=5)])[0].items
    assert [r["rank"] for r in table if r["user"] == "x0"] == [1, 2, 3, 4, 5]
    import pyarrow as pa

    pq.write_table(pa.table({"user": ["x0", "x1"], "history": [HISTORIES[0], HISTORIES[1]]}), tmp_path / "h.parquet")
    recommend_file(served, tmp_path / "h.parquet", tmp_path / "b.parquet", n=5, progress=False)
    assert [r["item"] for r in pq.read_table(tmp_path / "b.parquet").to_pylist() if r["user"] == "x0"] == first
    dataset = mirec.load_dataset(data_dir)
    report = recommend_dataset(served, dataset, "test", tmp_path / "c.parquet", n=10, chunk=7, progress=False)
    assert report["users"] == len(dataset.test)
    rows = pq.read_table(tmp_path / "c.parquet").to_pylist()
    seq = dataset.test
    user0 = dataset.user_original_ids[seq.users[0]]
    history = [str(dataset.item_original_ids[i]) for i in seq.items[seq.indptr[0] : seq.indptr[0] + seq.history_len[0]]]
    stamps = seq.timestamps[seq.indptr[0] : seq.indptr[0] + seq.history_len[0]].tolist()
    want = served.recommend([RecommendRequest(history, stamps, n=10)])[0].items
    assert [r["item"] for r in rows if r["user"] == user0] == want
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "mirec",
            "recommend",
            str(bundle),
            "--data",
            str(data_dir),
            "--split",
            "test",
            "--output",
            str(tmp_path / "d.parquet"),
            "-n",
            "10",
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 0, cli.stderr
    assert pq.read_table(tmp_path / "d.parquet").to_pylist() == rows
    assert load_serving(run_dir).recommend([RecommendRequest(history, stamps, n=10)])[0].items == want


# ------------------------------------------------------------------------------------------------ onnx


@pytest.mark.parametrize("model", ["dnn", "comirec-sa", "comirec-dr", "pimi", "gimirec", "gru4rec", "mind", "gemirec"])
def test_onnx_user_tower_matches_torch_or_says_why_not(model, data_dir, tmp_path):
    from mirec.serving.bundle import export_onnx
    from mirec.serving.onnx_export import NOT_EXPORTABLE

    run = tmp_path / "run"
    overrides = [*SMALL, "train.max_steps=10", "train.eval_every=10"]
    train_run(data_dir, load_config(model=model, overrides=overrides), run, progress=False)
    export_bundle(run, tmp_path / "bundle")
    if model in NOT_EXPORTABLE:
        with pytest.raises(ValueError, match=model):
            export_onnx(tmp_path / "bundle")
        return
    entry = export_onnx(tmp_path / "bundle")
    assert entry["max_abs_diff"] < 1e-4 and entry["max_abs_diff_batch1"] < 1e-4 and entry["max_abs_diff_batch3"] < 1e-4
    served = load_bundle(tmp_path / "bundle")  # the manifest lists the new file with its checksum
    assert served.manifest["onnx"]["file"] == "user_tower.onnx"
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "bundle" / "user_tower.onnx"))
    batch, _, _ = served.encode(
        [RecommendRequest(h, [1_300_000_000 + 86400 * i for i in range(len(h))]) for h in HISTORIES]
    )
    feed = {"items": batch.items.numpy(), "mask": batch.mask.numpy(), "days": batch.days.numpy()}
    names = {i.name for i in session.get_inputs()}
    out = session.run(None, {k: v for k, v in feed.items() if k in names})[0]
    with torch.no_grad():
        np.testing.assert_allclose(out, served.model(batch).numpy(), atol=1e-4)


def test_a_history_of_unknown_items_fails_alone(served):
    requests = [
        RecommendRequest(HISTORIES[0], n=5),
        RecommendRequest(["nope"], n=5),
        RecommendRequest(HISTORIES[1], n=5),
    ]
    got = served.recommend(requests, skip_unknown=True)
    assert got[1] is None
    assert [r.items for r in (got[0], got[2])] == [r.items for r in served.recommend([requests[0], requests[2]])]
    with client_of(served) as client:
        batch = client.post("/v1/recommend/batch", json={"requests": [{"history": h} for h in (["i100"], ["nope"])]})
        assert batch.status_code == 422 and "requests.1" in batch.json()["error"]


def test_faiss_factory_index(tmp_path):
    table = skewed_table(2000, 16)
    queries = torch.randn(20, 3, 16, generator=torch.Generator().manual_seed(5))
    exact = ItemIndex(table).search(queries, 20)
    # every list probed and the candidates refined by the flat table: exactly the exact search
    params = IndexParams(
        kind="faiss", metric="ip", faiss_factory="IVF16,PQ8x4fs,RFlat", faiss_search="nprobe=16,k_factor_rf=50"
    )
    index = ItemIndex(table, params)
    found = index.search(queries, 20)
    # Faiss and torch score in different float paths: the lists hold the exact top-20 scores (within 1e-5),
    # and every id found scores what the list says it does
    torch.testing.assert_close(found[0], exact[0], rtol=1e-5, atol=1e-5)
    rescored = torch.einsum("ukd,ukjd->ukj", queries, table[found[1]])
    torch.testing.assert_close(rescored, found[0], rtol=1e-5, atol=1e-5)
    index.save(tmp_path)
    assert torch.equal(ItemIndex.load(tmp_path, table).search(queries, 20)[1], found[1])
    with pytest.raises(ValueError, match="needs a factory string"):
        IndexParams(kind="faiss")
