"""``create_app(config)``: the rerank server as a FastAPI app that Cohere, Jina, TEI and infinity clients talk to.

The app is the service (``app.state.service``), the routers of :mod:`~ettin_rerank.serving.routes`, and what runs
around them: the lifespan that loads the model, auth, the body-size limit, request metrics, and the handlers that
write every error in the dialect of its route (:mod:`~ettin_rerank.serving.errors`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ettin_rerank.serving.config import ServerConfig
from ettin_rerank.serving.errors import ApiError, dialect_of, error_response, route_dialect, validation_message
from ettin_rerank.serving.routes import ROUTERS, route_for
from ettin_rerank.serving.service import RerankService

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/ping", "/live", "/ready", "/metrics"})
"""Reachable without the API key (as in TEI): probes and scraping."""

UNMETERED_PATHS = frozenset({"/metrics", "/live"})
"""Not counted in the request metrics (scrapes and liveness probes)."""


def create_app(config: ServerConfig | None = None, *, engine: Any = None) -> FastAPI:
    """The server app; run it with uvicorn, mount it, or serve it on Ray (``serving.ray``).

    Args:
        config: The server configuration (``None``: the defaults).
        engine: A :class:`~ettin_rerank.Reranker` already loaded (``None``: ``config.model`` is loaded when the app
            starts).
    """
    service = RerankService(config or ServerConfig(), engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(service.start)
        yield
        await asyncio.to_thread(service.stop)

    app = FastAPI(title="ettin-rerank", lifespan=lifespan)
    app.state.service = service
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    app.middleware("http")(_guard)
    for router in ROUTERS:
        app.include_router(router)
    return app


async def _api_error(request: Request, error: ApiError) -> JSONResponse:
    return error_response(error, dialect_of(request))


async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
    dialect = dialect_of(request)
    return error_response(ApiError(dialect.invalid_status, validation_message(list(error.errors()))), dialect)


async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    return error_response(ApiError(error.status_code, str(error.detail), "http"), dialect_of(request))


async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    logger.exception("unexpected error on %s", request.url.path)
    return error_response(ApiError(500, f"internal error ({type(error).__name__})", "backend"), dialect_of(request))


async def _guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Refuse before anything is read, else answer; then count the request and its time."""
    service: RerankService = request.app.state.service
    path = request.url.path
    start = time.perf_counter()
    response = _refuse(request, service)
    if response is None:
        response = await call_next(request)
    if path not in UNMETERED_PATHS:
        service.metrics.requests.labels(path, str(response.status_code)).inc()
        service.metrics.request_seconds.labels(path).observe(time.perf_counter() - start)
    return response


def _refuse(request: Request, service: RerankService) -> Response | None:
    """401 without the API key, 413 for a body over the limit, else ``None``."""
    config = service.config
    if config.api_key is not None and request.url.path not in OPEN_PATHS:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
            service.metrics.rejected.labels("auth").inc()
            error = ApiError(401, "missing or wrong API key (Authorization: Bearer <key>)", "unauthorized")
            return error_response(error, route_dialect(route_for(request)))
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > config.max_body_bytes:
        service.metrics.rejected.labels("too_large").inc()
        error = ApiError(413, f"request body of {length} bytes is over the limit of {config.max_body_bytes} bytes",
                         "payload_too_large")
        return error_response(error, route_dialect(route_for(request)))
    return None
