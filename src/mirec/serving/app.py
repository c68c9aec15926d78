"""The HTTP service (FastAPI + uvicorn, ``pip install "mirec[serve]"``): ``mirec serve BUNDLE``.

Routes: ``POST /v1/recommend``, ``POST /v1/recommend/batch``, ``POST /v1/interests``,
``GET /v1/items/{id}/similar``, ``GET /healthz``, ``GET /readyz``, ``GET /v1/metadata``, ``GET /metrics``
(Prometheus text), ``POST /admin/reload``. Concurrent single requests are micro-batched: a collector takes up
to ``max_batch`` waiting requests (waiting at most ``max_wait_ms`` for more) and serves them with one forward
pass and one index search. Limits (history length, n, batch size, body bytes) are settings, listed by
``/v1/metadata``; a request over one gets a JSON 4xx. With a token file every route but the health routes
needs ``Authorization: Bearer <token>`` (compared in constant time). Reload (``/admin/reload`` or SIGHUP) loads
the new bundle beside the old one and swaps one reference: a request is served wholly by one model.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from mirec.serving.model import RecommendRequest, ServingModel, UnknownItemsError

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, math.inf)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, math.inf)


@dataclass
class ServeSettings:
    max_history: int = 1000  # items per history
    max_n: int = 1000  # items per answer
    max_batch: int = 256  # requests per /v1/recommend/batch
    max_body_bytes: int = 1 << 20
    microbatch_size: int = 64  # single requests served together
    microbatch_wait_ms: float = 2.0  # how long the collector waits for more requests
    token: str | None = None  # bearer token; None = no auth

    def public(self) -> dict[str, Any]:
        out = asdict(self)
        out["auth"] = out.pop("token") is not None
        return out


class RecommendBody(BaseModel):
    history: list[str] = Field(min_length=1, description="original item ids, oldest first")
    timestamps: list[int] | None = None
    n: int = Field(50, ge=1)
    exclude_history: bool = False
    diversity_lambda: float = Field(0.0, ge=0.0)


class BatchBody(BaseModel):
    requests: list[RecommendBody] = Field(min_length=1)


class InterestsBody(BaseModel):
    history: list[str] = Field(min_length=1)
    timestamps: list[int] | None = None


class ReloadBody(BaseModel):
    path: str | None = None  # default: the bundle path served now (re-read after an in-place update)


class Metrics:
    """Request counts by route and status, a latency histogram per route, served batch sizes (Prometheus text)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, list[int]] = defaultdict(lambda: [0] * len(LATENCY_BUCKETS))
        self.latency_sum: dict[str, float] = defaultdict(float)
        self.batches = [0] * len(BATCH_BUCKETS)
        self.batch_sum = 0

    def observe(self, route: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(route, status)] += 1
            buckets = self.latency[route]
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    buckets[i] += 1
            self.latency_sum[route] += seconds

    def observe_batch(self, size: int) -> None:
        with self.lock:
            for i, bound in enumerate(BATCH_BUCKETS):
                if size <= bound:
                    self.batches[i] += 1
            self.batch_sum += size

    def text(self) -> str:
        def le(bound: float) -> str:
            return "+Inf" if math.isinf(bound) else repr(bound)

        lines = ["# TYPE mirec_requests_total counter"]
        with self.lock:
            for (route, status), count in sorted(self.requests.items()):
                lines.append(f'mirec_requests_total{{route="{route}",status="{status}"}} {count}')
            lines.append("# TYPE mirec_request_seconds histogram")
            for route, buckets in sorted(self.latency.items()):
                for bound, count in zip(LATENCY_BUCKETS, buckets, strict=True):
                    lines.append(f'mirec_request_seconds_bucket{{route="{route}",le="{le(bound)}"}} {count}')
                lines.append(f'mirec_request_seconds_sum{{route="{route}"}} {self.latency_sum[route]}')
                lines.append(f'mirec_request_seconds_count{{route="{route}"}} {buckets[-1]}')
            lines.append("# TYPE mirec_batch_size histogram")
            for bound, count in zip(BATCH_BUCKETS, self.batches, strict=True):
                lines.append(f'mirec_batch_size_bucket{{le="{le(bound)}"}} {count}')
            lines.append(f"mirec_batch_size_sum {self.batch_sum}")
            lines.append(f"mirec_batch_size_count {self.batches[-1]}")
        return "\n".join(lines) + "\n"


