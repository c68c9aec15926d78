"""The Open Inference Protocol (KServe v2 REST; Triton, Seldon MLServer and others speak it) beside ``/v1``.

``POST /v2/models/{name}/infer`` takes one user: input ``history`` (BYTES, shape [L] or [1, L], original item ids
oldest first) and optionally ``timestamps`` (INT64, the same shape, Unix seconds); request ``parameters`` ``n``,
``exclude_history``, ``diversity_lambda``. It answers ``item_ids`` (BYTES [n]), ``scores`` (FP32 [n]) and
``interests`` (INT32 [n]: which interest found each item), or the outputs the request names. The request goes
through the same checks, limits, token and micro-batching as ``/v1/recommend``. Also ``GET /v2``,
``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}``, ``/v2/models/{name}/ready``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field, StrictInt, StrictStr, ValidationError

from mirec.serving.schemas import RecommendBody
from mirec.version import __version__

INPUTS = [
    {"name": "history", "datatype": "BYTES", "shape": [-1]},
    {"name": "timestamps", "datatype": "INT64", "shape": [-1]},
]
OUTPUTS = [
    {"name": "item_ids", "datatype": "BYTES", "shape": [-1]},
    {"name": "scores", "datatype": "FP32", "shape": [-1]},
    {"name": "interests", "datatype": "INT32", "shape": [-1]},
]
PARAMETERS = {"n": "n", "exclude_history": "exclude_history", "diversity_lambda": "diversity_lambda"}


class InferInput(BaseModel):
    name: StrictStr
    shape: list[StrictInt]
    datatype: StrictStr
    data: list[Any]
    parameters: dict[str, Any] | None = None


class RequestedOutput(BaseModel):
    name: StrictStr
    parameters: dict[str, Any] | None = None


class InferBody(BaseModel):
    id: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferInput] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


health = APIRouter()
models = APIRouter()  # the app adds its token check to these


def service_of(request: Request) -> Any:
    return request.app.state.service


def served_name(request: Request, name: str) -> Any:
    """The service, if ``name`` is the model it serves (404 otherwise)."""
    service = service_of(request)
    if name != service.settings.model_name:
        raise HTTPException(
            404, f"model {name!r} is not served here; this server serves {service.settings.model_name!r}"
        )
    return service


@health.get("/v2/health/live")
async def live():
    return {"live": True}


@health.get("/v2/health/ready")
async def ready(request: Request):
    return {"ready": bool(service_of(request).ready)}


@models.get("/v2")
async def server_metadata():
    return {"name": "mirec", "version": __version__, "extensions": []}


@models.get("/v2/models/{name}")
async def model_metadata(name: str, request: Request):
    service = served_name(request, name)
    manifest = service.model.manifest
    return {
        "name": name,
        "versions": [str(manifest.get("model_version"))],
        "platform": f"mirec-{manifest.get('model')}",
        "inputs": INPUTS,
        "outputs": OUTPUTS,
    }


@models.get("/v2/models/{name}/ready")
async def model_ready(name: str, request: Request):
    return {"name": name, "ready": bool(served_name(request, name).ready)}


@models.post("/v2/models/{name}/infer")
async def infer(name: str, body: InferBody, request: Request):
    service = served_name(request, name)
    result, manifest = await service.recommend_one(recommend_body(body))
    tensors = {
        "item_ids": ("BYTES", result.items),
        "scores": ("FP32", result.scores),
        "interests": ("INT32", result.interests),
    }
    wanted = [o.name for o in body.outputs] if body.outputs else list(tensors)
    unknown = [w for w in wanted if w not in tensors]
    if unknown:
        raise HTTPException(400, f"outputs: unknown output {unknown[0]!r}; this model has {list(tensors)}")
    outputs = [
        {"name": w, "datatype": tensors[w][0], "shape": [len(tensors[w][1])], "data": tensors[w][1]} for w in wanted
    ]
    answer = {"model_name": name, "model_version": str(manifest.get("model_version")), "outputs": outputs}
    if body.id is not None:
        answer["id"] = body.id
    if result.unknown_items:
        answer["parameters"] = {"unknown_items": result.unknown_items}
    return answer


def recommend_body(body: InferBody) -> RecommendBody:
    """The /v1 request an inference request stands for (its shapes, types and names checked first)."""
    given = {i.name: i for i in body.inputs}
    unknown = sorted(set(given) - {"history", "timestamps"})
    if unknown or "history" not in given:
        raise HTTPException(
            400, f"inputs: expected history (BYTES) and optionally timestamps (INT64), got {sorted(given)}"
        )
    values: dict[str, Any] = {}
    for name, datatype in (("history", "BYTES"), ("timestamps", "INT64")):
        if name in given:
            values[name] = tensor_values(given[name], datatype)
    extra = sorted(set(body.parameters or {}) - set(PARAMETERS))
    if extra:
        raise HTTPException(400, f"parameters: unknown {extra[0]!r}; known: {sorted(PARAMETERS)}")
    values.update({PARAMETERS[k]: v for k, v in (body.parameters or {}).items()})
    try:
        return RecommendBody.model_validate(values)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem.get("loc", ()))
        raise HTTPException(400, f"{where}: {problem.get('msg')}") from None


def tensor_values(tensor: InferInput, datatype: str) -> list[Any]:
    """One user's values of a [L] or [1, L] tensor (data flat or nested one level), of the declared type."""
    if tensor.datatype != datatype:
        raise HTTPException(400, f"inputs.{tensor.name}: datatype {tensor.datatype}, expected {datatype}")
    shape = tensor.shape
    if not (len(shape) == 1 or (len(shape) == 2 and shape[0] == 1)) or shape[-1] < 1:
        raise HTTPException(400, f"inputs.{tensor.name}: shape {shape}, expected [L] or [1, L] (one user)")
    data = tensor.data[0] if len(tensor.data) == 1 and isinstance(tensor.data[0], list) else tensor.data
    if len(data) != shape[-1]:
        raise HTTPException(400, f"inputs.{tensor.name}: {len(data)} values for shape {shape}")
    return data


__all__ = ["health", "models", "InferBody"]
