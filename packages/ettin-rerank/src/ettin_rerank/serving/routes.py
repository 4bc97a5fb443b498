"""One router per API family (as vLLM's ``api_router.py``), each tagged with its error dialect.

- ``cohere_router`` (tag ``cohere``): ``POST /v2/rerank`` (Cohere v2), ``POST /v1/rerank`` (Cohere v1 and Jina).
- ``tei_router`` (tag ``tei``): ``POST /rerank``, TEI with ``texts`` and infinity with ``documents``.
- ``native_router`` (tag ``native``): ``POST /ettin/v1/rerank``, the adapters' remote mode.
- ``probe_router`` (tag ``probes``): ``GET /health`` and ``/ping`` (a real tiny forward pass, ahead of the queue),
  ``/live`` (liveness: the process answers), ``/ready`` (readiness: the model answers), ``/info``, ``/metrics``,
  ``/`` (where to look); TEI's own probes (``/health``, ``/ping``, ``/info``) are tagged ``tei`` too.

Every rerank handler takes the service of the model its request names (``request.app.state.services``, by served
name or as given to ``--model``; absent: the first; with one model any name is accepted unless
``strict_model_name``, with several an unknown one is a 404). Each route declares every status it answers
(``responses=``), with the body of its dialect, so ``/openapi.json`` describes this server. ``GET /v1/models``
(and ``/models``) lists the models, as infinity and vLLM do.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from starlette.routing import BaseRoute, Match

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
    CohereError,
    CohereV1Request,
    CohereV1Response,
    CohereV2Request,
    CohereV2Response,
    InfinityRequest,
    InfinityResponse,
    InfoResponse,
    ModelCard,
    ModelInfo,
    ModelList,
    NativeRequest,
    NativeResponse,
    ReadyResponse,
    RerankCall,
    RootResponse,
    TeiError,
    TeiRank,
    TeiRequest,
    check_echoable,
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
    """The route ``request`` reaches (ours, or the app's own: docs, OpenAPI), found before routing (for the
    middleware): the first full match, else the first on the path alone (a 405), else ``None`` (a 404)."""
    partial = None
    own = [route for route in request.app.router.routes if getattr(route, "path", None) is not None]
    for route in [*(route for router in ROUTERS for route in router.routes), *own]:
        match, _ = route.matches(request.scope)
        if match is Match.FULL:
            return route
        if match is Match.PARTIAL and partial is None:
            partial = route
    return partial


_STATUS = {
    400: "Invalid request (the message names the field), or a Host that is not allowed",
    404: "The model named is not served here",
    408: "The request body did not arrive in time",
    413: "The body, the documents or the tokens of the request are over the server's limits",
    415: "The body is not `application/json`",
    422: "Invalid request (TEI's status for it; the message names the field)",
    429: "The queue (or the tokenizer) is full: retry after `Retry-After` seconds",
    503: "The model is not ready, or the request waited past its deadline: retry after `Retry-After` seconds",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}}


def responses(model: type[BaseModel], *statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of ``statuses``, each with the error body ``model``."""
    return {status: {"model": model, "description": _STATUS[status],
                     **({"headers": _RETRY_AFTER} if status in (429, 503) else {})} for status in statuses}


COHERE_ERRORS = responses(CohereError, 400, 404, 408, 413, 415, 429, 503)
TEI_ERRORS = responses(TeiError, 400, 404, 408, 413, 415, 422, 429, 503)
NATIVE_ERRORS = responses(CohereError, 400, 408, 413, 415, 429, 503)
TimeoutHeader = Annotated[float | None, Header(
    alias="X-Request-Timeout", description="Seconds this request may wait for the model (at most the server's "
    "`--request-timeout`; absent or <= 0: the server's)")]


def _service(request: Request) -> RerankService:
    return request.app.state.service


def _pick(request: Request, name: str | None) -> RerankService:
    """The service of the model ``name``: its served name, or the model as given to ``--model`` when that names
    one model only (what an adapter's ``model=`` says); absent: the first. 404 in the route's dialect for a model
    not served here (with one model, only under ``strict_model_name``: clients send names such as
    ``rerank-v3.5``)."""
    services: dict[str, RerankService] = request.app.state.services
    first = _service(request)
    if name in services:
        return services[name]
    started_as = [service for service in services.values() if str(service.config.model) == name]
    if len(started_as) == 1:
        return started_as[0]
    if name is None or (len(services) == 1 and not first.config.strict_model_name):
        return first
    msg = f"model {name!r} is not served here; this server serves {', '.join(map(repr, services))}"
    raise ApiError(404, msg, "not_found")


