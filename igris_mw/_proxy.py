"""The streaming forwarder: header policy, upstream URL, SSE and the legacy endpoint rewrite.

Interface (used by ``_gateway.py``)::

    fwd = Forwarder(timeout=60.0)          # one per gateway
    await fwd.start()                      # lifespan startup (else lazily on first use)
    target = Target(upstream_url, inject=(("Authorization", "Bearer ..."),))  # cache per connection
    prefix = await read_body_prefix(receive, PEEK_LIMIT)   # optional: peek for the audit
    result = await fwd.forward(scope, receive, send, target, subpath,
                               gateway_prefix="/v1/mcp/<slug>", prefix=prefix)
    # result: status, bytes_in, bytes_out, outcome, error -> the audit event
    await fwd.close()                      # lifespan shutdown

``forward`` always completes the ASGI response itself, errors included (400
for a path that would escape the upstream base, 502 unreachable or broken,
504 no response headers within ``timeout``), and never raises for upstream
or client trouble; it reports what happened in the returned ``ProxyResult``.

``subpath`` is the request's *raw* (still percent-encoded, as in
``scope["raw_path"]``) path after ``/v1/mcp/<slug>``: ``""`` proxies to
``upstreamUrl`` exactly, ``"/x"`` to ``upstreamUrl + "/x"``. Segments that
decode to ``.`` or ``..`` (``%2e%2e`` too, and ``..`` hidden behind an
encoded ``/`` or ``\\``), empty inner segments (``//host``), NUL, CR and LF
are refused with 400 ``bad_request`` rather than normalised: a client has no
business sending them, and a normalisation that differs from the upstream's
is how path confusion starts.

Streams both ways: the request body goes upstream as it arrives (the peeked
prefix first), the response body comes back chunk by chunk, each chunk sent
at once; ``text/event-stream`` is never buffered. ``timeout`` bounds only the
wait for the response headers, never an open stream. A client disconnect,
seen by a task that watches ``receive``, closes the upstream request at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import ssl as ssl_module
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import quote, unquote

import aiohttp
import attrs
import yarl
from multidict import CIMultiDict

from ._errors import BadRequest, IgrisError, UpstreamError, UpstreamTimeout
from ._sse import EndpointRewriter, endpoint_rewrite

__all__ = [
    "ALWAYS_STRIP",
    "HOP_BY_HOP",
    "BodyPrefix",
    "Forwarder",
    "ProxyResult",
    "Target",
    "read_body_prefix",
    "upstream_url",
]

log = logging.getLogger("igris_mw.proxy")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# RFC 9110 7.6.1, plus the legacy Proxy-Connection and Keep-Alive.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Never forwarded upstream: the gateway key, the client's cookies, the gateway's
# own headers (X-Igris-* is matched by prefix), Host (aiohttp derives it from
# the URL), and Expect (the ASGI server already answered 100-continue).
ALWAYS_STRIP = frozenset({"authorization", "cookie", "host", "expect"})
_GATEWAY_HEADER_PREFIX = "x-igris-"
_RESPONSE_STRIP = frozenset({"set-cookie", "set-cookie2"})
# aiohttp would otherwise invent these; a proxy sends only what the client sent.
_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
_SAFE_PATH = "/%:@!$&'()*+,;=-._~"
_SAFE_QUERY = _SAFE_PATH + "?"
_CLIENT_CLOSED_STATUS = 499  # nginx's convention: the client left before the response


@attrs.frozen
class Target:
    """Where and how to forward one connection's requests; build once, cache, reuse.

    Args:
        base_url: the connection's ``upstreamUrl``.
        inject: headers to add (name, value); the values are credentials and
            never appear in a repr.
        strip: extra lower-case header names to remove from the client request
            (the injected names are always removed).

    Raises:
        ValueError: an injected header holds CR, LF or NUL.
    """

    base_url: yarl.URL = attrs.field(converter=yarl.URL)
    inject: tuple[tuple[str, str], ...] = attrs.field(default=(), repr=False)
    strip: frozenset[str] = attrs.field(default=frozenset(), converter=frozenset)
    _drop: frozenset[str] = attrs.field(init=False, repr=False, eq=False)
    _base_path: str = attrs.field(init=False, repr=False, eq=False)
    # The URL for the common request (no subpath, no query), built once, not per request.
    _plain_url: yarl.URL = attrs.field(init=False, repr=False, eq=False)

    @_drop.default
    def _compute_drop(self) -> frozenset[str]:
        for name, value in self.inject:
            if any(c in value or c in name for c in "\r\n\0"):
                # Name the header, not the value: the value is the credential.
                raise ValueError(f"injected header {name!r} holds a line break or NUL")
        return (
            HOP_BY_HOP
            | ALWAYS_STRIP
            | {s.lower() for s in self.strip}
            | {name.lower() for name, _ in self.inject}
        )

    @_base_path.default
    def _compute_base_path(self) -> str:
        return self.base_url.raw_path.rstrip("/")

    @_plain_url.default
    def _compute_plain_url(self) -> yarl.URL:
        return _build_url(self.base_url, self.base_url.raw_path, self.base_url.raw_query_string)

    @property
    def label(self) -> str:
        """The upstream's host[:port], the only part of it an error message shows."""
        host = self.base_url.host or "?"
        port = self.base_url.explicit_port
        return f"{host}:{port}" if port else host