class MicroBatcher:
    """Collects concurrent single requests into one ``ServingModel.recommend`` call run in a worker thread."""

    def __init__(self, get_model, settings: ServeSettings, metrics: Metrics):
        self.get_model, self.settings, self.metrics = get_model, settings, metrics
        self.queue: asyncio.Queue[tuple[RecommendRequest, asyncio.Future]] | None = None
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def submit(self, request: RecommendRequest):
        assert self.queue is not None, "the batcher is not started"
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((request, future))
        return await future

    async def _run(self) -> None:
        assert self.queue is not None
        while True:
            items = [await self.queue.get()]
            deadline = time.perf_counter() + self.settings.microbatch_wait_ms / 1000
            while len(items) < self.settings.microbatch_size:
                timeout = deadline - time.perf_counter()
                if timeout <= 0 and self.queue.empty():
                    break
                try:
                    items.append(
                        await asyncio.wait_for(self.queue.get(), max(timeout, 0))
                        if timeout > 0
                        else self.queue.get_nowait()
                    )
                except (TimeoutError, asyncio.QueueEmpty):
                    break
            await self._serve(items)

    async def _serve(self, items: list[tuple[RecommendRequest, asyncio.Future]]) -> None:
        model = self.get_model()  # one model for the whole batch, even if a reload swaps it meanwhile
        self.metrics.observe_batch(len(items))
        try:
            results = await asyncio.to_thread(model.recommend, [r for r, _ in items], True)
        except Exception as exc:  # noqa: BLE001 - handed to each waiting request
            for _, future in items:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(items, results, strict=True):
            if future.done():
                continue
            if result is None:  # a history with no known item fails alone, not the batch
                future.set_exception(UnknownItemsError("none of the given items is known to this model"))
            else:
                future.set_result((result, model.manifest))


class BodyTooLarge(Exception):
    pass


