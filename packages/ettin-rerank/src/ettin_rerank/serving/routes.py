"""One router per API family (as vLLM's ``api_router.py``), each tagged with its error dialect.

- ``cohere_router`` (tag ``cohere``): ``POST /v2/rerank`` (Cohere v2), ``POST /v1/rerank`` (Cohere v1 and Jina).
- ``tei_router`` (tag ``tei``): ``POST /rerank``, TEI with ``texts`` and infinity with ``documents``.
- ``native_router`` (tag ``native``): ``POST /ettin/v1/rerank``, the adapters' remote mode.
- ``probe_router`` (tag ``probes``): ``GET /health`` and ``/ping`` (a real tiny forward pass), ``/live``, ``/ready``,
  ``/info``, ``/metrics``; TEI's own probes (``/health``, ``/ping``, ``/info``) are tagged ``tei`` too.

Every handler takes the service from ``request.app.state.service``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from starlette.routing import BaseRoute, Match

from ettin_rerank.serving.config import ServerConfig
from ettin_rerank.serving.errors import (
    SERVICE_ERROR_TYPES,
    ApiError,
    Dialect,
    dialect_of,
    service_error,
    unhealthy,
    validation_message,
)
from ettin_rerank.serving.schemas import (
    CohereV1Request,
    CohereV1Response,
    CohereV2Request,
    CohereV2Response,
    InfinityRequest,
    InfinityResponse,
    InfoResponse,
    NativeRequest,
    NativeResponse,
    ReadyResponse,
    RerankCall,
    TeiRank,
    TeiRequest,
)
from ettin_rerank.serving.service import Ranked, RerankService

logger = logging.getLogger(__name__)
RequestModel = TypeVar("RequestModel", bound=BaseModel)

cohere_router = APIRouter(tags=[Dialect.COHERE])
tei_router = APIRouter(tags=[Dialect.TEI])
native_router = APIRouter(tags=["native"])
probe_router = APIRouter(tags=["probes"])
ROUTERS = (cohere_router, tei_router, native_router, probe_router)
"""In the order the app includes them."""


def route_for(request: Request) -> BaseRoute | None:
    """The route of ours ``request`` reaches, found before routing (for the middleware): the first full match,
    else the first on the path alone (a 405), else ``None`` (a 404)."""
    partial = None
    for router in ROUTERS:
        for route in router.routes:
            match, _ = route.matches(request.scope)
            if match is Match.FULL:
                return route
            if match is Match.PARTIAL and partial is None:
                partial = route
    return partial


def _service(request: Request) -> RerankService:
    return request.app.state.service


# ---------------------------------------------------------------------- rerank routes


@cohere_router.post("/v2/rerank", response_model_exclude_none=True)
async def cohere_v2(body: CohereV2Request, request: Request) -> CohereV2Response:
    """Cohere v2 rerank."""
    config = _service(request).config
    _check_model(body.model, config)
    ranked = await _rank(request, body.to_call(config))
    return CohereV2Response.of(ranked, body.documents, with_documents=bool(body.return_documents))


@cohere_router.post("/v1/rerank", response_model_exclude_none=True)
async def cohere_v1_and_jina(body: CohereV1Request, request: Request) -> CohereV1Response:
    """Cohere v1 and Jina rerank (``document`` returned unless ``return_documents`` is false)."""
    config = _service(request).config
    _check_model(body.model, config)
    ranked = await _rank(request, body.to_call(config))
    return CohereV1Response.of(ranked, body.documents, model=config.name,
                               with_documents=body.return_documents is not False)


@tei_router.post("/rerank", response_model_exclude_none=True)
async def tei_and_infinity(request: Request) -> list[TeiRank] | InfinityResponse:
    """TEI rerank (a body with ``texts``: a bare list sorted by score), or infinity (``documents``)."""
    config = _service(request).config
    data = await _json_body(request)
    if isinstance(data, dict) and "texts" not in data and "documents" in data:
        infinity = _parse(InfinityRequest, data, request)
        _check_model(infinity.model, config)
        call = infinity.to_call(config)
        ranked = await _rank(request, call)
        return InfinityResponse.of(ranked, call.texts, model=config.name,
                                   with_documents=bool(infinity.return_documents))
    body = _parse(TeiRequest, data, request)
    call = body.to_call(config)
    ranked = await _rank(request, call)
    return TeiRank.ranks(ranked, call.texts, with_text=bool(body.return_text))


@native_router.post("/ettin/v1/rerank")
async def native(body: NativeRequest, request: Request) -> NativeResponse:
    """Every engine option in, everything the engine knows out (the adapters' remote mode)."""
    config = _service(request).config
    return NativeResponse.of(await _rank(request, body.to_call(config)), model=config.name)


async def _rank(request: Request, call: RerankCall) -> Ranked:
    """The service's ranking for ``call``, or an :class:`ApiError` in the route's dialect.

    Checks the documents are there and within ``max_documents``, that the model is ready, and reads the client's
    ``X-Request-Timeout``; the work is dropped if the client disconnects first.
    """
    service = _service(request)
    config = service.config
    dialect = dialect_of(request)
    if not call.texts:
        msg = "documents must not be empty"
        raise ApiError(400, msg, "empty")
    if len(call.texts) > config.max_documents:
        service.metrics.rejected.labels("too_large").inc()
        msg = f"{len(call.texts)} documents is over the limit of {config.max_documents} per request; split the request"
        raise ApiError(dialect.too_many_status, msg, "validation")
    if not service.ready or not service.alive:
        msg = "the model is not ready"
        raise unhealthy(msg)
    timeout = _timeout(request, config)
    work = asyncio.ensure_future(service.rerank(call.query, call.texts, options=call.options, top_k=call.top_k,
                                                score_threshold=call.score_threshold, timeout_s=timeout))
    try:
        return await _unless_disconnected(request, work)
    except SERVICE_ERROR_TYPES as error:
        raise service_error(error, dialect, service) from None


# ---------------------------------------------------------------------- probes


@probe_router.get("/health", tags=[Dialect.TEI])
@probe_router.get("/ping", tags=[Dialect.TEI])
async def health(request: Request) -> Response:
    """200 after a real tiny forward pass; 503 when the model worker is dead or does not answer."""
    service = _service(request)
    msg = "unhealthy"
    if not service.ready or not service.alive:
        raise unhealthy(msg)
    try:
        await service.check()
    except Exception as error:  # any failure of the pass is what health reports
        logger.warning("health check failed: %s", error)
        raise unhealthy(msg) from None
    return Response(status_code=200)


@probe_router.get("/live")
async def live() -> Response:
    """The process answers (liveness)."""
    return Response(status_code=200)


@probe_router.get("/ready")
async def ready(request: Request) -> ReadyResponse:
    """The model is loaded, warmed up, and its worker runs (readiness)."""
    service = _service(request)
    if service.ready and service.alive:
        return ReadyResponse()
    msg = "not ready"
    raise unhealthy(msg)


@probe_router.get("/info", tags=[Dialect.TEI])
async def info(request: Request) -> InfoResponse:
    """TEI's field names, plus the engine's."""
    from ettin_rerank import __version__

    service = _service(request)
    config = service.config
    engine = service.engine
    batcher = service.batcher
    return InfoResponse(
        model_id=config.name, model_path=str(engine.model_path),
        model_dtype=str(engine.dtype).removeprefix("torch."), model_device=str(engine.device),
        attention=engine.attention, max_input_length=engine.model_max_length,
        max_batch_tokens=batcher.max_batch_tokens, max_batch_pairs=batcher.max_batch_pairs,
        max_queued_tokens=batcher.max_queued_tokens, max_client_batch_size=config.max_documents,
        max_tokens_per_doc=config.max_tokens_per_doc,
        long_document_strategy=engine.defaults.long_document_strategy, version=__version__,
    )


@probe_router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    return Response(_service(request).metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


# ---------------------------------------------------------------------- helpers


def _check_model(name: str | None, config: ServerConfig) -> None:
    if config.strict_model_name and name not in (None, config.name):
        msg = f"model {name!r} is not served here; this server serves {config.name!r}"
        raise ApiError(404, msg, "not_found")


def _timeout(request: Request, config: ServerConfig) -> float:
    header = request.headers.get("x-request-timeout")
    try:
        asked = float(header) if header is not None else config.request_timeout_s
    except ValueError:
        msg = f"X-Request-Timeout must be a number of seconds, got {header!r}"
        raise ApiError(400, msg) from None
    return min(config.request_timeout_s, asked) if asked > 0 else config.request_timeout_s


async def _unless_disconnected(request: Request, work: asyncio.Future) -> Any:
    """``work``'s result, or cancel it when the client disconnects first (its windows then never run)."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        work.cancel()
        raise
    finally:
        watcher.cancel()
    if work in done:
        return work.result()
    work.cancel()
    msg = "the client closed the connection"
    raise ApiError(499, msg, "cancelled")


async def _json_body(request: Request) -> Any:
    """The body as JSON, parsed here: ``/rerank`` picks TEI or infinity by its fields."""
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        msg = f"malformed JSON body: {error}"
        raise ApiError(dialect_of(request).invalid_status, msg) from None


def _parse(model: type[RequestModel], body: Any, request: Request) -> RequestModel:
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise ApiError(dialect_of(request).invalid_status, validation_message(list(error.errors()))) from None
