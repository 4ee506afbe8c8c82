"""The HTTP service: a FastAPI app over the two-stage query, with hot swap of daily version sets.

Endpoints (JSON unless noted):
    POST /v1/query          one user -> the `derm query --json` document (plus nothing: the same document)
    POST /v1/query/batch    many users, shared parameters -> {"day", "versions", "results": [document | error]}
    GET  /healthz           the process is alive: 200
    GET  /readyz            200 with the serving versions when a checked set is loaded, else 503
    GET  /v1/versions       the serving set, its checks, swap counters, the last failure, the config
    GET  /metrics           Prometheus text
    POST /v1/admin/reload   look for a new version set now (bearer token; 404 when no token is configured)

Errors are `{"error": {"status", "field", "message"}}`: 422 for a bad field (named), 413 for a body over the
size limit, 404 for an unknown user under the error policy, 401 / 403 for a missing / wrong admin token, 503
when no version set is loaded or the feature store is unreachable. No request gets a traceback.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from adserving.auction import Order
from adserving.two_stage import ServeConfig
from dermcore.errors import DermError, UnknownUserError
from dermserve.batcher import Batcher, QueryParams
from dermserve.config import ServiceConfig
from dermserve.metrics import Metrics
from dermserve.versions import VersionManager, VersionSet
from embstore.online import FeatureStoreError, OnlineStore

log = logging.getLogger(__name__)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
ENDPOINTS = (
    "/v1/query",
    "/v1/query/batch",
    "/healthz",
    "/readyz",
    "/v1/versions",
    "/metrics",
    "/v1/admin/reload",
)

BODY_ENDPOINTS = ("/v1/query", "/v1/query/batch")


class _Params(BaseModel):
    """The query parameters of both query endpoints (strict JSON types; unknown fields refused)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    k: int = Field(50, ge=1, description="Results to return (<= the service's max_k).")
    candidates: int = Field(500, ge=1, description="ANN candidates to rank (>= k, <= max_candidates).")
    order: Literal["ecpm", "rank_score"] = "ecpm"
    max_per_advertiser: int | None = Field(
        3, ge=0, description="At most N ads per advertiser; 0 or null: no cap."
    )
    exclude_ad_ids: list[int] = Field(default_factory=list, description="Ads never returned (int64).")
    exclude_advertiser_ids: list[int] = Field(
        default_factory=list, description="Advertisers whose ads are never returned (int64)."
    )


class QueryBody(_Params):
    user_id: int = Field(ge=INT64_MIN, le=INT64_MAX)


class BatchBody(_Params):
    user_ids: list[int] = Field(min_length=1)


class RequestError(Exception):
    """A request refused with `status`, naming `field`."""

    def __init__(self, status: int, field: str | None, message: str) -> None:
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


def error_response(
    status: int, field: str | None, message: str, headers: dict[str, str] | None = None
) -> Response:
    body = {"error": {"status": status, "field": field, "message": message}}
    return Response(json.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _json(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj), status_code=status, media_type="application/json")


def _params(body: _Params, cfg: ServiceConfig) -> QueryParams:
    """The service's limits on top of the model's types; the same ServeConfig rules as `derm query`."""
    if body.k > cfg.max_k:
        raise RequestError(422, "k", f"k must be <= {cfg.max_k} (the service's limit), got {body.k}")
    if body.candidates > cfg.max_candidates:
        raise RequestError(
            422,
            "candidates",
            f"candidates must be <= {cfg.max_candidates} (the service's limit), got {body.candidates}",
        )
    if body.candidates < body.k:
        raise RequestError(422, "candidates", f"candidates ({body.candidates}) must be >= k ({body.k})")
    for name in ("exclude_ad_ids", "exclude_advertiser_ids"):
        ids = getattr(body, name)
        if len(ids) > cfg.max_exclude:
            raise RequestError(422, name, f"{name}: at most {cfg.max_exclude} ids, got {len(ids)}")
        bad = [x for x in ids if not INT64_MIN <= x <= INT64_MAX]
        if bad:
            raise RequestError(422, name, f"{name}: {bad[0]} is outside int64")
    config = ServeConfig(
        k=body.k,
        candidates=body.candidates,
        order=Order(body.order),
        max_per_advertiser=body.max_per_advertiser or None,
        unknown_user=cfg.unknown_user,
    )
    return QueryParams(
        config,
        tuple(sorted(set(body.exclude_ad_ids))),
        tuple(sorted(set(body.exclude_advertiser_ids))),
    )


def _user_error(e: UnknownUserError) -> dict[str, Any]:
    return {"user_id": e.user_id, "error": {"status": 404, "field": "user_id", "message": str(e)}}