@attrs.frozen
class BodyPrefix:
    """The first bytes of a request body, read before forwarding (for the audit peek).

    ``complete`` is true when ``data`` is the whole body; ``disconnected`` when
    the client left while it was read.
    """

    data: bytes = b""
    complete: bool = False
    disconnected: bool = False


@attrs.define
class ProxyResult:
    """What one ``forward`` did, for the audit event.

    ``outcome`` is ``ok``, ``bad_request``, ``upstream_error``,
    ``upstream_timeout`` or ``client_closed``; ``status`` is what the client
    got (499 when it left before any response).
    """

    status: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    outcome: str = "ok"
    error: IgrisError | None = None


async def read_body_prefix(receive: Receive, limit: int) -> BodyPrefix:
    """Read request body messages until ``limit`` bytes, the end, or a disconnect.

    Pass the result to ``Forwarder.forward(prefix=...)``, which sends it first
    and streams the rest. Reads at most one message past ``limit``.
    """
    parts: list[bytes] = []
    size = 0
    while size < limit:
        message = await receive()
        if message["type"] == "http.disconnect":
            return BodyPrefix(b"".join(parts), complete=False, disconnected=True)
        chunk = message.get("body", b"")
        if chunk:
            parts.append(chunk)
            size += len(chunk)
        if not message.get("more_body", False):
            return BodyPrefix(b"".join(parts), complete=True)
    return BodyPrefix(b"".join(parts), complete=False)


def _segment_escapes(segment: str) -> bool:
    decoded = unquote(segment, errors="strict") if "%" in segment else segment
    if any(c in decoded for c in "\0\r\n"):
        return True
    return any(part in (".", "..") for part in re.split(r"[/\\]", decoded))


def upstream_url(target: Target, subpath: str, query_string: bytes | str = b"") -> yarl.URL:
    """The upstream URL for a raw ``subpath`` and query (the query is appended to upstreamUrl's).

    Raises:
        BadRequest: the subpath would leave the upstream base (dot segments, plain
            or percent-encoded, empty inner segments) or is not valid.
    """
    if not subpath and not query_string:
        return target._plain_url
    base = target.base_url
    if isinstance(query_string, bytes):
        query_string = query_string.decode("latin-1")
    if subpath:
        if not subpath.startswith("/"):
            subpath = "/" + subpath
        segments = subpath[1:].split("/")
        try:
            # The last segment may be empty: "messages/" is a legitimate path.
            bad = any(not s for s in segments[:-1]) or any(_segment_escapes(s) for s in segments)
        except UnicodeDecodeError:
            bad = True
        if bad:
            raise BadRequest("the path is not allowed: it would leave the upstream base")
        path = target._base_path + quote(subpath, safe=_SAFE_PATH)
    else:
        path = base.raw_path
    query = "&".join(q for q in (base.raw_query_string, quote(query_string, safe=_SAFE_QUERY)) if q)
    return _build_url(base, path, query)


