"""Per gateway request: the request id, the reply wrapper, the access line.

The request id is the request's audit event id (``evt_...``, made by the
gateway, time-ordered and unique). It goes back to the client in
``X-Igris-Request-Id`` (on refusals too), into the access line and into
every log line written while the request runs, so one id leads from a
support request to the log line and to the audit event. A client-supplied
id is never used: audit event ids must be unique (the store ignores a
repeated id), and a client choosing its own could hide its events. A
client's ``X-Request-Id`` passes upstream untouched like any other header;
the upstream's own ``X-Igris-Request-Id``, if it sends one, is dropped.

The access line (logger ``igris_mw.access``, level INFO) holds the request
id, connection, API key id, user, HTTP method, path (never the query
string), outcome, status and latency: never a header value other than the
end user's id, never a body, never a credential. ``_ops.logs`` turns it
into JSON for ``serve --log-format json``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable
from typing import Any, Final

from .._asgi import Message, Send

__all__ = ["REQUEST_ID_HEADER", "Reply", "access_line", "access_log", "current_request_id"]

REQUEST_ID_HEADER: Final = b"x-igris-request-id"
_EVENT_STREAM: Final = b"text/event-stream"

access_log = logging.getLogger("igris_mw.access")

# Read by the JSON log formatter: every line logged during a request carries its id.
current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "igris_request_id", default=None
)


class Reply:
    """The client's ``send``, adding ``X-Igris-Request-Id`` to the response start.

    Also notes when the response started (``started_at``, a ``perf_counter``
    value: for a forwarded request, about when the upstream's headers came),
    how far it got (``status``, 0 before the start; ``ended``), so a revoked
    request can be ended properly whatever point it was cut at, and, when
    ``metrics`` is given, counts an event-stream response as an open stream
    until ``close()``. With ``lock`` set (another request may write onto
    this stream: legacy SSE), each message is sent holding it.
    """

    __slots__ = (
        "_metrics",
        "_send",
        "ended",
        "lock",
        "request_id",
        "started_at",
        "status",
        "stream",
    )

    def __init__(self, send: Send, request_id: str, metrics: Any = None) -> None:
        self._send = send
        self._metrics = metrics
        self.request_id = request_id
        self.started_at: float | None = None
        self.stream = False
        self.status = 0
        self.ended = False
        self.lock: asyncio.Lock | None = None

    def __call__(self, message: Message) -> Awaitable[None]:
        # Not a coroutine itself: hands back the server's own awaitable, one
        # frame fewer per chunk.
        if message["type"] == "http.response.start":
            message = self._start(message)
        elif not message.get("more_body", False):
            self.ended = True
        if self.lock is None:
            return self._send(message)
        return self._locked(message)

    def unlocked(self, message: Message) -> Awaitable[None]:
        """Send ``message`` without taking ``lock`` (ending a revoked request)."""
        if message["type"] == "http.response.start":
            message = self._start(message)
        return self._send(message)

    def _start(self, message: Message) -> Message:
        self.status = message["status"]
        self.started_at = time.perf_counter()
        headers = [h for h in message.get("headers", ()) if h[0].lower() != REQUEST_ID_HEADER]
        headers.append((REQUEST_ID_HEADER, self.request_id.encode()))
        if self._metrics is not None and _is_event_stream(headers):
            self.stream = True
            self._metrics.stream_opened()
        return {**message, "headers": headers}

    async def _locked(self, message: Message) -> None:
        assert self.lock is not None
        async with self.lock:
            await self._send(message)

    async def inject(self, body: bytes) -> bool:
        """Write ``body`` into this open response (between the relay's chunks)."""
        if self.status == 0 or self.ended:
            return False
        try:
            await self({"type": "http.response.body", "body": body, "more_body": True})
        except (OSError, RuntimeError):
            return False
        return True

    def close(self) -> None:
        """The response is over: an open stream is no longer counted."""
        if self.stream:
            self.stream = False
            self._metrics.stream_closed()


def _is_event_stream(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name.lower() == b"content-type":
            return bytes(value).lower().startswith(_EVENT_STREAM)
    return False


def access_line(
    request_id: str,
    *,
    connection: str | None,
    api_key_id: str | None,
    user: str | None,
    method: str,
    path: str,
    outcome: str,
    status: int,
    latency_ms: float,
) -> None:
    """Log one access line (when ``igris_mw.access`` is enabled for INFO)."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    fields = {
        "requestId": request_id,
        "connection": connection,
        "apiKeyId": api_key_id,
        "user": user,
        "method": method,
        "path": path[:2048],
        "outcome": outcome,
        "status": status,
        "latencyMs": latency_ms,
    }
    access_log.info(
        "%s %s %r %s key=%s user=%r %s %d %.3fms",
        request_id,
        method,
        fields["path"],
        connection,
        api_key_id,
        user,
        outcome,
        status,
        latency_ms,
        extra={"igris_access": fields},
    )
