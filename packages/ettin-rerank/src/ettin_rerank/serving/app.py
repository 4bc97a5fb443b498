"""``create_app(config)``: the rerank server as a FastAPI app that Cohere, Jina, TEI and infinity clients talk to.

Routes: ``POST /v2/rerank`` (Cohere v2), ``POST /v1/rerank`` (Cohere v1 and Jina), ``POST /rerank`` (TEI with
``texts``, infinity with ``documents``), ``POST /ettin/v1/rerank`` (this project's own, for the adapters' remote
mode); ``GET /health`` (and ``/ping``: a real tiny forward pass), ``/live``, ``/ready``, ``/info``, ``/metrics``.
Errors come in each family's own shape: ``{"message", "detail"}`` for Cohere and Jina, ``{"error", "error_type"}``
for TEI; overload is 429 and a request that waited too long 503, both with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ettin_rerank.serving.batcher import BatcherStoppedError, DeadlineExceededError, QueueFullError, TooLargeError
from ettin_rerank.serving.config import ServerConfig
from ettin_rerank.serving.schemas import (
    CohereV1Request,
    CohereV2Request,
    InfinityRequest,
    NativeRequest,
    TeiRequest,
)
from ettin_rerank.serving.service import Ranked, RerankService

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/ping", "/live", "/ready", "/metrics"})
"""Reachable without the API key (as in TEI): probes and scraping."""


class ApiError(Exception):
    """An answer other than 200: status, message, TEI-style error type, optional ``Retry-After``."""

    def __init__(self, status: int, message: str, error_type: str = "validation", retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.retry_after = retry_after


def _family(path: str) -> str:
    return "tei" if path.rstrip("/") in ("/rerank", "/health", "/ping", "/info") else "cohere"


def _error_response(path: str, error: ApiError) -> JSONResponse:
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else {}
    if error.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if _family(path) == "tei":
        body: Any = {"error": error.message, "error_type": error.error_type}
    else:
        body = {"message": error.message, "detail": error.message}  # Cohere reads message, Jina clients detail
    return JSONResponse(body, status_code=error.status, headers=headers)


def _validation_message(errors: list[dict[str, Any]]) -> str:
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"malformed JSON body: {first.get('ctx', {}).get('error', first.get('msg'))}"
    location = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    return f"{location or 'body'}: {first.get('msg', 'invalid')}"


def _invalid_status(path: str) -> int:
    return 422 if _family(path) == "tei" else 400


def create_app(config: ServerConfig | None = None, *, engine: Any = None) -> FastAPI:
    """The server app. ``engine``: a :class:`~ettin_rerank.Reranker` already loaded (else ``config.model`` is
    loaded when the app starts). Run it with uvicorn, mount it, or serve it on Ray (``serving.ray``)."""
    config = config or ServerConfig()
    service = RerankService(config, engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.to_thread(service.start)
        yield
        await asyncio.to_thread(service.stop)

    app = FastAPI(title="ettin-rerank", lifespan=lifespan)
    app.state.service = service

    # ------------------------------------------------------------------ errors, auth, limits, metrics

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        return _error_response(request.url.path, error)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        path = request.url.path
        return _error_response(path, ApiError(_invalid_status(path), _validation_message(list(error.errors()))))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error_response(request.url.path, ApiError(error.status_code, str(error.detail), "http"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s", request.url.path)
        return _error_response(request.url.path, ApiError(500, f"internal error ({type(error).__name__})", "backend"))

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = request.url.path
        start = time.perf_counter()
        response = _refuse(request, config)
        if response is None:
            response = await call_next(request)
        if path not in ("/metrics", "/live"):
            service.metrics.requests.labels(path, str(response.status_code)).inc()
            service.metrics.request_seconds.labels(path).observe(time.perf_counter() - start)
        return response

    def _refuse(request: Request, config: ServerConfig) -> Response | None:
        """Auth and body size, before anything is read."""
        path = request.url.path
        if config.api_key is not None and path not in OPEN_PATHS:
            given = request.headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
                service.metrics.rejected.labels("auth").inc()
                return _error_response(path, ApiError(401, "missing or wrong API key (Authorization: Bearer <key>)",
                                                      "unauthorized"))
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > config.max_body_bytes:
            service.metrics.rejected.labels("too_large").inc()
            return _error_response(path, ApiError(413, f"request body of {length} bytes is over the limit of "
                                                       f"{config.max_body_bytes} bytes", "payload_too_large"))
        return None

    # ------------------------------------------------------------------ the common path

    async def run(request: Request, query: str, texts: list[str], *, options: dict[str, Any], top_k: int | None,
                  score_threshold: float | None = None) -> Ranked:
        path = request.url.path
        if not texts:
            raise ApiError(400, "documents must not be empty", "empty")
        if len(texts) > config.max_documents:
            service.metrics.rejected.labels("too_large").inc()
            status = 422 if _family(path) == "tei" else 413
            raise ApiError(status, f"{len(texts)} documents is over the limit of {config.max_documents} per "
                                   "request; split the request", "validation")
        if not service.ready or not service.alive:
            raise ApiError(503, "the model is not ready", "unhealthy", retry_after=5)
        timeout = _timeout(request, config)
        work = asyncio.ensure_future(service.rerank(query, texts, options=options, top_k=top_k,
                                                    score_threshold=score_threshold, timeout_s=timeout))
        try:
            return await _unless_disconnected(request, work)
        except TooLargeError as error:
            service.metrics.rejected.labels("too_large").inc()
            raise ApiError(413, str(error), "validation") from None
        except (ValueError, TypeError) as error:
            raise ApiError(_invalid_status(path), str(error)) from None
        except QueueFullError as error:
            service.metrics.rejected.labels("queue_full").inc()
            raise ApiError(429, f"Model is overloaded: {error}", "overloaded",
                           retry_after=error.retry_after_s) from None
        except DeadlineExceededError as error:
            service.metrics.rejected.labels("deadline").inc()
            raise ApiError(503, str(error), "overloaded", retry_after=service.batcher.retry_after_s()) from None
        except BatcherStoppedError as error:
            raise ApiError(503, str(error), "unhealthy", retry_after=5) from None

    # ------------------------------------------------------------------ routes

    @app.post("/v2/rerank")
    async def cohere_v2(body: CohereV2Request, request: Request) -> dict[str, Any]:
        """Cohere v2 rerank."""
        _check_model(body.model, config)
        texts, originals = _document_texts(body.documents, body.rank_fields)
        ranked = await run(request, body.query, texts, top_k=_top_n(body.top_n),
                           options=_options(config, max_tokens_per_doc=body.max_tokens_per_doc))
        results = [_cohere_result(r, originals, bool(body.return_documents)) for r in ranked.results]
        return {"id": str(uuid.uuid4()), "results": results,
                "meta": {"api_version": {"version": "2", "is_experimental": False},
                         "billed_units": {"search_units": 1}, "tokens": {"input_tokens": ranked.tokens}}}

    @app.post("/v1/rerank")
    async def cohere_v1_and_jina(body: CohereV1Request, request: Request) -> dict[str, Any]:
        """Cohere v1 and Jina rerank (``document`` returned unless ``return_documents`` is false)."""
        _check_model(body.model, config)
        texts, originals = _document_texts(body.documents, body.rank_fields)
        ranked = await run(request, body.query, texts, top_k=_top_n(body.top_n), options=_options(config))
        keep = body.return_documents is not False
        return {"id": str(uuid.uuid4()), "model": config.name,
                "results": [_cohere_result(r, originals, keep) for r in ranked.results],
                "usage": {"total_tokens": ranked.tokens, "prompt_tokens": ranked.tokens},
                "meta": {"api_version": {"version": "1"}, "billed_units": {"search_units": 1}}}

    @app.post("/rerank")
    async def tei_and_infinity(request: Request) -> Any:
        """TEI rerank (a body with ``texts``: a bare list sorted by score), or infinity (``documents``)."""
        body = await _json_body(request)
        if isinstance(body, dict) and "texts" not in body and "documents" in body:
            infinity = _parse(InfinityRequest, body, request)
            _check_model(infinity.model, config)
            texts, _ = _document_texts(infinity.documents, None)
            ranked = await run(request, infinity.query, texts, top_k=_top_n(infinity.top_n),
                               options=_options(config, activation="none" if infinity.raw_scores else None))
            results = [{"relevance_score": r.score, "index": r.index,
                        **({"document": texts[r.index]} if infinity.return_documents else {})}
                       for r in ranked.results]
            return {"object": "rerank", "results": results, "model": config.name, "id": f"ettin-{uuid.uuid4()}",
                    "usage": {"prompt_tokens": ranked.tokens, "total_tokens": ranked.tokens},
                    "created": int(time.time())}
        tei = _parse(TeiRequest, body, request)
        texts, _ = _document_texts(tei.texts, None, field="texts", status=422)
        extra = {"long_document_strategy": "truncate"} if tei.truncate else {}
        if tei.truncation_direction:
            extra["truncation_direction"] = tei.truncation_direction.lower()
        ranked = await run(request, tei.query, texts, top_k=None,
                           options=_options(config, activation="none" if tei.raw_scores else None, **extra))
        return [{"index": r.index, "score": r.score, **({"text": texts[r.index]} if tei.return_text else {})}
                for r in ranked.results]

    @app.post("/ettin/v1/rerank")
    async def native(body: NativeRequest, request: Request) -> dict[str, Any]:
        """Every engine option in, everything the engine knows out (the adapters' remote mode)."""
        ranked = await run(request, body.query, body.documents, top_k=body.top_k, score_threshold=body.score_threshold,
                           options={"max_tokens_per_doc": config.max_tokens_per_doc, **body.options})
        return {"model": config.name, "usage": {"total_tokens": ranked.tokens},
                "results": [{"index": r.index, "score": r.score, "logit": r.logit, "num_tokens": r.num_tokens,
                             "num_windows": r.num_windows, "truncated": r.truncated,
                             "best_window": vars(r.best_window)} for r in ranked.results]}

    @app.get("/health")
    @app.get("/ping")
    async def health() -> Response:
        """200 after a real tiny forward pass; 503 when the model worker is dead or does not answer."""
        if not service.ready or not service.alive:
            return _error_response("/health", ApiError(503, "unhealthy", "unhealthy", retry_after=5))
        try:
            await service.check()
        except Exception as error:  # any failure of the pass is what health reports
            logger.warning("health check failed: %s", error)
            return _error_response("/health", ApiError(503, "unhealthy", "unhealthy", retry_after=5))
        return Response(status_code=200)

    @app.get("/live")
    async def live() -> Response:
        """The process answers (liveness)."""
        return Response(status_code=200)

    @app.get("/ready")
    async def ready() -> Response:
        """The model is loaded, warmed up, and its worker runs (readiness)."""
        if service.ready and service.alive:
            return JSONResponse({"status": "ready"})
        return _error_response("/ready", ApiError(503, "not ready", "unhealthy", retry_after=5))

    @app.get("/info")
    async def info() -> dict[str, Any]:
        """TEI's field names, plus the engine's."""
        from ettin_rerank import __version__

        engine = service.engine
        return {
            "model_id": config.name, "model_path": str(engine.model_path), "model_type": "reranker",
            "model_dtype": str(engine.dtype).removeprefix("torch."), "model_device": str(engine.device),
            "attention": engine.attention, "max_input_length": engine.model_max_length,
            "max_batch_tokens": service.batcher.max_batch_tokens, "max_batch_requests": None,
            "max_batch_pairs": service.batcher.max_batch_pairs, "max_queued_tokens": service.batcher.max_queued_tokens,
            "max_client_batch_size": config.max_documents, "max_concurrent_requests": None,
            "max_tokens_per_doc": config.max_tokens_per_doc, "auto_truncate": False,
            "long_document_strategy": engine.defaults.long_document_strategy, "version": __version__,
        }

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text format."""
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


# ---------------------------------------------------------------------- helpers


def _timeout(request: Request, config: ServerConfig) -> float:
    header = request.headers.get("x-request-timeout")
    try:
        asked = float(header) if header is not None else config.request_timeout_s
    except ValueError:
        raise ApiError(400, f"X-Request-Timeout must be a number of seconds, got {header!r}") from None
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
    raise ApiError(499, "the client closed the connection", "cancelled")


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ApiError(_invalid_status(request.url.path), f"malformed JSON body: {error}") from None


def _parse(model: type[BaseModel], body: Any, request: Request) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise ApiError(_invalid_status(request.url.path), _validation_message(list(error.errors()))) from None


def _check_model(name: str | None, config: ServerConfig) -> None:
    if config.strict_model_name and name not in (None, config.name):
        raise ApiError(404, f"model {name!r} is not served here; this server serves {config.name!r}", "not_found")


def _top_n(top_n: int | None) -> int | None:
    """``null``, absent, 0 and negative mean every document (vLLM's convention)."""
    return top_n if top_n is not None and top_n > 0 else None


def _options(config: ServerConfig, **given: Any) -> dict[str, Any]:
    options = {"activation": config.activation, "max_tokens_per_doc": config.max_tokens_per_doc}
    options.update({name: value for name, value in given.items() if value is not None})
    return options


def _document_texts(documents: list[Any], rank_fields: list[str] | None, field: str = "documents",
                    status: int = 400) -> tuple[list[str], list[Any]]:
    """The text of each document: a string, or an object's ``text`` (or ``rank_fields`` as ``key: value`` lines)."""
    texts = []
    for position, document in enumerate(documents):
        if isinstance(document, str):
            texts.append(document)
        elif isinstance(document, dict) and rank_fields:
            missing = [f for f in rank_fields if f not in document]
            if missing:
                raise ApiError(status, f"{field}[{position}] has no field {missing[0]!r} named in rank_fields")
            texts.append("\n".join(f"{f}: {document[f]}" for f in rank_fields))
        elif isinstance(document, dict) and isinstance(document.get("text"), str):
            texts.append(document["text"])
        else:
            got = type(document).__name__ if not isinstance(document, dict) else "an object without a string 'text'"
            raise ApiError(status, f"{field}[{position}] must be a string or an object with a string 'text', got {got}")
    return texts, documents


def _cohere_result(result: Any, originals: list[Any], with_document: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"index": result.index, "relevance_score": result.score}
    if with_document:
        original = originals[result.index]
        row["document"] = original if isinstance(original, dict) else {"text": original}
    return row

