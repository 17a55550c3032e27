"""``IgrisGateway``: the pure ASGI middleware: dispatch and the gateway path's policy.

Requests under ``/v1/mcp/`` are proxied (authenticate the ``ig_`` key,
check origin, scope and connection, peek the JSON-RPC body, forward,
audit); requests under ``/api/v1/`` go to the management API; every other
scope (HTTP, websocket, and the wrapped app's own lifespan) passes straight
through. ``app=None`` makes it a standalone app.

What it delegates: key and connection resolution with their caches to
``_resolver``, start-up and the lifespan protocol to ``_lifespan``, the
forwarding to ``_proxy``, the audit queue to ``_audit``, JSON answers to
``_responses``. Per-request state lives in locals of ``_proxy_request``,
never on ``self``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final, overload
from urllib.parse import urlsplit

from . import _auth
from ._access import (
    AccessPolicy,
    DenialAggregator,
    LegacyStreams,
    TooManyRequests,
    _StreamWatch,
    client_address,
    plainly_allowed,
    tools_response_filter,
)
from ._api import ManagementAPI
from ._asgi import Receive, Scope, Send, local_path
from ._audit import PEEK_LIMIT, AuditWriter, build_audit_sink, new_event_id, peek_jsonrpc
from ._audit.events import safe_event, safe_fields
from ._errors import (
    AuditUnavailable,
    BadRequest,
    ConfigurationError,
    Forbidden,
    IgrisError,
    NotFound,
    PayloadTooLarge,
    StoreUnavailable,
    Unauthorized,
    UserCredentialMissing,
    UserMismatch,
    ValidationError,
)
from ._jsonrpc import prefix_method
from ._lifespan import Lifecycle
from ._oauth.errors import GrantMissing
from ._oauth.gateway import OAuthRuntime
from ._ops.access import Reply, access_line, access_log, current_request_id
from ._ops.readiness import Readiness
from ._plugins import crypto_from_url, store_from_url
from ._policy.egress import EgressPolicy
from ._policy.ratelimit import AuthFailureThrottle, RateLimitStore, open_rate_limit_store
from ._policy.tools import ToolPolicy, check_mcp_headers, check_request, combine
from ._proxy import (
    BodyFilterFactory,
    BodyPrefix,
    Forwarder,
    ProxyResult,
    Target,
)
from ._proxy.forward import RequestTimeout
from ._proxy.outbound import UpstreamProxy, parse_upstream_proxy
from ._proxy.tls import ContextCache
from ._resolver import Resolver, _Missing, _Resolved
from ._responses import for_anonymous, send_error, send_json
from ._service import AuditSink, Service
from ._settings import Settings
from ._tls_material import load_ca_file
from .crypto import CryptoProvider
from .models import SLUG_RE, ApiKey, AuditEvent, Secret, utcnow
from .models import Scope as KeyScope
from .storage import Store

__all__ = ["IgrisGateway"]

log = logging.getLogger("igris_mw.gateway")

MCP_PREFIX: Final = "/v1/mcp/"
# The metrics label of a request to a slug that is no connection (_ops.metrics).
_UNKNOWN_CONNECTION: Final = "_unknown"
# How much of a request body the gateway reads to judge it (tool policy,
# Mcp-* headers) before anything is sent upstream.
JUDGE_LIMIT: Final = 1024 * 1024
API_PREFIX: Final = "/api/v1"
_MAX_USER = 256
_MAX_METADATA = 4096


_WANTED_HEADERS = frozenset(
    {
        b"origin",
        b"host",
        b"authorization",
        b"x-igris-user",
        b"x-igris-metadata",
        b"mcp-method",
        b"mcp-name",
    }
)


def _wanted_headers(scope: Scope) -> dict[bytes, str]:
    """The first value of each header the gateway reads, in one pass over the list."""
    found: dict[bytes, str] = {}
    for key, value in scope["headers"]:
        name = key.lower()
        if name in _WANTED_HEADERS and name not in found:
            found[name] = bytes(value).decode("latin-1")
    return found


def _egress_settings(
    settings: Settings,
    ca_file: str | os.PathLike[str] | None,
    proxy: str | None,
) -> tuple[ContextCache, UpstreamProxy | None]:
    """The TLS contexts and the forward proxy from the arguments, else the settings.

    Raises:
        ConfigurationError: the CA file cannot be read or used, or the proxy
            URL is not ``http://host:port`` (the message never shows its password).
    """
    ca_file = ca_file if ca_file is not None else settings.upstream_ca_file
    proxy = proxy if proxy is not None else settings.upstream_proxy
    try:
        ca_pem = load_ca_file(ca_file, "IGRIS_UPSTREAM_CA_FILE") if ca_file else None
        parsed = parse_upstream_proxy(proxy, "IGRIS_UPSTREAM_PROXY") if proxy else None
    except ValidationError as exc:
        raise ConfigurationError(exc.message) from None
    return ContextCache(ca_file_pem=ca_pem), parsed


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
        max_stale: seconds a cached key or connection is served after its
            last successful check while the store cannot be reached (default
            ``IGRIS_MAX_STALE`` or 60); past it, 503 ``store_unavailable``.
        rate_limit_store: where rate-limit buckets live: ``None`` (default
            ``IGRIS_RATE_LIMIT_STORE``, else this process) or a
            ``redis://host:port/db`` URL shared by every replica.
        auth_failures_per_minute: failed authentications one client address
            may make in a minute before it gets 429 (default
            ``IGRIS_AUTH_FAILURES_PER_MINUTE`` or 30).
        max_body: largest management API request body, in bytes.
        audit_spill: JSON-lines file for audit events the sink cannot take yet.
        health_path: a path answered with ``{"status": "ok"}``
            (default ``/healthz`` when standalone, none when wrapping an app).
        audit_failure: ``"closed"`` (default ``IGRIS_AUDIT_FAILURE`` or
            closed): when the audit sink is down and the spill can take
            nothing more, gateway requests get 503 ``audit_unavailable`` and
            nothing goes upstream; ``"open"``: they are served and their
            events dropped (counted, logged). See ``docs/audit-delivery.md``.
        audit_spill_max: bound on the spill file, bytes (default
            ``IGRIS_AUDIT_SPILL_MAX`` or 1 GiB).
        ready_path: a path answered 200 when the store answers and the audit
            keeps up, else 503 with the reasons (default ``/readyz`` when
            standalone, none when wrapping an app).
        metrics: collect Prometheus metrics (``metrics_app`` serves them;
            taking ``metrics_app`` turns collection on too).
        tracer_provider: an OpenTelemetry ``TracerProvider`` for request
            spans; by default one exporting by OTLP when
            ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set and the ``otel`` extra is
            installed, else none (no tracing, no cost).
        upstream_ca_file: a PEM file of CA certificates trusted for every
            ``https://`` upstream in addition to the system's (default
            ``IGRIS_UPSTREAM_CA_FILE``); a connection's ``caCertificate`` adds more.
        upstream_proxy: ``http://[user:password@]host:port`` of a forward proxy
            for all upstream traffic (default ``IGRIS_UPSTREAM_PROXY``); the
            process's ``HTTP(S)_PROXY`` is never used.
        max_request_body: the largest request body on gateway paths, in
            bytes (default ``IGRIS_MAX_REQUEST_BODY`` or 8 MiB); past it 413
            ``request_too_large``.
        stream_idle_timeout: seconds an upstream response may send nothing
            before it is closed (default ``IGRIS_STREAM_IDLE_TIMEOUT`` or 300).
        allow_upstream_networks: CIDRs upstreams may reach although they are
            internal (loopback, private, link-local, ...); default
            ``IGRIS_ALLOW_UPSTREAM_NETWORKS``, else none. Cloud metadata
            endpoints stay refused whatever is allowed (docs/egress.md).
        upstream_ca_file: a PEM file of CA certificates trusted for every
            ``https://`` upstream in addition to the system's (default
            ``IGRIS_UPSTREAM_CA_FILE``); a connection's ``caCertificate`` adds more.
        upstream_proxy: ``http://[user:password@]host:port`` of a forward proxy
            for all upstream traffic (default ``IGRIS_UPSTREAM_PROXY``); the
            process's ``HTTP(S)_PROXY`` is never used.
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
        ready_path: str | None = None,
        metrics: bool = False,
        tracer_provider: Any = None,
        environ: Mapping[str, str] | None = None,
        audit_failure: str | None = None,
        audit_spill_max: int | None = None,
        max_stale: float | None = None,
        rate_limit_store: str | RateLimitStore | None = None,
        auth_failures_per_minute: int | None = None,
        allow_upstream_networks: str | Sequence[str] | None = None,
        max_request_body: int | None = None,
        stream_idle_timeout: float | None = None,
        upstream_ca_file: str | os.PathLike[str] | None = None,
        upstream_proxy: str | None = None,
        dashboard: bool = False,
    ) -> None:
        env = os.environ if environ is None else environ
        settings = Settings.from_env(env)
        self.app = app
        if store is None:
            store = settings.store
            if not store:
                raise ConfigurationError("no store given: pass store=... or set IGRIS_STORE")
        self.store: Store = store_from_url(store) if isinstance(store, str) else store
        self.crypto: CryptoProvider = (
            crypto
            if crypto is not None and not isinstance(crypto, str)
            else crypto_from_url(crypto or settings.crypto_url, settings.crypto_environ(env))
        )
        audit = audit if audit is not None else settings.audit
        if audit is None and not self.store.capabilities.audit:
            raise ConfigurationError(
                f"the {type(self.store).__name__} keeps no audit events: pass audit= "
                "(a jsonl:///path/audit.jsonl URL, or a store URL that keeps them) "
                "or set IGRIS_AUDIT"
            )
        if isinstance(audit, str):
            audit = build_audit_sink(audit)
        self._audit_store = audit
        self.egress = EgressPolicy.from_setting(
            settings.allow_upstream_networks
            if allow_upstream_networks is None
            else allow_upstream_networks
        )
        self.service = Service(self.store, self.crypto, audit=audit, egress=self.egress)
        if upstream_timeout is None:
            upstream_timeout = settings.upstream_timeout
        if upstream_timeout <= 0:
            raise ValueError("upstream_timeout must be positive")
        if max_stale is None:
            max_stale = settings.max_stale
        if not max_stale > 0:
            raise ValueError("max_stale must be positive")
        tls_contexts, proxy = _egress_settings(settings, upstream_ca_file, upstream_proxy)
        self.resolver = Resolver(
            self.store, self.service, ttl=cache_ttl, max_stale=max_stale, tls=tls_contexts
        )
        self._work = self.resolver.open_work
        self.cache_ttl = cache_ttl
        self._allow_any_origin = "*" in allowed_origins
        self._allowed_origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        self._health_path = (
            health_path if health_path is not None else ("/healthz" if app is None else None)
        )
        self._ready_path = (
            ready_path if ready_path is not None else ("/readyz" if app is None else None)
        )
        if max_request_body is None:
            max_request_body = settings.max_request_body
        if stream_idle_timeout is None:
            stream_idle_timeout = settings.stream_idle_timeout
        self.forwarder = Forwarder(
            timeout=upstream_timeout,
            ssl=tls_contexts.default,
            proxy=proxy,
            egress=self.egress,
            max_body=max_request_body,
            idle_timeout=stream_idle_timeout,
        )
        if rate_limit_store is None or isinstance(rate_limit_store, str):
            rate_limit_store = open_rate_limit_store(rate_limit_store or settings.rate_limit_store)
        self.rate_limits: RateLimitStore = rate_limit_store
        self.access = AccessPolicy(
            rate_limit_store,
            AuthFailureThrottle(auth_failures_per_minute or settings.auth_failures_per_minute),
        )
        failure = audit_failure or settings.audit_failure
        if failure not in ("closed", "open"):
            raise ConfigurationError(f"audit_failure must be 'closed' or 'open', got {failure!r}")
        self.audit = AuditWriter(
            self.service.audit,
            spill_path=audit_spill,
            failure="closed" if failure == "closed" else "open",
            max_spill_bytes=audit_spill_max or settings.audit_spill_max,
        )
        self.oauth = OAuthRuntime(
            self.store,
            self.crypto,
            open_credential=self.service.open_credential,
            on_event=self._oauth_event,
            egress=self.egress,
        )
        self._public_url = public_url.rstrip("/") if public_url else None
        self._denials = DenialAggregator(self.audit.emit)
        self._legacy = LegacyStreams()
        self.readiness = Readiness(self.store, self.audit)
        self._metrics: Any = None
        if metrics:
            self._enable_metrics()
        self._tracing: Any = _tracing(tracer_provider, env)
        self.api = ManagementAPI(
            self.service,
            oauth=self.oauth,
            authenticate=self.resolver.authenticate,
            max_body=max_body,
            public_url=public_url,
        )
        self.dashboard: Any = None
        if dashboard:
            from ._dashboard import Dashboard  # imported only when on: jinja2 loads lazily

            self.dashboard = Dashboard(
                self.service,
                authenticate=self.resolver.authenticate,
                public_url=public_url,
                oauth=self.oauth,
            )
        # Bound once: the hot path calls these without going through the resolver.
        self._authenticate = self.resolver.authenticate
        self._conns = self.resolver.connections
        self._life = Lifecycle(self._open, self._close)

    def __repr__(self) -> str:
        return f"IgrisGateway(app={self.app!r}, store={type(self.store).__name__})"

    # -- operations -----------------------------------------------------------
    def _enable_metrics(self) -> Any:
        if self._metrics is None:
            from ._ops.metrics import Metrics

            metrics = Metrics()
            metrics.watch_audit(self.audit)
            self._metrics = metrics
        return self._metrics

    @property
    def metrics(self) -> Any:
        """The gateway's ``igris_mw._ops.metrics.Metrics``, or ``None`` while
        metrics are off (``metrics=True`` or taking ``metrics_app`` turns them on)."""
        return self._metrics

    @property
    def metrics_app(self) -> Any:
        """An ASGI app answering ``GET`` with the Prometheus exposition; mount
        it (e.g. at ``/metrics``) on a listener the public cannot reach.
        Taking it turns metric collection on."""
        return self._enable_metrics().app

    # -- lifecycle (the protocol and the lazy start live in _lifespan) -------
    @property
    def _started(self) -> bool:
        return self._life.started

    async def startup(self) -> None:
        """Open the store, the upstream session and the audit writer (idempotent)."""
        await self._life.startup()

    async def aclose(self) -> None:
        """Flush the audit queue and close everything (idempotent)."""
        await self._life.shutdown()

    async def __aenter__(self) -> IgrisGateway:
        await self.startup()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _open(self) -> None:
        await self.store.open()
        if self._audit_store is not None and self._audit_store is not self.store:
            opener = getattr(self._audit_store, "open", None)
            if opener is not None:
                await opener()
        await self.service.use_audit_key()
        self.resolver.attach()
        await self.forwarder.start()
        await self.audit.start()
        if self._metrics is not None:
            await self._metrics.start()

    async def _close(self) -> None:
        self._denials.flush()
        if self._metrics is not None:
            await self._metrics.aclose()
        await self.audit.aclose()
        if self._tracing is not None:
            self._tracing.shutdown()
        await self.access.close()
        await self.forwarder.close()
        await self.oauth.aclose()
        await self.resolver.aclose()
        if self._audit_store is not None and self._audit_store is not self.store:
            closer = getattr(self._audit_store, "close", None)
            if closer is not None:
                await closer()
        await self.store.close()
        await self.crypto.aclose()

    # -- dispatch -------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = local_path(scope)
            if path.startswith(MCP_PREFIX):
                if self._life.started or await self._life.ensure_started(send):
                    await self._proxy_request(scope, receive, send, path)
                return
            if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
                if self._life.started or await self._life.ensure_started(send):
                    await self.api(scope, receive, send)
                return
            if self.dashboard is not None and (path == "/ui" or path.startswith("/ui/")):
                if self._life.started or await self._life.ensure_started(send):
                    await self.dashboard(scope, receive, send)
                return
            if self._health_path is not None and path == self._health_path:
                await send_json(send, 200, {"status": "ok"})
                return
            if self._ready_path is not None and path == self._ready_path:
                if self._life.started or await self._life.ensure_started(send):
                    await self.readiness.respond(send)
                return
        elif kind == "lifespan":
            await self._life.run(self.app, scope, receive, send)
            return
        if self.app is not None:
            await self.app(scope, receive, send)
        elif kind == "http":
            await send_error(send, NotFound("no such route"))
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1000, "reason": ""})

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
        """Admit the request (policy), peek its JSON-RPC body, forward it, audit it.

        One coroutine from admission to the audit event (every await layer
        costs on each resumption), and one send layer (``Reply``: the request
        id header, and how far the response got, for ending a revoked request).
        """
        started = time.perf_counter()
        slug = path[len(MCP_PREFIX) :].partition("/")[0]
        request_id = new_event_id()
        # Reset after: a host may run the next app in this same task.
        id_token = current_request_id.set(request_id)
        reply = Reply(send, request_id, self._metrics)
        try:
            method: str = scope["method"]
            fields: dict[str, Any] = {
                "id": request_id,
                "connection": slug,
                "method": method,
                "path": path,
            }
            resolved: _Resolved | None = None
            oauth_token: Secret | None = None
            access = self.access
            # Admission: each step raises the refusal it stands for. The two lookups
            # are awaited here, not in a helper, to keep the warm path at two awaits.
            try:
                if self.audit.failing_closed:
                    raise AuditUnavailable(
                        "the audit trail cannot record requests now; nothing was sent upstream",
                        retry_after=5,
                    )
                headers = _wanted_headers(scope)
                origin = headers.get(b"origin")
                if origin is not None and not self._origin_allowed(origin, headers.get(b"host")):
                    raise Forbidden(
                        "this Origin is not allowed to use the gateway", code="origin_not_allowed"
                    )
                throttled = access.blocked(scope)
                if throttled is not None:
                    raise throttled
                token = _auth.bearer_token(headers.get(b"authorization"))
                if token is None:
                    raise Unauthorized("send the gateway key as 'Authorization: Bearer ig_...'")
                api_key = await self._authenticate(token)
                fields["api_key_id"] = api_key.id
                _check_key_may_use(api_key, slug)
                found = await self._conns.get(slug)
                if isinstance(found, _Missing):
                    raise NotFound("no such connection")
                resolved = found
                target = _usable_target(found, fields)
                # Kept (made safe in _emit) even when _attribution refuses it.
                fields["user"] = headers.get(b"x-igris-user")
                fields["user"], fields["metadata"] = _attribution(headers)
                conn = found.connection
                if api_key.rate_limit is not None or conn.rate_limit is not None:
                    await access.check_rate(api_key, conn)
                if (
                    api_key.max_concurrent is not None
                    and self._work.count_for_key(api_key.id) >= api_key.max_concurrent
                ):
                    raise TooManyRequests(
                        f"this API key has {api_key.max_concurrent} requests open already",
                        code="too_many_concurrent",
                    )
                if api_key.user is not None:
                    if fields["user"] is not None and fields["user"] != api_key.user:
                        raise UserMismatch(
                            "this key acts for its own user only: X-Igris-User names another"
                        )
                    fields["user"] = api_key.user
                if found.connection.credential_scope == "per_user":
                    target, oauth_token = await self._per_user_target(
                        scope, slug, found, target, fields["user"]
                    )
                elif found.oauth is not None:
                    target, oauth_token = await self.oauth.target(slug, target, found.oauth)
            except IgrisError as exc:
                if exc.status == 401:
                    access.auth_failed(client_address(scope))
                refusal = exc
                if exc.status >= 500 and "api_key_id" not in fields:
                    # Not authenticated yet: the detail (store path, host) goes to the log only.
                    log.warning("gateway path: %s before authentication: %s", exc.code, exc.message)
                    refusal = for_anonymous(exc)
                await self._refuse(
                    scope, reply, refusal, fields, started, known=resolved is not None
                )
                return
            except Exception as exc:  # a store or crypto failure on the cold path
                err = _as_unavailable(exc)
                if "api_key_id" not in fields:
                    err = for_anonymous(err)  # a 503 for someone not yet authenticated
                await self._refuse(scope, reply, err, fields, started, known=resolved is not None)
                return

            # From here on the request is open work: a revocation ends it (_openwork).
            ticket = self._work.open(api_key.id, slug, conn.created_at, api_key.expires_at)
            result: ProxyResult | None = None
            policed = conn.tools is not None or api_key.tools is not None
            watch: _StreamWatch | None = None
            try:
                prefix: BodyPrefix | None = None
                body_filter: BodyFilterFactory | None = None
                if method in ("POST", "PUT", "PATCH"):
                    mcp_headers = (headers.get(b"mcp-method"), headers.get(b"mcp-name"))
                    judged = policed or mcp_headers != (None, None)
                    # Judging a body needs all of it: read further than the audit peek.
                    prefix = await self.forwarder.read_prefix(
                        receive, JUDGE_LIMIT if judged else PEEK_LIMIT
                    )
                    if prefix.timed_out:
                        stalled = RequestTimeout("the request body stalled; send it without pauses")
                        await self._refuse(scope, reply, stalled, fields, started, known=True)
                        return
                    if prefix.disconnected:
                        self._emit(
                            fields,
                            started,
                            status=499,
                            outcome="client_closed",
                            bytes_in=len(prefix.data),
                        )
                        return
                    fields["rpc_method"], fields["tool"] = peek_jsonrpc(
                        prefix.data, complete=prefix.complete
                    )
                    if judged:
                        session = None
                        if policed and len(self._legacy):
                            session = self._legacy.session_of(scope.get("query_string", b""))
                        answered, body_filter = await self._judge_body(
                            reply,
                            prefix,
                            (conn.tools, api_key.tools) if policed else None,
                            mcp_headers,
                            (slug, session),
                            fields,
                            started,
                        )
                        if answered:
                            return
                elif policed and method == "GET":
                    # A legacy SSE stream carries the answers to POSTed requests:
                    # filter every tools list on it, and let a denied call be
                    # answered onto it (LegacyStreams).
                    reply.lock = asyncio.Lock()
                    check = combine(conn.tools, api_key.tools)
                    assert check is not None
                    watch = self._legacy.watch(
                        slug, reply.inject, tools_response_filter(None, check)
                    )
                    body_filter = watch.factory
                if body_filter is not None:
                    scope = _without_accept_encoding(scope)
                gateway_prefix = scope.get("root_path", "") + MCP_PREFIX + slug
                subpath = _raw_subpath(scope, slug)
                forwarded_at = time.perf_counter()
                if self._tracing is None:
                    result = await self.forwarder.forward(
                        scope,
                        receive,
                        reply,
                        target,
                        subpath,
                        gateway_prefix=gateway_prefix,
                        prefix=prefix,
                        body_filter=body_filter,
                    )
                else:
                    result = await self._tracing.forward(
                        self.forwarder.forward,
                        scope,
                        receive,
                        reply,
                        target,
                        subpath,
                        gateway_prefix=gateway_prefix,
                        prefix=prefix,
                        body_filter=body_filter,
                        fields=fields,
                        started=started,
                        body=prefix.data if prefix is not None and prefix.complete else None,
                    )
            except asyncio.CancelledError:
                if not ticket.revoked:
                    raise
            finally:
                self._work.close(ticket)
                if watch is not None:
                    watch.close()
            if ticket.revoked:
                result = await _end_revoked(reply, result)
            assert result is not None
            # The upstream refused the token (answered 401, relayed as 502
            # upstream_auth_failed): drop it, so the next request gets a fresh one.
            if oauth_token is not None and (
                result.status == 401 or result.outcome == "upstream_auth_failed"
            ):
                per_user = conn.credential_scope == "per_user"
                self.oauth.refused(
                    slug, oauth_token, user=(fields["user"] or "") if per_user else ""
                )
            # The upstream answered when the response started and the forwarder
            # did not make the answer itself (a 502/504 carries result.error).
            answered_at = reply.started_at if result.error is None else None
            self._emit(
                fields,
                started,
                upstream_seconds=answered_at - forwarded_at if answered_at is not None else None,
                status=result.status,
                outcome=result.outcome,
                bytes_in=result.bytes_in,
                bytes_out=result.bytes_out,
            )
        finally:
            reply.close()
            current_request_id.reset(id_token)

    async def _judge_body(
        self,
        send: Send,
        prefix: BodyPrefix,
        policies: tuple[ToolPolicy | None, ToolPolicy | None] | None,
        mcp_headers: tuple[str | None, str | None],
        session: tuple[str, str | None],
        fields: dict[str, Any],
        started: float,
    ) -> tuple[bool, BodyFilterFactory | None]:
        """Mcp-Method/Mcp-Name agreement and the tool policy on a request body.

        Returns ``(True, None)`` when the gateway answered the request itself
        (nothing goes upstream), else ``(False, the response filter or None)``.
        """
        try:
            if not prefix.complete:
                if policies is not None:
                    raise PayloadTooLarge(
                        f"a request under a tool policy must fit in {JUDGE_LIMIT} bytes"
                    )
                # Too long to parse whole: Mcp-Method against the top-level method
                # of what was read (the audit records null for such a body).
                peeked = prefix_method(prefix.data)
                if (
                    mcp_headers[0] is not None
                    and peeked is not None
                    and _utf8(mcp_headers[0]).strip() != peeked
                ):
                    raise BadRequest(
                        "the Mcp-Method header does not match the body", code="header_mismatch"
                    )
                return False, None
            if mcp_headers != (None, None):
                check_mcp_headers(_utf8(mcp_headers[0]), _utf8(mcp_headers[1]), prefix.data)
        except IgrisError as exc:
            await send_error(send, exc)
            self._emit(fields, started, status=exc.status, outcome=exc.code)
            return True, None
        if policies is None or plainly_allowed(
            prefix.data, fields.get("rpc_method"), fields.get("tool"), *policies
        ):
            return False, None
        tools = combine(*policies)
        assert tools is not None
        verdict = check_request(prefix.data, tools)
        if verdict.reply is None:
            if verdict.list_ids:
                return False, tools_response_filter(verdict.list_ids, tools)
            return False, None
        outcome = "tool_denied" if verdict.denied else "bad_request"
        status = verdict.status
        slug, session_id = session
        # Legacy transport: the answer goes onto the session's stream.
        if (
            status == 200
            and session_id is not None
            and await self._legacy.answer(slug, session_id, verdict.reply)
        ):
            status = 202
        if status == 202:
            await send_json(send, 202, None)
        else:
            await send_json(send, status, verdict.reply)
        self._emit(
            fields,
            started,
            status=status,
            outcome=outcome,
            bytes_in=len(prefix.data),
            bytes_out=len(verdict.reply),
        )
        return True, None

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
        await send_error(send, exc)
        if exc.code == AuditUnavailable.code:
            return  # its event would only grow the queue that cannot drain
        outcome = "denied" if exc.status in (401, 403) else exc.code
        if exc.status == 404:
            outcome = "not_found"
        # A refused request is audited on the connection's trail when the
        # connection exists; unknown slugs get no trail (no audit spam).
        exists: bool | None = True
        if not known:
            exists = await self._connection_exists(fields["connection"])
        # Cannot tell (None: store down): keep the event rather than lose it,
        # but count it under no connection (a random slug adds no series).
        labelled = exists is True
        if exists is False:
            self._observe(fields, started, None, False, exc.status, outcome)
        elif exc.status in (401, 429):
            # Floods of these are counted, not written one by one.
            self._denials.refused(self._event(fields, started, exc.status, outcome))
            self._observe(fields, started, None, labelled, exc.status, outcome)
        else:
            self._emit(fields, started, labelled=labelled, status=exc.status, outcome=outcome)
        if self._tracing is not None:
            self._tracing.refused(scope, fields, started, exc.status, outcome)

    async def _connection_exists(self, slug: str) -> bool | None:
        """Whether ``slug`` is a connection; ``None`` when the store cannot tell."""
        if not SLUG_RE.match(slug):
            return False
        try:
            return isinstance(await self._conns.get(slug), _Resolved)
        except Exception:
            return None

    async def _per_user_target(
        self, scope: Scope, slug: str, found: _Resolved, base: Target, user: str | None
    ) -> tuple[Target, Secret | None]:
        """The Target carrying ``user``'s own credential or token on a per_user connection.

        Raises:
            UserCredentialMissing: no user, or none stored for this user (for
                oauth2: with the URL where that user consents).
        """
        if user is None:
            raise UserCredentialMissing(
                "this connection holds a credential per end user: send X-Igris-User, "
                "or use a key bound to a user"
            )
        if found.oauth is not None:
            try:
                return await self.oauth.target(slug, base, found.oauth, user=user)
            except GrantMissing:
                url = await self.oauth.begin(
                    slug, found.oauth, redirect_uri=self._callback_url(scope), user=user
                )
                raise UserCredentialMissing(
                    "this user has not authorized this connection yet: open authorizeUrl",
                    authorize_url=url,
                ) from None
        target = await self.resolver.user_target(found, base, user)
        if target is None:
            raise UserCredentialMissing("this connection holds no credential for this user")
        return target, None

    def _callback_url(self, scope: Scope) -> str:
        """``<public base>/api/v1/oauth/callback``: configured, else from the request."""
        if self._public_url is not None:
            return f"{self._public_url}{API_PREFIX}/oauth/callback"
        host = _wanted_headers(scope).get(b"host") or "localhost"
        scheme = "https" if scope.get("scheme") == "https" else "http"
        return f"{scheme}://{host}{scope.get('root_path', '')}{API_PREFIX}/oauth/callback"

    def _oauth_event(self, slug: str, user: str, action: str, result: str) -> None:
        """Audit one OAuth token request or consent of ``slug`` (its result, never a token);
        count token requests in ``igris_credential_refresh_total``."""
        if action == "oauth_token" and self._metrics is not None:
            self._metrics.credential_refresh(slug, result)  # unknown results count as failed
        self.audit.emit(
            safe_event(  # the user may come from X-Igris-User
                AuditEvent(
                    id=new_event_id(),
                    timestamp=_now_ms(),
                    connection=slug,
                    kind="credential",
                    action=action,
                    user=user or None,
                    outcome=result,
                )
            )
        )

    def _event(
        self, fields: dict[str, Any], started: float, status: int, outcome: str
    ) -> AuditEvent:
        return AuditEvent(
            timestamp=_now_ms(),
            kind="gateway",
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            status=status,
            outcome=outcome,
            **safe_fields(fields),
        )

    def _emit(
        self,
        fields: dict[str, Any],
        started: float,
        *,
        upstream_seconds: float | None = None,
        labelled: bool = True,
        **more: Any,
    ) -> None:
        event = AuditEvent(
            timestamp=_now_ms(),
            kind="gateway",
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            **safe_fields(fields),
            **more,
        )
        self.audit.emit(event)
        self._observe(fields, started, upstream_seconds, labelled, more["status"], more["outcome"])

    def _observe(
        self,
        fields: dict[str, Any],
        started: float,
        upstream_seconds: float | None,
        labelled: bool,
        status: int,
        outcome: str,
    ) -> None:
        """Metrics and the access line for one gateway request."""
        now = time.perf_counter()
        if self._metrics is not None:
            self._metrics.request(
                fields["connection"] if labelled else _UNKNOWN_CONNECTION,
                outcome,
                now - started,
                upstream_seconds,
            )
        if not access_log.isEnabledFor(logging.INFO):
            return  # off: not even the call and its arguments
        access_line(
            fields["id"],
            connection=fields["connection"],
            api_key_id=fields.get("api_key_id"),
            user=fields.get("user"),
            method=fields["method"],
            path=fields["path"],
            outcome=outcome,
            status=status,
            latency_ms=round((now - started) * 1000, 3),
        )


async def _end_revoked(reply: Reply, result: ProxyResult | None) -> ProxyResult:
    """Finish the client's response of a request whose key or connection was
    revoked while it was open (its upstream request is closed already)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        task.uncancel()
    if reply.ended and result is not None:
        return result  # it completed before the revocation could cut it
    out = result if result is not None else ProxyResult()
    out.outcome = "revoked"
    if reply.status == 0:
        out.status = 403
        await send_error(
            reply.unlocked,
            Forbidden("access was revoked while the request was open", code="revoked"),
        )
        return out
    out.status = reply.status
    with contextlib.suppress(OSError, RuntimeError):
        # Ends the stream: the client sees its response close.
        await reply.unlocked({"type": "http.response.body", "body": b"", "more_body": False})
    return out