def _build_url(base: yarl.URL, path: str, query: str) -> yarl.URL:
    return yarl.URL.build(
        scheme=base.scheme,
        authority=base.raw_authority,
        path=path,
        query_string=query,
        encoded=True,
    )


def _connection_tokens(values: Iterable[str]) -> set[str]:
    return {t.strip().lower() for v in values for t in v.split(",") if t.strip()}


def _request_headers(scope: Scope, target: Target) -> tuple[CIMultiDict[str], bool]:
    """The headers to send upstream, and whether the client announced a body."""
    raw: list[tuple[str, str]] = [
        (name.decode("latin-1").lower(), value.decode("latin-1"))
        for name, value in scope.get("headers", ())
    ]
    drop = target._drop
    named = _connection_tokens(v for n, v in raw if n == "connection")
    if named:
        drop = drop | named
    headers: CIMultiDict[str] = CIMultiDict()
    has_body = False
    for name, value in raw:
        if name == "content-length":
            try:
                has_body = has_body or int(value) > 0
            except ValueError:
                raise BadRequest("the Content-Length header is not a number") from None
        elif name == "transfer-encoding":
            has_body = True
        if name in drop or name.startswith(_GATEWAY_HEADER_PREFIX):
            continue
        headers.add(name, value)
    for name, value in target.inject:
        headers.add(name, value)
    return headers, has_body


def _response_headers(
    resp: aiohttp.ClientResponse, *, rewriting: bool
) -> list[tuple[bytes, bytes]]:
    raw = [(name.lower(), value) for name, value in resp.raw_headers]
    named = {
        t.encode("latin-1")
        for t in _connection_tokens(v.decode("latin-1") for n, v in raw if n == b"connection")
    }
    out = []
    for name, value in raw:
        text = name.decode("latin-1")
        if text in HOP_BY_HOP or text in _RESPONSE_STRIP or name in named:
            continue
        # A rewritten stream changes length; SSE rarely has one, but be exact.
        if rewriting and text == "content-length":
            continue
        out.append((name, value))
    return out


class _ClientGone(Exception):
    """The client disconnected while its request body was being streamed."""


_NO_QUEUE: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)  # never used: the body is whole


class _Exchange:
    """Per-request state shared by ``forward`` and its receive watcher."""

    __slots__ = ("body_queue", "disconnected", "request", "response")

    def __init__(self, *, streams_body: bool) -> None:
        # Small and bounded: the body is streamed, never gathered. Only made
        # when there is a body left to stream (most MCP POSTs fit the peek).
        self.body_queue: asyncio.Queue[bytes | _ClientGone | None] = (
            asyncio.Queue(maxsize=4) if streams_body else _NO_QUEUE
        )
        self.disconnected = asyncio.Event()
        self.request: asyncio.Future[aiohttp.ClientResponse] | None = None
        self.response: aiohttp.ClientResponse | None = None

    async def watch(self, receive: Receive, body_done: bool) -> None:
        """Feed body chunks to the queue, then wait for the client to disconnect."""
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    break
                if body_done:
                    continue
                chunk = message.get("body", b"")
                if chunk:
                    await self.body_queue.put(chunk)
                if not message.get("more_body", False):
                    body_done = True
                    await self.body_queue.put(None)
        except Exception:  # a broken receive is a gone client
            log.debug("receive failed; treating the client as gone", exc_info=True)
        self.disconnected.set()
        if not body_done:
            with contextlib.suppress(asyncio.QueueFull):
                self.body_queue.put_nowait(_ClientGone())
        if self.request is not None and not self.request.done():
            # Still waiting for the response headers: give up on them at once.
            self.request.cancel()
        if self.response is not None:
            # Closing the connection wakes the pending read and tells the upstream.
            self.response.close()

    async def body(self, first: bytes, counter: ProxyResult) -> AsyncIterator[bytes]:
        if first:
            counter.bytes_in += len(first)
            yield first
        while True:
            if self.disconnected.is_set() and self.body_queue.empty():
                raise _ClientGone()
            item = await self.body_queue.get()
            if item is None:
                return
            if isinstance(item, _ClientGone):
                raise item
            counter.bytes_in += len(item)
            yield item


