"""Errors in each API family's own words: one table from cause to answer, one body per dialect.

The dialect is the matched route's (TEI's ``ErrorResponse`` in ``router/src/http/types.rs``): a route tagged
``tei`` answers ``{"error", "error_type"}`` and 422 for invalid input, as TEI does; every other route, and a path
that no route matches, answers ``{"message", "detail"}`` and 400, which Cohere and Jina clients read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.routing import BaseRoute

from ettin_rerank.serving.batcher import BatcherStoppedError, DeadlineExceededError, QueueFullError, TooLargeError

if TYPE_CHECKING:
    from ettin_rerank.serving.service import RerankService

UNHEALTHY_RETRY_AFTER_S = 5
"""The ``Retry-After`` of a 503 while the model is not ready or its worker is gone."""


class Dialect(str, Enum):
    """How an API family writes an error."""

    COHERE = "cohere"
    TEI = "tei"

    @property
    def invalid_status(self) -> int:
        """The status of a request that fails validation."""
        return 422 if self is Dialect.TEI else 400

    @property
    def too_many_status(self) -> int:
        """The status of a request over ``max_documents``: invalid for TEI, too large for Cohere."""
        return 422 if self is Dialect.TEI else 413


class ApiError(Exception):
    """An answer other than 200, written in the dialect of the route that gives it.

    Args:
        status: The HTTP status.
        message: What went wrong, for the client.
        error_type: TEI's ``error_type`` (Cohere's body has none).
        retry_after: Seconds for the ``Retry-After`` header (``None``: no header).
    """

    def __init__(self, status: int, message: str, error_type: str = "validation", retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.retry_after = retry_after


def unhealthy(message: str) -> ApiError:
    """503 while the model cannot answer."""
    return ApiError(503, message, "unhealthy", retry_after=UNHEALTHY_RETRY_AFTER_S)


@dataclass(frozen=True)
class Answer:
    """What a service error becomes.

    Attributes:
        status: The HTTP status (``None``: the dialect's status for invalid input).
        error_type: TEI's ``error_type``.
        rejected: The ``ettin_rejected_total`` reason it counts under (``None``: not counted).
        prefix: Put before the error's own message.
        retry_after: The ``Retry-After`` seconds, from the error and the service (``None``: no header).
    """

    status: int | None
    error_type: str
    rejected: str | None = None
    prefix: str = ""
    retry_after: Callable[[Any, RerankService], int | None] = lambda error, service: None


SERVICE_ERRORS: tuple[tuple[type[Exception], Answer], ...] = (
    (TooLargeError, Answer(413, "validation", rejected="too_large")),  # before ValueError, which it is
    (ValueError, Answer(None, "validation")),
    (TypeError, Answer(None, "validation")),
    (QueueFullError, Answer(429, "overloaded", rejected="queue_full", prefix="Model is overloaded: ",
                            retry_after=lambda error, service: error.retry_after_s)),
    (DeadlineExceededError, Answer(503, "overloaded", rejected="deadline",
                                   retry_after=lambda error, service: service.batcher.retry_after_s())),
    (BatcherStoppedError, Answer(503, "unhealthy", retry_after=lambda error, service: UNHEALTHY_RETRY_AFTER_S)),
)
"""Every error :meth:`RerankService.rerank` may raise on purpose, in ``except`` order; anything else is a 500."""

SERVICE_ERROR_TYPES = tuple(kind for kind, _ in SERVICE_ERRORS)


def service_error(error: Exception, dialect: Dialect, service: RerankService) -> ApiError:
    """The answer to ``error``, one of :data:`SERVICE_ERROR_TYPES`, counted when it is a rejection."""
    answer = next(answer for kind, answer in SERVICE_ERRORS if isinstance(error, kind))
    if answer.rejected is not None:
        service.metrics.rejected.labels(answer.rejected).inc()
    return ApiError(answer.status or dialect.invalid_status, f"{answer.prefix}{error}", answer.error_type,
                    retry_after=answer.retry_after(error, service))


def validation_message(errors: list[dict[str, Any]]) -> str:
    """The first of pydantic's errors, naming the field: ``"top_n: Input should be a valid integer"``."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"malformed JSON body: {first.get('ctx', {}).get('error', first.get('msg'))}"
    location = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    return f"{location or 'body'}: {first.get('msg', 'invalid')}"


def route_dialect(route: BaseRoute | None) -> Dialect:
    """The dialect of ``route``: TEI's if it is tagged ``tei``, else Cohere's (also for no route, a 404)."""
    return Dialect.TEI if Dialect.TEI in getattr(route, "tags", ()) else Dialect.COHERE


def dialect_of(request: Request) -> Dialect:
    """The dialect of the route that routing matched for ``request``."""
    return route_dialect(request.scope.get("route"))


def _cohere_body(error: ApiError) -> dict[str, str]:
    return {"message": error.message, "detail": error.message}  # Cohere reads message, Jina clients detail


def _tei_body(error: ApiError) -> dict[str, str]:
    return {"error": error.message, "error_type": error.error_type}


_BODIES: dict[Dialect, Callable[[ApiError], dict[str, str]]] = {Dialect.COHERE: _cohere_body, Dialect.TEI: _tei_body}


def error_response(error: ApiError, dialect: Dialect) -> JSONResponse:
    """``error`` as ``dialect`` writes it, with ``Retry-After`` and, for 401, ``WWW-Authenticate``."""
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else {}
    if error.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(_BODIES[dialect](error), status_code=error.status, headers=headers)
