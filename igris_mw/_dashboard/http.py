"""The dashboard's HTTP layer: one request's facts, forms, cookies and responses.

``Request`` holds all per-request state (never the app); ``send_response``
adds the security headers every dashboard response carries.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any, Final
from urllib.parse import parse_qsl, quote, urlsplit

import attrs
import jinja2

from .._asgi import Receive, Scope, Send
from .._errors import (
    Forbidden,
    IgrisError,
    PayloadTooLarge,
    ServiceUnavailable,
)
from .._service import Service
from ..models import ApiKey
from ..models import Scope as KeyScope
from .policy import FEATURES
from .sessions import Session, SessionStore

__all__ = [
    "LOGIN_COOKIE",
    "SESSION_COOKIE",
    "BadForm",
    "Disconnected",
    "MethodNotAllowed",
    "Request",
    "Response",
    "Site",
    "send_response",
]

SESSION_COOKIE: Final = "igris_session"
LOGIN_COOKIE: Final = "igris_login_csrf"
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


@attrs.frozen
class Response:
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: tuple[tuple[bytes, bytes], ...] = ()
    cache: bytes = b"no-store"


@attrs.frozen
class Site:
    """What every request of one dashboard shares."""

    service: Service
    sessions: SessionStore
    env: jinja2.Environment
    public_url: str | None
    max_body: int


class BadForm(IgrisError):
    status = 400
    code = "bad_request"


class MethodNotAllowed(IgrisError):
    status = 405
    code = "method_not_allowed"


class Disconnected(Exception):
    """The browser went away while we read its form."""


class Request:
    """One request: all per-request state lives here, never on the app."""

    def __init__(self, site: Site, scope: Scope, receive: Receive) -> None:
        self.dash = site
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
            path = path[len(root) :]
        self.root = root
        self.local_path = path[len("/ui") :] if path.startswith("/ui") else path
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
        public = self.dash.public_url
        return public is not None and public.startswith("https://")

    def base_url(self) -> str:
        if self.dash.public_url is not None:
            return self.dash.public_url
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
        # "null" is what a browser sends for our own forms: the pages' no-referrer
        # policy serializes the origin as null. The CSRF token and the Strict
        # cookie are the defence there; Origin only adds one where it is given.
        if origin is None or origin == "null":
            return
        try:
            netloc = urlsplit(origin).netloc.lower()
        except ValueError:
            netloc = ""
        host = (self.header(b"host") or "").lower()
        public = urlsplit(self.dash.public_url).netloc.lower() if self.dash.public_url else None
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
            raise BadForm("the form must be sent as application/x-www-form-urlencoded")
        try:
            pairs = parse_qsl(
                raw.decode("utf-8"),
                keep_blank_values=True,
                strict_parsing=False,
                max_num_fields=1000,
            )
        except (UnicodeDecodeError, ValueError):
            raise BadForm("the form is not valid UTF-8 text") from None
        form: dict[str, str] = {}
        for name, value in pairs:
            form.setdefault(name, value)
            self._form_lists.setdefault(name, []).append(value)
        self._form = form
        return form

    def form_list(self, name: str) -> list[str]:
        return list(self._form_lists.get(name, []))

    async def _read_body(self) -> bytes:
        limit = self.dash.max_body
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise Disconnected
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

    def redirect(self, local: str) -> Response:
        location = quote(self.url(local), safe="/:?=&%-_.~")
        return Response(303, b"", headers=((b"location", location.encode("latin-1")),))

    def json(self, payload: Any) -> Response:
        body = json.dumps(payload, separators=(",", ":")).encode()
        return Response(200, body, "application/json")

    def render(self, template: str, **context: Any) -> bytes:
        return (
            self.dash.env.get_template(template)
            .render(
                ui=f"{self.root}/ui",
                session=self.session,
                key=self.key,
                features=FEATURES,
                **context,
            )
            .encode()
        )

    def page(self, template: str, *, status: int = 200, **context: Any) -> Response:
        notice = None
        if self.session is not None and self.method == "GET":
            notice, self.session.notice = self.session.notice, None
        context.setdefault("errors", {})
        return Response(
            status,
            self.render(
                template,
                notice=notice,
                csrf=self.session.csrf if self.session is not None else "",
                **context,
            ),
        )

    def login_page(
        self, status: int, error: str | None, *, headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> Response:
        token = secrets.token_urlsafe(32)
        self.set_cookies.append(self._cookie(LOGIN_COOKIE, token))
        body = self.render("login.html", nav="", csrf=token, error=error, notice=None, errors={})
        return Response(status, body, headers=headers)

    def error_page(self, exc: IgrisError) -> Response:
        headers: tuple[tuple[bytes, bytes], ...] = ()
        if isinstance(exc, MethodNotAllowed):
            allowed = exc.message.rpartition("allows ")[2]
            headers = ((b"allow", allowed.encode()),)
        if isinstance(exc, ServiceUnavailable) and exc.retry_after is not None:
            headers = ((b"retry-after", str(int(exc.retry_after)).encode()),)
        if self.local_path.endswith(".json"):
            body = json.dumps(exc.to_json(), separators=(",", ":")).encode()
            return Response(exc.status, body, "application/json", headers)
        titles = {
            400: "Bad request",
            401: "Not signed in",
            403: "Refused",
            404: "Not found",
            405: "Method not allowed",
            409: "Conflict",
            413: "Too large",
            422: "Invalid input",
            429: "Too many requests",
            503: "Unavailable",
        }
        body = self.render(
            "error.html",
            nav="",
            status=exc.status,
            title=titles.get(exc.status, "Error"),
            message=exc.message,
            notice=None,
            errors={},
            csrf=self.session.csrf if self.session is not None else "",
        )
        return Response(exc.status, body, headers=headers)


async def send_response(send: Send, response: Response, cookies: list[str], *, head: bool) -> None:
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
