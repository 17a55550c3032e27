"""The igris-mw SDK on httpx: ``IgrisClient`` (sync) and ``AsyncIgrisClient``.

``get_mcp_config`` builds what an MCP client needs to reach a connection
through the gateway (no network call); every management call of the API
is a method. Records come back as the API's JSON objects (``dict``), lists
as ``Page``; the one response that holds a secret, a freshly issued key,
comes back as ``IssuedApiKey``, whose repr hides it.

The gateway key goes only to the configured base URL: requests are made
relative to it and redirects are never followed. A non-2xx answer raises
the ``IgrisError`` subclass for its status, with the server's ``code`` and
message; a transport failure raises ``ServiceUnavailable``
(``gateway_unreachable``).

Why one module longer than the house's 400 lines: as in httpx, each method
exists twice, once on ``IgrisClient`` and once on ``AsyncIgrisClient``, with
the same signature and docstring. Everything that is not I/O (the request a
method makes, the parsing and the errors of its response) is shared in
``_Call`` and ``_Base``, so each twin is a few lines; keeping both halves
side by side in one file is what keeps them from drifting apart.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Literal
from urllib.parse import quote

import attrs
import httpx

from ._errors import (
    BadRequest,
    Conflict,
    CryptoUnavailable,
    Forbidden,
    IgrisError,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    SlugTaken,
    StoreUnavailable,
    Unauthorized,
    UpstreamError,
    UpstreamTimeout,
    UserCredentialMissing,
    UserMismatch,
    ValidationError,
    VersionConflict,
)
from .models import Page, format_time, validate_slug

__all__ = ["AsyncIgrisClient", "IgrisClient", "IssuedApiKey", "McpConfig"]

Record = dict[str, Any]
_API: Final = "/api/v1"
_DEFAULT_TIMEOUT: Final = 30.0
_BASE_RE = re.compile(r"^https?://[^/?#@\s]+(/[^?#\s]*)?\Z")


class _Unset(enum.Enum):
    UNSET = enum.auto()


UNSET: Final = _Unset.UNSET


@attrs.frozen(kw_only=True)
class McpConfig:
    """How an MCP client reaches one connection through the gateway.

    ``headers`` carry the gateway key, so they are left out of the repr.
    """

    slug: str
    url: str
    headers: Mapping[str, str] = attrs.field(repr=False)

    def to_mcp_servers(
        self, name: str | None = None, *, type: Literal["http", "streamable-http"] | None = None
    ) -> dict[str, Any]:
        """The ``{"mcpServers": {name: {"url", "headers"}}}`` block MCP clients read.

        Cursor's ``mcp.json`` takes ``url`` + ``headers`` as is; Claude Code's
        ``.mcp.json`` wants ``type="http"`` as well. The block holds the
        gateway key: keep the file it goes into out of version control.

        Args:
            name: the server's name in the block (default: the slug).
            type: a ``type`` field to add, for clients that need one.
        """
        server: dict[str, Any] = {"url": self.url, "headers": dict(self.headers)}
        if type is not None:
            server = {"type": type, **server}
        return {"mcpServers": {name if name is not None else self.slug: server}}


@attrs.frozen(kw_only=True)
class IssuedApiKey:
    """A newly issued gateway key: ``key`` is shown this once (not in the repr)."""

    key: str = attrs.field(repr=False)
    record: Record

    @property
    def id(self) -> str:
        return str(self.record["id"])


# -- what both clients share: request building and response reading ----------


@attrs.frozen
class _Call:
    method: str
    path: str
    json: Any = attrs.field(default=None, repr=False)  # may hold a credential or a client key
    params: Mapping[str, str] | None = None


def _check_base_url(base_url: object) -> str:
    if not isinstance(base_url, str) or not _BASE_RE.match(base_url):
        raise ValueError("base_url must be an http(s) URL with a host (no user info or query)")
    return base_url.rstrip("/")


def _check_api_key(api_key: object) -> str:
    if not isinstance(api_key, str) or not api_key or not api_key.isascii():
        raise ValueError("api_key must be a non-empty ASCII string (ig_...)")
    if not api_key.isprintable() or " " in api_key:
        raise ValueError("api_key must not contain spaces or control characters")
    return api_key


def _header_text(value: object, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError(field, "must be a non-empty string")
    if not value.isascii() or not value.isprintable():
        raise ValidationError(field, "must be printable ASCII (no CR, LF or NUL)")
    return value


def _build_mcp_config(
    base_url: str, api_key: str, slug: str, user: str | None, metadata: Mapping[str, Any] | None
) -> McpConfig:
    validate_slug(slug)
    headers = {"Authorization": f"Bearer {api_key}"}
    if user is not None:
        headers["X-Igris-User"] = _header_text(user, "user")
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise ValidationError("metadata", "must be a mapping (a JSON object)")
        try:
            text = json.dumps(
                dict(metadata), separators=(",", ":"), ensure_ascii=True, allow_nan=False
            )
        except (TypeError, ValueError):
            raise ValidationError("metadata", "must be JSON-serialisable") from None
        headers["X-Igris-Metadata"] = text
    return McpConfig(slug=slug, url=f"{base_url}/v1/mcp/{slug}", headers=headers)


def _time(value: datetime | str) -> str:
    return format_time(value) if isinstance(value, datetime) else value


def _page_params(
    limit: int | None, cursor: str | None, since: datetime | str | None = None
) -> dict[str, str]:
    params: dict[str, str] = {}
    if limit is not None:
        params["limit"] = str(limit)
    if cursor is not None:
        params["cursor"] = cursor
    if since is not None:
        params["since"] = _time(since)
    return params


def _all_audit_params(
    slug: str | None,
    kind: str | None,
    action: str | None,
    outcome: str | None,
    user: str | None,
    since: datetime | str | None,
    limit: int | None,
    cursor: str | None,
) -> dict[str, str]:
    params = _page_params(limit, cursor, since)
    for name, value in (
        ("slug", slug),
        ("kind", kind),
        ("action", action),
        ("outcome", outcome),
        ("user", user),
    ):
        if value is not None:
            params[name] = value
    return params


def _connection_body(
    slug: str,
    name: str,
    upstream_url: str,
    auth_type: str,
    header_name: str | None,
    credential: str | None,
    enabled: bool,
    tls: Mapping[str, str | None] | None = None,
    oauth: Mapping[str, Any] | None = None,
    credential_scope: str | None = None,
) -> Record:
    body: Record = {
        "slug": slug,
        "name": name,
        "upstreamUrl": upstream_url,
        "authType": auth_type,
        "enabled": enabled,
    }
    if header_name is not None:
        body["headerName"] = header_name
    if credential is not None:
        body["credential"] = credential
    body.update({k: v for k, v in (tls or {}).items() if v is not None})
    if oauth is not None:
        body["oauth"] = dict(oauth)
    if credential_scope is not None:
        body["credentialScope"] = credential_scope
    return body


def _user_path(slug: str, user: str, suffix: str = "") -> str:
    # The user is any printable text: one escaped path segment.
    if not isinstance(user, str) or not user or len(user) > 256 or not user.isprintable():
        raise ValidationError("user", "must be 1-256 printable characters")
    return _slug_path(slug, f"/users/{quote(user, safe='')}{suffix}")


def _authorize_call(slug: str, user: str | None) -> _Call:
    if user is None:
        return _Call("POST", _slug_path(slug, "/oauth/authorize"))
    return _Call("POST", _user_path(slug, user, "/oauth/authorize"))


def _tls_fields(
    ca_certificate: str | None, client_certificate: str | None, client_key: str | None
) -> dict[str, str | None]:
    return {
        "caCertificate": ca_certificate,
        "clientCertificate": client_certificate,
        "clientKey": client_key,
    }


def _rotate_body(
    credential: str | None, client_certificate: str | None, client_key: str | None
) -> Record:
    fields = {
        "credential": credential,
        "clientCertificate": client_certificate,
        "clientKey": client_key,
    }
    return {k: v for k, v in fields.items() if v is not None}


def _changes(**fields: Any) -> Record:
    names = {
        "upstream_url": "upstreamUrl",
        "auth_type": "authType",
        "header_name": "headerName",
        "ca_certificate": "caCertificate",
        "client_certificate": "clientCertificate",
        "rate_limit": "rateLimit",
        "max_concurrent": "maxConcurrent",
        "expires_at": "expiresAt",
    }
    return {names.get(k, k): v for k, v in fields.items() if v is not UNSET}


def _slug_path(slug: str, suffix: str = "") -> str:
    # Checked locally: the slug goes into the URL path.
    return f"{_API}/virtual-keys/{validate_slug(slug)}{suffix}"


def _key_path(key_id: str) -> str:
    if not isinstance(key_id, str) or not re.match(r"^[A-Za-z0-9_-]{1,128}\Z", key_id):
        raise ValidationError("id", "must be an API key id such as 'key_...'")
    return f"{_API}/api-keys/{key_id}"


_BY_STATUS: Final[dict[int, type[IgrisError]]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    502: UpstreamError,
    503: ServiceUnavailable,
    504: UpstreamTimeout,
}
_BY_CODE: Final[dict[str, type[IgrisError]]] = {
    "slug_taken": SlugTaken,
    "version_conflict": VersionConflict,
    "store_unavailable": StoreUnavailable,
    "crypto_unavailable": CryptoUnavailable,
    "user_mismatch": UserMismatch,
}


def _error_for(response: httpx.Response) -> IgrisError:
    status = response.status_code
    code: str | None = None
    message = f"the gateway answered HTTP {status}"
    field: str | None = None
    body: Any = None
    try:
        body = json.loads(response.content)
        error = body["error"]
        if isinstance(error.get("code"), str):
            code = error["code"]
        if isinstance(error.get("message"), str):
            message = error["message"]
        if isinstance(error.get("field"), str):
            field = error["field"]
    except (ValueError, TypeError, KeyError, AttributeError):
        pass  # not our JSON (a proxy's page): keep the generic message
    if status == 422:
        field = field or "body"
        prefix = f"{field}: "
        exc: IgrisError = ValidationError(
            field, message[len(prefix) :] if message.startswith(prefix) else message
        )
        if code is not None:
            exc.code = code
        return exc
    if code == "user_credential_missing":
        url = body["error"].get("authorizeUrl") if isinstance(body, dict) else None
        return UserCredentialMissing(message, authorize_url=url if isinstance(url, str) else None)
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status, IgrisError)
    if issubclass(cls, ServiceUnavailable):
        retry = response.headers.get("retry-after", "")
        exc = cls(message, code=code, retry_after=int(retry) if retry.isdigit() else None)
    else:
        exc = cls(message, code=code)
    if cls is IgrisError:
        exc.status = status
    return exc


def _result(response: httpx.Response) -> Any:
    if not response.is_success:
        raise _error_for(response)
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        raise UpstreamError("the gateway answered with a body that is not JSON") from None


def _page(data: Any) -> Page[Record]:
    return Page(list(data["data"]), data.get("nextCursor"))


def _issued(data: Any) -> IssuedApiKey:
    record = dict(data)
    key = record.pop("key")
    return IssuedApiKey(key=key, record=record)


class _Base:
    __slots__ = ("_api_key", "base_url")

    def __init__(self, base_url: str, api_key: str) -> None:
        self.base_url = _check_base_url(base_url)
        self._api_key = _check_api_key(api_key)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r}, api_key='**********')"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}", "Accept": "application/json"}

    def get_mcp_config(
        self, slug: str, user: str | None = None, metadata: Mapping[str, Any] | None = None
    ) -> McpConfig:
        """The URL and headers an MCP client uses for ``slug`` (no network call).

        Args:
            slug: the connection's slug.
            user: the end user, sent as ``X-Igris-User`` for the audit trail.
            metadata: a JSON object sent as ``X-Igris-Metadata``.

        Raises:
            ValidationError: a bad slug, user or metadata.
        """
        return _build_mcp_config(self.base_url, self._api_key, slug, user, metadata)


def _unreachable(base_url: str, exc: httpx.HTTPError) -> ServiceUnavailable:
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
    return ServiceUnavailable(
        f"the request to the igris gateway at {base_url} {kind} ({type(exc).__name__})",
        code="gateway_unreachable",
    )


class IgrisClient(_Base):
    """The management API and MCP configs, synchronously.

    Args:
        base_url: the gateway's URL, e.g. ``https://gw.example`` (with any
            path prefix it is mounted under).
        api_key: a gateway key (``ig_...``); management calls need ``admin``.
        timeout: seconds (or an ``httpx.Timeout``) per request.
        transport: an httpx transport (tests: ``httpx.MockTransport``, a WSGI one).

    Raises:
        ValueError: a bad ``base_url`` or ``api_key``.
    """

    __slots__ = ("_http",)

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout = _DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key)
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=self._headers(),
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
        )

    def __enter__(self) -> IgrisClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, call: _Call) -> Any:
        try:
            response = self._http.request(
                call.method, call.path, json=call.json, params=call.params
            )
        except httpx.HTTPError as exc:
            raise _unreachable(self.base_url, exc) from exc
        return _result(response)

    # -- connections
    def create_connection(
        self,
        slug: str,
        name: str,
        upstream_url: str,
        *,
        auth_type: str = "bearer",
        header_name: str | None = None,
        credential: str | None = None,
        enabled: bool = True,
        ca_certificate: str | None = None,
        client_certificate: str | None = None,
        client_key: str | None = None,
        rate_limit: Mapping[str, int] | None = None,
        tools: Mapping[str, Sequence[str]] | None = None,
        oauth: Mapping[str, Any] | None = None,
        credential_scope: str | None = None,
    ) -> Record:
        """Create a connection; returns it (never the credential, never the client key).

        ``ca_certificate`` (PEM) is trusted for this https upstream besides the
        system's CAs; ``client_certificate`` and ``client_key`` (PEM) are its
        mTLS identity, the key sealed like the credential.

        Raises:
            ValidationError: a field is invalid. SlugTaken: the slug is in use.
        """
        body = _connection_body(
            slug,
            name,
            upstream_url,
            auth_type,
            header_name,
            credential,
            enabled,
            _tls_fields(ca_certificate, client_certificate, client_key),
            oauth,
            credential_scope,
        )
        body.update(_policy(rate_limit, tools, None))
        result: Record = self._run(_Call("POST", f"{_API}/virtual-keys", json=body))
        return result

    def list_connections(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> Page[Record]:
        """One page of connections; pass ``page.next_cursor`` for the next."""
        return _page(
            self._run(_Call("GET", f"{_API}/virtual-keys", params=_page_params(limit, cursor)))
        )

    def iter_connections(self, *, page_size: int = 50) -> Iterator[Record]:
        """Every connection, page after page."""
        cursor: str | None = None
        while True:
            page = self.list_connections(limit=page_size, cursor=cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def get_connection(self, slug: str) -> Record:
        """One connection. Raises NotFound."""
        result: Record = self._run(_Call("GET", _slug_path(slug)))
        return result

    def update_connection(
        self,
        slug: str,
        *,
        name: str | _Unset = UNSET,
        upstream_url: str | _Unset = UNSET,
        auth_type: str | _Unset = UNSET,
        header_name: str | _Unset | None = UNSET,
        enabled: bool | _Unset = UNSET,
        ca_certificate: str | _Unset | None = UNSET,
        client_certificate: _Unset | None = UNSET,
        rate_limit: Mapping[str, int] | _Unset | None = UNSET,
        tools: Mapping[str, Sequence[str]] | _Unset | None = UNSET,
        oauth: Mapping[str, Any] | _Unset = UNSET,
    ) -> Record:
        """Change the given fields only (the credential and the client key change
        with ``rotate``; ``client_certificate=None`` removes the mTLS identity,
        ``ca_certificate=None`` the connection's CA).

        ``rate_limit`` (``{"requestsPerMinute": N, "burst": B}``) and ``tools``
        (``{"allow": [...], "deny": [...]}``): ``None`` removes them.
        """
        body = _changes(
            name=name,
            upstream_url=upstream_url,
            auth_type=auth_type,
            header_name=header_name,
            enabled=enabled,
            ca_certificate=ca_certificate,
            client_certificate=client_certificate,
            rate_limit=rate_limit,
            tools=tools,
            oauth=oauth,
        )
        result: Record = self._run(_Call("PATCH", _slug_path(slug), json=body))
        return result

    def delete_connection(self, slug: str) -> None:
        """Delete a connection (its audit trail stays). Raises NotFound."""
        self._run(_Call("DELETE", _slug_path(slug)))

    def rotate_credential(
        self,
        slug: str,
        credential: str | None = None,
        *,
        client_certificate: str | None = None,
        client_key: str | None = None,
    ) -> Record:
        """Replace the credential and/or the mTLS identity: requests that start
        after this returns use them (what is not given is kept)."""
        body = _rotate_body(credential, client_certificate, client_key)
        result: Record = self._run(_Call("POST", _slug_path(slug, "/rotate"), json=body))
        return result

    def disable_connection(self, slug: str) -> Record:
        """Revoke a connection at once."""
        result: Record = self._run(_Call("POST", _slug_path(slug, "/disable")))
        return result

    def enable_connection(self, slug: str) -> Record:
        """Restore a disabled connection."""
        result: Record = self._run(_Call("POST", _slug_path(slug, "/enable")))
        return result

    # -- audit
    def list_audit(
        self,
        slug: str,
        *,
        limit: int | None = None,
        cursor: str | None = None,
        since: datetime | str | None = None,
    ) -> Page[Record]:
        """One page of a connection's audit trail, newest first."""
        return _page(
            self._run(
                _Call("GET", _slug_path(slug, "/audit"), params=_page_params(limit, cursor, since))
            )
        )

    def iter_audit(
        self, slug: str, *, since: datetime | str | None = None, page_size: int = 50
    ) -> Iterator[Record]:
        """A connection's whole audit trail (since ``since``), newest first."""
        cursor: str | None = None
        while True:
            page = self.list_audit(slug, limit=page_size, cursor=cursor, since=since)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def list_all_audit(
        self,
        *,
        slug: str | None = None,
        kind: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        user: str | None = None,
        since: datetime | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[Record]:
        """One page of the whole trail (every connection, and the global
        chain of API-key and sign-in events, ``connection`` None), newest first."""
        params = _all_audit_params(slug, kind, action, outcome, user, since, limit, cursor)
        return _page(self._run(_Call("GET", f"{_API}/audit", params=params)))

    def iter_all_audit(self, *, page_size: int = 50, **filters: Any) -> Iterator[Record]:
        """The whole trail (``filters`` as ``list_all_audit``'s), newest first."""
        cursor: str | None = None
        while True:
            page = self.list_all_audit(limit=page_size, cursor=cursor, **filters)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    # -- gateway API keys
    def create_api_key(
        self,
        name: str,
        scopes: Sequence[str],
        *,
        connections: Sequence[str] | None = None,
        expires_at: datetime | str | None = None,
        rate_limit: Mapping[str, int] | None = None,
        tools: Mapping[str, Sequence[str]] | None = None,
        max_concurrent: int | None = None,
        user: str | None = None,
    ) -> IssuedApiKey:
        """Issue a gateway key; ``.key`` holds it, shown this once."""
        body = _api_key_body(name, scopes, connections, expires_at)
        body.update(_policy(rate_limit, tools, max_concurrent))
        if user is not None:
            body["user"] = user
        return _issued(self._run(_Call("POST", f"{_API}/api-keys", json=body)))

    def list_api_keys(self) -> list[Record]:
        """Every key record (never a key itself)."""
        return _page(self._run(_Call("GET", f"{_API}/api-keys"))).items

    def update_api_key(
        self,
        key_id: str,
        *,
        name: str | _Unset = UNSET,
        connections: Sequence[str] | _Unset | None = UNSET,
        expires_at: datetime | str | _Unset | None = UNSET,
        rate_limit: Mapping[str, int] | _Unset | None = UNSET,
        tools: Mapping[str, Sequence[str]] | _Unset | None = UNSET,
        max_concurrent: int | _Unset | None = UNSET,
    ) -> Record:
        """Change the given fields of a key (``None`` removes any but ``name``).

        Raises:
            ValidationError: a field is invalid (nothing changed). NotFound.
        """
        body = _key_changes(name, connections, expires_at, rate_limit, tools, max_concurrent)
        result: Record = self._run(_Call("PATCH", _key_path(key_id), json=body))
        return result

    def revoke_api_key(self, key_id: str) -> None:
        """Revoke a key at once. Raises NotFound."""
        self._run(_Call("DELETE", _key_path(key_id)))

    # -- OAuth consent and per-user credentials
    def authorize_connection(self, slug: str, *, user: str | None = None) -> str:
        """The URL where a person consents for an oauth2 connection (or one user's)."""
        result: Record = self._run(_authorize_call(slug, user))
        return str(result["authorizeUrl"])

    def set_user_credential(self, slug: str, user: str, credential: str) -> Record:
        """Set one end user's credential on a per_user connection (never returned)."""
        result: Record = self._run(
            _Call("PUT", _user_path(slug, user, "/credential"), json={"credential": credential})
        )
        return result

    def delete_user_credential(self, slug: str, user: str) -> None:
        """Forget one end user's credential or grant. Raises NotFound."""
        self._run(_Call("DELETE", _user_path(slug, user, "/credential")))

    def list_users(self, slug: str) -> list[Record]:
        """The users of a per_user connection (never a credential)."""
        result: list[Record] = self._run(_Call("GET", _slug_path(slug, "/users")))["data"]
        return result


def _api_key_body(
    name: str,
    scopes: Sequence[str],
    connections: Sequence[str] | None,
    expires_at: datetime | str | None,
) -> Record:
    body: Record = {"name": name, "scopes": list(scopes)}
    if connections is not None:
        body["connections"] = list(connections)
    if expires_at is not None:
        body["expiresAt"] = _time(expires_at)
    return body


def _policy(
    rate_limit: Mapping[str, int] | None,
    tools: Mapping[str, Sequence[str]] | None,
    max_concurrent: int | None,
) -> Record:
    body: Record = {}
    if rate_limit is not None:
        body["rateLimit"] = dict(rate_limit)
    if tools is not None:
        body["tools"] = {k: list(v) for k, v in tools.items()}
    if max_concurrent is not None:
        body["maxConcurrent"] = max_concurrent
    return body


def _key_changes(
    name: str | _Unset,
    connections: Sequence[str] | _Unset | None,
    expires_at: datetime | str | _Unset | None,
    rate_limit: Mapping[str, int] | _Unset | None,
    tools: Mapping[str, Sequence[str]] | _Unset | None,
    max_concurrent: int | _Unset | None,
) -> Record:
    return _changes(
        name=name,
        connections=(
            connections
            if connections is None or isinstance(connections, _Unset)
            else list(connections)
        ),
        expires_at=(
            expires_at
            if expires_at is None or isinstance(expires_at, _Unset)
            else _time(expires_at)
        ),
        rate_limit=rate_limit,
        tools=tools,
        max_concurrent=max_concurrent,
    )


class AsyncIgrisClient(_Base):
    """The management API and MCP configs, for asyncio. Same methods as ``IgrisClient``.

    Args:
        base_url: the gateway's URL.
        api_key: a gateway key (``ig_...``); management calls need ``admin``.
        timeout: seconds (or an ``httpx.Timeout``) per request.
        transport: an httpx async transport (tests: ``httpx.ASGITransport``).

    Raises:
        ValueError: a bad ``base_url`` or ``api_key``.
    """

    __slots__ = ("_http",)

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout = _DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=self._headers(),
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
        )

    async def __aenter__(self) -> AsyncIgrisClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, call: _Call) -> Any:
        try:
            response = await self._http.request(
                call.method, call.path, json=call.json, params=call.params
            )
        except httpx.HTTPError as exc:
            raise _unreachable(self.base_url, exc) from exc
        return _result(response)

    # -- connections
    async def create_connection(
        self,
        slug: str,
        name: str,
        upstream_url: str,
        *,
        auth_type: str = "bearer",
        header_name: str | None = None,
        credential: str | None = None,
        enabled: bool = True,
        ca_certificate: str | None = None,
        client_certificate: str | None = None,
        client_key: str | None = None,
        rate_limit: Mapping[str, int] | None = None,
        tools: Mapping[str, Sequence[str]] | None = None,
        oauth: Mapping[str, Any] | None = None,
        credential_scope: str | None = None,
    ) -> Record:
        """Create a connection; returns it (never the credential, never the client key)."""
        body = _connection_body(
            slug,
            name,
            upstream_url,
            auth_type,
            header_name,
            credential,
            enabled,
            _tls_fields(ca_certificate, client_certificate, client_key),
            oauth,
            credential_scope,
        )
        body.update(_policy(rate_limit, tools, None))
        result: Record = await self._run(_Call("POST", f"{_API}/virtual-keys", json=body))
        return result

    async def list_connections(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> Page[Record]:
        """One page of connections; pass ``page.next_cursor`` for the next."""
        return _page(
            await self._run(
                _Call("GET", f"{_API}/virtual-keys", params=_page_params(limit, cursor))
            )
        )

    async def iter_connections(self, *, page_size: int = 50) -> AsyncIterator[Record]:
        """Every connection, page after page."""
        cursor: str | None = None
        while True:
            page = await self.list_connections(limit=page_size, cursor=cursor)
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def get_connection(self, slug: str) -> Record:
        """One connection. Raises NotFound."""
        result: Record = await self._run(_Call("GET", _slug_path(slug)))
        return result

    async def update_connection(
        self,
        slug: str,
        *,
        name: str | _Unset = UNSET,
        upstream_url: str | _Unset = UNSET,
        auth_type: str | _Unset = UNSET,
        header_name: str | _Unset | None = UNSET,
        enabled: bool | _Unset = UNSET,
        ca_certificate: str | _Unset | None = UNSET,
        client_certificate: _Unset | None = UNSET,
        rate_limit: Mapping[str, int] | _Unset | None = UNSET,
        tools: Mapping[str, Sequence[str]] | _Unset | None = UNSET,
        oauth: Mapping[str, Any] | _Unset = UNSET,
    ) -> Record:
        """Change the given fields only (the credential and the client key change
        with ``rotate``; ``client_certificate=None`` removes the mTLS identity,
        ``ca_certificate=None`` the connection's CA).

        ``rate_limit`` (``{"requestsPerMinute": N, "burst": B}``) and ``tools``
        (``{"allow": [...], "deny": [...]}``): ``None`` removes them.
        """
        body = _changes(
            name=name,
            upstream_url=upstream_url,
            auth_type=auth_type,
            header_name=header_name,
            enabled=enabled,
            ca_certificate=ca_certificate,
            client_certificate=client_certificate,
            rate_limit=rate_limit,
            tools=tools,
            oauth=oauth,
        )
        result: Record = await self._run(_Call("PATCH", _slug_path(slug), json=body))
        return result

    async def delete_connection(self, slug: str) -> None:
        """Delete a connection (its audit trail stays). Raises NotFound."""
        await self._run(_Call("DELETE", _slug_path(slug)))

    async def rotate_credential(
        self,
        slug: str,
        credential: str | None = None,
        *,
        client_certificate: str | None = None,
        client_key: str | None = None,
    ) -> Record:
        """Replace the credential and/or the mTLS identity: requests that start
        after this returns use them (what is not given is kept)."""
        body = _rotate_body(credential, client_certificate, client_key)
        result: Record = await self._run(_Call("POST", _slug_path(slug, "/rotate"), json=body))
        return result

    async def disable_connection(self, slug: str) -> Record:
        """Revoke a connection at once."""
        result: Record = await self._run(_Call("POST", _slug_path(slug, "/disable")))
        return result

    async def enable_connection(self, slug: str) -> Record:
        """Restore a disabled connection."""
        result: Record = await self._run(_Call("POST", _slug_path(slug, "/enable")))
        return result

    # -- audit
    async def list_audit(
        self,
        slug: str,
        *,
        limit: int | None = None,
        cursor: str | None = None,
        since: datetime | str | None = None,
    ) -> Page[Record]:
        """One page of a connection's audit trail, newest first."""
        return _page(
            await self._run(
                _Call("GET", _slug_path(slug, "/audit"), params=_page_params(limit, cursor, since))
            )
        )

    async def iter_audit(
        self, slug: str, *, since: datetime | str | None = None, page_size: int = 50
    ) -> AsyncIterator[Record]:
        """A connection's whole audit trail (since ``since``), newest first."""
        cursor: str | None = None
        while True:
            page = await self.list_audit(slug, limit=page_size, cursor=cursor, since=since)
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def list_all_audit(
        self,
        *,
        slug: str | None = None,
        kind: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        user: str | None = None,
        since: datetime | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[Record]:
        """One page of the whole trail (every connection, and the global
        chain of API-key and sign-in events, ``connection`` None), newest first."""
        params = _all_audit_params(slug, kind, action, outcome, user, since, limit, cursor)
        return _page(await self._run(_Call("GET", f"{_API}/audit", params=params)))

    async def iter_all_audit(self, *, page_size: int = 50, **filters: Any) -> AsyncIterator[Record]:
        """The whole trail (``filters`` as ``list_all_audit``'s), newest first."""
        cursor: str | None = None
        while True:
            page = await self.list_all_audit(limit=page_size, cursor=cursor, **filters)
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    # -- gateway API keys
    async def create_api_key(
        self,
        name: str,
        scopes: Sequence[str],
        *,
        connections: Sequence[str] | None = None,
        expires_at: datetime | str | None = None,
        rate_limit: Mapping[str, int] | None = None,
        tools: Mapping[str, Sequence[str]] | None = None,
        max_concurrent: int | None = None,
        user: str | None = None,
    ) -> IssuedApiKey:
        """Issue a gateway key; ``.key`` holds it, shown this once."""
        body = _api_key_body(name, scopes, connections, expires_at)
        body.update(_policy(rate_limit, tools, max_concurrent))
        if user is not None:
            body["user"] = user
        return _issued(await self._run(_Call("POST", f"{_API}/api-keys", json=body)))

    async def list_api_keys(self) -> list[Record]:
        """Every key record (never a key itself)."""
        return _page(await self._run(_Call("GET", f"{_API}/api-keys"))).items

    async def update_api_key(
        self,
        key_id: str,
        *,
        name: str | _Unset = UNSET,
        connections: Sequence[str] | _Unset | None = UNSET,
        expires_at: datetime | str | _Unset | None = UNSET,
        rate_limit: Mapping[str, int] | _Unset | None = UNSET,
        tools: Mapping[str, Sequence[str]] | _Unset | None = UNSET,
        max_concurrent: int | _Unset | None = UNSET,
    ) -> Record:
        """Change the given fields of a key (``None`` removes any but ``name``).

        Raises:
            ValidationError: a field is invalid (nothing changed). NotFound.
        """
        body = _key_changes(name, connections, expires_at, rate_limit, tools, max_concurrent)
        result: Record = await self._run(_Call("PATCH", _key_path(key_id), json=body))
        return result

    async def revoke_api_key(self, key_id: str) -> None:
        """Revoke a key at once. Raises NotFound."""
        await self._run(_Call("DELETE", _key_path(key_id)))

    # -- OAuth consent and per-user credentials
    async def authorize_connection(self, slug: str, *, user: str | None = None) -> str:
        """The URL where a person consents for an oauth2 connection (or one user's)."""
        result: Record = await self._run(_authorize_call(slug, user))
        return str(result["authorizeUrl"])

    async def set_user_credential(self, slug: str, user: str, credential: str) -> Record:
        """Set one end user's credential on a per_user connection (never returned)."""
        result: Record = await self._run(
            _Call("PUT", _user_path(slug, user, "/credential"), json={"credential": credential})
        )
        return result

    async def delete_user_credential(self, slug: str, user: str) -> None:
        """Forget one end user's credential or grant. Raises NotFound."""
        await self._run(_Call("DELETE", _user_path(slug, user, "/credential")))

    async def list_users(self, slug: str) -> list[Record]:
        """The users of a per_user connection (never a credential)."""
        result: list[Record] = (await self._run(_Call("GET", _slug_path(slug, "/users"))))["data"]
        return result
