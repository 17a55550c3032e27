"""The dashboard's ASGI app: routes, forms, sessions, CSRF and security headers.

Every operation goes through ``Service`` exactly as the management API calls
it (the same validation, the same errors, the same management audit events);
this module only turns forms into the API's JSON bodies, and a
``ValidationError``'s ``field`` into a message next to that form field.

Security, per request: pages need a live session (a random id in an
``HttpOnly``, ``SameSite=Strict`` cookie, ``Secure`` on https) whose admin
key is still usable; every POST carries the session's CSRF token (403
without it) and, when the browser sends ``Origin``, comes from this host;
every response forbids framing and inline script; every string is escaped
by Jinja2's autoescaping.
"""

from __future__ import annotations

import json
import logging
import re
import traceback
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import attrs
import jinja2

from .._asgi import Receive, Scope, Send
from .._errors import (
    Forbidden,
    IgrisError,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    SlugTaken,
    Unauthorized,
    ValidationError,
)
from .._service import Service
from ..models import ApiKey, AuditEvent, Connection, format_time, parse_time
from ..models import Scope as KeyScope
from .sessions import Session, SessionStore, SignInThrottle

__all__ = ["Dashboard"]

log = logging.getLogger("igris_mw.dashboard")

Authenticator = Callable[[str], Awaitable[ApiKey]]
_HERE = Path(__file__).parent
SESSION_COOKIE: Final = "igris_session"
LOGIN_COOKIE: Final = "igris_login_csrf"
_STATIC_TYPES: Final = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_SECURITY_HEADERS: Final = [
    (b"content-security-policy", _CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
_HOST_RE = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?\Z")
_KEY_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
AUDIT_COLUMNS: Final = (
    "Time", "Connection", "Event", "User", "Request", "RPC method", "Tool", "Status",
    "Outcome", "Latency (ms)", "API key", "Credential version", "Metadata",
)
_CONNECTION_FIELDS: Final = ("slug", "name", "upstreamUrl", "authType", "headerName", "credential")
_AUTH_TYPES: Final = ("bearer", "header", "basic", "none")
_PAGE_AUDIT = 50
_GLOBAL_SCAN = 1000  # events read per connection at most, for one global audit page


@attrs.frozen
class _Response:
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: tuple[tuple[bytes, bytes], ...] = ()
    cache: bytes = b"no-store"


class _BadForm(IgrisError):
    status = 400
    code = "bad_request"


class _MethodNotAllowed(IgrisError):
    status = 405
    code = "method_not_allowed"


def _field_message(exc: ValidationError) -> str:
    prefix = f"{exc.field}: "
    text = exc.message[len(prefix):] if exc.message.startswith(prefix) else exc.message
    return text[:1].upper() + text[1:]


def audit_row(event: AuditEvent) -> dict[str, Any]:
    """An event as the table shows it: plain strings, escaped wherever rendered."""
    if event.kind == "gateway":
        what = "gateway request"
    else:
        what = f"{event.kind}: {event.action}" if event.action else event.kind
    request = " ".join(p for p in (event.method, event.path) if p)
    metadata = (
        json.dumps(dict(event.metadata), ensure_ascii=False, sort_keys=True)
        if event.metadata
        else ""
    )
    latency = "" if event.latency_ms is None else f"{event.latency_ms:.1f}"
    cells = [
        format_time(event.timestamp),
        event.connection or "",
        what,
        event.user or "",
        request,
        event.rpc_method or "",
        event.tool or "",
        "" if event.status is None else str(event.status),
        event.outcome,
        latency,
        event.api_key_id or "",
        "" if event.credential_version is None else str(event.credential_version),
        metadata,
    ]
    return {"id": event.id, "outcome": event.outcome, "cells": cells}


class Dashboard:
    """The admin dashboard as an ASGI app, served under ``<root_path>/ui/``.

    Args:
        service: the operations (the same ``Service`` the management API uses).
        authenticate: raw ``ig_`` key -> usable ``ApiKey`` or ``Unauthorized``
            (default ``service.authenticate``; the gateway passes its cached one).
        public_url: the gateway's external base URL, for ``gatewayUrl`` and
            for ``Secure`` cookies behind a TLS-terminating proxy.
        sign_in_failures_per_minute: failed sign-ins allowed per client
            address in a sliding minute; past it, 429.
        session_idle, session_lifetime: seconds a session lives without a
            request, and in all.
        max_body: the largest form body accepted, in bytes.
    """

    def __init__(
        self,
        service: Service,
        *,
        authenticate: Authenticator | None = None,
        public_url: str | None = None,
        sign_in_failures_per_minute: int = 5,
        session_idle: float = 30 * 60,
        session_lifetime: float = 12 * 3600,
        max_body: int = 64 * 1024,
    ) -> None:
        if sign_in_failures_per_minute < 1:
            raise ValueError("sign_in_failures_per_minute must be at least 1")
        self.service = service
        self._authenticate: Authenticator = authenticate or service.authenticate
        self._public_url = public_url.rstrip("/") if public_url else None
        self.sessions = SessionStore(idle=session_idle, lifetime=session_lifetime)
        self.throttle = SignInThrottle(sign_in_failures_per_minute)
        self._max_body = max_body
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_HERE / "templates"),
            # The point of the choice: every {{ value }} is HTML-escaped
            # unless a template says otherwise (none does).
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._static: dict[str, tuple[bytes, str]] = {}
        for path in (_HERE / "static").iterdir():
            kind = _STATIC_TYPES.get(path.suffix)
            if kind is not None and path.is_file():
                self._static[path.name] = (path.read_bytes(), kind)
        self._routes: list[tuple[re.Pattern[str], dict[str, str]]] = [
            (re.compile(pattern + r"\Z"), methods) for pattern, methods in _ROUTES
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": ""})
            return
        req = _Request(self, scope, receive)
        try:
            response = await self._dispatch(req)
        except _Disconnected:
            return
        except IgrisError as exc:
            response = req.error_page(exc)
        except Exception as exc:
            log.error(
                "dashboard %s failed with %s\n%s",
                req.route, type(exc).__qualname__,
                "".join(traceback.format_tb(exc.__traceback__)),
            )
            response = req.error_page(IgrisError("internal error"))
        await _send(send, response, req.set_cookies, head=req.method == "HEAD")

    # -- routing -----------------------------------------------------------
    async def _dispatch(self, req: _Request) -> _Response:
        path = req.local_path
        for pattern, methods in self._routes:
            match = pattern.match(path)
            if match is None:
                continue
            req.route = pattern.pattern
            handler_name = methods.get(req.method)
            if handler_name is None and req.method == "HEAD":
                handler_name = methods.get("GET")
            if handler_name is None:
                raise _MethodNotAllowed(f"this page allows {', '.join(sorted(methods))}")
            handler: Callable[..., Awaitable[_Response]] = getattr(self, "_h_" + handler_name)
            if handler_name not in _PUBLIC:
                if not await req.load_session():
                    if req.method == "GET" and not handler_name.endswith("_json"):
                        return req.redirect("/login")
                    raise Unauthorized("sign in first")
                if req.method == "POST":
                    form = await req.form()
                    req.check_origin()
                    assert req.session is not None
                    if not req.session.csrf_ok(form.get("csrf")):
                        raise Forbidden(
                            "the form is missing its CSRF token or it has expired; "
                            "reload the page and try again",
                            code="csrf_failed",
                        )
            return await handler(req, **match.groupdict())
        raise NotFound("no such page")

    # -- sign in / out -------------------------------------------------------
    async def _h_root(self, req: _Request) -> _Response:
        return req.redirect("/connections")

    async def _h_static(self, req: _Request, name: str) -> _Response:
        found = self._static.get(name)
        if found is None:
            raise NotFound("no such file")
        body, kind = found
        return _Response(200, body, kind, cache=b"public, max-age=300")

    async def _h_login_form(self, req: _Request) -> _Response:
        if await req.load_session():
            return req.redirect("/connections")
        return req.login_page(200, None)

    async def _h_login(self, req: _Request) -> _Response:
        form = await req.form()
        req.check_origin()
        expected = req.cookie(LOGIN_COOKIE)
        token = form.get("csrf")
        if not expected or token is None or not _same(token, expected):
            raise Forbidden(
                "the sign-in form has expired; reload the page and try again",
                code="csrf_failed",
            )
        address = req.client_address
        wait = self.throttle.retry_after(address)
        if wait:
            self._session_event("sign_in", None, "rate_limited", address)
            return req.login_page(
                429, f"Too many failed sign-ins. Try again in {wait} seconds.",
                headers=((b"retry-after", str(wait).encode()),),
            )
        key_text = (form.get("key") or "").strip()
        try:
            if not key_text:
                raise Unauthorized("empty")
            record = await self._authenticate(key_text)
        except Unauthorized:
            self.throttle.fail(address)
            self._session_event("sign_in", None, "denied", address)
            return req.login_page(401, "This key was not accepted: it is unknown, revoked "
                                       "or expired.")
        if KeyScope.ADMIN not in record.scopes:
            self.throttle.fail(address)
            self._session_event("sign_in", record.id, "denied", address)
            return req.login_page(403, "This key has no admin scope. Sign in with an admin key.")
        session = self.sessions.create(record.id)
        self._session_event("sign_in", record.id, "ok", address)
        req.set_session_cookie(session.id)
        req.expire_cookie(LOGIN_COOKIE)
        return req.redirect("/connections")

    async def _h_logout(self, req: _Request) -> _Response:
        assert req.session is not None
        self.sessions.drop(req.session.id)
        self._session_event("sign_out", req.session.key_id, "ok", req.client_address)
        req.expire_cookie(SESSION_COOKIE)
        return req.redirect("/login")

    def _session_event(
        self, action: str, key_id: str | None, outcome: str, address: str
    ) -> None:
        # Recorded in the log only: the audit sink stores no event without a
        # connection yet (the global audit trail adds "connection": null).
        log.info(
            "dashboard %s: outcome=%s key=%s client=%s", action, outcome, key_id or "-", address
        )

    # -- connections ---------------------------------------------------------
    async def _h_connections(self, req: _Request) -> _Response:
        cursor = req.query.get("cursor") or None
        try:
            page = await self.service.list_connections(limit=50, cursor=cursor)
        except ValidationError:
            page = await self.service.list_connections(limit=50)
        rows = []
        for conn in page.items:
            rows.append({"conn": conn, "last_used": await self._last_used(conn.slug)})
        return req.page(
            "connections.html", nav="connections", rows=rows, next_cursor=page.next_cursor
        )

    async def _last_used(self, slug: str) -> str | None:
        # The newest gateway request on the trail (management events skipped).
        cursor: str | None = None
        for _ in range(2):
            page = await self.service.list_audit(slug, limit=100, cursor=cursor)
            for event in page.items:
                if event.kind == "gateway":
                    return format_time(event.timestamp)
            if page.next_cursor is None:
                return None
            cursor = page.next_cursor
        return None

    async def _h_connection_new(self, req: _Request) -> _Response:
        return self._connection_form(req, 200, {"authType": "bearer"}, {})

    def _connection_form(
        self, req: _Request, status: int, values: Mapping[str, str], errors: Mapping[str, str]
    ) -> _Response:
        return req.page(
            "connection_new.html", status=status, nav="connections", values=values,
            errors=errors, auth_types=_AUTH_TYPES,
        )

    async def _h_connection_create(self, req: _Request) -> _Response:
        form = await req.form()
        body: dict[str, Any] = {
            "slug": form.get("slug", ""),
            "name": form.get("name", ""),
            "upstreamUrl": form.get("upstreamUrl", ""),
            "authType": form.get("authType") or "bearer",
            "enabled": form.get("enabled") == "on",
        }
        if form.get("headerName"):
            body["headerName"] = form["headerName"]
        if form.get("credential"):
            body["credential"] = form["credential"]
        # Kept for the form on an error, without the credential (write-only).
        values = {k: str(v) for k, v in body.items() if k not in ("credential", "enabled")}
        values["enabled"] = "on" if body["enabled"] else ""
        try:
            conn = await self.service.create_connection(body, actor=req.key_id)
        except ValidationError as exc:
            return self._connection_form(req, 422, values, _errors_for(exc, _CONNECTION_FIELDS))
        except SlugTaken as exc:
            return self._connection_form(req, 409, values, {"slug": exc.message})
        req.notice(f"Connection {conn.slug} created.")
        return req.redirect(f"/connections/{conn.slug}")

    async def _h_connection(self, req: _Request, slug: str) -> _Response:
        conn = await self.service.get_connection(slug)
        return await self._connection_page(req, conn, 200, {})

    async def _connection_page(
        self, req: _Request, conn: Connection, status: int, errors: Mapping[str, str]
    ) -> _Response:
        page = await self.service.list_audit(conn.slug, limit=_PAGE_AUDIT)
        gateway_url = f"{req.base_url()}/v1/mcp/{conn.slug}"
        mcp_servers = json.dumps(
            {"mcpServers": {conn.slug: {
                "url": gateway_url, "headers": {"Authorization": "Bearer ig_..."},
            }}},
            indent=2,
        )
        return req.page(
            "connection.html", status=status, nav="connections", conn=conn,
            gateway_url=gateway_url, mcp_servers=mcp_servers, errors=errors,
            audit=[audit_row(e) for e in page.items], columns=AUDIT_COLUMNS,
            live_url=req.url(f"/connections/{conn.slug}/audit.json"),
        )

    async def _h_connection_audit_json(self, req: _Request, slug: str) -> _Response:
        page = await self.service.list_audit(slug, limit=_PAGE_AUDIT)
        return req.json({"rows": [audit_row(e) for e in page.items]})

    async def _h_connection_rotate(self, req: _Request, slug: str) -> _Response:
        form = await req.form()
        credential = form.get("credential") or None
        try:
            conn = await self.service.rotate_credential(slug, credential, actor=req.key_id)
        except ValidationError as exc:
            current = await self.service.get_connection(slug)
            return await self._connection_page(
                req, current, 422, _errors_for(exc, ("credential",), default="credential")
            )
        req.notice(f"Credential rotated: {conn.slug} now uses credential version "
                   f"{conn.credential_version}.")
        return req.redirect(f"/connections/{conn.slug}")

    async def _h_connection_disable(self, req: _Request, slug: str) -> _Response:
        conn = await self.service.set_enabled(slug, False, actor=req.key_id)
        req.notice(f"Connection {conn.slug} disabled: the gateway refuses it now.")
        return req.redirect(f"/connections/{conn.slug}")

    async def _h_connection_enable(self, req: _Request, slug: str) -> _Response:
        conn = await self.service.set_enabled(slug, True, actor=req.key_id)
        req.notice(f"Connection {conn.slug} enabled.")
        return req.redirect(f"/connections/{conn.slug}")

    async def _h_connection_delete_form(self, req: _Request, slug: str) -> _Response:
        conn = await self.service.get_connection(slug)
        return req.page("connection_delete.html", nav="connections", conn=conn, error=None)

    async def _h_connection_delete(self, req: _Request, slug: str) -> _Response:
        form = await req.form()
        if form.get("confirm") != slug:
            conn = await self.service.get_connection(slug)
            return req.page(
                "connection_delete.html", status=422, nav="connections", conn=conn,
                error="Type the connection's slug to confirm.",
            )
        await self.service.delete_connection(slug, actor=req.key_id)
        req.notice(f"Connection {slug} deleted. Its audit trail is kept.")
        return req.redirect("/connections")

    # -- API keys ------------------------------------------------------------
    async def _h_api_keys(self, req: _Request) -> _Response:
        keys = await self.service.list_api_keys()
        keys = sorted(keys, key=lambda k: k.created_at, reverse=True)
        return req.page("api_keys.html", nav="api-keys", keys=keys)

    async def _api_key_form(
        self, req: _Request, status: int, values: Mapping[str, Any], errors: Mapping[str, str]
    ) -> _Response:
        page = await self.service.list_connections(limit=200)
        return req.page(
            "api_key_new.html", status=status, nav="api-keys", values=values, errors=errors,
            slugs=[c.slug for c in page.items],
        )

    async def _h_api_key_new(self, req: _Request) -> _Response:
        return await self._api_key_form(req, 200, {"scope": "mcp", "connections": []}, {})

    async def _h_api_key_create(self, req: _Request) -> _Response:
        form = await req.form()
        connections = req.form_list("connections")
        values: dict[str, Any] = {
            "name": form.get("name", ""),
            "scope": form.get("scope", "mcp"),
            "connections": connections,
            "expiresAt": form.get("expiresAt", ""),
        }
        body: dict[str, Any] = {"name": values["name"], "scopes": [values["scope"]]}
        if connections:
            body["connections"] = connections
        try:
            if values["expiresAt"]:
                body["expiresAt"] = _form_time(values["expiresAt"], "expiresAt")
            record, key = await self.service.create_api_key(body)
        except ValidationError as exc:
            errors = _errors_for(exc, ("name", "scopes", "connections", "expiresAt"))
            if "scopes" in errors:
                errors = {**errors, "scope": errors["scopes"]}
            return await self._api_key_form(req, 422, values, errors)
        assert req.session is not None
        req.session.flash_key = key
        req.session.flash_key_id = record.id
        return req.redirect("/api-keys/created")

    async def _h_api_key_created(self, req: _Request) -> _Response:
        session = req.session
        assert session is not None
        key, key_id = session.flash_key, session.flash_key_id
        session.flash_key = session.flash_key_id = None
        if key is None:
            return req.redirect("/api-keys")
        return req.page("api_key_created.html", nav="api-keys", new_key=key, key_id=key_id)

    async def _h_api_key_revoke(self, req: _Request, key_id: str) -> _Response:
        if not _KEY_ID_RE.match(key_id):
            raise NotFound("no such API key")
        record = await self.service.revoke_api_key(key_id)
        self.sessions.drop_key(record.id)
        req.notice(f"API key {record.name} ({record.id}) revoked.")
        return req.redirect("/api-keys")

    # -- audit ---------------------------------------------------------------
    async def _h_audit(self, req: _Request) -> _Response:
        filters, rows, errors = await self._global_audit(req)
        return req.page(
            "audit.html", nav="audit", filters=filters, audit=rows, errors=errors,
            columns=AUDIT_COLUMNS, live_url=req.url("/audit.json") + _query(filters),
        )

    async def _h_audit_json(self, req: _Request) -> _Response:
        _, rows, errors = await self._global_audit(req)
        return req.json({"rows": rows, "errors": errors})

    async def _global_audit(
        self, req: _Request
    ) -> tuple[dict[str, str], list[dict[str, Any]], dict[str, str]]:
        filters = {
            name: req.query.get(name, "").strip() for name in ("slug", "outcome", "user", "since")
        }
        errors: dict[str, str] = {}
        since: datetime | None = None
        if filters["since"]:
            try:
                since = parse_time(_form_time(filters["since"], "since"), field="since")
            except ValidationError as exc:
                errors["since"] = _field_message(exc)
        if errors:
            return filters, [], errors
        if filters["slug"]:
            slugs = [filters["slug"]]
        else:
            slugs = await self.service.audit.audit_connections()
        found: list[AuditEvent] = []
        for slug in slugs:
            try:
                found.extend(await self._scan_audit(slug, since, filters))
            except NotFound:
                errors["slug"] = "No connection or audit trail has this slug."
            except ValidationError as exc:
                errors[exc.field] = _field_message(exc)
        found.sort(key=lambda e: (e.timestamp, e.seq), reverse=True)
        return filters, [audit_row(e) for e in found[:_PAGE_AUDIT * 2]], errors

    async def _scan_audit(
        self, slug: str, since: datetime | None, filters: Mapping[str, str]
    ) -> list[AuditEvent]:
        out: list[AuditEvent] = []
        cursor: str | None = None
        read = 0
        while read < _GLOBAL_SCAN and len(out) < _PAGE_AUDIT * 2:
            page = await self.service.list_audit(slug, limit=200, cursor=cursor, since=since)
            read += len(page.items)
            for event in page.items:
                if filters["outcome"] and event.outcome != filters["outcome"]:
                    continue
                if filters["user"] and event.user != filters["user"]:
                    continue
                out.append(event)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        return out


_PUBLIC: Final = frozenset({"root", "static", "login_form", "login"})
_SLUG = r"(?P<slug>[^/]+)"
_ROUTES: Final = [
    (r"/?", {"GET": "root"}),
    (r"/static/(?P<name>[A-Za-z0-9_.-]+)", {"GET": "static"}),
    (r"/login", {"GET": "login_form", "POST": "login"}),
    (r"/logout", {"POST": "logout"}),
    (r"/connections", {"GET": "connections", "POST": "connection_create"}),
    (r"/new/connection", {"GET": "connection_new"}),
    (rf"/connections/{_SLUG}", {"GET": "connection"}),
    (rf"/connections/{_SLUG}/audit\.json", {"GET": "connection_audit_json"}),
    (rf"/connections/{_SLUG}/rotate", {"POST": "connection_rotate"}),
    (rf"/connections/{_SLUG}/disable", {"POST": "connection_disable"}),
    (rf"/connections/{_SLUG}/enable", {"POST": "connection_enable"}),
    (rf"/connections/{_SLUG}/delete", {"GET": "connection_delete_form",
                                       "POST": "connection_delete"}),
    (r"/api-keys", {"GET": "api_keys", "POST": "api_key_create"}),
    (r"/new/api-key", {"GET": "api_key_new"}),
    (r"/api-keys/created", {"GET": "api_key_created"}),
    (r"/api-keys/(?P<key_id>[^/]+)/revoke", {"POST": "api_key_revoke"}),
    (r"/audit", {"GET": "audit"}),
    (r"/audit\.json", {"GET": "audit_json"}),
]


def _same(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())


def _errors_for(
    exc: ValidationError, fields: tuple[str, ...], *, default: str | None = None
) -> dict[str, str]:
    """The message keyed by the form field it belongs to ("form" when none)."""
    key = exc.field if exc.field in fields else (default or "form")
    return {key: _field_message(exc)}


def _form_time(text: str, field: str) -> str:
    """A datetime-local value (no zone: taken as UTC) or an RFC 3339 time."""
    text = text.strip()
    if re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}\Z", text):
        return text + ":00Z"
    if re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?\Z", text):
        return text + "Z"
    if re.match(r"^\d{4}-\d{2}-\d{2}\Z", text):
        return text + "T00:00:00Z"
    parse_time(text, field=field)
    return text


def _query(filters: Mapping[str, str]) -> str:
    kept = {k: v for k, v in filters.items() if v}
    return "?" + urlencode(kept) if kept else ""


class _Disconnected(Exception):
    """The browser went away while we read its form."""


class _Request:
    """One request: all per-request state lives here, never on the app."""

    def __init__(self, dashboard: Dashboard, scope: Scope, receive: Receive) -> None:
        self.dash = dashboard
        self.scope = scope
        self.receive = receive
        self.method = str(scope["method"]).upper()
        self.route = "<unknown>"
        self.session: Session | None = None
        self.key: ApiKey | None = None
        self.set_cookies: list[str] = []
        self._form: dict[str, str] | None = None
        self._form_lists: dict[str, list[str]] = {}
        root = scope.get("root_path", "") or ""
        path: str = scope["path"]
        if root and path.startswith(root + "/ui"):
            path = path[len(root):]
        self.root = root
        self.local_path = path[len("/ui"):] if path.startswith("/ui") else path
        raw_query = bytes(scope.get("query_string", b"")).decode("latin-1")
        self.query: dict[str, str] = {}
        for name, value in parse_qsl(raw_query, keep_blank_values=True):
            self.query.setdefault(name, value)

    # -- request facts ---------------------------------------------------------
    def header(self, name: bytes) -> str | None:
        for key, value in self.scope["headers"]:
            if bytes(key).lower() == name:
                return bytes(value).decode("latin-1")
        return None

    def cookie(self, name: str) -> str | None:
        raw = self.header(b"cookie")
        if raw is None:
            return None
        for part in raw.split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value
        return None

    @property
    def client_address(self) -> str:
        client = self.scope.get("client")
        return str(client[0]) if client else "unknown"

    @property
    def key_id(self) -> str | None:
        return self.session.key_id if self.session is not None else None

    @property
    def https(self) -> bool:
        if self.scope.get("scheme") == "https":
            return True
        public = self.dash._public_url
        return public is not None and public.startswith("https://")

    def base_url(self) -> str:
        if self.dash._public_url is not None:
            return self.dash._public_url
        scheme = "https" if self.scope.get("scheme") == "https" else "http"
        host = self.header(b"host")
        if host is None or not _HOST_RE.match(host):
            server = self.scope.get("server")
            host = "localhost" if server is None else f"{server[0]}:{server[1]}"
        return f"{scheme}://{host}{self.root}"

    def url(self, local: str) -> str:
        """The absolute path of a dashboard page (``local`` starts with ``/``)."""
        return f"{self.root}/ui{local}"

    def check_origin(self) -> None:
        """Refuse a POST that a browser says came from another site."""
        if (self.header(b"sec-fetch-site") or "same-origin") not in ("same-origin", "none"):
            raise Forbidden("this form came from another site", code="cross_site_request")
        origin = self.header(b"origin")
        if origin is None or origin == "null":
            return
        try:
            netloc = urlsplit(origin).netloc.lower()
        except ValueError:
            netloc = ""
        host = (self.header(b"host") or "").lower()
        public = urlsplit(self.dash._public_url).netloc.lower() if self.dash._public_url else None
        if netloc not in (host, public):
            raise Forbidden("this form came from another site", code="cross_site_request")

    async def load_session(self) -> bool:
        """Find the session and check its admin key is still usable."""
        session = self.dash.sessions.get(self.cookie(SESSION_COOKIE))
        if session is None:
            return False
        keys = await self.dash.service.list_api_keys()
        record = next((k for k in keys if k.id == session.key_id), None)
        if (
            record is None
            or not record.is_usable(self.dash.service.clock())
            or KeyScope.ADMIN not in record.scopes
        ):
            self.dash.sessions.drop(session.id)
            return False
        self.session = session
        self.key = record
        return True

    async def form(self) -> dict[str, str]:
        """The urlencoded body (first value of each name); 400 / 413 / 415 on misuse."""
        if self._form is not None:
            return self._form
        kind = (self.header(b"content-type") or "").split(";", 1)[0].strip().lower()
        raw = await self._read_body()
        if raw and kind != "application/x-www-form-urlencoded":
            raise _BadForm("the form must be sent as application/x-www-form-urlencoded")
        try:
            pairs = parse_qsl(
                raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                max_num_fields=1000,
            )
        except (UnicodeDecodeError, ValueError):
            raise _BadForm("the form is not valid UTF-8 text") from None
        form: dict[str, str] = {}
        for name, value in pairs:
            form.setdefault(name, value)
            self._form_lists.setdefault(name, []).append(value)
        self._form = form
        return form

    def form_list(self, name: str) -> list[str]:
        return list(self._form_lists.get(name, []))

    async def _read_body(self) -> bytes:
        limit = self.dash._max_body
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = bytes(message.get("body", b""))
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the form is larger than {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    # -- responses -------------------------------------------------------------
    def _cookie(self, name: str, value: str, *, max_age: int | None = None) -> str:
        parts = [f"{name}={value}", f"Path={self.root}/ui/", "HttpOnly", "SameSite=Strict"]
        if max_age is not None:
            parts.append(f"Max-Age={max_age}")
        if self.https:
            parts.append("Secure")
        return "; ".join(parts)

    def set_session_cookie(self, session_id: str) -> None:
        self.set_cookies.append(self._cookie(SESSION_COOKIE, session_id))

    def expire_cookie(self, name: str) -> None:
        self.set_cookies.append(self._cookie(name, "", max_age=0))

    def notice(self, text: str) -> None:
        if self.session is not None:
            self.session.notice = text

    def redirect(self, local: str) -> _Response:
        location = quote(self.url(local), safe="/:?=&%-_.~")
        return _Response(303, b"", headers=((b"location", location.encode("latin-1")),))

    def json(self, payload: Any) -> _Response:
        body = json.dumps(payload, separators=(",", ":")).encode()
        return _Response(200, body, "application/json")

    def render(self, template: str, **context: Any) -> bytes:
        return self.dash._env.get_template(template).render(
            ui=f"{self.root}/ui", session=self.session, key=self.key, **context
        ).encode()

    def page(self, template: str, *, status: int = 200, **context: Any) -> _Response:
        notice = None
        if self.session is not None and self.method == "GET":
            notice, self.session.notice = self.session.notice, None
        context.setdefault("errors", {})
        return _Response(
            status,
            self.render(
                template, notice=notice,
                csrf=self.session.csrf if self.session is not None else "", **context,
            ),
        )

    def login_page(
        self, status: int, error: str | None, *, headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> _Response:
        import secrets

        token = secrets.token_urlsafe(32)
        self.set_cookies.append(self._cookie(LOGIN_COOKIE, token))
        body = self.render("login.html", nav="", csrf=token, error=error, notice=None,
                           errors={})
        return _Response(status, body, headers=headers)

    def error_page(self, exc: IgrisError) -> _Response:
        headers: tuple[tuple[bytes, bytes], ...] = ()
        if isinstance(exc, _MethodNotAllowed):
            allowed = exc.message.rpartition("allows ")[2]
            headers = ((b"allow", allowed.encode()),)
        if isinstance(exc, ServiceUnavailable) and exc.retry_after is not None:
            headers = ((b"retry-after", str(int(exc.retry_after)).encode()),)
        if self.local_path.endswith(".json"):
            body = json.dumps(exc.to_json(), separators=(",", ":")).encode()
            return _Response(exc.status, body, "application/json", headers)
        titles = {
            400: "Bad request", 401: "Not signed in", 403: "Refused", 404: "Not found",
            405: "Method not allowed", 409: "Conflict", 413: "Too large", 422: "Invalid input",
            429: "Too many requests", 503: "Unavailable",
        }
        body = self.render(
            "error.html", nav="", status=exc.status, title=titles.get(exc.status, "Error"),
            message=exc.message, notice=None, errors={},
            csrf=self.session.csrf if self.session is not None else "",
        )
        return _Response(exc.status, body, headers=headers)


async def _send(send: Send, response: _Response, cookies: list[str], *, head: bool) -> None:
    headers = [
        (b"content-type", response.content_type.encode()),
        (b"content-length", str(len(response.body)).encode()),
        (b"cache-control", response.cache),
        *_SECURITY_HEADERS,
        *response.headers,
    ]
    headers.extend((b"set-cookie", c.encode("latin-1")) for c in cookies)
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    body = b"" if head else response.body
    await send({"type": "http.response.body", "body": body, "more_body": False})
