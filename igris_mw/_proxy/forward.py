"""The proxy's I/O part: forward one request upstream and relay the response, streaming.

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
Where the request goes and with which headers is ``upstream``'s business
(pure); the legacy SSE ``endpoint`` rewrite is ``sse``'s.

Streams both ways: the request body goes upstream as it arrives (the peeked
prefix first), the response body comes back chunk by chunk, each chunk sent
at once; ``text/event-stream`` is never buffered. ``timeout`` bounds only the
wait for the response headers, never an open stream. A client disconnect,
seen by a task that watches ``receive`` (``_Exchange.watch``), closes the
upstream request at once. That task is started only where it can matter: at
once for a request body still to stream; for a request whose body is in hand
(most MCP calls), when the response headers take longer than
``_WATCH_AFTER``, or when the response is a stream (no length, or
``text/event-stream``). A short call thus runs in the handler's task alone:
no second task, no request task (the watcher cancels the handler's wait for
the headers itself), and no timer of its own: the header deadline is kept by
the sweeper task (``Forwarder._waiting``), and the delayed watcher start by
one timer shared by every request (``Forwarder._unwatched``).

Per request the work is split in steps that each do one job, with no extra
task or coroutine on the way: ``upstream_url``/``request_headers`` (where and
what), ``_request_body`` (what body to send), the request itself,
``_headers_failure`` (what a failed wait for the headers means), ``_relay``
(send the response back) and the cleanup in ``forward``'s ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import ssl as ssl_module
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import aiohttp
import attrs
from multidict import CIMultiDict

from .._asgi import Receive, Scope, Send
from .._errors import BadRequest, IgrisError, PayloadTooLarge, UpstreamError, UpstreamTimeout
from .._policy.egress import EgressForbidden, EgressPolicy
from .._policy.resolver import EgressResolver
from .._responses import send_error
from .outbound import UpstreamProxy
from .ready import ReadyConnector
from .sse import EndpointRewriter, endpoint_rewrite
from .tls import tls_error_for
from .upstream import Target, request_headers, response_headers, upstream_url

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_LIMIT_PER_HOST",
    "DEFAULT_MAX_BODY",
    "BodyPrefix",
    "Forwarder",
    "ProxyResult",
    "RequestTimeout",
    "read_body_prefix",
]

log = logging.getLogger("igris_mw.proxy")

# aiohttp would otherwise invent these; a proxy sends only what the client sent.
_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
_CLIENT_CLOSED_STATUS = 499  # nginx's convention: the client left before the response
DEFAULT_MAX_BODY = 8 * 1024 * 1024  # IGRIS_MAX_REQUEST_BODY / serve --max-request-body
DEFAULT_IDLE_TIMEOUT = 300.0  # serve --stream-idle-timeout
DEFAULT_BODY_TIMEOUT = 30.0  # longest pause inside a request body
DEFAULT_LIMIT_PER_HOST = 1024  # pooled + open connections to one upstream host
# An error response is read whole to look for the credential before relaying it.
_MAX_ERROR_BODY = 1024 * 1024


class RequestTimeout(IgrisError):
    """408: the client stopped sending its request body."""

    status = 408
    code = "request_timeout"


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the request body is larger than {limit} bytes (IGRIS_MAX_REQUEST_BODY)",
        code="request_too_large",
    )


# A request with its whole body in hand gets a disconnect watcher only when its
# response headers take longer than this (seconds): a client that leaves a
# quick call is noticed when the answer is sent, which costs nothing extra.
_WATCH_AFTER = 0.005


@attrs.frozen
class BodyPrefix:
    """The first bytes of a request body, read before forwarding (for the audit peek).

    ``complete`` is true when ``data`` is the whole body; ``disconnected`` when
    the client left while it was read.
    """

    data: bytes = b""
    complete: bool = False
    disconnected: bool = False
    timed_out: bool = False


@attrs.define
class ProxyResult:
    """What one ``forward`` did, for the audit event.

    ``outcome`` is ``ok``, ``bad_request``, ``upstream_error``,
    ``upstream_tls_error``, ``upstream_timeout`` or ``client_closed``; ``status`` is what the client
    got (499 when it left before any response).
    """

    status: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    outcome: str = "ok"
    error: IgrisError | None = None


async def read_body_prefix(
    receive: Receive, limit: int, timeout: float | None = None
) -> BodyPrefix:
    """Read request body messages until ``limit`` bytes, the end, or a disconnect.

    Pass the result to ``Forwarder.forward(prefix=...)``, which sends it first
    and streams the rest. Reads at most one message past ``limit``. With
    ``timeout``, a pause longer than that between two messages ends the read
    with ``timed_out`` (a client that never finishes its body is cut off).
    """
    parts: list[bytes] = []
    size = 0
    while size < limit:
        if timeout is None:
            message = await receive()
        else:
            try:
                async with asyncio.timeout(timeout):
                    message = await receive()
            except TimeoutError:
                return BodyPrefix(b"".join(parts), timed_out=True)
        if message["type"] == "http.disconnect":
            return BodyPrefix(b"".join(parts), complete=False, disconnected=True)
        chunk = message.get("body", b"")
        if chunk:
            parts.append(chunk)
            size += len(chunk)
        if not message.get("more_body", False):
            return BodyPrefix(b"".join(parts), complete=True)
    return BodyPrefix(b"".join(parts), complete=False)


class BodyFilter(Protocol):
    """Rewrites a response body on its way to the client (e.g. tools/list filtering)."""

    def feed(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


#: Called with the upstream response (headers known): a filter, or None to relay as is.
BodyFilterFactory = Callable[[aiohttp.ClientResponse], BodyFilter | None]


class _ClientGone(Exception):
    """The client disconnected while its request body was being streamed."""


_NO_QUEUE: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)  # never used: the body is whole


class _Exchange:
    """Per-request state shared by ``forward`` and its receive watcher."""

    __slots__ = (
        "body_failure",
        "body_queue",
        "body_timeout",
        "context",
        "disconnected",
        "idle",
        "last",
        "max_body",
        "receive",
        "response",
        "since",
        "timed_out",
        "waiting",
        "watcher",
    )

    def __init__(
        self,
        receive: Receive,
        *,
        streams_body: bool,
        max_body: int = DEFAULT_MAX_BODY,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
    ) -> None:
        # Small and bounded: the body is streamed, never gathered. Only made
        # when there is a body left to stream (most MCP POSTs fit the peek).
        self.body_queue: asyncio.Queue[bytes | _ClientGone | None] = (
            asyncio.Queue(maxsize=4) if streams_body else _NO_QUEUE
        )
        self.receive = receive
        self.disconnected = False
        # The task waiting for the response headers (the watcher cancels it).
        self.waiting: asyncio.Task[Any] | None = None
        self.response: aiohttp.ClientResponse | None = None
        self.max_body = max_body
        self.body_timeout = body_timeout
        # Why the body stream was cut (413 too large, 408 too slow): the request
        # fails with this rather than as an upstream error.
        self.body_failure: IgrisError | None = None
        self.idle = False  # the upstream went quiet past the idle timeout
        self.last = 0.0  # loop time of the upstream's last bytes (the sweeper reads it)
        self.watcher: asyncio.Future[None] | None = None
        # Loop time the wait for the response headers began (the sweeper's
        # header deadline, the watch timer's delay); set by ``forward``.
        self.since = 0.0
        self.timed_out = False  # the sweeper ended the wait for the headers
        # The request's context, for a watcher started later from the watch timer.
        self.context: contextvars.Context | None = None

    def start_watch(self, body_done: bool) -> None:
        """Start the receive watcher (idempotent)."""
        if self.watcher is None:
            coro = self.watch(self.receive, body_done)
            if self.context is None:
                self.watcher = asyncio.ensure_future(coro)
            else:
                self.watcher = asyncio.get_running_loop().create_task(coro, context=self.context)

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
        self.disconnected = True
        if not body_done:
            with contextlib.suppress(asyncio.QueueFull):
                self.body_queue.put_nowait(_ClientGone())
        if self.waiting is not None and not self.timed_out:
            # Still waiting for the response headers: give up on them at once
            # (unless the header deadline cancelled the wait already).
            self.waiting.cancel()
        if self.response is not None:
            # Closing the connection wakes the pending read and tells the upstream.
            self.response.close()

    async def body(self, first: bytes, counter: ProxyResult) -> AsyncIterator[bytes]:
        if first:
            counter.bytes_in += len(first)
            yield first
        while True:
            if self.disconnected and self.body_queue.empty():
                raise _ClientGone()
            try:
                async with asyncio.timeout(self.body_timeout):
                    item = await self.body_queue.get()
            except TimeoutError:
                self.body_failure = RequestTimeout(
                    f"the request body stalled for more than {self.body_timeout:g} seconds"
                )
                raise _ClientGone() from None
            if item is None:
                return
            if isinstance(item, _ClientGone):
                raise item
            counter.bytes_in += len(item)
            if counter.bytes_in > self.max_body:
                # Raising here makes aiohttp abort the upstream request mid-body.
                self.body_failure = _too_large(self.max_body)
                raise _ClientGone()
            yield item


def _unreachable(target: Target, exc: BaseException) -> UpstreamError:
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        why = "the forward proxy could not be reached"
    elif isinstance(exc, aiohttp.ClientHttpProxyError):
        # Only the status: the proxy's request info holds Proxy-Authorization.
        why = f"the forward proxy answered {exc.status}"
    elif isinstance(exc, aiohttp.ClientConnectorDNSError):
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
            stream is never cut by it. Enforced by the sweeper task, within a
            quarter of it (at most 1 s) late, not by a timer per request.
        connect_timeout: seconds to wait for a TCP connection (default: ``timeout``).
        limit: connection pool size (0: unbounded).
        limit_per_host: connections per upstream host, open streams included
            (default 1024; 0: unbounded); past it a request waits for a free
            connection, within ``timeout``.
        ssl: ``True`` verifies upstream TLS with the system CAs; an
            ``ssl.SSLContext`` for private CAs. A ``Target`` with its own
            context (a connection's CA or client certificate) uses that one.
        proxy: send every upstream request through this forward proxy
            (``CONNECT`` for https); never taken from the environment.
        resolver: the aiohttp resolver of the session's connector (the egress
            policy's pins the checked address); TLS SNI and host-name checks
            stay on the URL's name whatever address it returns.
        egress: the address policy: every address a host resolves to is
            checked by the session's resolver, and the connection goes to
            the checked address; IP literals (which aiohttp does not resolve)
            are checked here. ``None`` checks nothing (the gateway always
            passes one).
        max_body: the largest request body; past it 413 ``request_too_large``
            and the upstream request, if started, is aborted.
        idle_timeout: an upstream response (an SSE stream above all) that
            sends nothing for this long is closed; outcome ``upstream_idle``.
        body_timeout: the longest pause inside a request body; past it 408.

    Raises:
        ValueError: a timeout is not positive.
    """

    def __init__(
        self,
        *,
        timeout: float = 60.0,
        connect_timeout: float | None = None,
        limit: int = 0,
        limit_per_host: int = DEFAULT_LIMIT_PER_HOST,
        keepalive_timeout: float = 30.0,
        ssl: ssl_module.SSLContext | bool = True,
        proxy: UpstreamProxy | None = None,
        resolver: aiohttp.abc.AbstractResolver | None = None,
        egress: EgressPolicy | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
    ) -> None:
        if not timeout > 0 or (connect_timeout is not None and not connect_timeout > 0):
            raise ValueError("timeouts must be positive numbers of seconds")
        if not idle_timeout > 0 or not body_timeout > 0 or max_body < 0:
            raise ValueError("idle and body timeouts must be positive, max_body not negative")
        self.max_body = max_body
        self.idle_timeout = float(idle_timeout)
        self.body_timeout = float(body_timeout)
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout) if connect_timeout else self.timeout
        self._limit = limit
        self._limit_per_host = limit_per_host
        self._keepalive = keepalive_timeout
        self._ssl = ssl
        self.proxy = proxy
        self._resolver = resolver
        # Built once: the Proxy-Authorization header is not re-encoded per request.
        self._proxy_options: dict[str, Any] = proxy.request_options() if proxy else {}
        self._egress = egress
        # host -> the refusal of its literal check (None: fine); a dict read per request.
        self._host_checks: dict[str, EgressForbidden | None] = {}
        self._session: aiohttp.ClientSession | None = None
        # Deadlines without a timer per request: one sweeper task scans these.
        self._streams: set[_Exchange] = set()
        self._peeks: dict[asyncio.Task[Any], list[Any]] = {}  # task -> [since, expired]
        # Exchanges waiting for their response headers (the header deadline);
        # insertion order is time order (each is added when its wait begins,
        # and every wait is as long), so a scan stops at the first one not due.
        self._waiting: dict[_Exchange, None] = {}
        self._sweeper: asyncio.Task[None] | None = None
        # Exchanges whose body is in hand and which have no watcher yet, in
        # time order; one timer for all of them, armed only while there are any.
        self._unwatched: dict[_Exchange, None] = {}
        self._watch_timer: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        """Create the shared session (call from the running loop, e.g. lifespan startup)."""
        if self._session is None or self._session.closed:
            self._session = self._new_session()
        self._ensure_sweeper()

    async def close(self) -> None:
        """Close the session and its pooled connections."""
        session, self._session = self._session, None
        sweeper, self._sweeper = self._sweeper, None
        if self._watch_timer is not None:
            self._watch_timer.cancel()
            self._watch_timer = None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        if session is not None:
            await session.close()

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep(), name="igris-mw deadlines"
            )

    async def _sweep(self) -> None:
        """Enforce the header, body-pause and stream-idle deadlines, a few times per timeout.

        A request pays a dict or set insert and a time stamp instead of a timer;
        a deadline is enforced within a quarter of its length (at most 1 s) late.
        """
        loop = asyncio.get_running_loop()
        period = min(1.0, self.body_timeout / 4, self.idle_timeout / 4, self.timeout / 4)
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            if self._waiting:
                self._expire_header_waits(now)
            for task, entry in list(self._peeks.items()):
                if not entry[1] and now - entry[0] > self.body_timeout:
                    entry[1] = True
                    task.cancel()
            for ex in list(self._streams):
                if not ex.idle and now - ex.last > self.idle_timeout:
                    ex.idle = True
                    if ex.response is not None:
                        ex.response.close()

    def _expire_header_waits(self, now: float) -> None:
        """End the waits for response headers that passed ``timeout`` (answered 504)."""
        due = []
        for ex in self._waiting:
            if now - ex.since <= self.timeout:
                break
            due.append(ex)
        for ex in due:
            del self._waiting[ex]
            # A client that left has had the wait cancelled by its watcher already.
            if ex.waiting is not None and not ex.disconnected:
                ex.timed_out = True
                ex.waiting.cancel()

    def _start_watchers(self) -> None:
        """The watch timer: start the watcher of each exchange past ``_WATCH_AFTER``."""
        self._watch_timer = None
        unwatched = self._unwatched
        if not unwatched:
            return
        loop = asyncio.get_running_loop()
        # A millisecond of slack: the loop's clock may read a hair early.
        due_since = loop.time() + 0.001 - _WATCH_AFTER
        due = []
        for ex in unwatched:
            if ex.since > due_since:
                break
            due.append(ex)
        for ex in due:
            del unwatched[ex]
            ex.start_watch(True)
        if unwatched:
            first = next(iter(unwatched))
            self._watch_timer = loop.call_at(first.since + _WATCH_AFTER, self._start_watchers)

    async def read_prefix(self, receive: Receive, limit: int) -> BodyPrefix:
        """``read_body_prefix`` with the body-pause deadline kept by the sweeper.

        A client that pauses longer than ``body_timeout`` between two body
        messages gets ``timed_out`` (the caller answers 408).
        """
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - always inside a task under ASGI
            return await read_body_prefix(receive, limit, self.body_timeout)
        self._ensure_sweeper()
        loop = asyncio.get_running_loop()
        entry: list[Any] = [loop.time(), False]
        self._peeks[task] = entry
        parts: list[bytes] = []
        size = 0
        try:
            while size < limit:
                entry[0] = loop.time()
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
        except asyncio.CancelledError:
            if entry[1] and task.uncancel() == 0:
                return BodyPrefix(b"".join(parts), timed_out=True)
            raise
        finally:
            del self._peeks[task]

    async def __aenter__(self) -> Forwarder:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _new_session(self) -> aiohttp.ClientSession:
        resolver = self._resolver
        if resolver is None and self._egress is not None and self.proxy is None:
            # Through a forward proxy the proxy resolves upstream names (this
            # resolver would only see the proxy's own, often internal, host):
            # the policy then checks literals and metadata names only.
            resolver = EgressResolver(self._egress.allowed)
        # A spare connection per upstream after each GET (ready.py): a new
        # stream starts without a handshake to the upstream.
        connector = ReadyConnector(
            limit=self._limit,
            limit_per_host=self._limit_per_host,
            keepalive_timeout=self._keepalive,
            ssl=self._ssl,
            resolver=resolver,
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
        body_filter: BodyFilterFactory | None = None,
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
            body_filter: makes a filter for the response body, if any (then
                ``Content-Length`` is dropped: the body may change length).

        Returns:
            What happened, for the audit event; never raises for upstream or
            client trouble.
        """
        session = self._session
        if session is None or session.closed:
            session = self._session = self._new_session()
            self._ensure_sweeper()
        result = ProxyResult()
        try:
            url = upstream_url(target, subpath, scope.get("query_string", b""))
            headers, has_body = request_headers(scope, target)
        except BadRequest as exc:
            return await _fail(send, result, exc, "bad_request")
        if self._egress is not None:
            refused = self._literal_refusal(url.raw_host or "")
            if refused is not None:
                return await _fail(send, result, refused, "upstream_forbidden")
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            return await _fail(send, result, _too_large(self.max_body), "request_too_large")
        if prefix is None and not has_body and scope.get("http_version") not in ("1.0", "1.1"):
            # HTTP/2 and 3 may carry a body with neither header: look at the first message.
            prefix = await read_body_prefix(receive, 1)
        prefix = prefix or BodyPrefix()
        if prefix.disconnected:
            result.status, result.outcome = _CLIENT_CLOSED_STATUS, "client_closed"
            return result
        if len(prefix.data) > self.max_body:
            return await _fail(send, result, _too_large(self.max_body), "request_too_large")

        body_done = prefix.complete or (not has_body and not prefix.data)
        ex = _Exchange(
            receive,
            streams_body=not body_done,
            max_body=self.max_body,
            body_timeout=self.body_timeout,
        )
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        # No timer per request: the header deadline is the sweeper's (_waiting),
        # and the lazy watcher start one timer's for every request (_unwatched).
        ex.since = loop.time()
        if body_done:
            ex.context = contextvars.copy_context()
            self._unwatched[ex] = None
            if self._watch_timer is None:
                self._watch_timer = loop.call_at(ex.since + _WATCH_AFTER, self._start_watchers)
        else:
            ex.start_watch(False)  # it feeds the body queue
        waiting = self._waiting
        try:
            data = _request_body(ex, prefix, body_done, headers, result)
            # Awaited in this task: the watcher cancels it if the client leaves
            # first, the sweeper when the deadline passes (cheaper than a
            # request task and asyncio.wait() on both, or a timer each).
            ex.waiting = task
            if task is not None:
                waiting[ex] = None  # the sweeper runs since the session was made
            try:
                resp = await session.request(
                    scope["method"],
                    url,
                    headers=headers,
                    data=data,
                    allow_redirects=False,
                    # True: the connector's context (system CAs + the CA file).
                    ssl=target.ssl if target.ssl is not None else True,
                    **self._proxy_options,
                )
                ex.waiting = None
                waiting.pop(ex, None)
            except asyncio.CancelledError:
                ex.waiting = None
                waiting.pop(ex, None)
                # Ours only if the watcher or the deadline asked and nobody else did.
                if not (ex.disconnected or ex.timed_out) or task is None or task.cancelling() != 1:
                    raise
                task.uncancel()
                # The deadline's cancellation is read as asyncio.timeout's TimeoutError was.
                if ex.timed_out and ex.body_failure is not None:
                    return await _fail(send, result, ex.body_failure, ex.body_failure.code)
                failure = self._headers_failure(None, ex, ex.timed_out, target)
                if failure is None:
                    result.status, result.outcome = _CLIENT_CLOSED_STATUS, "client_closed"
                    return result
                return await _fail(send, result, *failure)
            except EgressForbidden as exc:
                waiting.pop(ex, None)
                log.warning("upstream refused by the egress policy: %s", exc.refusal.describe())
                return await _fail(send, result, exc, "upstream_forbidden")
            except (aiohttp.ClientError, OSError, _ClientGone) as exc:
                ex.waiting = None
                waiting.pop(ex, None)
                if ex.body_failure is not None:
                    return await _fail(send, result, ex.body_failure, ex.body_failure.code)
                failure = self._headers_failure(exc, ex, False, target)
                if failure is None:
                    result.status, result.outcome = _CLIENT_CLOSED_STATUS, "client_closed"
                    return result
                return await _fail(send, result, *failure)
            async with resp:
                ex.response = resp
                if ex.watcher is None and (
                    resp.content_length is None or resp.content_type == "text/event-stream"
                ):
                    ex.start_watch(True)  # a stream: the client may leave while it runs
                if resp.status >= 400:
                    refusal = await self._error_refusal(resp, target)
                    if isinstance(refusal, IgrisError):
                        resp.close()
                        return await _fail(send, result, refusal, refusal.code)
                    await _relay_whole(send, resp, refusal, ex, result)
                    return result
                ex.last = asyncio.get_running_loop().time()
                self._streams.add(ex)  # the sweeper's idle deadline, while relaying
                try:
                    await _relay(send, target, gateway_prefix, resp, ex, result, body_filter)
                finally:
                    self._streams.discard(ex)
                    if result.outcome != "ok":
                        # Never pool a connection whose exchange did not finish cleanly.
                        resp.close()
            return result
        finally:
            ex.waiting = None
            waiting.pop(ex, None)
            if body_done:
                self._unwatched.pop(ex, None)
            if ex.watcher is not None:
                ex.watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ex.watcher

    async def _error_refusal(
        self, resp: aiohttp.ClientResponse, target: Target
    ) -> IgrisError | bytes:
        """An upstream error response: the refusal to answer with, or its whole body.

        401 means the injected credential was refused: the client gets 502
        ``upstream_auth_failed`` (never the upstream's challenge). Any other
        error is read whole (at most 1 MiB) and refused as 502
        ``upstream_reflected_credential`` when it echoes the credential.
        """
        if resp.status == 401:
            log.warning("upstream %s refused the connection's credential", target.label)
            return UpstreamError(
                "the upstream refused this connection's credential (HTTP 401); "
                "an administrator should rotate it or check the connection's authType",
                code="upstream_auth_failed",
            )
        try:
            async with asyncio.timeout(self.timeout):
                body = await resp.content.read(_MAX_ERROR_BODY + 1)
                while len(body) <= _MAX_ERROR_BODY:
                    more = await resp.content.read(_MAX_ERROR_BODY + 1 - len(body))
                    if not more:
                        break
                    body += more
        except (aiohttp.ClientError, OSError) as exc:  # TimeoutError too
            return _unreachable(target, exc)
        if len(body) > _MAX_ERROR_BODY:
            return UpstreamError(
                f"upstream {target.label} sent an error response over 1 MiB; not relayed",
                code="upstream_bad_response",
            )
        if target.reflects_credential(resp.raw_headers, body):
            log.warning("upstream %s echoed the injected credential; not relayed", target.label)
            return UpstreamError(
                "the upstream's error response contained the connection's credential; "
                "it was not relayed",
                code="upstream_reflected_credential",
            )
        return body

    def _literal_refusal(self, host: str) -> EgressForbidden | None:
        """The connect-time check of a host aiohttp will not resolve (an IP literal)."""
        try:
            return self._host_checks[host]
        except KeyError:
            pass
        assert self._egress is not None
        refused: EgressForbidden | None = None
        try:
            self._egress.check_connect_host(host)
        except EgressForbidden as exc:
            log.warning("upstream refused by the egress policy: %s", exc.refusal.describe())
            refused = exc
        if len(self._host_checks) >= 4096:
            self._host_checks.clear()
        self._host_checks[host] = refused
        return refused

    def _headers_failure(
        self, exc: BaseException | None, ex: _Exchange, expired: bool, target: Target
    ) -> tuple[IgrisError, str] | None:
        """What a failed wait for the response headers means: the error and outcome to
        answer with, or ``None`` when the client left (nothing to answer)."""
        if ex.disconnected:
            return None
        if expired:
            return (
                UpstreamTimeout(
                    f"upstream {target.label} sent no response headers within "
                    f"{self.timeout:g} seconds"
                ),
                "upstream_timeout",
            )
        assert exc is not None  # only a deadline's cancellation comes without one
        log.warning("upstream %s failed: %s", target.label, type(exc).__name__)
        tls_error = tls_error_for(exc, target.base_url.host or "?")
        if tls_error is not None:
            return tls_error, "upstream_tls_error"
        return _unreachable(target, exc), "upstream_error"


def _request_body(
    ex: _Exchange,
    prefix: BodyPrefix,
    body_done: bool,
    headers: CIMultiDict[str],
    result: ProxyResult,
) -> Any:
    """The body to hand aiohttp: ``None``, the whole peeked bytes, or a stream of the rest."""
    if not body_done:
        return ex.body(prefix.data, result)
    # aiohttp states the true length of a body it has whole.
    headers.popall("content-length", None)
    if prefix.data:
        result.bytes_in = len(prefix.data)
        return prefix.data
    return None


async def _relay_whole(
    send: Send, resp: aiohttp.ClientResponse, body: bytes, ex: _Exchange, result: ProxyResult
) -> None:
    """Send an error response already read whole (and checked)."""
    result.status = resp.status
    try:
        await send(
            {
                "type": "http.response.start",
                "status": resp.status,
                "headers": response_headers(resp.raw_headers, rewriting=False),
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})
        result.bytes_out = len(body)
    except OSError:
        result.outcome = "client_closed"
    if ex.disconnected:
        result.outcome = "client_closed"


async def _fail(send: Send, result: ProxyResult, error: IgrisError, outcome: str) -> ProxyResult:
    """Answer the client with ``error`` and record it (``client_closed`` if it left)."""
    result.status, result.outcome, result.error = error.status, outcome, error
    if not await send_error(send, error):
        result.outcome = "client_closed"
    return result


def _rewriter_for(
    resp: aiohttp.ClientResponse, target: Target, gateway_prefix: str
) -> EndpointRewriter | None:
    """The legacy ``endpoint`` rewriter for an uncompressed event stream, else ``None``."""
    if (
        resp.content_type == "text/event-stream"
        and resp.headers.get("content-encoding", "identity").lower() == "identity"
    ):
        return EndpointRewriter(
            endpoint_rewrite(target._base_path, gateway_prefix, target.base_url.origin())
        )
    return None


async def _relay(
    send: Send,
    target: Target,
    gateway_prefix: str,
    resp: aiohttp.ClientResponse,
    ex: _Exchange,
    result: ProxyResult,
    body_filter: BodyFilterFactory | None = None,
) -> None:
    """Send the upstream's response to the client, chunk by chunk, as it arrives."""
    rewriter = _rewriter_for(resp, target, gateway_prefix)
    filtering = body_filter(resp) if body_filter is not None else None
    result.status = resp.status
    loop = asyncio.get_running_loop()
    try:
        await send(
            {
                "type": "http.response.start",
                "status": resp.status,
                "headers": target.without_credential(
                    response_headers(
                        resp.raw_headers, rewriting=rewriter is not None or filtering is not None
                    )
                ),
            }
        )
        while True:
            try:
                chunk = await resp.content.readany()
            except (aiohttp.ClientError, OSError) as exc:
                if ex.disconnected:
                    break
                if ex.idle:
                    result.outcome = "upstream_idle"
                    break
                log.warning("upstream %s broke mid-stream: %s", target.label, type(exc).__name__)
                result.outcome = "upstream_error"
                result.error = _unreachable(target, exc)
                break
            if not chunk:
                if ex.idle:
                    result.outcome = "upstream_idle"
                break
            ex.last = loop.time()
            if rewriter is not None:
                chunk = rewriter.feed(chunk)
            if filtering is not None:
                chunk = filtering.feed(chunk)
            if not chunk:
                continue
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            result.bytes_out += len(chunk)
        if ex.disconnected:
            result.outcome = "client_closed"
            return
        tail = rewriter.flush() if rewriter is not None else b""
        if filtering is not None:
            tail = filtering.feed(tail) + filtering.finish()
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
