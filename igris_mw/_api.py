"""The management REST API under ``/api/v1``: a pure ASGI app over ``Service``.

Per request: route (404 / 405 with ``Allow``), authenticate the bearer key
and require the ``admin`` scope (401 / 403), read the body within
``max_body`` (413 from ``Content-Length`` before reading, or as soon as a
chunked body passes the limit), parse it (400), refuse unknown fields
(422), then call the service. Every error is ``{"error": {"code",
"message"}}``; nothing of a request's body or headers is logged or echoed.
The routes and the OpenAPI document come from one table (``_openapi.py``).
"""

from __future__ import annotations

import json
import logging
import re
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

from ._asgi import Receive, Scope, Send, local_path
from ._auth import bearer_token
from ._errors import (
    BadRequest,
    Forbidden,
    IgrisError,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    ValidationError,
)
from ._oauth.config import OAUTH_AUTH_TYPES, oauth_status
from ._openapi import OPERATIONS, REQUEST_FIELDS, Operation, build_document
from ._responses import error_body, error_headers, for_anonymous, send_json
from ._service import Service
from ._user_credentials import UserCredentials
from ._validation import parse_user
from .models import ApiKey, AuthType, Connection, Page, parse_time, validate_slug
from .models import Scope as KeyScope

if TYPE_CHECKING:
    from ._oauth.gateway import OAuthRuntime

__all__ = ["ManagementAPI"]

logger = logging.getLogger("igris_mw.api")

PREFIX = "/api/v1"
Authenticator = Callable[[str], Awaitable[ApiKey]]
_Result = tuple[int, Any]

_HOST_RE = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?\Z")
_FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,39}\Z")


class _MethodNotAllowed(IgrisError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, allow: list[str]) -> None:
        super().__init__(f"this endpoint allows {', '.join(allow)}")
        self.allow = allow


class _UnsupportedMediaType(IgrisError):
    status = 415
    code = "unsupported_media_type"


class _Disconnected(Exception):
    """The client went away while we were reading its body."""


def _compile(template: str) -> re.Pattern[str]:
    pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
    return re.compile(f"^{pattern}\\Z")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # {"credential": "a", "credential": "b"} means different things to
            # different parsers; refuse rather than pick one.
            raise ValueError("duplicate key")
        out[key] = value
    return out