@overload
def _utf8(value: str) -> str: ...
@overload
def _utf8(value: None) -> None: ...
def _utf8(value: str | None) -> str | None:
    """A header value read as latin-1 (as every header here is), decoded as UTF-8."""
    if value is None:
        return None
    return value.encode("latin-1").decode("utf-8", "replace")


def _without_accept_encoding(scope: Scope) -> Scope:
    """The scope without ``Accept-Encoding``: an answer to be filtered must come
    uncompressed (the gateway does not decompress)."""
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"accept-encoding"]
    return {**scope, "headers": headers}


def _tracing(tracer_provider: Any, environ: Mapping[str, str]) -> Any:
    """The request tracer, or ``None`` (nothing imported) when tracing is off."""
    if tracer_provider is None:
        from ._ops import endpoint_configured

        if not endpoint_configured(environ):
            return None
    try:
        from ._ops.tracing import Tracing
    except ImportError:
        log.warning("tracing needs the otel extra (pip install 'igris-mw[otel]'); it is off")
        return None
    if tracer_provider is not None:
        return Tracing(tracer_provider)
    return Tracing.from_env(environ)


def _now_ms() -> datetime:
    # Audit times are kept to the millisecond: made so here, stores need not
    # rewrite each event before sealing it.
    now = utcnow()
    return now.replace(microsecond=now.microsecond - now.microsecond % 1000)


def _check_key_may_use(api_key: ApiKey, slug: str) -> None:
    """Refuse unless ``api_key`` may use connection ``slug`` (404 for a malformed slug)."""
    if not SLUG_RE.match(slug):
        raise NotFound("no such connection")
    if not (KeyScope.ADMIN in api_key.scopes or KeyScope.MCP in api_key.scopes):
        raise Forbidden("this key lacks the 'mcp' scope", code="insufficient_scope")
    if not api_key.allows(slug):
        raise Forbidden("this key may not use this connection", code="connection_not_allowed")


def _usable_target(found: _Resolved, fields: dict[str, Any]) -> Target:
    """The connection's target, unless it is disabled (403) or its credential
    cannot be opened (503 ``crypto_unavailable``: nothing goes upstream)."""
    fields["credential_version"] = found.connection.credential_version
    if not found.connection.enabled:
        raise Forbidden("this connection is disabled", code="connection_disabled")
    if found.target is None:
        raise found.unusable()
    return found.target


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