async def _send_error(send: Send, error: IgrisError) -> None:
    body = json.dumps(error.to_json()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _unreachable(target: Target, exc: BaseException) -> UpstreamError:
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        why = "its host name did not resolve"
    elif isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        why = "the TLS handshake failed"
    elif isinstance(exc, aiohttp.ClientConnectorError):
        why = "the connection failed"
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        why = "it closed the connection"
    else:
        why = "its response was broken"
    # Never str(exc): aiohttp's messages may carry the full URL.
    return UpstreamError(f"upstream {target.label} is unreachable or broken: {why}")


class Forwarder:
    """Forwards gateway requests to upstreams over one shared aiohttp session.

    The session keeps no cookies (a shared jar would leak one user's cookies to
    another), never follows redirects (the credential must not travel to a new
    place), never decompresses (bodies pass byte for byte), and ignores proxy
    environment variables.

    Args:
        timeout: seconds to wait for an upstream's response headers; an open
            stream is never cut by it.
        connect_timeout: seconds to wait for a TCP connection (default: ``timeout``).
        limit: connection pool size (0: unbounded).
        limit_per_host: connections per upstream host (0: unbounded).
        ssl: ``True`` verifies upstream TLS with the system CAs; an
            ``ssl.SSLContext`` for private CAs.

    Raises:
        ValueError: a timeout is not positive.
    """

    def __init__(
        self,
        *,
        timeout: float = 60.0,
        connect_timeout: float | None = None,
        limit: int = 0,
        limit_per_host: int = 0,
        keepalive_timeout: float = 30.0,
        ssl: ssl_module.SSLContext | bool = True,
    ) -> None:
        if not timeout > 0 or (connect_timeout is not None and not connect_timeout > 0):
            raise ValueError("timeouts must be positive numbers of seconds")
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout) if connect_timeout else self.timeout
        self._limit = limit
        self._limit_per_host = limit_per_host
        self._keepalive = keepalive_timeout
        self._ssl = ssl
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Create the shared session (call from the running loop, e.g. lifespan startup)."""
        if self._session is None or self._session.closed:
            self._session = self._new_session()

    async def close(self) -> None:
        """Close the session and its pooled connections."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> Forwarder:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _new_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._limit,
            limit_per_host=self._limit_per_host,
            keepalive_timeout=self._keepalive,
            ssl=self._ssl,
        )
        return aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trust_env=False,
            # No total/read limit: an SSE stream may stay open for hours.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout),
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            raise_for_status=False,
        )

    async def forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        target: Target,
        subpath: str,
        *,
        gateway_prefix: str,
        prefix: BodyPrefix | None = None,
    ) -> ProxyResult:
        """Proxy one HTTP request to ``target`` and stream the response back.

        Args:
            scope, receive, send: the ASGI request; the response is always
                completed here, errors included.
            target: the connection's upstream and headers.
            subpath: the raw path after ``/v1/mcp/<slug>`` (``""`` or ``/...``).
            gateway_prefix: the path clients use for this connection
                (root_path + ``/v1/mcp/<slug>``), for the legacy endpoint rewrite.
            prefix: the body bytes already read with ``read_body_prefix``.

        Returns:
            What happened, for the audit event; never raises for upstream or
            client trouble.
        """
        if self._session is None or self._session.closed:
            self._session = self._new_session()
        result = ProxyResult()
        try:
            url = upstream_url(target, subpath, scope.get("query_string", b""))
            headers, has_body = _request_headers(scope, target)
        except BadRequest as exc:
            return await self._fail(send, result, exc, "bad_request")
        if prefix is None and not has_body and scope.get("http_version") not in ("1.0", "1.1"):
            # HTTP/2 and 3 may carry a body with neither header: look at the first message.
            prefix = await read_body_prefix(receive, 1)
        prefix = prefix or BodyPrefix()
        if prefix.disconnected:
            result.status, result.outcome = _CLIENT_CLOSED_STATUS, "client_closed"
            return result

        body_done = prefix.complete or (not has_body and not prefix.data)
        ex = _Exchange(streams_body=not body_done)
        watcher = asyncio.ensure_future(ex.watch(receive, body_done))
        request: asyncio.Future[aiohttp.ClientResponse] | None = None
        try:
            data: Any = None
            if not body_done:
                data = ex.body(prefix.data, result)
            elif prefix.data:
                data = prefix.data
                result.bytes_in = len(prefix.data)
            if not isinstance(data, AsyncIterator):
                # aiohttp states the true length of a body it has whole.
                headers.popall("content-length", None)
            request = asyncio.ensure_future(
                self._session.request(
                    scope["method"],
                    url,
                    headers=headers,
                    data=data,
                    allow_redirects=False,
                )
            )
            # The watcher cancels the request if the client leaves first: cheaper on
            # every request than asyncio.wait() on both (a waiter and four callbacks).
            ex.request = request
            timer = asyncio.timeout(self.timeout)
            try:
                async with timer:
                    resp = await request
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not ex.disconnected.is_set() or (task is not None and task.cancelling()):
                    raise
                result.status, result.outcome = _CLIENT_CLOSED_STATUS, "client_closed"
                return result
            except (aiohttp.ClientError, OSError, _ClientGone) as exc:  # TimeoutError too
                if ex.disconnected.is_set():
                    result.status, result.outcome = _CLIENT_CLOSED_STATUS, "client_closed"
                    return result
                if timer.expired():
                    return await self._fail(
                        send,
                        result,
                        UpstreamTimeout(
                            f"upstream {target.label} sent no response headers within "
                            f"{self.timeout:g} seconds"
                        ),
                        "upstream_timeout",
                    )
                log.warning("upstream %s failed: %s", target.label, type(exc).__name__)
                return await self._fail(send, result, _unreachable(target, exc), "upstream_error")
            async with resp:
                ex.response = resp
                try:
                    await self._relay(send, target, gateway_prefix, resp, ex, result)
                finally:
                    if result.outcome != "ok":
                        # Never pool a connection whose exchange did not finish cleanly.
                        resp.close()
            return result
        finally:
            if request is not None and not request.done():
                request.cancel()
                with contextlib.suppress(BaseException):
                    await request
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _fail(
        self, send: Send, result: ProxyResult, error: IgrisError, outcome: str
    ) -> ProxyResult:
        result.status, result.outcome, result.error = error.status, outcome, error
        try:
            await _send_error(send, error)
        except OSError:
            result.outcome = "client_closed"
        return result

    async def _relay(
        self,
        send: Send,
        target: Target,
        gateway_prefix: str,
        resp: aiohttp.ClientResponse,
        ex: _Exchange,
        result: ProxyResult,
    ) -> None:
        rewriter: EndpointRewriter | None = None
        if (
            resp.content_type == "text/event-stream"
            and resp.headers.get("content-encoding", "identity").lower() == "identity"
        ):
            rewriter = EndpointRewriter(endpoint_rewrite(target._base_path, gateway_prefix))
        result.status = resp.status
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": resp.status,
                    "headers": _response_headers(resp, rewriting=rewriter is not None),
                }
            )
            while True:
                try:
                    chunk = await resp.content.readany()
                except (aiohttp.ClientError, OSError) as exc:
                    if ex.disconnected.is_set():
                        break
                    log.warning(
                        "upstream %s broke mid-stream: %s", target.label, type(exc).__name__
                    )
                    result.outcome = "upstream_error"
                    result.error = _unreachable(target, exc)
                    break
                if not chunk:
                    break
                if rewriter is not None:
                    chunk = rewriter.feed(chunk)
                    if not chunk:
                        continue
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                result.bytes_out += len(chunk)
            if ex.disconnected.is_set():
                result.outcome = "client_closed"
                return
            tail = rewriter.flush() if rewriter is not None else b""
            result.bytes_out += len(tail)
            try:
                await send({"type": "http.response.body", "body": tail, "more_body": False})
            except RuntimeError:
                # uvicorn refuses to end a response shorter than its Content-Length;
                # the connection is dropped, which is the right signal for a broken upstream.
                if result.outcome == "ok":
                    raise
        except OSError:
            # The ASGI server says the client is gone (uvicorn's ClientDisconnected).
            result.outcome = "client_closed"