# ---------------------------------------------------------------------- rerank routes


@cohere_router.post("/v2/rerank", response_model_exclude_none=True, responses=COHERE_ERRORS)
async def cohere_v2(body: CohereV2Request, request: Request, timeout: TimeoutHeader = None) -> CohereV2Response:
    """Cohere v2 rerank."""
    service = _pick(request, body.model)
    if body.return_documents:
        check_echoable(body.documents)
    ranked = await _rank(request, service, body.to_call(service.config), timeout)
    return CohereV2Response.of(ranked, body.documents, with_documents=bool(body.return_documents))


@cohere_router.post("/v1/rerank", response_model_exclude_none=True, responses=COHERE_ERRORS)
async def cohere_v1_and_jina(body: CohereV1Request, request: Request,
                             timeout: TimeoutHeader = None) -> CohereV1Response:
    """Cohere v1 and Jina rerank (``document`` returned unless ``return_documents`` is false)."""
    service = _pick(request, body.model)
    with_documents = body.return_documents is not False
    if with_documents:
        check_echoable(body.documents)
    ranked = await _rank(request, service, body.to_call(service.config), timeout)
    return CohereV1Response.of(ranked, body.documents, model=service.config.name, with_documents=with_documents)


TEI_OR_INFINITY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {"anyOf": [
    {"$ref": "#/components/schemas/TeiRequest"},
    {"allOf": [{"$ref": "#/components/schemas/InfinityRequest"}, {"properties": {"texts": False}}]},
]}}}}}
"""``/rerank`` reads its body itself (TEI with ``texts``, else infinity with ``documents``); this is its schema."""


@tei_router.post("/rerank", response_model_exclude_none=True, responses=TEI_ERRORS, openapi_extra=TEI_OR_INFINITY)
async def tei_and_infinity(request: Request, timeout: TimeoutHeader = None) -> list[TeiRank] | InfinityResponse:
    """TEI rerank (a body with ``texts``: a bare list sorted by score; the first model), or infinity
    (``documents``)."""
    data = await _json_body(request)
    if isinstance(data, dict) and "texts" not in data and "documents" in data:
        infinity = _parse(InfinityRequest, data, request)
        service = _pick(request, infinity.model)
        call = infinity.to_call(service.config)
        ranked = await _rank(request, service, call, timeout)
        return InfinityResponse.of(ranked, call.texts, model=service.config.name,
                                   with_documents=bool(infinity.return_documents))
    body = _parse(TeiRequest, data, request)
    service = _service(request)
    call = body.to_call(service.config)
    ranked = await _rank(request, service, call, timeout)
    return TeiRank.ranks(ranked, call.texts, with_text=bool(body.return_text))


@native_router.post("/ettin/v1/rerank", responses=NATIVE_ERRORS)
async def native(body: NativeRequest, request: Request, timeout: TimeoutHeader = None) -> NativeResponse:
    """Every engine option in, everything the engine knows out (the adapters' remote mode). ``top_k``,
    ``score_threshold`` and ``options`` get the engine's own checks; a window overlap must be below half of
    ``max_length``, and a query (unless ``truncate_query``) at most half of it, rules JSON Schema cannot state."""
    service = _pick(request, body.model)
    return NativeResponse.of(await _rank(request, service, body.to_call(service.config), timeout),
                             model=service.config.name)


async def _rank(request: Request, service: RerankService, call: RerankCall, timeout: float | None) -> Ranked:
    """The service's ranking for ``call``, or an :class:`ApiError` in the route's dialect.

    Checks the documents are there and within ``max_documents``, that the model is ready, and reads the client's
    ``X-Request-Timeout``; the work is dropped if the client disconnects first.
    """
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
    timeout_s = min(config.request_timeout_s, timeout) if timeout is not None and timeout > 0 else (
        config.request_timeout_s)
    work = asyncio.ensure_future(service.rerank(call.query, call.texts, options=call.options, top_k=call.top_k,
                                                score_threshold=call.score_threshold, timeout_s=timeout_s))
    try:
        ranked = await _unless_disconnected(request, work)
    except SERVICE_ERROR_TYPES as error:
        raise service_error(error, dialect, service) from None
    request.state.work = (len(call.texts), ranked.tokens)  # for the access log
    return ranked


# ---------------------------------------------------------------------- probes


