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

import hmac
import json
import logging
import re
import traceback
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

import jinja2

from .._asgi import Receive, Scope, Send
from .._errors import (
    Forbidden,
    IgrisError,
    NotFound,
    SlugTaken,
    Unauthorized,
    ValidationError,
)
from .._service import Service
from ..models import SLUG_RE, ApiKey, Connection
from ..models import Scope as KeyScope
from .audit_view import (
    AUDIT_COLUMNS,
    CONNECTION_AUDIT_COLUMNS,
    PAGE_ROWS,
    audit_row,
    global_audit,
    last_used,
)
from .forms import PEM_FIELDS, errors_for, form_time, pem
from .http import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    Disconnected,
    MethodNotAllowed,
    Request,
    Response,
    Site,
    send_response,
)
from .policy import FEATURES, POLICY_INPUTS, policy_body, policy_values
from .sessions import SessionStore, SignInThrottle

__all__ = ["Dashboard"]

log = logging.getLogger("igris_mw.dashboard")

Authenticator = Callable[[str], Awaitable[ApiKey]]
_HERE = Path(__file__).parent
_STATIC_TYPES: Final = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
_KEY_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
_CONNECTION_FIELDS: Final = (
    "slug", "name", "upstreamUrl", "authType", "headerName", "credential", *PEM_FIELDS,
)
_AUTH_TYPES: Final = ("bearer", "header", "basic", "none")


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
        self.sessions = SessionStore(idle=session_idle, lifetime=session_lifetime)
        self.throttle = SignInThrottle(sign_in_failures_per_minute)
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_HERE / "templates"),
            # The point of the choice: every {{ value }} is HTML-escaped
            # unless a template says otherwise (none does).
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._site = Site(
            service=service,
            sessions=self.sessions,
            env=env,
            public_url=public_url.rstrip("/") if public_url else None,
            max_body=max_body,
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
        req = Request(self._site, scope, receive)
        try:
            response = await self._dispatch(req)
        except Disconnected:
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
        await send_response(send, response, req.set_cookies, head=req.method == "HEAD")

    # -- routing -----------------------------------------------------------
    async def _dispatch(self, req: Request) -> Response:
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
                raise MethodNotAllowed(f"this page allows {', '.join(sorted(methods))}")
            handler: Callable[..., Awaitable[Response]] = getattr(self, "_h_" + handler_name)
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
            params = match.groupdict()
            if "slug" in params and not SLUG_RE.match(params["slug"]):
                raise NotFound("no such connection")
            return await handler(req, **params)
        raise NotFound("no such page")

    # -- sign in / out -------------------------------------------------------
    async def _h_root(self, req: Request) -> Response:
        return req.redirect("/connections")

    async def _h_static(self, req: Request, name: str) -> Response:
        found = self._static.get(name)
        if found is None:
            raise NotFound("no such file")
        body, kind = found
        return Response(200, body, kind, cache=b"public, max-age=300")

    async def _h_login_form(self, req: Request) -> Response:
        if await req.load_session():
            return req.redirect("/connections")
        return req.login_page(200, None)

    async def _h_login(self, req: Request) -> Response:
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

    async def _h_logout(self, req: Request) -> Response:
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
    async def _h_connections(self, req: Request) -> Response:
        cursor = req.query.get("cursor") or None
        try:
            page = await self.service.list_connections(limit=50, cursor=cursor)
        except ValidationError:
            page = await self.service.list_connections(limit=50)
        rows = []
        for conn in page.items:
            rows.append({"conn": conn, "last_used": await last_used(self.service, conn.slug)})
        return req.page(
            "connections.html", nav="connections", rows=rows, next_cursor=page.next_cursor
        )

    async def _h_connection_new(self, req: Request) -> Response:
        return self._connection_form(req, 200, {"authType": "bearer"}, {})

    def _connection_form(
        self, req: Request, status: int, values: Mapping[str, str], errors: Mapping[str, str]
    ) -> Response:
        return req.page(
            "connection_new.html", status=status, nav="connections", values=values,
            errors=errors, auth_types=_AUTH_TYPES,
        )

    async def _h_connection_create(self, req: Request) -> Response:
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
        if FEATURES.tls:
            body.update({k: pem(form[k]) for k in PEM_FIELDS if pem(form.get(k, ""))})
        body.update(policy_body(
            form, rate_limit=FEATURES.connection_rate_limit, tools=FEATURES.connection_tools
        ))
        # Kept for the form on an error, without the credential (write-only).
        values = {
            k: str(v) for k, v in body.items()
            if isinstance(v, str) and k not in ("credential", "clientKey")
        }
        values["enabled"] = "on" if body["enabled"] else ""
        values.update({k: form.get(k, "") for k in POLICY_INPUTS})
        try:
            conn = await self.service.create_connection(body, actor=req.key_id)
        except ValidationError as exc:
            return self._connection_form(req, 422, values, errors_for(exc, _CONNECTION_FIELDS))
        except SlugTaken as exc:
            return self._connection_form(req, 409, values, {"slug": exc.message})
        req.notice(f"Connection {conn.slug} created.")
        return req.redirect(f"/connections/{conn.slug}")

    async def _h_connection(self, req: Request, slug: str) -> Response:
        conn = await self.service.get_connection(slug)
        return await self._connection_page(req, conn, 200, {})

    async def _connection_page(
        self,
        req: Request,
        conn: Connection,
        status: int,
        errors: Mapping[str, str],
        values: Mapping[str, str] | None = None,
    ) -> Response:
        page = await self.service.list_audit(conn.slug, limit=PAGE_ROWS)
        gateway_url = f"{req.base_url()}/v1/mcp/{conn.slug}"
        mcp_servers = json.dumps(
            {"mcpServers": {conn.slug: {
                "url": gateway_url, "headers": {"Authorization": "Bearer ig_..."},
            }}},
            indent=2,
        )
        record = conn.to_json()
        return req.page(
            "connection.html", status=status, nav="connections", conn=conn, record=record,
            policy=values if values is not None else policy_values(record),
            gateway_url=gateway_url, mcp_servers=mcp_servers, errors=errors,
            audit=[audit_row(e, with_connection=False) for e in page.items],
            columns=CONNECTION_AUDIT_COLUMNS,
            live_url=req.url(f"/connections/{conn.slug}/audit.json"),
        )

    async def _h_connection_audit_json(self, req: Request, slug: str) -> Response:
        page = await self.service.list_audit(slug, limit=PAGE_ROWS)
        return req.json({"rows": [audit_row(e, with_connection=False) for e in page.items]})

    async def _h_connection_rotate(self, req: Request, slug: str) -> Response:
        form = await req.form()
        credential = form.get("credential") or None
        identity: dict[str, str] = {}
        if FEATURES.tls:
            for field, arg in (("clientCertificate", "client_certificate"),
                               ("clientKey", "client_key")):
                if pem(form.get(field, "")):
                    identity[arg] = pem(form[field])
        try:
            conn = await self.service.rotate_credential(
                slug, credential, actor=req.key_id, **identity
            )
        except ValidationError as exc:
            current = await self.service.get_connection(slug)
            return await self._connection_page(
                req, current, 422,
                errors_for(exc, ("credential", "clientCertificate", "clientKey"),
                           default="credential"),
            )
        req.notice(f"Credential rotated: {conn.slug} now uses credential version "
                   f"{conn.credential_version}.")
        return req.redirect(f"/connections/{conn.slug}")

    async def _h_connection_policy(self, req: Request, slug: str) -> Response:
        if not FEATURES.connection_policy:
            raise NotFound("no such page")
        form = await req.form()
        changes = policy_body(
            form, rate_limit=FEATURES.connection_rate_limit, tools=FEATURES.connection_tools,
            clear=True,
        )
        try:
            conn = await self.service.update_connection(slug, changes, actor=req.key_id)
        except ValidationError as exc:
            current = await self.service.get_connection(slug)
            values = {k: form.get(k, "") for k in POLICY_INPUTS}
            return await self._connection_page(
                req, current, 422, errors_for(exc, POLICY_INPUTS), values
            )
        req.notice(f"Access policy of {conn.slug} saved.")
        return req.redirect(f"/connections/{conn.slug}")

    async def _h_connection_edit_form(self, req: Request, slug: str) -> Response:
        conn = await self.service.get_connection(slug)
        record = conn.to_json()
        values = {"name": conn.name, "upstreamUrl": conn.upstream_url,
                  "authType": conn.auth_type.value, "headerName": conn.header_name or "",
                  "caCertificate": record.get("caCertificate") or "",
                  "clientCertificate": record.get("clientCertificate") or ""}
        return self._edit_form(req, conn, 200, values, {})

    def _edit_form(
        self,
        req: Request,
        conn: Connection,
        status: int,
        values: Mapping[str, str],
        errors: Mapping[str, str],
    ) -> Response:
        return req.page(
            "connection_edit.html", status=status, nav="connections", conn=conn,
            values=values, errors=errors, auth_types=_AUTH_TYPES,
        )

    async def _h_connection_edit(self, req: Request, slug: str) -> Response:
        form = await req.form()
        values = {k: form.get(k, "") for k in ("name", "upstreamUrl", "authType", "headerName")}
        current = await self.service.get_connection(slug)
        record = current.to_json()
        # Only what changed goes to the service, as a PATCH would send it.
        changes: dict[str, Any] = {}
        if values["name"] != current.name:
            changes["name"] = values["name"]
        if values["upstreamUrl"] != current.upstream_url:
            changes["upstreamUrl"] = values["upstreamUrl"]
        if values["authType"] != current.auth_type.value:
            changes["authType"] = values["authType"]
        if values["headerName"] != (current.header_name or ""):
            changes["headerName"] = values["headerName"] or None
        if FEATURES.tls:
            for field in ("caCertificate", "clientCertificate"):
                values[field] = pem(form.get(field, ""))
                if values[field] != pem(record.get(field) or ""):
                    changes[field] = values[field] or None
        try:
            conn = await self.service.update_connection(slug, changes, actor=req.key_id)
        except ValidationError as exc:
            return self._edit_form(req, current, 422, values, errors_for(exc, _CONNECTION_FIELDS))
        req.notice(f"Connection {conn.slug} saved." if changes else "Nothing changed.")
        return req.redirect(f"/connections/{conn.slug}")

    async def _h_connection_disable(self, req: Request, slug: str) -> Response:
        conn = await self.service.set_enabled(slug, False, actor=req.key_id)
        req.notice(f"Connection {conn.slug} disabled: the gateway refuses it now.")
        return req.redirect(f"/connections/{conn.slug}")

    async def _h_connection_enable(self, req: Request, slug: str) -> Response:
        conn = await self.service.set_enabled(slug, True, actor=req.key_id)
        req.notice(f"Connection {conn.slug} enabled.")
        return req.redirect(f"/connections/{conn.slug}")

    async def _h_connection_delete_form(self, req: Request, slug: str) -> Response:
        conn = await self.service.get_connection(slug)
        return req.page("connection_delete.html", nav="connections", conn=conn, error=None)

    async def _h_connection_delete(self, req: Request, slug: str) -> Response:
        form = await req.form()
        if form.get("confirm") != slug:
            conn = await self.service.get_connection(slug)
            return req.page(
                "connection_delete.html", status=422, nav="connections", conn=conn,
                error="Confirm the deletion with the Delete button on this page.",
            )
        await self.service.delete_connection(slug, actor=req.key_id)
        req.notice(f"Connection {slug} deleted. Its audit trail is kept.")
        return req.redirect("/connections")

    # -- API keys ------------------------------------------------------------
    async def _h_api_keys(self, req: Request) -> Response:
        keys = await self.service.list_api_keys()
        keys = sorted(keys, key=lambda k: k.created_at, reverse=True)
        return req.page("api_keys.html", nav="api-keys", keys=keys)

    async def _api_key_form(
        self, req: Request, status: int, values: Mapping[str, Any], errors: Mapping[str, str]
    ) -> Response:
        page = await self.service.list_connections(limit=200)
        return req.page(
            "api_key_new.html", status=status, nav="api-keys", values=values, errors=errors,
            slugs=[c.slug for c in page.items],
        )

    async def _h_api_key_new(self, req: Request) -> Response:
        return await self._api_key_form(req, 200, {"scope": "mcp", "connections": []}, {})

    async def _h_api_key_create(self, req: Request) -> Response:
        form = await req.form()
        connections = req.form_list("connections")
        values: dict[str, Any] = {
            "name": form.get("name", ""),
            "scope": form.get("scope", "mcp"),
            "connections": connections,
            "expiresAt": form.get("expiresAt", ""),
        }
        values.update({k: form.get(k, "") for k in POLICY_INPUTS})
        body: dict[str, Any] = {"name": values["name"], "scopes": [values["scope"]]}
        if connections:
            body["connections"] = connections
        body.update(policy_body(
            form, rate_limit=FEATURES.key_rate_limit, tools=FEATURES.key_tools,
            max_concurrent=FEATURES.key_max_concurrent,
        ))
        try:
            if values["expiresAt"]:
                body["expiresAt"] = form_time(values["expiresAt"], "expiresAt")
            record, key = await self.service.create_api_key(body)
        except ValidationError as exc:
            errors = errors_for(exc, ("name", "scopes", "connections", "expiresAt"))
            if "scopes" in errors:
                errors = {**errors, "scope": errors["scopes"]}
            return await self._api_key_form(req, 422, values, errors)
        assert req.session is not None
        req.session.flash_key = key
        req.session.flash_key_id = record.id
        return req.redirect("/api-keys/created")

    async def _h_api_key_created(self, req: Request) -> Response:
        session = req.session
        assert session is not None
        key, key_id = session.flash_key, session.flash_key_id
        session.flash_key = session.flash_key_id = None
        if key is None:
            return req.redirect("/api-keys")
        return req.page("api_key_created.html", nav="api-keys", new_key=key, key_id=key_id)

    async def _key_record(self, key_id: str) -> ApiKey:
        if _KEY_ID_RE.match(key_id):
            for record in await self.service.list_api_keys():
                if record.id == key_id:
                    return record
        raise NotFound("no such API key")

    async def _api_key_edit_page(
        self,
        req: Request,
        record: ApiKey,
        status: int,
        values: Mapping[str, Any],
        errors: Mapping[str, str],
    ) -> Response:
        page = await self.service.list_connections(limit=200)
        return req.page(
            "api_key_edit.html", status=status, nav="api-keys", record=record.to_json(),
            values=values, errors=errors, slugs=[c.slug for c in page.items],
        )

    async def _h_api_key_edit_form(self, req: Request, key_id: str) -> Response:
        if not FEATURES.key_policy:
            raise NotFound("no such page")
        record = await self._key_record(key_id)
        j = record.to_json()
        values: dict[str, Any] = {
            "name": record.name,
            "connections": j["connections"] or [],
            "expiresAt": j["expiresAt"][:16] if j["expiresAt"] else "",
            **policy_values(j),
        }
        return await self._api_key_edit_page(req, record, 200, values, {})

    async def _h_api_key_edit(self, req: Request, key_id: str) -> Response:
        if not FEATURES.key_policy:
            raise NotFound("no such page")
        record = await self._key_record(key_id)
        j = record.to_json()
        form = await req.form()
        values: dict[str, Any] = {
            "name": form.get("name", ""),
            "connections": req.form_list("connections"),
            "expiresAt": form.get("expiresAt", ""),
            **{k: form.get(k, "") for k in POLICY_INPUTS},
        }
        # Only what changed goes to the service, as a PATCH would send it.
        changes: dict[str, Any] = {}
        if values["name"] != record.name:
            changes["name"] = values["name"]
        if "mcp" in j["scopes"] and sorted(values["connections"]) != (j["connections"] or []):
            changes["connections"] = values["connections"] or None
        policy_changes = policy_body(
            form, rate_limit=FEATURES.key_rate_limit, tools=FEATURES.key_tools,
            max_concurrent=FEATURES.key_max_concurrent, clear=True,
        )
        changes.update({k: v for k, v in policy_changes.items() if v != j.get(k)})
        try:
            expires = form_time(values["expiresAt"], "expiresAt") if values["expiresAt"] else None
            # Minutes are what the form shows; compare at that precision.
            if (expires or "")[:16] != (j["expiresAt"] or "")[:16]:
                changes["expiresAt"] = expires
            updated = await self.service.update_api_key(record.id, changes)
        except ValidationError as exc:
            errors = errors_for(exc, ("name", "connections", "expiresAt"))
            return await self._api_key_edit_page(req, record, 422, values, errors)
        req.notice(f"API key {updated.name} ({updated.id}) saved." if changes
                   else "Nothing changed.")
        return req.redirect("/api-keys")

    async def _h_api_key_revoke(self, req: Request, key_id: str) -> Response:
        if not _KEY_ID_RE.match(key_id):
            raise NotFound("no such API key")
        record = await self.service.revoke_api_key(key_id)
        self.sessions.drop_key(record.id)
        req.notice(f"API key {record.name} ({record.id}) revoked.")
        return req.redirect("/api-keys")

    # -- audit ---------------------------------------------------------------
    async def _h_audit(self, req: Request) -> Response:
        filters, rows, errors = await global_audit(self.service, req.query)
        return req.page(
            "audit.html", nav="audit", filters=filters, audit=rows, errors=errors,
            columns=AUDIT_COLUMNS, live_url=req.url("/audit.json") + _query(filters),
        )

    async def _h_audit_json(self, req: Request) -> Response:
        _, rows, errors = await global_audit(self.service, req.query)
        return req.json({"rows": rows, "errors": errors})


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
    (rf"/connections/{_SLUG}/policy", {"POST": "connection_policy"}),
    (rf"/connections/{_SLUG}/edit", {"GET": "connection_edit_form", "POST": "connection_edit"}),
    (rf"/connections/{_SLUG}/disable", {"POST": "connection_disable"}),
    (rf"/connections/{_SLUG}/enable", {"POST": "connection_enable"}),
    (rf"/connections/{_SLUG}/delete", {"GET": "connection_delete_form",
                                       "POST": "connection_delete"}),
    (r"/api-keys", {"GET": "api_keys", "POST": "api_key_create"}),
    (r"/new/api-key", {"GET": "api_key_new"}),
    (r"/api-keys/created", {"GET": "api_key_created"}),
    (r"/api-keys/(?P<key_id>[^/]+)/revoke", {"POST": "api_key_revoke"}),
    (r"/api-keys/(?P<key_id>[^/]+)/edit", {"GET": "api_key_edit_form", "POST": "api_key_edit"}),
    (r"/audit", {"GET": "audit"}),
    (r"/audit\.json", {"GET": "audit_json"}),
]


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _query(filters: Mapping[str, str]) -> str:
    kept = {k: v for k, v in filters.items() if v}
    return "?" + urlencode(kept) if kept else ""

