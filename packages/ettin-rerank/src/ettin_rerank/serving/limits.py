"""What a request body may cost, enforced as it arrives: a pure ASGI ``receive`` wrapper that counts the bytes of
every framing (``Content-Length`` or chunked: the count is the same) and answers 413 as soon as the total passes
``max_body_bytes``, and 408 when the body is not complete within ``body_timeout_s`` of the request. Both are raised
from ``receive`` as :class:`BodyLimitError`, an ``HTTPException`` that the app's handlers write in the route's own
error shape (FastAPI lets an ``HTTPException`` raised while it reads the body through unchanged). After the body
is complete, ``receive`` is passed through untouched (it then only reports a disconnect).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimitError(StarletteHTTPException):
    """A body over the size limit (413) or too slow to arrive (408); ``reason`` is the rejection metric's label."""

    def __init__(self, status_code: int, detail: str, reason: str) -> None:
        super().__init__(status_code=status_code, detail=detail, headers={"Connection": "close"}
                         if status_code == 408 else None)
        self.reason = reason


def too_large(limit: int, size: int | None = None) -> BodyLimitError:
    """The 413 for a body over ``limit`` bytes (``size``: its declared ``Content-Length``)."""
    of = f" of {size} bytes" if size is not None else ""
    return BodyLimitError(413, f"request body{of} is over the limit of {limit} bytes", "too_large")


class BodyLimits:
    """ASGI middleware: the body size limit and the body deadline (see the module docstring).

    Args:
        app: The app to wrap.
        max_body_bytes: Bytes a body may hold.
        body_timeout_s: Seconds, from the start of the request, by which the whole body must have arrived.
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, body_timeout_s: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.app(scope, _LimitedReceive(receive, self.max_body_bytes,
                                              time.monotonic() + self.body_timeout_s), send)


class _LimitedReceive:
    def __init__(self, receive: Receive, limit: int, deadline: float) -> None:
        self._receive = receive
        self._limit = limit
        self._deadline = deadline
        self._received = 0
        self._complete = False

    async def __call__(self) -> Message:
        if self._complete:
            return await self._receive()
        remaining = self._deadline - time.monotonic()
        try:
            message: dict[str, Any] = await asyncio.wait_for(self._receive(), timeout=max(remaining, 0.001))
        except asyncio.TimeoutError:
            msg = "the request body was not received in time"
            raise BodyLimitError(408, msg, "too_slow") from None
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if self._received > self._limit:
                raise too_large(self._limit)
            self._complete = not message.get("more_body", False)
        else:
            self._complete = True
        return message