_NO_BODY = {200: {"description": "OK (no body)", "content": {}}}
_UNHEALTHY_TEI = responses(TeiError, 503)
_UNHEALTHY = responses(CohereError, 503)


@probe_router.get("/health", tags=[Dialect.TEI], response_class=Response, responses={**_NO_BODY, **_UNHEALTHY_TEI})
@probe_router.get("/ping", tags=[Dialect.TEI], response_class=Response, responses={**_NO_BODY, **_UNHEALTHY_TEI})
async def health(request: Request) -> Response:
    """200 after a real tiny forward pass, run ahead of the queue (a full queue is not ill health); 503 when the
    model worker is dead or does not answer within its own deadline. For a Kubernetes liveness probe use
    ``/live``; for readiness, ``/ready``."""
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


@probe_router.get("/live", response_class=Response, responses=_NO_BODY)
async def live() -> Response:
    """The process answers (liveness: never depends on load or on the model)."""
    return Response(status_code=200)


@probe_router.get("/ready", responses=_UNHEALTHY)
async def ready(request: Request) -> ReadyResponse:
    """The model is loaded, warmed up, and its worker runs (readiness)."""
    service = _service(request)
    if service.ready and service.alive:
        return ReadyResponse()
    msg = "not ready"
    raise unhealthy(msg)


@probe_router.get("/info", tags=[Dialect.TEI], responses=_UNHEALTHY_TEI)
async def info(request: Request) -> InfoResponse:
    """TEI's field names for the first (default) model, plus the engine's; ``models``: each model served."""
    from ettin_rerank import __version__

    services: dict[str, RerankService] = request.app.state.services
    if not all(service.ready for service in services.values()):
        msg = "not ready"
        raise unhealthy(msg)
    models = [_model_info(service) for service in services.values()]
    first = models[0]
    config = _service(request).config
    return InfoResponse(
        **first.model_dump(include=set(InfoResponse.model_fields) & set(ModelInfo.model_fields)),
        model_id=first.id, max_client_batch_size=config.max_documents, version=__version__, models=models,
    )


def _model_info(service: RerankService) -> ModelInfo:
    engine, batcher, config = service.engine, service.batcher, service.config
    return ModelInfo(
        id=config.name, model_path=str(engine.model_path), model_dtype=str(engine.dtype).removeprefix("torch."),
        model_device=str(engine.device), runtime=engine.runtime, attention=engine.attention,
        max_input_length=engine.model_max_length,
        max_batch_tokens=batcher.max_batch_tokens, max_batch_pairs=batcher.max_batch_pairs,
        max_queued_tokens=batcher.max_queued_tokens, max_tokens_per_doc=config.max_tokens_per_doc,
        long_document_strategy=engine.defaults.long_document_strategy, calibrated=engine.calibration is not None,
        memory_bytes=service.memory_bytes,
    )


@probe_router.get("/v1/models")
@probe_router.get("/models")
async def models(request: Request) -> ModelList:
    """The models served, as infinity's and vLLM's ``/models`` list them (the first is the default)."""
    services: dict[str, RerankService] = request.app.state.services
    return ModelList(data=[ModelCard(id=name, root=str(service.engine.model_path) if service.engine else name,
                                     max_model_len=service.engine.model_max_length if service.engine else None)
                           for name, service in services.items()])


_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


@probe_router.get("/metrics", response_class=Response, responses={200: {
    "description": "Prometheus text format", "content": {_PROMETHEUS: {"schema": {"type": "string"}}}}})
async def metrics(request: Request) -> Response:
    """Prometheus text format (rendered off the event loop)."""
    return Response(await asyncio.to_thread(_service(request).metrics.render), media_type=_PROMETHEUS)


@probe_router.get("/")
async def root() -> RootResponse:
    """Where to look: the API documentation, the model and limits, the probes."""
    from ettin_rerank import __version__

    return RootResponse(version=__version__)


# ---------------------------------------------------------------------- helpers


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
    except RecursionError:
        msg = "malformed JSON body: nested too deeply"
        raise ApiError(dialect_of(request).invalid_status, msg) from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, an integer of over 4,300 digits
        msg = f"malformed JSON body: {error}"
        raise ApiError(dialect_of(request).invalid_status, msg) from None


def _parse(model: type[RequestModel], body: Any, request: Request) -> RequestModel:
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise ApiError(dialect_of(request).invalid_status, validation_message(list(error.errors()))) from None