def _bad_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class ManagementAPI:
    """The management API as an ASGI app (mount it at ``/api/v1`` paths).

    Args:
        service: the operations to expose.
        authenticate: turns a raw bearer token into a usable ``ApiKey`` or
            raises ``Unauthorized`` (default: ``service.authenticate``; the
            gateway passes its cached authenticator).
        max_body: the largest request body accepted, in bytes.
        public_url: the gateway's external base URL, for ``gatewayUrl``;
            without it the URL is built from the request's scheme, ``Host``
            and ``root_path`` (set it behind a proxy).

    Raises:
        ValueError: ``max_body`` is not a positive int, or ``public_url`` is
            not an http(s) URL with a host.
    """

    def __init__(
        self,
        service: Service,
        *,
        authenticate: Authenticator | None = None,
        max_body: int = 65536,
        public_url: str | None = None,
        oauth: OAuthRuntime | None = None,
    ) -> None:
        if not isinstance(max_body, int) or isinstance(max_body, bool) or max_body < 1:
            raise ValueError("max_body must be a positive int")
        if public_url is not None:
            if not re.match(r"^https?://[^/?#@\s]+(/[^?#\s]*)?\Z", public_url):
                raise ValueError("public_url must be an http(s) URL with a host, no query")
            public_url = public_url.rstrip("/")
        self._service = service
        self._authenticate: Authenticator = authenticate or service.authenticate
        self._max_body = max_body
        self._public_url = public_url
        self._oauth = oauth
        self._users = UserCredentials(service)
        # Imported here: the package's __init__ may import this module.
        from . import __version__

        self._document = build_document(OPERATIONS, version=__version__)
        self._document_bytes = json.dumps(self._document, separators=(",", ":")).encode()
        table: dict[str, dict[str, Operation]] = {}
        for op in OPERATIONS:
            table.setdefault(op.path, {})[op.method] = op
        self._routes = [(_compile(path), methods) for path, methods in table.items()]

    @property
    def routes(self) -> frozenset[tuple[str, str]]:
        """Every ``(path template, METHOD)`` this app serves."""
        return frozenset((op.path, method) for _, ops in self._routes for method, op in ops.items())

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI 3.1 document served at ``/api/v1/openapi.json``."""
        result: dict[str, Any] = json.loads(self._document_bytes)
        return result

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await _Exchange(self, scope, receive, send).run()
        elif scope["type"] == "lifespan":
            # Served on its own (tests, embedding); the gateway owns real lifespan work.
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": ""})

    # -- handlers: each returns (status, JSON body or None) ----------------

    async def _h_create_connection(self, ex: _Exchange) -> _Result:
        body = await ex.json_body("ConnectionCreate", check_fields=False)
        conn = await self._service.create_connection(body, actor=ex.actor)
        return 201, await self._connection_json(conn, ex.base_url())

    async def _h_list_connections(self, ex: _Exchange) -> _Result:
        page = await self._service.list_connections(limit=ex.limit(), cursor=ex.query_str("cursor"))
        base = ex.base_url()
        data = [await self._connection_json(c, base) for c in page.items]
        return 200, {"data": data, "nextCursor": page.next_cursor}

    async def _h_get_connection(self, ex: _Exchange) -> _Result:
        conn = await self._service.get_connection(ex.slug())
        return 200, await self._connection_json(conn, ex.base_url())

    async def _h_update_connection(self, ex: _Exchange) -> _Result:
        slug = ex.slug()
        body = await ex.json_body("ConnectionUpdate", check_fields=False)
        conn = await self._service.update_connection(slug, body, actor=ex.actor)
        return 200, await self._connection_json(conn, ex.base_url())

    async def _h_delete_connection(self, ex: _Exchange) -> _Result:
        await self._service.delete_connection(ex.slug(), actor=ex.actor)
        return 204, None

    async def _h_rotate_credential(self, ex: _Exchange) -> _Result:
        slug = ex.slug()
        body = await ex.json_body("RotateRequest")
        if "credential" not in body and "clientKey" not in body and "clientCertificate" not in body:
            raise ValidationError("credential", "is required")
        conn = await self._service.rotate_credential(
            slug,
            body.get("credential"),
            actor=ex.actor,
            auth_type=body.get("authType"),
            header_name=body.get("headerName"),
            client_certificate=body.get("clientCertificate"),
            client_key=body.get("clientKey"),
        )
        return 200, await self._connection_json(conn, ex.base_url())

    async def _h_disable_connection(self, ex: _Exchange) -> _Result:
        return await self._set_enabled(ex, False)

    async def _h_enable_connection(self, ex: _Exchange) -> _Result:
        return await self._set_enabled(ex, True)

    async def _set_enabled(self, ex: _Exchange, enabled: bool) -> _Result:
        slug = ex.slug()
        await ex.json_body("Empty", required=False)
        conn = await self._service.set_enabled(slug, enabled, actor=ex.actor)
        return 200, await self._connection_json(conn, ex.base_url())

    async def _h_list_audit(self, ex: _Exchange) -> _Result:
        slug = ex.slug()
        since_text = ex.query_str("since")
        since = parse_time(since_text, field="since") if since_text is not None else None
        page = await self._service.list_audit(
            slug, limit=ex.limit(), cursor=ex.query_str("cursor"), since=since
        )
        return 200, _page_json(page, lambda e: e.to_json())

    async def _h_list_all_audit(self, ex: _Exchange) -> _Result:
        page = await self._service.list_all_audit(
            **{f: ex.query_str(f) for f in ("slug", "kind", "action", "outcome", "user")},
            since=ex.query_str("since"),
            limit=ex.limit(),
            cursor=ex.query_str("cursor"),
        )
        return 200, _page_json(page, lambda e: e.to_json())

    async def _h_create_api_key(self, ex: _Exchange) -> _Result:
        body = await ex.json_body("ApiKeyCreate", check_fields=False)
        record, key = await self._service.create_api_key(body, actor=ex.actor)
        return 201, {**record.to_json(), "key": key}

    async def _h_list_api_keys(self, ex: _Exchange) -> _Result:
        keys = await self._service.list_api_keys()
        return 200, {"data": [k.to_json() for k in keys], "nextCursor": None}

    async def _h_update_api_key(self, ex: _Exchange) -> _Result:
        body = await ex.json_body("ApiKeyUpdate", check_fields=False)
        record = await self._service.update_api_key(ex.params["id"], body, actor=ex.actor)
        return 200, record.to_json()

    async def _h_revoke_api_key(self, ex: _Exchange) -> _Result:
        await self._service.revoke_api_key(ex.params["id"], actor=ex.actor)
        return 204, None

    async def _connection_json(self, conn: Connection, base_url: str) -> dict[str, Any]:
        """The contract's connection JSON; OAuth connections add their grant's status."""
        out = conn.to_json(base_url=base_url)
        if conn.auth_type.value in OAUTH_AUTH_TYPES:
            out.update(oauth_status(await self._service.store.get_oauth_grant(conn.slug)))
        return out

    async def _h_authorize_connection(self, ex: _Exchange) -> _Result:
        slug = ex.slug()
        await ex.json_body("Empty", required=False)
        conn = await self._service.get_connection(slug)
        if conn.credential_scope == "per_user":
            raise ValidationError(
                "credentialScope",
                "a per_user connection is authorized per user: "
                "POST .../users/{user}/oauth/authorize",
            )
        return await self._authorize(ex, conn, "")

    async def _authorize(self, ex: _Exchange, conn: Connection, user: str) -> _Result:
        slug = conn.slug
        if conn.auth_type is not AuthType.OAUTH2:
            raise ValidationError("authType", "only an oauth2 connection is authorized by consent")
        if self._oauth is None:
            raise NotFound("OAuth consent is served by the gateway only")
        from ._oauth.gateway import OAuthConnection

        target = OAuthConnection.of(conn, await self._service.open_credential(conn))
        assert target is not None
        url = await self._oauth.begin(
            slug, target, redirect_uri=f"{ex.base_url()}{PREFIX}/oauth/callback", user=user
        )
        return 200, {"authorizeUrl": url}

    async def _h_list_users(self, ex: _Exchange) -> _Result:
        return 200, {"data": await self._users.list(ex.slug())}

    async def _h_put_user_credential(self, ex: _Exchange) -> _Result:
        slug = ex.slug()
        body = await ex.json_body("UserCredentialPut")
        return 200, await self._users.put(slug, ex.params["user"], body, actor=ex.actor)

    async def _h_delete_user_credential(self, ex: _Exchange) -> _Result:
        await self._users.delete(ex.slug(), ex.params["user"], actor=ex.actor)
        return 204, None

    async def _h_authorize_user(self, ex: _Exchange) -> _Result:
        slug = ex.slug()
        user = parse_user(ex.params["user"])
        await ex.json_body("Empty", required=False)
        conn = await self._service.get_connection(slug)
        if conn.credential_scope != "per_user":
            raise ValidationError("credentialScope", "this connection is not per_user")
        return await self._authorize(ex, conn, user)

    async def _h_oauth_callback(self, ex: _Exchange) -> _Result:
        from ._oauth.page import callback_page

        if self._oauth is None:
            raise NotFound("OAuth consent is served by the gateway only")
        try:
            slug, user = await self._oauth.complete(ex._query())
        except IgrisError as exc:
            page = callback_page(ok=False, slug=None, user=None, message=exc.message)
            return exc.status, HtmlPage(page)
        return 200, HtmlPage(callback_page(ok=True, slug=slug, user=user, message=""))

    async def _h_openapi(self, ex: _Exchange) -> _Result:
        return 200, self._document_bytes


class HtmlPage:
    """A handler's HTML answer (the OAuth callback page), sent with its own headers."""

    __slots__ = ("body",)

    def __init__(self, body: bytes) -> None:
        self.body = body

    async def send(self, send: Send, status: int) -> None:
        from ._oauth.page import PAGE_HEADERS

        headers = [*PAGE_HEADERS, (b"content-length", str(len(self.body)).encode())]
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": self.body, "more_body": False})
        except OSError:
            return