class LimitsAndMetrics:
    """Pure ASGI middleware (Starlette's ``@app.middleware`` costs a task per request): refuses bodies over the
    byte limit with 413 (by Content-Length, or while streaming a chunked body) and records every response's
    route, status and latency. Exposes the wrapped app's ``state`` so callers keep one handle."""

    def __init__(self, app: FastAPI, max_body_bytes: int, metrics: Metrics):
        self.app, self.max_body_bytes, self.metrics = app, max_body_bytes, metrics
        self.state = app.state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        path = scope["path"]
        route = "/v1/items/{id}/similar" if path.startswith("/v1/items/") else path
        status = {"code": 500}

        async def send_and_record(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        too_big = length is not None and (not length.isdigit() or int(length) > self.max_body_bytes)
        try:
            if too_big:
                raise BodyTooLarge
            if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
                receive = await self._buffered(receive)  # chunked: read (up to the limit) before routing
            await self.app(scope, receive, send_and_record)
        except BodyTooLarge:
            response = _error(413, f"request body over {self.max_body_bytes} bytes")
            await response(scope, receive, send_and_record)
        self.metrics.observe(route, status["code"], time.perf_counter() - started)

    async def _buffered(self, receive):
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                raise BodyTooLarge
            if not message.get("more_body", False):
                break
        return await _replay(messages)


async def _replay(messages: list[dict]):
    """A receive callable that hands back already-read request messages, then waits like the real one."""
    queue = list(messages)

    async def receive():
        if queue:
            return queue.pop(0)
        await asyncio.Event().wait()  # never: the app reads the body once

    return receive


def fast_json(content: dict[str, Any]) -> Response:
    """A JSON response of plain Python data, serialised once (FastAPI's jsonable_encoder walk of every item
    dict cost ~8% of the server's time under load)."""
    return Response(json.dumps(content, separators=(",", ":")).encode(), media_type="application/json")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(
    model: ServingModel, settings: ServeSettings | None = None, bundle_path: str | Path | None = None, loader=None
) -> LimitsAndMetrics:
    """The FastAPI application serving ``model``; ``loader(path)`` builds a model for /admin/reload."""
    settings = settings or ServeSettings()
    metrics = Metrics()
    state: dict[str, Any] = {
        "model": model,
        "path": str(bundle_path) if bundle_path else None,
        "reloads": 0,
        "ready": True,
    }
    reload_lock = threading.Lock()
    batcher = MicroBatcher(lambda: state["model"], settings, metrics)

    async def lifespan(app: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="mirec", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.mirec = state

    def authorised(request: Request) -> None:
        if settings.token is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), settings.token.encode()):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()[:5])
        return _error(422, problems or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    def check(body: RecommendBody) -> RecommendRequest:
        if len(body.history) > settings.max_history:
            raise HTTPException(413, f"history of {len(body.history)} items over the limit {settings.max_history}")
        if body.n > settings.max_n:
            raise HTTPException(422, f"n = {body.n} over the limit {settings.max_n}")
        if body.timestamps is not None and len(body.timestamps) != len(body.history):
            raise HTTPException(422, f"{len(body.timestamps)} timestamps for {len(body.history)} items")
        return RecommendRequest(body.history, body.timestamps, body.n, body.exclude_history, body.diversity_lambda)

    def answer(result, manifest: dict[str, Any]) -> dict[str, Any]:
        return {
            **result.to_dict(),
            "model_version": manifest.get("model_version"),
            "index_version": manifest.get("index_version"),
        }

    @app.post("/v1/recommend", dependencies=[Depends(authorised)])
    async def recommend(body: RecommendBody):
        request = check(body)
        try:
            result, manifest = await batcher.submit(request)
        except UnknownItemsError as exc:
            raise HTTPException(422, f"{exc}; unknown: {body.history[:10]}") from None
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        return fast_json(answer(result, manifest))

    @app.post("/v1/recommend/batch", dependencies=[Depends(authorised)])
    async def recommend_batch(body: BatchBody):
        if len(body.requests) > settings.max_batch:
            raise HTTPException(413, f"batch of {len(body.requests)} requests over the limit {settings.max_batch}")
        requests = [check(r) for r in body.requests]
        model = state["model"]
        metrics.observe_batch(len(requests))
        try:
            results = await asyncio.to_thread(model.recommend, requests, True)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        unknown = [i for i, r in enumerate(results) if r is None]
        if unknown:
            raise HTTPException(422, f"requests.{unknown[0]}: none of the given items is known to this model")
        return fast_json({"results": [answer(r, model.manifest) for r in results]})

    @app.post("/v1/interests", dependencies=[Depends(authorised)])
    async def interests(body: InterestsBody):
        request = check(RecommendBody(history=body.history, timestamps=body.timestamps))
        model = state["model"]
        try:
            vectors = await asyncio.to_thread(model.interests, [request])
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        return {"interests": vectors[0].tolist(), "model_version": model.manifest.get("model_version")}

    @app.get("/v1/items/{item_id}/similar", dependencies=[Depends(authorised)])
    async def similar(item_id: str, n: int = 20):
        if not 1 <= n <= settings.max_n:
            raise HTTPException(422, f"n must be in 1..{settings.max_n}")
        model = state["model"]
        try:
            items = await asyncio.to_thread(model.similar, item_id, n)
        except KeyError:
            raise HTTPException(404, f"item {item_id!r} is not known to this model") from None
        return {
            "items": items,
            "model_version": model.manifest.get("model_version"),
            "index_version": model.manifest.get("index_version"),
        }

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        return {"ready": bool(state["ready"])} if state["ready"] else _error(503, "not ready")

    @app.get("/v1/metadata", dependencies=[Depends(authorised)])
    async def metadata():
        manifest = {k: v for k, v in state["model"].manifest.items() if k != "files"}
        return {"bundle": state["path"], "manifest": manifest, "limits": settings.public(), "reloads": state["reloads"]}

    @app.get("/metrics", dependencies=[Depends(authorised)])
    async def prometheus():
        return PlainTextResponse(metrics.text(), media_type="text/plain; version=0.0.4")

    def reload(path: str | None = None) -> dict[str, Any]:
        if loader is None:
            raise HTTPException(409, "this server was not started from a bundle path; nothing to reload")
        target = path or state["path"]
        with reload_lock:  # one reload at a time; requests keep using the old model until the swap
            new_model = loader(target)
            state["model"], state["path"] = new_model, str(target)
            state["reloads"] += 1
        return {
            "bundle": state["path"],
            "model_version": new_model.manifest.get("model_version"),
            "reloads": state["reloads"],
        }

    @app.post("/admin/reload", dependencies=[Depends(authorised)])
    async def admin_reload(body: ReloadBody | None = None):
        try:
            return await asyncio.to_thread(reload, body.path if body else None)
        except (OSError, ValueError) as exc:
            raise HTTPException(422, f"reload failed, the old model keeps serving: {exc}") from None

    app.state.reload = reload
    return LimitsAndMetrics(app, settings.max_body_bytes, metrics)  # type: ignore[return-value]


def serve(
    bundle: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    token_file: str | Path | None = None,
    settings: ServeSettings | None = None,
    device: str = "cpu",
    threads: int = 1,
) -> None:
    """Load a bundle (or a run folder) and serve it with uvicorn until stopped; SIGHUP reloads the bundle.
    ``threads``: torch intra-op threads (1: micro-batches are small, and the event loop needs a core)."""
    import signal

    import uvicorn

    from mirec.serving.bundle import load_serving

    settings = settings or ServeSettings()
    import torch

    if threads:
        torch.set_num_threads(threads)
    if token_file is not None:
        token = Path(token_file).read_text().strip()
        if not token:
            raise ValueError(f"{token_file}: empty token file")
        settings.token = token
    app = create_app(load_serving(bundle, device), settings, bundle, loader=lambda p: load_serving(p, device))

    def on_sighup(signum: int, frame: Any) -> None:
        threading.Thread(target=app.state.reload, daemon=True).start()

    signal.signal(signal.SIGHUP, on_sighup)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


__all__ = ["create_app", "serve", "ServeSettings"]
