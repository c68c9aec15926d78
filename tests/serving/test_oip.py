"""The Open Inference Protocol routes: the KServe v2 REST JSON, answered as /v1/recommend answers."""

from __future__ import annotations

import pytest

from tests.conftest import HISTORIES
from tests.serving.test_serving import client_of

pytestmark = pytest.mark.usefixtures("one_thread")


def kserve_request(history: list[str], timestamps: list[int] | None = None, **parameters) -> dict:
    """An inference request as the KServe v2 protocol's JSON defines it (id, parameters, inputs, outputs)."""
    inputs = [{"name": "history", "shape": [1, len(history)], "datatype": "BYTES", "data": history}]
    if timestamps is not None:
        inputs.append({"name": "timestamps", "shape": [1, len(timestamps)], "datatype": "INT64", "data": timestamps})
    body = {"id": "42", "inputs": inputs, "outputs": [{"name": "item_ids"}, {"name": "scores"}, {"name": "interests"}]}
    if parameters:
        body["parameters"] = parameters
    return body


def test_infer_answers_what_v1_recommend_answers(served):
    with client_of(served) as client:
        for history in HISTORIES:
            stamps = [1_300_000_000 + 86_400 * i for i in range(len(history))]
            v1 = client.post("/v1/recommend", json={"history": history, "timestamps": stamps, "n": 9}).json()
            v2 = client.post("/v2/models/mirec/infer", json=kserve_request(history, stamps, n=9))
            assert v2.status_code == 200, v2.text
            answer = v2.json()
            assert answer["id"] == "42" and answer["model_name"] == "mirec"
            assert answer["model_version"] == v1["model_version"]
            outputs = {o["name"]: o for o in answer["outputs"]}
            assert [o["name"] for o in answer["outputs"]] == ["item_ids", "scores", "interests"]
            assert outputs["item_ids"]["datatype"] == "BYTES" and outputs["item_ids"]["shape"] == [9]
            assert outputs["scores"]["datatype"] == "FP32" and outputs["interests"]["datatype"] == "INT32"
            assert outputs["item_ids"]["data"] == [item["id"] for item in v1["items"]]
            assert outputs["interests"]["data"] == [item["interest"] for item in v1["items"]]
            assert outputs["scores"]["data"] == pytest.approx([item["score"] for item in v1["items"]], rel=1e-5)


def test_a_flat_history_tensor_and_one_named_output(served):
    with client_of(served) as client:
        body = {"inputs": [{"name": "history", "shape": [2], "datatype": "BYTES", "data": ["i100", "i101"]}]}
        body["outputs"] = [{"name": "item_ids"}]
        answer = client.post("/v2/models/mirec/infer", json=body).json()
        assert [o["name"] for o in answer["outputs"]] == ["item_ids"] and answer["outputs"][0]["shape"] == [50]
        assert "id" not in answer


def test_metadata_health_and_readiness_routes(served):
    with client_of(served) as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        assert client.get("/v2/health/ready").json() == {"ready": True}
        assert client.get("/v2/models/mirec/ready").json() == {"name": "mirec", "ready": True}
        meta = client.get("/v2/models/mirec").json()
        assert meta["versions"] == [served.manifest["model_version"]]
        assert [i["name"] for i in meta["inputs"]] == ["history", "timestamps"]
        assert client.get("/v2").json()["name"] == "mirec"
        assert client.get("/v2/models/other").status_code == 404


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        (lambda b: b["inputs"][0].update(datatype="INT64"), 400, "datatype INT64, expected BYTES"),
        (lambda b: b["inputs"][0].update(shape=[2, 2]), 400, "expected [L] or [1, L]"),
        (lambda b: b["inputs"][0].update(shape=[1, 5]), 400, "2 values for shape [1, 5]"),
        (lambda b: b["inputs"][0].update(name="items"), 400, "expected history"),
        (lambda b: b.update(parameters={"k": 3}), 400, "unknown 'k'"),
        (lambda b: b.update(parameters={"n": "5"}), 400, "n: Input should be a valid integer"),
        (lambda b: b.update(parameters={"n": 5000}), 422, "over the limit"),
        (lambda b: b.update(outputs=[{"name": "logits"}]), 400, "unknown output 'logits'"),
        (lambda b: b["inputs"][0].update(data=[1, 2]), 400, "history.0: Input should be a valid string"),
    ],
)
def test_wrong_inference_requests_get_an_error_naming_the_problem(served, change, status, message):
    with client_of(served) as client:
        body = kserve_request(["i100", "i101"])
        change(body)
        response = client.post("/v2/models/mirec/infer", json=body)
        assert response.status_code == status and message in response.json()["error"], response.text


def test_the_token_guards_inference_but_not_health(served):
    with client_of(served, token="s3cret") as client:
        assert client.post("/v2/models/mirec/infer", json=kserve_request(["i100"])).status_code == 401
        assert client.get("/v2/models/mirec").status_code == 401
        assert client.get("/v2/health/ready").status_code == 200
        ok = client.post(
            "/v2/models/mirec/infer", json=kserve_request(["i100"]), headers={"Authorization": "Bearer s3cret"}
        )
        assert ok.status_code == 200
        metrics = client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).text
        assert 'route="/v2/models/{name}/infer"' in metrics