def create_app(cfg: ServiceConfig, manager: VersionManager | None = None) -> FastAPI:
    """The ASGI app. `manager` (default: one over `cfg`) is started with the app and stopped with it."""
    if cfg.torch_threads is not None:
        import torch

        torch.set_num_threads(cfg.torch_threads)
    online = OnlineStore(cfg.feature_store) if cfg.feature_store is not None and manager is None else None
    mgr = manager or VersionManager(cfg, online)
    metrics = Metrics()
    batcher = Batcher(cfg.batch_window_ms / 1000.0, cfg.max_batch_users, metrics.batch)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        mgr.start()
        try:
            yield
        finally:
            mgr.stop()
            batcher.close()
            if mgr.online is not None:
                mgr.online.close()

    app = FastAPI(
        title="derm",
        description="Two-stage ads retrieval and ranking over the daily versions of a derm workspace.",
        lifespan=lifespan,
    )
    app.state.manager, app.state.metrics, app.state.batcher, app.state.config = mgr, metrics, batcher, cfg

    @app.middleware("http")
    async def measure(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        t0 = time.perf_counter()
        path = request.url.path
        endpoint = path if path in ENDPOINTS else "other"
        length = request.headers.get("content-length")
        # a chunked body (no Content-Length) could not be limited before it is read
        if endpoint in BODY_ENDPOINTS and length is None:
            metrics.request(endpoint, 411, time.perf_counter() - t0)
            return error_response(411, "Content-Length", "a POST needs a Content-Length header")
        if request.method == "POST" and length is not None:
            try:
                too_big = int(length) > cfg.max_body_bytes
            except ValueError:
                too_big = False
                response = error_response(400, "Content-Length", "not an integer")
                metrics.request(endpoint, 400, time.perf_counter() - t0)
                return response
            if too_big:
                response = error_response(
                    413, "body", f"request body of {length} bytes is over the limit of {cfg.max_body_bytes}"
                )
                metrics.request(endpoint, 413, time.perf_counter() - t0)
                return response
        try:
            response = await call_next(request)
        except Exception:  # never a traceback to the client
            log.exception("unhandled error on %s", path)
            response = error_response(500, None, "internal error (logged by the server)")
        metrics.request(endpoint, response.status_code, time.perf_counter() - t0)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> Response:
        err = e.errors()[0]
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        field = ".".join(loc) if loc and err.get("type") != "json_invalid" else "body"
        return error_response(422, field, f"{field}: {err.get('msg', 'invalid')}")

    @app.exception_handler(RequestError)
    async def refused(_: Request, e: RequestError) -> Response:
        return error_response(e.status, e.field, e.message)

    def serving() -> VersionSet:
        vset = mgr.current
        if vset is None:
            failure = (
                mgr.last_failure["error"]
                if mgr.last_failure
                else (mgr.pending["reason"] if mgr.pending else "still loading")
            )
            raise RequestError(503, None, f"no version set is loaded ({failure})")
        return vset

    async def guarded(coro: Awaitable[Any]) -> Any:
        try:
            return await coro
        except FeatureStoreError as e:
            raise RequestError(503, None, str(e)) from None
        except UnknownUserError as e:
            raise RequestError(404, "user_id", str(e)) from None
        except DermError as e:  # a served artifact went bad under us: the server's fault, said plainly
            log.error("query failed: %s", e)
            raise RequestError(500, None, str(e)) from None

    @app.post("/v1/query")
    async def query(body: QueryBody) -> Response:
        p = _params(body, cfg)
        vset = serving()
        doc = await guarded(batcher.submit(vset, p, body.user_id))
        return _json(doc)

    @app.post("/v1/query/batch")
    async def query_batch(body: BatchBody) -> Response:
        if len(body.user_ids) > cfg.max_batch:
            raise RequestError(
                422,
                "user_ids",
                f"user_ids: at most {cfg.max_batch} users per batch, got {len(body.user_ids)}",
            )
        bad = [u for u in body.user_ids if not INT64_MIN <= u <= INT64_MAX]
        if bad:
            raise RequestError(422, "user_ids", f"user_ids: {bad[0]} is outside int64")
        p = _params(body, cfg)
        vset = serving()  # one set for the whole batch: its documents never mix versions
        from dermserve.batcher import run_query_many

        results: list[Any] = []
        step = cfg.max_batch_users
        for s in range(0, len(body.user_ids), step):
            chunk = body.user_ids[s : s + step]
            metrics.batch(len(chunk))
            results += await guarded(batcher.run(run_query_many, vset, chunk, p))
        out = [_user_error(r) if isinstance(r, UnknownUserError) else r for r in results]
        return _json({"day": vset.day, "versions": vset.versions, "results": out})

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        vset = mgr.current
        if vset is None:
            return _json({"ready": False, "last_failure": mgr.last_failure, "pending": mgr.pending}, 503)
        return _json(
            {"ready": True, **vset.describe(), "last_failure": mgr.last_failure, "pending": mgr.pending}
        )

    @app.get("/v1/versions")
    async def versions() -> Response:
        vset = mgr.current
        return _json(
            {
                "serving": None if vset is None else vset.describe(),
                "swaps": mgr.swaps,
                "swap_failures": mgr.swap_failures,
                "last_failure": mgr.last_failure,
                "pending": mgr.pending,
                "last_poll_unix": mgr.last_poll_unix,
                "config": cfg.to_json(),
            }
        )

    @app.get("/metrics")
    async def metrics_text() -> Response:
        vset = mgr.current
        state = {
            "ready": vset is not None,
            "day": -1 if vset is None else vset.day,
            "versions": {} if vset is None else vset.versions,
            "swaps": mgr.swaps,
            "swap_failures": mgr.swap_failures,
            "last_failure": mgr.last_failure,
            "pending": mgr.pending is not None,
        }
        return Response(metrics.render(state), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/v1/admin/reload")
    async def reload(request: Request) -> Response:
        if cfg.admin_token is None:
            return error_response(404, None, "admin reload is disabled: the service has no admin token")
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return error_response(
                401, "Authorization", "a bearer token is required", {"WWW-Authenticate": "Bearer"}
            )
        if not hmac.compare_digest(token.strip().encode(), cfg.admin_token.encode()):
            return error_response(403, "Authorization", "wrong admin token")
        import anyio

        out = await anyio.to_thread.run_sync(lambda: mgr.poll(force=True))
        return _json(out)

    return app


def serve(cfg: ServiceConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the service on uvicorn until interrupted (the `derm serve` command)."""
    import uvicorn

    app = create_app(cfg)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
