"""Access policy on the gateway path: rate limits, the failed-authentication
throttle, the concurrency cap, tool policy, and the aggregation of refusals.

The engines are in ``_policy`` (token buckets, tool globs, JSON-RPC checks);
this module applies them to one request with the records the resolver gave:

* ``AccessPolicy.check_rate``: the key's and the connection's ``rateLimit``
  (429 ``rate_limited`` with ``Retry-After``); awaited only when one is set;
* ``AccessPolicy.auth_failed`` / ``blocked``: more than N failed
  authentications from one client address in a minute, then 429 for that
  address until the minute is over;
* ``tools_response_filter``: the body filter that drops disallowed tools
  from ``tools/list`` answers (JSON, SSE, or any answer on a legacy stream);
* ``DenialAggregator``: repeated refusals of one kind (401 on a known slug,
  429) for one connection and key: past the first few in a window, one audit
  event with a ``count``, so a flood cannot grow the audit trail or the
  store's work without bound.

A key and a connection with no policy cost one attribute test each.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

import aiohttp
import attrs

from ._errors import IgrisError
from ._policy.ratelimit import (
    AuthFailureThrottle,
    LocalRateLimitStore,
    RateLimit,
    RateLimitStore,
)
from ._policy.tools import SseToolsListFilter, ToolCheck, ToolPolicy, filter_json_response
from ._proxy import BodyFilter, BodyFilterFactory
from .models import ApiKey, AuditEvent, Connection

__all__ = [
    "AccessPolicy",
    "DenialAggregator",
    "LegacyStreams",
    "TooManyRequests",
    "plainly_allowed",
    "tools_response_filter",
]

# A tools/list answer larger than this is not buffered to be filtered: the
# client gets a JSON-RPC error instead of tools it may not call.
_MAX_FILTERED_JSON: Final = 16 * 1024 * 1024


class TooManyRequests(IgrisError):
    """429: over a rate limit (``rate_limited``) or a concurrency cap
    (``too_many_concurrent``); ``retry_after`` is whole seconds >= 1."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, code: str | None = None, retry_after: int = 1) -> None:
        super().__init__(message, code=code)
        self.retry_after = max(1, int(retry_after))


class AccessPolicy:
    """Rate limits and the failed-authentication throttle of one gateway.

    Args:
        limits: where the token buckets live (per process or Redis).
        auth_throttle: counts failed authentications per client address.
    """

    def __init__(self, limits: RateLimitStore, auth_throttle: AuthFailureThrottle) -> None:
        self.limits = limits
        self.auth_throttle = auth_throttle
        # The in-process store answers synchronously: no coroutine per check.
        self._take = limits.take if isinstance(limits, LocalRateLimitStore) else None
        # Until when some address may be blocked: the per-request check is one
        # comparison while no address is near its limit.
        self._blocked_until = 0.0

    async def check_rate(self, key: ApiKey, conn: Connection) -> None:
        """Take a token from the key's and the connection's bucket (those that have one).

        Raises:
            TooManyRequests: a bucket is empty (``rate_limited``).
        """
        if key.rate_limit is not None:
            await self._acquire(f"key:{key.id}", key.rate_limit, "this API key")
        if conn.rate_limit is not None:
            await self._acquire(f"conn:{conn.slug}", conn.rate_limit, "this connection")

    async def _acquire(self, bucket: str, limit: RateLimit, what: str) -> None:
        if self._take is not None:
            decision = self._take(bucket, limit)
        else:
            decision = await self.limits.acquire(bucket, limit)
        if not decision.allowed:
            raise TooManyRequests(
                f"{what} is over its rate limit; retry after {decision.retry_after} s",
                retry_after=decision.retry_after,
            )

    def blocked(self, scope: Any) -> TooManyRequests | None:
        """The refusal for a client address over its failed-authentication budget, if it is."""
        if not self._blocked_until or time.monotonic() >= self._blocked_until:
            return None
        retry_after = self.auth_throttle.retry_after(client_address(scope))
        if retry_after <= 0:
            return None
        return TooManyRequests(
            "too many failed authentications from this address; retry later",
            retry_after=retry_after,
        )

    def auth_failed(self, address: str | None) -> None:
        """Count a failed authentication (answered 401 still); once the address
        has used its budget, its next requests get 429 (``blocked``)."""
        self.auth_throttle.record_failure(address)
        retry_after = self.auth_throttle.retry_after(address)
        if retry_after > 0:
            self._blocked_until = max(self._blocked_until, time.monotonic() + retry_after)

    async def close(self) -> None:
        await self.limits.close()


def client_address(scope: dict[str, Any] | Any) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


# ------------------------------------------------------------ tool policy fast path

