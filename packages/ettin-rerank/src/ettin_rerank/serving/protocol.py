"""uvicorn's HTTP/1.1 protocol (h11) with the deadlines uvicorn does not have: a client must send its request line
and headers within ``header_timeout_s`` of connecting (or of its first byte on a kept-alive connection), else it
gets 408 and the connection closes; and after an early answer (413 for a body over the limit) the rest of the body
is read and dropped for a short while only, then the connection closes. Header size is h11's bound
(``h11_max_incomplete_event_size``, 16 KiB), the body deadline and size limit are the app's
(:mod:`~ettin_rerank.serving.limits`). So a slow client (slowloris) holds a connection for seconds, not forever.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

DRAIN_BYTES = 1 << 20
"""After an early answer, at most this much of the rest of the body is read (and dropped) before closing."""
DRAIN_S = 2.0
"""... and for at most this long, so that the client reads the answer before the connection is reset."""
HEADER_TIMEOUT_BODY = {"message": "request headers not received in time", "detail": "request headers not received "
                       "in time"}


class DeadlineH11Protocol(H11Protocol):
    """:class:`uvicorn.protocols.http.h11_impl.H11Protocol` with a header deadline and a bounded drain."""

    header_timeout_s: float = 10.0
    """Set on a subclass by :func:`protocol_with`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._got_bytes = False
        self._drain_until = 0.0
        self._drained = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._drain_until:
            if self.conn.their_state is h11.SEND_BODY:  # the answer is out; the client is still sending its body
                self._drained += len(data)
                if self._drained > DRAIN_BYTES or time.monotonic() > self._drain_until:
                    self.transport.close()
                    return
            else:
                self._drain_until = 0.0
        if self.conn.their_state is h11.IDLE:
            self._got_bytes = True
            if self._header_timer is None:
                self._arm_header_timer()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        early = self.conn.their_state is h11.SEND_BODY  # answered before the body was in (413, 408, 401)
        super().on_response_complete()
        if early and not self.transport.is_closing():
            self._drain_until = time.monotonic() + DRAIN_S
            self._drained = 0
            self.loop.call_later(DRAIN_S, self._close_if_still_draining)
        self._got_bytes = False

    def _close_if_still_draining(self) -> None:
        if self._drain_until and self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            self.transport.close()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self._got_bytes:  # a request was started and not finished: say why before closing
            body = json.dumps(HEADER_TIMEOUT_BODY).encode()
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n"
                                 + body)
        self.transport.close()


def protocol_with(header_timeout_s: float) -> type[DeadlineH11Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with this header deadline."""
    return type("DeadlineH11Protocol", (DeadlineH11Protocol,), {"header_timeout_s": header_timeout_s})
