"""``IgrisGateway``: the pure ASGI middleware.

Requests under ``/v1/mcp/`` are proxied (authenticate the ``ig_`` key,
resolve the connection, inject its credential, stream, audit); requests
under ``/api/v1/`` go to the management API; every other scope (HTTP,
websocket, and the wrapped app's own lifespan) passes straight through.
``app=None`` makes it a standalone app.

Per-request state lives in locals of ``_proxy_request``, never on ``self``.
Start-up (open the store, the upstream session, the audit writer) runs in
the lifespan, or lazily on the first request when the server sends no
lifespan events (``httpx.ASGITransport``, some hosts).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final
from urllib.parse import urlsplit

import attrs

from . import _auth
from ._api import ManagementAPI
from ._asgi import Receive, Scope, Send
from ._audit import PEEK_LIMIT, AuditWriter, new_event_id, peek_jsonrpc
from ._audit_file import build_audit_sink
from ._cache import RefreshingCache
from ._errors import (
    BadRequest,
    Forbidden,
    IgrisError,
    NotFound,
    StoreUnavailable,
    Unauthorized,
)
from ._plugins import crypto_from_url, store_from_url
from ._proxy import BodyPrefix, Forwarder, Target, read_body_prefix
from ._service import AuditSink, Service
from .crypto import CryptoProvider
from .models import SLUG_RE, ApiKey, AuditEvent, AuthType, Connection, utcnow
from .models import Scope as KeyScope
from .storage import Change, Store

__all__ = ["IgrisGateway"]

log = logging.getLogger("igris_mw.gateway")

MCP_PREFIX: Final = "/v1/mcp/"
API_PREFIX: Final = "/api/v1"
_MAX_USER = 256
_MAX_METADATA = 4096


@attrs.frozen
class _Missing:
    """A cached "no such connection / key"."""


MISSING: Final = _Missing()


@attrs.frozen
class _Resolved:
    """A connection as the hot path needs it: the record and a ready Target."""

    connection: Connection
    target: Target = attrs.field(repr=False)


def _inject_headers(conn: Connection, credential: bytes | None) -> tuple[tuple[str, str], ...]:
    if conn.auth_type is AuthType.NONE or credential is None:
        return ()
    text = credential.decode("utf-8")
    if conn.auth_type is AuthType.BEARER:
        return (("Authorization", f"Bearer {text}"),)
    if conn.auth_type is AuthType.BASIC:
        return (("Authorization", "Basic " + base64.b64encode(credential).decode("ascii")),)
    assert conn.header_name is not None
    return ((conn.header_name, text),)


_WANTED_HEADERS = frozenset(
    {b"origin", b"host", b"authorization", b"x-igris-user", b"x-igris-metadata"}
)


def _wanted_headers(scope: Scope) -> dict[bytes, str]:
    """The first value of each header the gateway reads, in one pass over the list."""
    found: dict[bytes, str] = {}
    for key, value in scope["headers"]:
        name = key.lower()
        if name in _WANTED_HEADERS and name not in found:
            found[name] = bytes(value).decode("latin-1")
    return found


def _env_float(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be positive")
    return value


class IgrisGateway:
    """The gateway as ASGI middleware (or, with ``app=None``, a standalone app).

    Args:
        app: the ASGI app to wrap; ``None`` for a standalone gateway.
        store: a store URL (``sqlite:///igris.db``, ``postgresql://...``) or a
            ``Store``; default ``IGRIS_STORE``. The gateway opens and closes it.
        crypto: a crypto URL (default ``keyring:``, keys from
            ``IGRIS_MASTER_KEY``/``IGRIS_MASTER_KEY_FILE``) or a provider.
        audit: where audit events go: a store URL / object with audit
            support, or ``None`` for the store itself.
        upstream_timeout: seconds to wait for upstream response headers
            (default ``IGRIS_UPSTREAM_TIMEOUT`` or 60); never cuts an open stream.
        allowed_origins: browser origins allowed to call the gateway
            (``"*"`` for any); a request with another ``Origin`` gets 403.
            Same-origin requests and requests without ``Origin`` are allowed.
        public_url: base URL for ``gatewayUrl`` (default: from each request).
        cache_ttl: the backstop bound, in seconds, on how long a change made
            elsewhere without a notification can go unseen.
        max_body: largest management API request body, in bytes.
        audit_spill: JSON-lines file for audit events the sink cannot take yet.
        health_path: a path answered with ``{"status": "ok"}``
            (default ``/healthz`` when standalone, none when wrapping an app).
        dashboard: serve the admin dashboard at ``/ui/`` (see docs/dashboard.md).

    Raises:
        ConfigurationError: unknown store scheme, malformed master key, ...
    """

    def __init__(
        self,
        app: Any = None,
        *,
        store: str | Store | None = None,
        crypto: str | CryptoProvider | None = None,
        audit: str | AuditSink | None = None,
        upstream_timeout: float | None = None,
        allowed_origins: Sequence[str] = (),
        public_url: str | None = None,
        cache_ttl: float = 5.0,
        max_body: int = 64 * 1024,
        audit_spill: str | os.PathLike[str] | None = None,
        health_path: str | None = None,
        environ: Mapping[str, str] | None = None,
        dashboard: bool = False,
    ) -> None:
        env = os.environ if environ is None else environ
        self.app = app
        if store is None:
            store = env.get("IGRIS_STORE")
            if not store:
                raise ValueError("no store given: pass store=... or set IGRIS_STORE")
        self.store: Store = store_from_url(store) if isinstance(store, str) else store
        self.crypto: CryptoProvider = (
            crypto
            if crypto is not None and not isinstance(crypto, str)
            else crypto_from_url(crypto or env.get("IGRIS_CRYPTO"), env)
        )
        if isinstance(audit, str):
            audit = build_audit_sink(audit)
        self._audit_store = audit
        self.service = Service(self.store, self.crypto, audit=audit)
        if upstream_timeout is None:
            upstream_timeout = _env_float(env, "IGRIS_UPSTREAM_TIMEOUT", 60.0)
        if upstream_timeout <= 0:
            raise ValueError("upstream_timeout must be positive")
        if cache_ttl <= 0:
            raise ValueError("cache_ttl must be positive")
        self.cache_ttl = cache_ttl
        self._allow_any_origin = "*" in allowed_origins
        self._allowed_origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        self._health_path = (
            health_path if health_path is not None else ("/healthz" if app is None else None)
        )
        self.forwarder = Forwarder(timeout=upstream_timeout)
        self.audit = AuditWriter(self.service.audit, spill_path=audit_spill)
        self.api = ManagementAPI(
            self.service, authenticate=self._authenticate, max_body=max_body, public_url=public_url
        )
        self.dashboard: Any = None
        if dashboard:
            from ._dashboard import Dashboard  # imported only when on: jinja2 loads lazily

            self.dashboard = Dashboard(
                self.service, authenticate=self._authenticate, public_url=public_url
            )
        self._keys: RefreshingCache[bytes, ApiKey | _Missing] = RefreshingCache(
            self._load_key, ttl=cache_ttl
        )
        self._key_hash_by_id: dict[str, bytes] = {}
        self._conns: RefreshingCache[str, _Resolved | _Missing] = RefreshingCache(
            self._load_connection, ttl=cache_ttl, revalidate=self._revalidate_connection
        )
        self._started = False
        self._start_lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return f"IgrisGateway(app={self.app!r}, store={type(self.store).__name__})"

    # -- lifecycle ---------------------------------------------------------
    async def startup(self) -> None:
        """Open the store, the upstream session and the audit writer (idempotent)."""
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            await self.store.open()
            if self._audit_store is not None and self._audit_store is not self.store:
                opener = getattr(self._audit_store, "open", None)
                if opener is not None:
                    await opener()
            self.store.add_listener(self._on_change)
            await self.forwarder.start()
            await self.audit.start()
            self._started = True

    async def aclose(self) -> None:
        """Flush the audit queue and close everything (idempotent)."""
        if not self._started:
            return
        self._started = False
        await self.audit.aclose()
        await self.forwarder.close()
        await self._keys.aclose()
        await self._conns.aclose()
        if self._audit_store is not None and self._audit_store is not self.store:
            closer = getattr(self._audit_store, "close", None)
            if closer is not None:
                await closer()
        await self.store.close()
        await self.crypto.aclose()

    async def __aenter__(self) -> IgrisGateway:
        await self.startup()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- cache loading and invalidation ------------------------------------
    def _on_change(self, change: Change) -> None:
        if change.kind == "all":
            self._conns.clear()
            self._keys.clear()
            self._key_hash_by_id.clear()
        elif change.kind == "connection" and change.key is not None:
            self._conns.invalidate(change.key)
        elif change.kind == "api_key":
            key_hash = self._key_hash_by_id.pop(change.key, None) if change.key else None
            if key_hash is not None:
                self._keys.invalidate(key_hash)
            else:
                # A new key may replace a cached "unknown": forget every negative entry.
                self._keys.clear()
        else:
            self._conns.clear()

    async def _load_key(self, key_hash: bytes) -> ApiKey | _Missing:
        record = await self.store.get_api_key_by_hash(key_hash)
        if record is None:
            return MISSING
        self._key_hash_by_id[record.id] = key_hash
        return record

    async def _load_connection(self, slug: str) -> _Resolved | _Missing:
        try:
            conn = await self.store.get_connection(slug)
        except NotFound:
            return MISSING
        return await self._resolve(conn)

    async def _resolve(self, conn: Connection) -> _Resolved:
        secret = await self.service.open_credential(conn)
        inject = _inject_headers(conn, secret.reveal() if secret is not None else None)
        target = Target(base_url=conn.upstream_url, inject=inject)
        return _Resolved(conn, target)

    async def _revalidate_connection(
        self, slug: str, old: _Resolved | _Missing
    ) -> _Resolved | _Missing:
        try:
            conn = await self.store.get_connection(slug)
        except NotFound:
            return MISSING
        if isinstance(old, _Resolved) and old.connection.version == conn.version:
            return old  # unchanged: no second unwrap
        return await self._resolve(conn)

    async def _authenticate(self, token: str) -> ApiKey:
        """The usable key record for a raw bearer token, from the cache."""
        if not _auth.is_well_formed(token):
            raise Unauthorized("the gateway key is missing or malformed")
        record = await self._keys.get(_auth.hash_key(token))
        if isinstance(record, _Missing) or not record.is_usable(utcnow()):
            raise Unauthorized("the gateway key is unknown, revoked or expired")
        return record

    # -- ASGI ---------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            root = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            if path.startswith(MCP_PREFIX):
                if await self._started_or_refused(send):
                    await self._proxy_request(scope, receive, send, path)
                return
            if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
                if await self._started_or_refused(send):
                    await self.api(scope, receive, send)
                return
            if self.dashboard is not None and (path == "/ui" or path.startswith("/ui/")):
                if await self._started_or_refused(send):
                    await self.dashboard(scope, receive, send)
                return
            if self._health_path is not None and path == self._health_path:
                await _send_json(send, 200, {"status": "ok"})
                return
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if self.app is not None:
            await self.app(scope, receive, send)
        elif kind == "http":
            await _send_json(send, 404, NotFound("no such route").to_json())
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1000, "reason": ""})

    async def _started_or_refused(self, send: Send) -> bool:
        """Start lazily; when the store or crypto cannot start, answer 503."""
        if self._started:
            return True
        try:
            await self.startup()
        except IgrisError as exc:
            log.error("igris-mw cannot start: %s", exc.message)
            err = (
                exc
                if exc.status == 503
                else StoreUnavailable(
                    f"the gateway cannot start: {exc.message}", code=exc.code, retry_after=5
                )
            )
            retry_after = getattr(err, "retry_after", None) or 5
            await _send_json(
                send, 503, err.to_json(), [(b"retry-after", str(retry_after).encode())]
            )
            return False
        return True

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.app is None:
            await self._own_lifespan(receive, send)
            return
        # Run the wrapped app's lifespan with ours around it. If the app has
        # none (it raises or returns at once), finish the protocol ourselves.
        state = {"startup_sent": False, "shutdown_sent": False, "got_shutdown": False}

        async def wrapped_receive() -> Any:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
            elif message["type"] == "lifespan.shutdown":
                state["got_shutdown"] = True
            return message

        async def wrapped_send(message: Any) -> None:
            if message["type"] == "lifespan.startup.complete":
                state["startup_sent"] = True
            elif message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.aclose()
                state["shutdown_sent"] = True
            await send(message)

        try:
            await self.app(scope, wrapped_receive, wrapped_send)
        except Exception:
            if state["startup_sent"]:
                raise
            log.debug("the wrapped app has no lifespan; the gateway runs its own")
        if not state["startup_sent"]:
            try:
                await self.startup()
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": _safe(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
            if not state["got_shutdown"]:
                await self._wait_shutdown(receive)
            await self.aclose()
            await send({"type": "lifespan.shutdown.complete"})
        elif not state["shutdown_sent"]:
            await self.aclose()

    async def _own_lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        try:
            await self.startup()
        except Exception as exc:
            log.error("igris-mw failed to start: %s", _safe(exc))
            await send({"type": "lifespan.startup.failed", "message": _safe(exc)})
            return
        await send({"type": "lifespan.startup.complete"})
        await self._wait_shutdown(receive)
        await self.aclose()
        await send({"type": "lifespan.shutdown.complete"})

    @staticmethod
    async def _wait_shutdown(receive: Receive) -> None:
        while (await receive())["type"] != "lifespan.shutdown":
            pass

    # -- the gateway path ---------------------------------------------------
    def _origin_allowed(self, origin: str, host: str | None) -> bool:
        if self._allow_any_origin:
            return True
        origin = origin.rstrip("/").lower()
        if origin in self._allowed_origins:
            return True
        try:
            netloc = urlsplit(origin).netloc
        except ValueError:
            return False
        return host is not None and netloc == host.lower()

    async def _proxy_request(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        started = time.perf_counter()
        slug = path[len(MCP_PREFIX) :].partition("/")[0]
        method: str = scope["method"]
        fields: dict[str, Any] = {
            "connection": slug,
            "method": method,
            "path": path,
        }
        api_key: ApiKey | None = None
        resolved: _Resolved | None = None
        try:
            headers = _wanted_headers(scope)
            origin = headers.get(b"origin")
            if origin is not None and not self._origin_allowed(origin, headers.get(b"host")):
                raise Forbidden(
                    "this Origin is not allowed to use the gateway", code="origin_not_allowed"
                )
            auth = headers.get(b"authorization") or ""
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise Unauthorized("send the gateway key as 'Authorization: Bearer ig_...'")
            api_key = await self._authenticate(token.strip())
            fields["api_key_id"] = api_key.id
            if not SLUG_RE.match(slug):
                raise NotFound("no such connection")
            if not (KeyScope.ADMIN in api_key.scopes or KeyScope.MCP in api_key.scopes):
                raise Forbidden("this key lacks the 'mcp' scope", code="insufficient_scope")
            if not api_key.allows(slug):
                raise Forbidden(
                    "this key may not use this connection", code="connection_not_allowed"
                )
            found = await self._conns.get(slug)
            if isinstance(found, _Missing):
                raise NotFound("no such connection")
            resolved = found
            fields["credential_version"] = found.connection.credential_version
            if not found.connection.enabled:
                raise Forbidden("this connection is disabled", code="connection_disabled")
            user, metadata = _attribution(headers)
            fields["user"] = user
            fields["metadata"] = metadata
        except IgrisError as exc:
            await self._refuse(scope, send, exc, fields, started, known=resolved is not None)
            return
        except Exception as exc:  # a store or crypto failure on the cold path
            err = _as_unavailable(exc)
            await self._refuse(scope, send, err, fields, started, known=resolved is not None)
            return

        prefix: BodyPrefix | None = None
        if method in ("POST", "PUT", "PATCH"):
            prefix = await read_body_prefix(receive, PEEK_LIMIT)
            if prefix.disconnected:
                self._emit(
                    fields, started, status=499, outcome="client_closed", bytes_in=len(prefix.data)
                )
                return
            rpc = peek_jsonrpc(prefix.data, complete=prefix.complete)
            fields["rpc_method"], fields["tool"] = rpc
        result = await self.forwarder.forward(
            scope,
            receive,
            send,
            resolved.target,
            _raw_subpath(scope, slug),
            gateway_prefix=scope.get("root_path", "") + MCP_PREFIX + slug,
            prefix=prefix,
        )
        self._emit(
            fields,
            started,
            status=result.status,
            outcome=result.outcome,
            bytes_in=result.bytes_in,
            bytes_out=result.bytes_out,
        )

    async def _refuse(
        self,
        scope: Scope,
        send: Send,
        exc: IgrisError,
        fields: dict[str, Any],
        started: float,
        *,
        known: bool,
    ) -> None:
        headers: list[tuple[bytes, bytes]] = []
        if exc.status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="igris-mw"'))
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            headers.append((b"retry-after", str(retry_after).encode()))
        await _send_json(send, exc.status, exc.to_json(), headers)
        outcome = "denied" if exc.status in (401, 403) else exc.code
        if exc.status == 404:
            outcome = "not_found"
        # A refused request is audited on the connection's trail when the
        # connection exists; unknown slugs get no trail (no audit spam).
        if not known:
            known = await self._connection_exists(fields["connection"])
        if known:
            self._emit(fields, started, status=exc.status, outcome=outcome)

    async def _connection_exists(self, slug: str) -> bool:
        if not SLUG_RE.match(slug):
            return False
        try:
            return isinstance(await self._conns.get(slug), _Resolved)
        except Exception:
            # Cannot tell (store down): keep the event rather than lose it.
            return True

    def _emit(self, fields: dict[str, Any], started: float, **more: Any) -> None:
        event = AuditEvent(
            id=new_event_id(),
            timestamp=_now_ms(),
            kind="gateway",
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            **fields,
            **more,
        )
        self.audit.emit(event)


def _now_ms() -> datetime:
    # Audit times are kept to the millisecond: made so here, stores need not
    # rewrite each event before sealing it.
    now = utcnow()
    return now.replace(microsecond=now.microsecond - now.microsecond % 1000)


def _safe(exc: BaseException) -> str:
    if isinstance(exc, IgrisError):
        return exc.message
    return type(exc).__name__


def _as_unavailable(exc: Exception) -> IgrisError:
    if isinstance(exc, IgrisError):
        return exc
    log.error("unexpected error on the gateway path: %s", type(exc).__name__)
    return StoreUnavailable("the store is unavailable", retry_after=1)


def _attribution(headers: Mapping[bytes, str]) -> tuple[str | None, dict[str, Any] | None]:
    user = headers.get(b"x-igris-user")
    if user is not None and (len(user) > _MAX_USER or not user.isprintable()):
        raise BadRequest(f"X-Igris-User must be printable and at most {_MAX_USER} characters")
    raw = headers.get(b"x-igris-metadata")
    if raw is None:
        return user, None
    if len(raw) > _MAX_METADATA:
        raise BadRequest(f"X-Igris-Metadata must be at most {_MAX_METADATA} bytes")
    try:
        metadata = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadRequest("X-Igris-Metadata must be a JSON object") from None
    if not isinstance(metadata, dict):
        raise BadRequest("X-Igris-Metadata must be a JSON object")
    return user, metadata


def _raw_subpath(scope: Scope, slug: str) -> str:
    """The still-encoded path after ``/v1/mcp/<slug>`` (``""`` or ``/...``)."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else scope["path"]
    marker = MCP_PREFIX + slug
    at = path.find(marker)
    rest = path[at + len(marker) :] if at >= 0 else ""
    return rest.split("?", 1)[0]


async def _send_json(
    send: Send,
    status: int,
    body: Any,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode()
    with contextlib.suppress(OSError):
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"cache-control", b"no-store"),
                    *headers,
                ],
                "trailers": False,
            }
        )
        await send({"type": "http.response.body", "body": payload, "more_body": False})
