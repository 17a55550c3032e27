"""The dashboard's ASGI app: routing, sign-in and sign-out, the audit page.

The page handlers live in ``connections.py`` and ``keys.py`` (mixed in);
``http.py`` is the request, its cookies and the response headers.

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
import logging
import re
import traceback
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

import jinja2

from .._asgi import Receive, Scope, Send
from .._audit import new_event_id
from .._errors import Forbidden, IgrisError, NotFound, Unauthorized
from .._service import Service
from ..models import SLUG_RE, ApiKey, AuditEvent
from ..models import Scope as KeyScope
from .audit_view import AUDIT_COLUMNS, global_audit
from .connections import ConnectionPages
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
from .keys import KeyPages
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


class Dashboard(ConnectionPages, KeyPages):
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
        oauth: the gateway's OAuth runtime, for ``Authorize`` on oauth2 connections.
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
        oauth: Any = None,
    ) -> None:
        if sign_in_failures_per_minute < 1:
            raise ValueError("sign_in_failures_per_minute must be at least 1")
        self.service = service
        self.oauth = oauth  # the gateway's OAuthRuntime: consent starts there, as in the API
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
                req.route,
                type(exc).__qualname__,
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
            await self._session_event("sign_in", None, "rate_limited", address)
            return req.login_page(
                429,
                f"Too many failed sign-ins. Try again in {wait} seconds.",
                headers=((b"retry-after", str(wait).encode()),),
            )
        key_text = (form.get("key") or "").strip()
        try:
            if not key_text:
                raise Unauthorized("empty")
            record = await self._authenticate(key_text)
        except Unauthorized:
            self.throttle.fail(address)
            await self._session_event("sign_in", None, "denied", address)
            return req.login_page(
                401, "This key was not accepted: it is unknown, revoked or expired."
            )
        if KeyScope.ADMIN not in record.scopes:
            self.throttle.fail(address)
            await self._session_event("sign_in", record.id, "denied", address)
            return req.login_page(403, "This key has no admin scope. Sign in with an admin key.")
        await self._session_event("sign_in", record.id, "ok", address, strict=True)
        session = self.sessions.create(record.id)
        req.set_session_cookie(session.id)
        req.expire_cookie(LOGIN_COOKIE)
        return req.redirect("/connections")

    async def _h_logout(self, req: Request) -> Response:
        assert req.session is not None
        self.sessions.drop(req.session.id)
        await self._session_event("sign_out", req.session.key_id, "ok", req.client_address)
        req.expire_cookie(SESSION_COOKIE)
        return req.redirect("/login")

    async def _session_event(
        self, action: str, key_id: str | None, outcome: str, address: str, *, strict: bool = False
    ) -> None:
        """Record a sign-in or sign-out on the global audit chain (``connection`` null).

        With ``strict`` (a successful sign-in) a failure to record is raised:
        no session starts that the trail does not show.
        """
        log.info(
            "dashboard %s: outcome=%s key=%s client=%s", action, outcome, key_id or "-", address
        )
        event = AuditEvent(
            id=new_event_id(),
            timestamp=self.service.clock(),
            connection=None,
            kind="dashboard",
            action=action,
            api_key_id=key_id,
            outcome=outcome,
            metadata={"client": address},
        )
        try:
            await self.service.record_event(event)
        except Exception:
            if strict:
                raise
            log.exception("dashboard %s could not be audited", action)

    # -- audit ---------------------------------------------------------------
    async def _h_audit(self, req: Request) -> Response:
        filters, rows, errors, older = await global_audit(self.service, req.query)
        return req.page(
            "audit.html",
            nav="audit",
            filters=filters,
            audit=rows,
            errors=errors,
            columns=AUDIT_COLUMNS,
            live_url=req.url("/audit.json") + _query(filters),
            older=req.url("/audit") + _query({**filters, "cursor": older}) if older else None,
            paged=bool(req.query.get("cursor")),
        )

    async def _h_audit_json(self, req: Request) -> Response:
        _, rows, errors, _ = await global_audit(self.service, req.query)
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
    (rf"/connections/{_SLUG}/authorize", {"POST": "connection_authorize"}),
    (rf"/connections/{_SLUG}/edit", {"GET": "connection_edit_form", "POST": "connection_edit"}),
    (rf"/connections/{_SLUG}/disable", {"POST": "connection_disable"}),
    (rf"/connections/{_SLUG}/enable", {"POST": "connection_enable"}),
    (
        rf"/connections/{_SLUG}/delete",
        {"GET": "connection_delete_form", "POST": "connection_delete"},
    ),
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
