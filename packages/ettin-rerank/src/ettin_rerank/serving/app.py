"""``create_app(config)``: the rerank server as a FastAPI app that Cohere, Jina, TEI and infinity clients talk to.

The app is one service per model (``app.state.services`` by served name; ``app.state.service`` is the first, the
default), the routers of :mod:`~ettin_rerank.serving.routes`, and what runs
around them: the lifespan that loads the model, the body limits (:mod:`~ettin_rerank.serving.limits`), the checks
made before anything is read (API key, ``Host``, content type, declared size), request metrics labelled by route
template, the access log, the API docs served from a packaged copy (no CDN: they work offline), and the handlers
that write every error in the dialect of its route (:mod:`~ettin_rerank.serving.errors`).
"""

from __future__ import annotations

import asyncio
import email.message
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute

from ettin_rerank.serving.config import ServerConfig
from ettin_rerank.serving.errors import ApiError, dialect_of, error_response, route_dialect, validation_message
from ettin_rerank.serving.limits import BodyLimitError, BodyLimits, too_large
from ettin_rerank.serving.metrics import ServerMetrics
from ettin_rerank.serving.openapi import describe
from ettin_rerank.serving.routes import ROUTERS, route_for
from ettin_rerank.serving.service import RerankService

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("ettin_rerank.serving.access")

DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/"})
STATIC_DOCS = "/static-offline-docs"
OPEN_PATHS = frozenset({"/health", "/ping", "/live", "/ready", "/metrics"}) | DOCS_PATHS
"""Reachable without the API key (as in TEI): probes, scraping and the API docs."""

UNMETERED_PATHS = frozenset({"/metrics", "/live"})
"""Not counted in the request metrics (scrapes and liveness probes)."""
OTHER_ROUTE = "other"
"""The ``route`` label of a request that matches no route (a 404): labels stay a bounded set."""
JSON_ROUTES = frozenset({"/v2/rerank", "/v1/rerank", "/rerank", "/ettin/v1/rerank"})
"""Routes whose body must be ``application/json`` (a page cannot make a browser send that cross-origin without a
preflight, which this server never allows)."""


def create_app(config: ServerConfig | None = None, *, engine: Any = None) -> FastAPI:
    """The server app; run it with uvicorn, mount it, or serve it on Ray (``serving.ray``).

    Args:
        config: The server configuration (``None``: the defaults).
        engine: A :class:`~ettin_rerank.Reranker` already loaded, or one per served name for several models
            (``None``, or a name left out: that model is loaded when the app starts, or before by
            :meth:`RerankService.load`).
    """
    config = config or ServerConfig()
    models = config.models
    metrics = ServerMetrics([c.name for c in models] if len(models) > 1 else None)
    engines = engine if isinstance(engine, Mapping) else {models[0].name: engine}
    services = {c.name: RerankService(c, engines.get(c.name), metrics=metrics) for c in models}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for service in services.values():
            await asyncio.to_thread(service.start)
        yield
        for service in services.values():
            await asyncio.to_thread(service.stop)

    app = FastAPIOffline(title="ettin-rerank", lifespan=lifespan, static_url=STATIC_DOCS,
                         description="Rerank server for the Ettin cross-encoders: Cohere v1/v2, Jina, TEI and infinity "
                                     "wire formats, batching pairs across requests.")
    app.state.services = services
    app.state.service = next(iter(services.values()))
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    app.add_middleware(BodyLimits, max_body_bytes=config.max_body_bytes, body_timeout_s=config.body_timeout_s)
    app.middleware("http")(_guard)  # outside the limits: it counts their answers too
    for router in ROUTERS:
        app.include_router(router)
    app.openapi = partial(describe, app, config)  # type: ignore[method-assign]
    return app


async def _api_error(request: Request, error: ApiError) -> JSONResponse:
    return error_response(error, dialect_of(request))


async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
    dialect = dialect_of(request)
    return error_response(ApiError(dialect.invalid_status, validation_message(list(error.errors()))), dialect)


async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    """Starlette's and FastAPI's own answers (404, 405 with ``Allow``, a body FastAPI could not parse) and the
    body limits' (413, 408), in the route's dialect."""
    message = str(error.detail)
    if isinstance(error, BodyLimitError):
        request.app.state.service.metrics.rejected.labels(error.reason).inc()
    elif isinstance(error.__cause__, RecursionError):
        message = "malformed JSON body: nested too deeply"
    elif error.status_code == 400 and error.__cause__ is not None:
        message = f"malformed JSON body: {error.__cause__}"
    response = error_response(ApiError(error.status_code, message, "http"), dialect_of(request))
    response.headers.update(error.headers or {})
    return response


async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    logger.exception("unexpected error on %s", request.url.path)
    return error_response(ApiError(500, f"internal error ({type(error).__name__})", "backend"), dialect_of(request))


async def _guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Refuse before anything is read, else answer; then count the request under its route template (never its
    raw path: 404s of random paths must not grow the metrics) and write the access log line."""
    service: RerankService = request.app.state.service
    start = time.perf_counter()
    route = route_for(request)
    response = _refuse(request, service, route)
    if response is None:
        response = await call_next(request)
    label = getattr(route, "path", None) or OTHER_ROUTE
    if label not in UNMETERED_PATHS:
        service.metrics.requests.labels(label, str(response.status_code)).inc()
        service.metrics.request_seconds.labels(label).observe(time.perf_counter() - start)
    if service.config.access_log:
        pairs, tokens = getattr(request.state, "work", (0, 0))
        access_logger.info("%s %s %d pairs=%d tokens=%d %.1fms", request.method, label, response.status_code, pairs,
                           tokens, 1000 * (time.perf_counter() - start))
    return response


def _refuse(request: Request, service: RerankService, route: BaseRoute | None) -> Response | None:
    """400 for a ``Host`` that is not allowed, 401 without the API key, 415 for a body that is not JSON, 413 for a
    declared body over the limit, else ``None``."""
    config = service.config
    path = request.url.path
    error = None
    if config.allowed_hosts is not None and not host_allowed(request.headers.get("host", ""), config.allowed_hosts):
        error = ApiError(400, f"Host {request.headers.get('host', '')!r} is not allowed here (--allowed-hosts)",
                         "validation")
        service.metrics.rejected.labels("host").inc()
    elif (config.api_key is not None and path not in OPEN_PATHS and not path.startswith(STATIC_DOCS)
          and not _has_key(request, config.api_key)):
        service.metrics.rejected.labels("auth").inc()
        error = ApiError(401, "missing or wrong API key (Authorization: Bearer <key>)", "unauthorized")
    elif request.method == "POST" and path in JSON_ROUTES and not _is_json(request.headers.get("content-type")):
        error = ApiError(415, f"the body must be application/json, got {request.headers.get('content-type')!r}",
                         "validation")
    else:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > config.max_body_bytes:
            service.metrics.rejected.labels("too_large").inc()
            error = ApiError(413, too_large(config.max_body_bytes, int(length)).detail, "payload_too_large")
    return None if error is None else error_response(error, route_dialect(route))


def _has_key(request: Request, key: str) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """Whether a ``Host`` header names an allowed host (the port is ignored; ``*.example.com`` allows its
    subdomains, ``*`` anything), as Starlette's ``TrustedHostMiddleware`` matches."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    patterns = [pattern.strip("[]") for pattern in allowed]
    return any(pattern in ("*", name) or (pattern.startswith("*.") and name.endswith(pattern[1:]))
               for pattern in patterns)
