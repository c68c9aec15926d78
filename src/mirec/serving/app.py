"""The HTTP service (FastAPI + uvicorn, ``pip install "mirec[serve]"``): ``mirec serve BUNDLE``.

Routes: ``POST /v1/recommend``, ``POST /v1/recommend/batch``, ``POST /v1/interests``,
``GET /v1/items/{id}/similar``, ``GET /healthz``, ``GET /readyz``, ``GET /v1/metadata``, ``GET /metrics``
(Prometheus text), ``POST /admin/reload``, and the Open Inference Protocol's ``/v2`` routes (:mod:`.oip`).
Concurrent single requests are micro-batched: a collector takes up
to ``max_batch`` waiting requests (waiting at most ``max_wait_ms`` for more) and serves them with one forward
pass and one index search. Every request is validated whole before it joins a batch (strict types, timestamps
in range and oldest first, finite numbers), and a batch that still fails is served again one request at a time,
so one bad request never fails another. Limits (history length, item id length, n, batch size, body bytes) are
settings, listed by ``/v1/metadata``; a request over one gets a JSON 4xx. With a token file every route but the
health routes needs ``Authorization: Bearer <token>`` (compared in constant time). Admin routes exist only with a
token: reload (``/admin/reload`` or SIGHUP) verifies a bundle (never a bare run folder), loads it beside the old
one and swaps one reference, so a request is served wholly by one model; a failed reload keeps the old model and
shows in ``/metrics`` and ``/readyz``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from mirec.config import MAX_DIVERSITY_LAMBDA
from mirec.serving import oip
from mirec.serving.model import (
    MAX_ITEM_ID_CHARS,
    MAX_TIMESTAMP,
    MIN_TIMESTAMP,
    Recommendation,
    RecommendRequest,
    ServingModel,
    UnknownItemsError,
)
from mirec.serving.schemas import BatchBody, InterestsBody, RecommendBody, ReloadBody

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, math.inf)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, math.inf)
UNMATCHED = "unmatched"  # the one route label of every path no route serves (labels never hold a raw path)


@dataclass
class ServeSettings:
    max_history: int = 1000  # items per history
    max_item_id_chars: int = MAX_ITEM_ID_CHARS  # characters per item id
    max_n: int = 1000  # items per answer
    max_batch: int = 256  # requests per /v1/recommend/batch
    max_body_bytes: int = 1 << 20
    microbatch_size: int = 64  # single requests served together
    microbatch_wait_ms: float = 2.0  # how long the collector waits for more requests
    token: str | None = None  # bearer token; None = no auth
    model_name: str = "mirec"  # the model's name on the Open Inference Protocol routes (/v2/models/{name})

    def public(self) -> dict[str, Any]:
        out = asdict(self)
        out["auth"] = out.pop("token") is not None
        out["admin_routes"] = out["auth"]
        out["max_diversity_lambda"] = MAX_DIVERSITY_LAMBDA
        out["timestamps"] = f"Unix seconds in {MIN_TIMESTAMP}..{MAX_TIMESTAMP}, oldest first"
        return out


class Metrics:
    """Prometheus metrics of one app (its own registry): requests by route template and status, latency per route,
    served batch sizes, reloads. Route labels come from the app's route table, never from the request path."""

    def __init__(self) -> None:
        # several workers (mirec.serving.workers): values live in files of PROMETHEUS_MULTIPROC_DIR, summed on read
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry()
        self.requests = Counter("mirec_requests", "Answered requests", ["route", "status"], registry=self.registry)
        self.latency = Histogram(
            "mirec_request_seconds", "Request latency", ["route"], buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.batches = Histogram(
            "mirec_batch_size", "Requests served by one forward pass", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.reloads = Counter("mirec_reloads", "Reloads by outcome", ["outcome"], registry=self.registry)
        self.last_reload_ok = Gauge(
            "mirec_last_reload_ok",
            "1 when the last reload succeeded (or none was tried); with several workers, the lowest of the live ones",
            registry=self.registry,
            multiprocess_mode="livemin",
        )
        self.last_reload_ok.set(1)

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_batch(self, size: int) -> None:
        self.batches.observe(size)

    def observe_reload(self, ok: bool) -> None:
        self.reloads.labels("ok" if ok else "failed").inc()
        self.last_reload_ok.set(1 if ok else 0)

    def text(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return generate_latest(merged)


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
        except Exception:  # noqa: BLE001 - whatever it was, only the request that caused it may fail
            if len(items) > 1:
                for item in items:  # one at a time: the faulty request fails alone
                    await self._serve([item])
                return
            results = [sys.exc_info()[1]]
        for (_, future), result in zip(items, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            elif result is None:  # a history with no known item fails alone, not the batch
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

    def route_label(self, scope) -> str:
        """The template of the route that served this request (e.g. ``/v1/items/{item_id}/similar``: the router
        leaves it in the scope), a static route's path for a request refused before routing (413), else
        ``unmatched``: the label set stays the route table's, whatever paths clients send."""
        route = scope.get("route")
        if route is not None and getattr(route, "path", None):
            return route.path
        return scope["path"] if scope["path"] in STATIC_PATHS else UNMATCHED

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
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
        self.metrics.observe(self.route_label(scope), status["code"], time.perf_counter() - started)

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


class Service:
    """What the routes share: the served model (swapped whole on reload), the settings, metrics and batcher."""

    def __init__(
        self,
        model: ServingModel,
        settings: ServeSettings,
        bundle_path: str | Path | None,
        loader: Any,
        shared: Any = None,
    ):
        self.model, self.settings, self.loader = model, settings, loader
        self.shared = shared  # several workers: the reload generation they all follow (mirec.serving.workers)
        self.path = str(bundle_path) if bundle_path else None
        self.reloads, self.ready = 0, True
        self.last_reload: dict[str, Any] = {}  # {"last_reload_ok", "last_reload_error"} once a reload was tried
        self.metrics = Metrics()
        self.batcher = MicroBatcher(lambda: self.model, settings, self.metrics)
        self._reload_lock = threading.Lock()

    def check(self, body: RecommendBody) -> RecommendRequest:
        """The request, validated whole: nothing that passes here can fail the batch it joins."""
        limits = self.settings
        if len(body.history) > limits.max_history:
            raise HTTPException(413, f"history of {len(body.history)} items over the limit {limits.max_history}")
        if body.n > limits.max_n:
            raise HTTPException(422, f"n = {body.n} over the limit {limits.max_n}")
        try:
            request = RecommendRequest(
                body.history, body.timestamps, body.n, body.exclude_history, body.diversity_lambda
            )
            request.check_id_lengths(limits.max_item_id_chars)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        return request

    async def recommend_one(self, body: RecommendBody) -> tuple[Recommendation, dict[str, Any]]:
        """One request, checked, micro-batched with the others; (its answer, the manifest of the model that
        served it). Failures are this request's own HTTP errors."""
        request = self.check(body)
        try:
            return await self.batcher.submit(request)
        except UnknownItemsError as exc:
            raise HTTPException(422, f"{exc}; unknown: {body.history[:10]}") from None
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - this request alone failed; a JSON answer, no traceback
            raise HTTPException(500, f"internal error serving this request ({type(exc).__name__})") from None

    def reload(self, path: str | None = None) -> dict[str, Any]:
        """Verify and load a bundle, then swap it in (and, with several workers, have the others follow); a
        failure is recorded and re-raised, the old model serves."""
        answer = self.reload_here(path)
        if self.shared is not None:
            self.shared.publish(self.path)
            answer["workers"] = "every worker follows within a second"
        return answer

    def reload_here(self, path: str | None = None) -> dict[str, Any]:
        """:meth:`reload` in this process only."""
        if self.loader is None:
            raise HTTPException(409, "this server was not started from a bundle path; nothing to reload")
        target = path or self.path
        with self._reload_lock:  # one reload at a time; requests keep using the old model until the swap
            try:
                new_model = self.loader(target)
            except Exception as exc:
                self.metrics.observe_reload(False)
                self.last_reload = {"last_reload_ok": False, "last_reload_error": f"{target}: {exc}"}
                raise
            self.model, self.path = new_model, str(target)
            self.reloads += 1
            self.metrics.observe_reload(True)
            self.last_reload = {"last_reload_ok": True, "last_reload_error": None}
        return {"bundle": self.path, "model_version": new_model.manifest.get("model_version"), "reloads": self.reloads}


def service_of(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(service_of)]


async def authorised(request: Request) -> None:
    """Bearer token check (constant time); async, so it costs no worker-thread hop when no token is set."""
    token = service_of(request).settings.token
    if token is None:
        return
    header = request.headers.get("authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise HTTPException(status_code=401, detail="missing or wrong bearer token")


async def admin_allowed(request: Request) -> None:
    if service_of(request).settings.token is None:  # no token, no admin: any local process could swap the model
        raise HTTPException(403, "admin routes are off: start mirec serve with --token-file to use them")


def versions(manifest: dict[str, Any]) -> dict[str, Any]:
    return {"model_version": manifest.get("model_version"), "index_version": manifest.get("index_version")}


api = APIRouter(dependencies=[Depends(authorised)])  # every route but the health checks needs the token
health = APIRouter()


@api.post("/v1/recommend")
async def recommend(body: RecommendBody, service: ServiceDep):
    result, manifest = await service.recommend_one(body)
    return fast_json({**result.to_dict(), **versions(manifest)})


@api.post("/v1/recommend/batch")
async def recommend_batch(body: BatchBody, service: ServiceDep):
    if len(body.requests) > service.settings.max_batch:
        raise HTTPException(413, f"batch of {len(body.requests)} requests over the limit {service.settings.max_batch}")
    requests = [service.check(r) for r in body.requests]
    model = service.model
    service.metrics.observe_batch(len(requests))
    try:
        results = await asyncio.to_thread(model.recommend, requests, True)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    unknown = [i for i, r in enumerate(results) if r is None]
    if unknown:
        raise HTTPException(422, f"requests.{unknown[0]}: none of the given items is known to this model")
    return fast_json({"results": [{**r.to_dict(), **versions(model.manifest)} for r in results]})


@api.post("/v1/interests")
async def interests(body: InterestsBody, service: ServiceDep):
    request = service.check(RecommendBody(history=body.history, timestamps=body.timestamps))
    model = service.model
    try:
        vectors = await asyncio.to_thread(model.interests, [request])
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return {"interests": vectors[0].tolist(), "model_version": model.manifest.get("model_version")}


@api.get("/v1/items/{item_id}/similar")
async def similar(item_id: str, service: ServiceDep, n: int = 20):
    if not 1 <= n <= service.settings.max_n:
        raise HTTPException(422, f"n must be in 1..{service.settings.max_n}")
    model = service.model
    try:
        items = await asyncio.to_thread(model.similar, item_id, n)
    except KeyError:
        raise HTTPException(404, f"item {item_id!r} is not known to this model") from None
    return {"items": items, **versions(model.manifest)}


@health.get("/healthz")
async def healthz():
    return {"status": "ok"}


@health.get("/readyz")
async def readyz(service: ServiceDep):
    if not service.ready:
        return _error(503, "not ready")
    return {"ready": True, "model_version": service.model.manifest.get("model_version"), **service.last_reload}


@api.get("/v1/metadata")
async def metadata(service: ServiceDep):
    manifest = {k: v for k, v in service.model.manifest.items() if k != "files"}
    limits = service.settings.public()
    return {
        "bundle": service.path,
        "manifest": manifest,
        "limits": limits,
        "reloads": service.reloads,
        "worker": os.getpid(),  # with several workers, which one answered
    }


@api.get("/metrics")
async def prometheus(service: ServiceDep):
    return Response(service.metrics.text(), media_type=CONTENT_TYPE_LATEST)


@api.post("/admin/reload", dependencies=[Depends(admin_allowed)])
async def admin_reload(service: ServiceDep, body: ReloadBody | None = None):
    try:
        return await asyncio.to_thread(service.reload, body.path if body else None)
    except (OSError, ValueError) as exc:
        raise HTTPException(422, f"reload failed, the old model keeps serving: {exc}") from None


async def invalid_request(request: Request, exc: RequestValidationError):
    problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()[:5])
    return _error(422, problems or "invalid request")


async def http_error(request: Request, exc: StarletteHTTPException):
    if exc.status_code == 400 and str(exc.detail).startswith("There was an error parsing the body"):
        return _error(422, f"invalid JSON body: {exc.detail}")  # FastAPI's own (e.g. nested past the parser's depth)
    return _error(exc.status_code, str(exc.detail))


STATIC_PATHS = frozenset(
    r.path for r in (*api.routes, *health.routes, *oip.models.routes, *oip.health.routes) if "{" not in r.path
)


def create_app(
    model: ServingModel,
    settings: ServeSettings | None = None,
    bundle_path: str | Path | None = None,
    loader=None,
    shared: Any = None,
) -> LimitsAndMetrics:
    """The FastAPI application serving ``model``; ``loader(path)`` builds a model for /admin/reload; ``shared``:
    the reload generation of several workers (:class:`mirec.serving.workers.SharedReload`)."""
    service = Service(model, settings or ServeSettings(), bundle_path, loader, shared)

    async def lifespan(app: FastAPI):
        await service.batcher.start()
        follower = asyncio.create_task(shared.follow(service.reload_here)) if shared is not None else None
        yield
        if follower is not None:
            follower.cancel()
        await service.batcher.stop()

    app = FastAPI(title="mirec", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    app.state.reload = service.reload
    app.state.reload_here = service.reload_here
    app.include_router(api)
    app.include_router(health)
    app.include_router(oip.models, dependencies=[Depends(authorised)])  # the same token as /v1
    app.include_router(oip.health)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    return LimitsAndMetrics(app, service.settings.max_body_bytes, service.metrics)  # type: ignore[return-value]


def reload_and_report(reload: Any, who: str = "mirec serve") -> None:
    """A SIGHUP reload: one line on stderr, whatever happens; a failure keeps the old model serving."""
    try:
        answer = reload()
        line = f"{who}: reloaded {answer['bundle']} (model {answer['model_version']})"
    except Exception as exc:  # noqa: BLE001 - one line; the old model keeps serving
        line = f"{who}: reload failed, the old model keeps serving: {' '.join(str(exc).split())}"
    sys.stderr.write(line + "\n")  # one write: several workers' lines never interleave
    sys.stderr.flush()


def read_token(token_file: str | Path) -> str:
    token = Path(token_file).read_text().strip()
    if not token:
        raise ValueError(f"{token_file}: empty token file")
    return token


def serve(
    bundle: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    token_file: str | Path | None = None,
    settings: ServeSettings | None = None,
    device: str = "cpu",
    threads: int = 1,
    index_of: Any = None,
) -> None:
    """Load a bundle (or a run folder) and serve it with uvicorn until stopped; SIGHUP reloads the bundle.
    ``threads``: torch intra-op threads (1: micro-batches are small, and the event loop needs a core).
    ``index_of(served) -> served``: gives each loaded bundle another index (``mirec serve --store``: a vector
    database, :func:`mirec.retrieval.serve_from_store`); reloads go through it too."""
    import signal

    import uvicorn

    from mirec.serving.bundle import load_bundle, load_serving

    settings = settings or ServeSettings()
    import torch

    if threads:
        torch.set_num_threads(threads)
    if token_file is not None:
        settings.token = read_token(token_file)

    # a reload takes verified bundles only (manifest and checksums), never a bare run folder; the HTTP route needs
    # the token, SIGHUP needs the right to signal this process
    def loader(path: str | Path) -> ServingModel:
        served = load_bundle(path, device)
        return served if index_of is None else index_of(served)

    first = loader(bundle) if index_of is not None else load_serving(bundle, device)
    app = create_app(first, settings, bundle, loader=loader)

    def on_sighup(signum: int, frame: Any) -> None:
        threading.Thread(target=reload_and_report, args=(app.state.reload,), daemon=True).start()

    signal.signal(signal.SIGHUP, on_sighup)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


__all__ = ["create_app", "serve", "ServeSettings"]