_PEEK_MAX = 200  # peek_jsonrpc truncates names at this length


def plainly_allowed(
    body: bytes,
    rpc_method: str | None,
    tool: str | None,
    conn_tools: ToolPolicy | None,
    key_tools: ToolPolicy | None,
) -> bool:
    """True when a single JSON-RPC request certainly passes the connection's and the
    key's tool policies without a second parse: what the audit peek read is then
    all the policy needs (and no ``ToolCheck`` is built).

    Only for bodies where no parser can read another method or tool name than the
    peek did: one ``"method"``, one ``"params"`` and one ``"name"`` member spelled
    literally (no ``\\u`` escapes), a name shorter than the peek's cut. Anything
    else (batches, tools/list, duplicates, escapes, a denied call) takes
    ``check_request``, which answers refusals and refuses what it cannot read.
    """
    if rpc_method is None or b"\\u" in body or body.count(b'"method"') != 1:
        return False
    if rpc_method == "tools/call":
        return (
            tool is not None
            and len(tool) < _PEEK_MAX
            and body.count(b'"name"') == 1
            and body.count(b'"params"') == 1
            and (conn_tools is None or conn_tools.allows(tool))
            and (key_tools is None or key_tools.allows(tool))
        )
    return rpc_method != "tools/list" and "," not in rpc_method and body[:1] != b"["


# ------------------------------------------------------------ tools/list filters


class _AnyPending(set[str]):
    """A pending-id set that holds every id and never empties: on a legacy SSE
    stream the answers to POSTed requests arrive on the GET stream, whose
    request ids the gateway did not see, so every answer carrying a ``tools``
    list is filtered."""

    def __init__(self) -> None:
        super().__init__()
        self._open = True

    def __contains__(self, item: object) -> bool:
        return self._open

    def discard(self, item: object) -> None:
        return None

    def clear(self) -> None:
        # The filter gives up on an over-long event this way: pass through from then on.
        self._open = False

    def __bool__(self) -> bool:
        return self._open


class _JsonToolsFilter:
    """Buffers a whole JSON answer and filters it at the end (answers are small)."""

    def __init__(self, list_ids: Iterable[str], check: ToolCheck) -> None:
        self._ids = frozenset(list_ids)
        self._check = check
        self._buf = bytearray()
        self._too_large = False

    def feed(self, chunk: bytes) -> bytes:
        if not self._too_large:
            self._buf += chunk
            if len(self._buf) > _MAX_FILTERED_JSON:
                self._too_large = True
                self._buf.clear()
        return b""

    def finish(self) -> bytes:
        if self._too_large:
            return _withheld_answer()
        return filter_json_response(bytes(self._buf), self._ids, self._check)


class _Withheld:
    """An answer that cannot be filtered (compressed): withheld, an error instead."""

    def feed(self, chunk: bytes) -> bytes:
        return b""

    def finish(self) -> bytes:
        return _withheld_answer()


def _withheld_answer() -> bytes:
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "id": None,
            "error": {"code": -32603, "message": "the tools/list answer could not be filtered"},
        },
        separators=(",", ":"),
    ).encode()


def tools_response_filter(list_ids: Iterable[str] | None, check: ToolCheck) -> BodyFilterFactory:
    """A filter factory for the response to a request under a tool policy.

    ``list_ids``: the ``tools/list`` ids the request carried; ``None`` means
    any (a legacy SSE stream). Responses that are neither JSON nor an event
    stream pass untouched.
    """
    ids = list(list_ids) if list_ids is not None else None

    def make(resp: aiohttp.ClientResponse) -> BodyFilter | None:
        ctype = resp.content_type
        is_sse = ctype == "text/event-stream"
        is_json = ctype == "application/json" or ctype.endswith("+json")
        if not (is_sse or is_json):
            return None
        if resp.headers.get("content-encoding", "identity").lower() != "identity":
            return _Withheld()
        if is_sse:
            sse = SseToolsListFilter(ids or (), check)
            if ids is None:
                sse._pending = _AnyPending()  # see _AnyPending
            return sse
        if ids is None:
            return None
        return _JsonToolsFilter(ids, check)

    return make


# ------------------------------------------------------------ denial aggregation


@attrs.define
class _Window:
    emitted: int
    count: int
    last: AuditEvent
    timer: asyncio.TimerHandle | None