def _page_json(page: Page[Any], render: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    return {"data": [render(item) for item in page.items], "nextCursor": page.next_cursor}


class _Exchange:
    """One request/response: all per-request state lives here, never on the app."""

    __slots__ = ("actor", "api", "params", "receive", "route", "scope", "send")

    def __init__(self, api: ManagementAPI, scope: Any, receive: Receive, send: Send) -> None:
        self.api = api
        self.scope = scope
        self.receive = receive
        self.send = send
        self.params: dict[str, str] = {}
        self.actor: str | None = None
        self.route = "<unknown>"

    async def run(self) -> None:
        started = time.perf_counter()
        headers: list[tuple[bytes, bytes]] = []
        try:
            status, payload = await self._dispatch()
        except _Disconnected:
            logger.debug("management %s %s: client went away", self.method, self.route)
            return
        except IgrisError as exc:
            if self.actor is None:
                exc = for_anonymous(exc)  # no store path or host for the unauthenticated
            status, payload = exc.status, error_body(exc)
            headers = error_headers(exc)
            if isinstance(exc, _MethodNotAllowed):
                headers.append((b"allow", ", ".join(exc.allow).encode()))
        except Exception as exc:
            # Only the type and the frames (source lines, no values): an
            # unexpected exception's message may hold anything.
            logger.error(
                "management %s %s failed with %s\n%s",
                self.method,
                self.route,
                type(exc).__qualname__,
                "".join(traceback.format_tb(exc.__traceback__)),
            )
            status = 500
            payload = {"error": {"code": "internal_error", "message": "internal error"}}
        await self._respond(status, payload, headers)
        logger.debug(
            "management %s %s -> %d in %.1f ms",
            self.method,
            self.route,
            status,
            (time.perf_counter() - started) * 1000,
        )

    @property
    def method(self) -> str:
        return str(self.scope["method"]).upper()

    async def _respond(self, status: int, payload: Any, extra: list[tuple[bytes, bytes]]) -> None:
        if isinstance(payload, HtmlPage):
            await payload.send(self.send, status)
            return
        await send_json(self.send, status, payload, extra)

    def _match(self) -> tuple[dict[str, str], dict[str, Operation]] | None:
        path = local_path(self.scope)
        for pattern, ops in self.api._routes:
            match = pattern.match(path)
            if match is not None:
                return match.groupdict(), ops
        # A parameter may hold an escaped '/' (an end user's id such as
        # "org/alice"): match the still-escaped path, then unescape the values.
        raw = self.scope.get("raw_path")
        if raw and b"%2f" in bytes(raw).lower():
            escaped = local_path({**self.scope, "path": bytes(raw).decode("latin-1")})
            for pattern, ops in self.api._routes:
                match = pattern.match(escaped.split("?", 1)[0])
                if match is not None:
                    return {k: unquote(v) for k, v in match.groupdict().items()}, ops
        return None

    async def _dispatch(self) -> _Result:
        found = self._match()
        if found is not None:
            params, ops = found
            op = ops.get(self.method)
            if op is None:
                raise _MethodNotAllowed(sorted(ops))
            self.route = op.path
            self.params = params
            if not op.public:
                key = await self._authorize()
                self.actor = key.id
            handler: Callable[[_Exchange], Awaitable[_Result]] = getattr(
                self.api, "_h_" + op.handler
            )
            return await handler(self)
        raise NotFound("no such endpoint", code="not_found")

    # -- request helpers ---------------------------------------------------

    def header(self, name: bytes) -> str | None:
        for key, value in self.scope["headers"]:
            if key.lower() == name:
                return bytes(value).decode("latin-1")
        return None

    async def _authorize(self) -> ApiKey:
        raw = self.header(b"authorization")
        if raw is None:
            raise Unauthorized("a gateway key is required: Authorization: Bearer ig_...")
        token = bearer_token(raw)
        if token is None:
            raise Unauthorized("the Authorization header must be 'Bearer ig_...'")
        key = await self.api._authenticate(token)
        if KeyScope.ADMIN not in key.scopes:
            raise Forbidden("this key lacks the admin scope", code="insufficient_scope")
        return key

    def slug(self) -> str:
        return validate_slug(self.params["slug"])

    def _query(self) -> dict[str, str]:
        raw = bytes(self.scope.get("query_string", b"")).decode("latin-1")
        out: dict[str, str] = {}
        for name, value in parse_qsl(raw, keep_blank_values=True):
            out.setdefault(name, value)
        return out

    def query_str(self, name: str) -> str | None:
        value = self._query().get(name)
        if value is not None and not value:
            raise ValidationError(name, "must not be empty")
        return value

    def limit(self) -> int:
        text = self.query_str("limit")
        if text is None:
            return 50
        if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 200:
            raise ValidationError("limit", "must be an integer from 1 to 200")
        return int(text)

    def base_url(self) -> str:
        if self.api._public_url is not None:
            return self.api._public_url
        scheme = "https" if self.scope.get("scheme") in ("https", "wss") else "http"
        host = self.header(b"host")
        if host is None or not _HOST_RE.match(host):
            server = self.scope.get("server")
            if server is None:
                host = "localhost"
            else:
                name, port = server[0], server[1]
                name = f"[{name}]" if ":" in str(name) else str(name)
                default = 443 if scheme == "https" else 80
                host = name if port in (None, default) else f"{name}:{port}"
        return f"{scheme}://{host}{self.scope.get('root_path', '') or ''}"

    async def _read_body(self) -> bytes:
        limit = self.api._max_body
        declared = self.header(b"content-length")
        if declared is not None:
            declared = declared.strip()
            if not (declared.isascii() and declared.isdigit()):
                raise BadRequest("Content-Length is not a number", code="bad_request")
            if int(declared) > limit:
                raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            if message["type"] != "http.request":
                continue
            chunk = bytes(message.get("body", b""))
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def json_body(
        self, schema: str, *, required: bool = True, check_fields: bool = True
    ) -> dict[str, Any]:
        """The body as a JSON object; with ``check_fields``, only ``schema``'s fields.

        The service checks the fields of the bodies it parses itself (with
        hints such as "use rotate"); the API checks the ones it builds.
        """
        content_type = self.header(b"content-type")
        if content_type is not None:
            media = content_type.split(";", 1)[0].strip().lower()
            if media != "application/json" and not media.endswith("+json"):
                raise _UnsupportedMediaType("the body must be application/json")
        raw = await self._read_body()
        if not raw.strip():
            if required:
                raise BadRequest("a JSON object body is required", code="invalid_body")
            return {}
        try:
            value = json.loads(
                raw, object_pairs_hook=_reject_duplicates, parse_constant=_bad_constant
            )
        except json.JSONDecodeError as exc:
            raise BadRequest(
                f"the body is not valid JSON (line {exc.lineno}, column {exc.colno})",
                code="invalid_json",
            ) from None
        except (ValueError, RecursionError):
            raise BadRequest("the body is not valid JSON", code="invalid_json") from None
        if _SURROGATE_ESCAPE.search(raw) is not None and _has_lone_surrogate(value):
            # Valid JSON syntax but no Unicode text: no store could keep it (a 500 before).
            raise BadRequest(
                "the body holds a lone UTF-16 surrogate escape, which is not valid Unicode",
                code="invalid_json",
            )
        if not isinstance(value, dict):
            raise BadRequest("the body must be a JSON object", code="invalid_body")
        if check_fields:
            allowed = REQUEST_FIELDS[schema]
            for name in value:
                if name in allowed:
                    continue
                # Name the field only when it looks like one: a pasted secret
                # used as a JSON key must never come back in an error.
                if not _FIELD_RE.match(name):
                    raise ValidationError("body", "has a field that is not allowed here")
                raise ValidationError(name, "is not a known field here")
        return value


# Only a \uD800-\uDFFF escape can put a surrogate in parsed JSON (raw UTF-8 cannot).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(value: object) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
