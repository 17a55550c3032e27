"""The one JSON response writer: errors and small JSON bodies for the gateway, proxy and API.

Every JSON answer igris-mw writes itself (a refusal on the gateway path, a
forwarding error, a management API response, ``/healthz``) goes through
``send_json``, so the headers (``no-store``, ``nosniff``), the compact
encoding and the error shape ``{"error": {"code", "message", "field"?}}``
cannot drift apart between them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

from ._asgi import Send
from ._errors import IgrisError, ValidationError

__all__ = [
    "COMMON_HEADERS",
    "error_body",
    "error_headers",
    "for_anonymous",
    "send_error",
    "send_json",
]

# Nothing igris-mw answers itself may be cached or sniffed into another type.
COMMON_HEADERS: Final = ((b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"))
_WWW_AUTHENTICATE: Final = (b"www-authenticate", b'Bearer realm="igris-mw"')


def error_body(exc: IgrisError) -> dict[str, Any]:
    """``{"error": {"code", "message"}}``, plus ``field`` for a validation error."""
    body: dict[str, Any] = exc.to_json()
    if isinstance(exc, ValidationError):
        body["error"]["field"] = exc.field
    return body


_ANONYMOUS_MESSAGES: Final = {
    502: "the upstream is unreachable or broken",
    503: "the gateway's store or crypto provider is unavailable; try again shortly",
    504: "the upstream did not answer in time",
}


def for_anonymous(exc: IgrisError) -> IgrisError:
    """``exc`` as a caller who has not authenticated may see it.

    A 5xx message may name a store path, a database host, a Vault address or
    an upstream (useful to an operator, who finds it in the log); such a
    caller gets the status, the code, ``Retry-After`` and a generic sentence.
    """
    if exc.status < 500:
        return exc
    safe = IgrisError(_ANONYMOUS_MESSAGES.get(exc.status, "internal error"), code=exc.code)
    safe.status = exc.status
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        safe.retry_after = retry_after  # type: ignore[attr-defined]
    return safe


def error_headers(exc: IgrisError) -> list[tuple[bytes, bytes]]:
    """The headers an error answer carries: a challenge on 401, ``Retry-After`` if known."""
    headers: list[tuple[bytes, bytes]] = []
    if exc.status == 401:
        headers.append(_WWW_AUTHENTICATE)
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers.append((b"retry-after", str(int(retry_after)).encode()))
    return headers


async def send_json(
    send: Send, status: int, payload: Any, headers: Sequence[tuple[bytes, bytes]] = ()
) -> bool:
    """Send a complete response: ``payload`` as compact JSON (bytes: already JSON; None: empty).

    Returns:
        False when the client was already gone (the server raised ``OSError``).
    """
    out = [*COMMON_HEADERS, *headers]
    if payload is None:
        body = b""
    else:
        body = (
            payload
            if isinstance(payload, bytes)
            else json.dumps(payload, separators=(",", ":")).encode()
        )
        out.append((b"content-type", b"application/json"))
        out.append((b"content-length", str(len(body)).encode()))
    try:
        await send(
            {"type": "http.response.start", "status": status, "headers": out, "trailers": False}
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})
    except OSError:
        return False
    return True


async def send_error(
    send: Send, exc: IgrisError, headers: Sequence[tuple[bytes, bytes]] = ()
) -> bool:
    """Send ``exc`` as its status and JSON error body (see ``send_json`` for the result)."""
    return await send_json(send, exc.status, error_body(exc), [*error_headers(exc), *headers])