class DenialAggregator:
    """At most ``free + 1`` audit events per window for repeated refusals of one kind.

    The first ``free`` refusals of a (connection, key, outcome, status) within
    ``window`` seconds are emitted as they come, as plain events; the ones
    after them are counted and emitted as one event (the last one, with their
    ``count``) when the window closes. At most ``max_windows`` are open: a new
    one closes the oldest first, so memory is bounded whatever arrives.
    """

    def __init__(
        self,
        emit: Callable[[AuditEvent], None],
        *,
        window: float = 10.0,
        free: int = 5,
        max_windows: int = 10_000,
    ) -> None:
        self._emit = emit
        self._window = window
        self._free = free
        self._max = max_windows
        self._open: dict[tuple[Any, ...], _Window] = {}

    def __len__(self) -> int:
        return len(self._open)

    def refused(self, event: AuditEvent) -> None:
        key = (event.connection, event.api_key_id, event.outcome, event.status)
        entry = self._open.get(key)
        if entry is not None:
            if entry.emitted < self._free:
                entry.emitted += 1
                self._emit(event)
            else:
                entry.count += 1
                entry.last = event
            return
        if len(self._open) >= self._max:
            self._close(next(iter(self._open)))
        self._emit(event)
        try:
            timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
                self._window, self._close, key
            )
        except RuntimeError:  # pragma: no cover - always called on the loop
            timer = None
        self._open[key] = _Window(1, 0, event, timer)

    def _close(self, key: tuple[Any, ...]) -> None:
        entry = self._open.pop(key, None)
        if entry is None:
            return
        if entry.timer is not None:
            entry.timer.cancel()
        if entry.count:
            self._emit(attrs.evolve(entry.last, count=entry.count))

    def flush(self) -> None:
        """Emit every open window's count now (shutdown)."""
        for key in list(self._open):
            self._close(key)


# ------------------------------------------------------------ legacy SSE sessions

_SESSION_ID = re.compile(rb"[?&]session_id=([A-Za-z0-9_.~-]{1,200})")
_QUERY_SESSION_ID = re.compile(r"(?:^|&)session_id=([A-Za-z0-9_.~-]{1,200})")

Inject = Callable[[bytes], Awaitable[bool]]


class LegacyStreams:
    """Open legacy (HTTP+SSE) streams under a tool policy, by connection and session.

    On the legacy transport the answer to a POSTed request travels on the GET
    stream, not in the POST's response. So that a denied ``tools/call`` POSTed
    to ``.../messages/?session_id=X`` reaches the client as its JSON-RPC error,
    the stream whose ``endpoint`` event named session X is remembered here,
    and the gateway writes the error onto it (between whole events: under a
    tool policy the stream is relayed event by event) and answers the POST 202.
    """

    def __init__(self) -> None:
        self._streams: dict[tuple[str, str], Inject] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def session_of(self, query_string: bytes) -> str | None:
        found = _QUERY_SESSION_ID.search(query_string.decode("latin-1"))
        return found.group(1) if found else None

    def watch(self, slug: str, inject: Inject, inner: BodyFilterFactory) -> _StreamWatch:
        """A stream to watch for its session id (``close`` it when the stream ends)."""
        return _StreamWatch(self, slug, inject, inner)

    async def answer(self, slug: str, session_id: str, reply: bytes) -> bool:
        """Write ``reply`` as a ``message`` event on that session's stream; False if none."""
        inject = self._streams.get((slug, session_id))
        if inject is None:
            return False
        return await inject(b"event: message\r\ndata: " + reply + b"\r\n\r\n")


class _StreamWatch:
    def __init__(
        self, registry: LegacyStreams, slug: str, inject: Inject, inner: BodyFilterFactory
    ) -> None:
        self._registry = registry
        self._slug = slug
        self._inject = inject
        self._inner = inner
        self._key: tuple[str, str] | None = None

    def factory(self, resp: aiohttp.ClientResponse) -> BodyFilter | None:
        inner = self._inner(resp)
        if inner is None or resp.content_type != "text/event-stream":
            return inner
        return _Sniffer(inner, self._found)

    def _found(self, session_id: str) -> None:
        if self._key is None:
            self._key = (self._slug, session_id)
            self._registry._streams[self._key] = self._inject

    def close(self) -> None:
        if self._key is not None:
            if self._registry._streams.get(self._key) is self._inject:
                del self._registry._streams[self._key]
            self._key = None


class _Sniffer:
    """Passes a filter's output on, noting the session id of the first ``endpoint`` event."""

    def __init__(self, inner: BodyFilter, found: Callable[[str], None]) -> None:
        self._inner = inner
        self._found = found
        self._seen = False

    def feed(self, chunk: bytes) -> bytes:
        out = self._inner.feed(chunk)
        if not self._seen and b"session_id=" in out:
            match = _SESSION_ID.search(out)
            if match is not None:
                self._seen = True
                self._found(match.group(1).decode("ascii"))
        return out

    def finish(self) -> bytes:
        return self._inner.finish()
