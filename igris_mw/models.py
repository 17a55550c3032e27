"""Value types: frozen, slotted attrs classes.

Parsing lives in ``from_*`` class methods and the ``validate_*`` helpers, so
``__init__`` stays dumb. Anything secret is either a ``Secret`` or a field
with ``repr=False``.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import attrs

from ._errors import ValidationError
from ._policy.ratelimit import RateLimit
from ._policy.tools import ToolPolicy

__all__ = [
    "SLUG_RE",
    "ApiKey",
    "AuditEvent",
    "AuthType",
    "Connection",
    "Page",
    "RateLimit",
    "Scope",
    "Secret",
    "TlsConfig",
    "ToolPolicy",
    "format_time",
    "parse_time",
    "policy_from_json",
    "policy_to_json",
    "tls_text",
    "utcnow",
    "validate_header_name",
    "validate_name",
    "validate_secret_text",
    "validate_slug",
    "validate_upstream_url",
]

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{2,63}\Z")
# RFC 9110 token
_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")

T = TypeVar("T")


class Secret:
    """A value that never shows itself: repr, str and format all mask it.

    Read it with ``reveal()`` at the last moment, where it is sent.
    """

    __slots__ = ("_value",)
    _MASK = "**********"

    def __init__(self, value: bytes) -> None:
        if not isinstance(value, bytes):
            raise TypeError("Secret holds bytes")
        self._value = value

    def reveal(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{self._MASK}')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        import hmac

        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash((Secret, len(self._value)))

    def __reduce__(self) -> Any:
        raise TypeError("a Secret is not to be pickled")


class AuthType(enum.StrEnum):
    """How the credential is injected upstream."""

    BEARER = "bearer"
    HEADER = "header"
    BASIC = "basic"
    NONE = "none"
    # The credential is an OAuth client secret; the gateway injects the access
    # token it obtains (docs/oauth.md).
    OAUTH2_CLIENT_CREDENTIALS = "oauth2_client_credentials"
    OAUTH2 = "oauth2"


class Scope(enum.StrEnum):
    ADMIN = "admin"
    MCP = "mcp"


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_time(value: datetime) -> str:
    """RFC 3339, UTC, millisecond precision, ``Z`` suffix."""
    value = value.astimezone(UTC)
    if value.year < 1000:
        # strftime's %Y does not pad (glibc): "999-...", kept as it was.
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    # The same text as the strftime above, a quarter cheaper (once per audit event
    # sealed): isoformat truncates to the millisecond and ends "+00:00" in UTC.
    return value.isoformat(timespec="milliseconds")[:-6] + "Z"


def parse_time(text: str, *, field: str = "timestamp") -> datetime:
    """Parse RFC 3339; a naive time is refused (the contract is UTC-explicit)."""
    try:
        value = datetime.fromisoformat(text.replace("z", "Z"))
    except (ValueError, TypeError):
        raise ValidationError(field, "must be an RFC 3339 timestamp") from None
    if value.tzinfo is None:
        raise ValidationError(field, "must carry a UTC offset (e.g. 'Z')")
    return value.astimezone(UTC)


def validate_slug(value: object, *, field: str = "slug") -> str:
    if not isinstance(value, str) or not SLUG_RE.match(value):
        raise ValidationError(
            field,
            "must be 3-64 characters of lowercase letters, digits, '_' or '-', "
            "starting with a letter or digit",
        )
    return value


def validate_name(value: object, *, field: str = "name") -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 200:
        raise ValidationError(field, "must be a string of 1-200 characters")
    if any(ch in value for ch in "\r\n\x00"):
        raise ValidationError(field, "must not contain CR, LF or NUL")
    return value


def validate_upstream_url(value: object, *, field: str = "upstreamUrl") -> str:
    if not isinstance(value, str) or len(value) > 2048:
        raise ValidationError(field, "must be an http(s) URL of at most 2048 characters")
    if any(ch.isspace() or ord(ch) < 0x20 for ch in value):
        raise ValidationError(field, "must not contain whitespace or control characters")
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError:
        raise ValidationError(field, "is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(field, "must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValidationError(field, "must not carry user info; store it as the credential")
    if parts.fragment:
        raise ValidationError(field, "must not have a fragment")
    return value


# A credential header may not be one that frames the message, routes it, or
# that the gateway strips or sets itself: injecting there would smuggle a
# request, redirect it, or be silently dropped.
_RESERVED_HEADER_NAMES = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "expect",
        "cookie",
        "content-type",
        "content-encoding",
        "forwarded",
        "via",
        "x-real-ip",
        "mcp-session-id",
        "mcp-protocol-version",
        "last-event-id",
    }
)
_RESERVED_HEADER_PREFIXES = ("x-forwarded-", "x-igris-")


def validate_header_name(value: object, *, field: str = "headerName") -> str:
    if not isinstance(value, str) or not _TOKEN_RE.match(value) or len(value) > 256:
        raise ValidationError(field, "must be a valid HTTP field name (RFC 9110 token)")
    lowered = value.lower()
    if lowered in _RESERVED_HEADER_NAMES or lowered.startswith(_RESERVED_HEADER_PREFIXES):
        raise ValidationError(field, "may not be a framing, routing, hop-by-hop or gateway header")
    return value


def validate_secret_text(value: object, *, field: str = "credential") -> bytes:
    """A credential as given by a user: non-empty text without CR, LF or NUL.

    The message never echoes the value.
    """
    if not isinstance(value, str) or not value:
        raise ValidationError(field, "must be a non-empty string")
    if any(ch in value for ch in "\r\n\x00"):
        raise ValidationError(field, "must not contain CR, LF or NUL")
    if len(value) > 16384:
        raise ValidationError(field, "must be at most 16384 characters")
    return value.encode("utf-8")


def _optional_dict(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if value is None else dict(value)


@attrs.frozen(kw_only=True)
class TlsConfig:
    """A connection's TLS material for its ``https://`` upstream.

    ``ca_certificate`` (PEM, trusted in addition to the system's CAs) and
    ``client_certificate`` (PEM chain) are public and returned on read.
    ``client_key_ciphertext`` is the client private key sealed like the
    credential (same envelope, the record's binding plus a ``clientKey``
    label so it can never be swapped with the credential's envelope).
    """

    ca_certificate: str | None = None
    client_certificate: str | None = None
    client_key_ciphertext: bytes | None = attrs.field(default=None, repr=False)

    @property
    def is_empty(self) -> bool:
        return (
            self.ca_certificate is None
            and self.client_certificate is None
            and self.client_key_ciphertext is None
        )

    def to_text(self) -> str:
        """The storage form: one JSON text (the key stays an envelope, in base64)."""
        key = self.client_key_ciphertext
        return json.dumps(
            {
                "caCertificate": self.ca_certificate,
                "clientCertificate": self.client_certificate,
                "clientKey": base64.b64encode(key).decode("ascii") if key is not None else None,
            },
            separators=(",", ":"),
            sort_keys=True,
        )

    @classmethod
    def from_text(cls, text: str | None) -> TlsConfig | None:
        """The inverse of ``to_text`` (``None`` for no TLS material).

        Raises:
            ValueError: the stored text is not what ``to_text`` writes.
        """
        if text is None:
            return None
        try:
            data = json.loads(text)
            key = data.get("clientKey")
            config = cls(
                ca_certificate=data.get("caCertificate"),
                client_certificate=data.get("clientCertificate"),
                client_key_ciphertext=(
                    base64.b64decode(key, validate=True) if key is not None else None
                ),
            )
        except (ValueError, TypeError, AttributeError, binascii.Error) as exc:
            raise ValueError("the stored TLS settings are not readable") from exc
        return None if config.is_empty else config


def tls_text(tls: TlsConfig | None) -> str | None:
    """The storage form of a connection's ``tls`` (``None`` when there is none)."""
    return None if tls is None or tls.is_empty else tls.to_text()


@attrs.frozen(kw_only=True)
class Connection:
    """An upstream MCP server and its (encrypted) credential.

    ``version`` is the row version the store bumps on every write, used to
    guard updates; ``credential_version`` is the contract's
    ``credentialVersion``, bumped only by rotate. ``ciphertext`` is the
    envelope of the credential (``None`` for ``auth_type=none``), bound to
    ``(slug, credential_version, upstream_url, auth_type)``.
    """

    slug: str
    name: str
    upstream_url: str
    auth_type: AuthType = AuthType.BEARER
    header_name: str | None = None
    enabled: bool = True
    credential_version: int = 1
    ciphertext: bytes | None = attrs.field(default=None, repr=False)
    created_at: datetime
    updated_at: datetime
    rotated_at: datetime | None = None
    version: int = 1
    tls: TlsConfig | None = None
    rate_limit: RateLimit | None = None
    tools: ToolPolicy | None = None
    #: The ``oauth`` object of an OAuth connection (never a secret), else None.
    oauth: Mapping[str, Any] | None = attrs.field(default=None, converter=_optional_dict)
    #: ``shared`` (one credential) or ``per_user`` (one per end user).
    credential_scope: str = "shared"

    def to_json(self, *, base_url: str | None = None) -> dict[str, Any]:
        """The contract's JSON (never the credential, never the client key)."""
        out: dict[str, Any] = {
            "slug": self.slug,
            "name": self.name,
            "upstreamUrl": self.upstream_url,
            "authType": self.auth_type.value,
            "headerName": self.header_name,
            "enabled": self.enabled,
            "credentialVersion": self.credential_version,
            "createdAt": format_time(self.created_at),
            "updatedAt": format_time(self.updated_at),
            "rotatedAt": format_time(self.rotated_at) if self.rotated_at else None,
            "caCertificate": self.tls.ca_certificate if self.tls else None,
            "clientCertificate": self.tls.client_certificate if self.tls else None,
            "rateLimit": self.rate_limit.to_json() if self.rate_limit else None,
            "tools": self.tools.to_json() if self.tools else None,
        }
        if self.oauth is not None:
            out["oauth"] = dict(self.oauth)
        if self.credential_scope != "shared":
            out["credentialScope"] = self.credential_scope
        if base_url is not None:
            out["gatewayUrl"] = f"{base_url.rstrip('/')}/v1/mcp/{self.slug}"
        return out


@attrs.frozen(kw_only=True)
class OAuthGrant:
    """The OAuth tokens a connection holds (for one end user, or ``user=""``), sealed.

    ``ciphertext`` is the envelope of the tokens (access and refresh), bound
    to ``(slug, user)``; ``status`` is ``authorized``, ``refreshing`` (a
    replica holds the right to refresh until ``lease_until``) or
    ``reauthorization_required``. Every write is a compare-and-set on
    ``version`` (``Store.put_oauth_grant``), which is how replicas take turns.
    """

    slug: str
    user: str = ""
    ciphertext: bytes | None = attrs.field(default=None, repr=False)
    expires_at: datetime | None = None
    lifetime: float | None = None
    status: str = "authorized"
    lease_until: datetime | None = None
    version: int = 1
    updated_at: datetime


@attrs.frozen(kw_only=True)
class ApiKey:
    """A gateway API key's record. The key itself is never stored, only its SHA-256."""

    id: str
    name: str
    key_hash: bytes = attrs.field(repr=False)
    scopes: frozenset[Scope]
    connections: frozenset[str] | None = None
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    rate_limit: RateLimit | None = None
    tools: ToolPolicy | None = None
    max_concurrent: int | None = None
    #: The end user this key acts for (per-user credentials), if bound to one.
    user: str | None = None

    def is_usable(self, now: datetime) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at

    def allows(self, slug: str) -> bool:
        """May this key reach the gateway path of ``slug``?"""
        if Scope.ADMIN in self.scopes:
            return True
        if Scope.MCP not in self.scopes:
            return False
        return self.connections is None or slug in self.connections

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "scopes": sorted(s.value for s in self.scopes),
            "connections": sorted(self.connections) if self.connections is not None else None,
            "createdAt": format_time(self.created_at),
            "expiresAt": format_time(self.expires_at) if self.expires_at else None,
            "revokedAt": format_time(self.revoked_at) if self.revoked_at else None,
            "rateLimit": self.rate_limit.to_json() if self.rate_limit else None,
            "tools": self.tools.to_json() if self.tools else None,
            "maxConcurrent": self.max_concurrent,
            "user": self.user,
        }


def policy_to_json(record: Connection | ApiKey) -> str | None:
    """A record's access policy (rateLimit, tools, maxConcurrent) as one JSON text,
    for stores that keep it in one column; ``None`` when it has none."""
    out: dict[str, Any] = {}
    if record.rate_limit is not None:
        out["rateLimit"] = record.rate_limit.to_json()
    if record.tools is not None:
        out["tools"] = record.tools.to_json()
    if isinstance(record, ApiKey) and record.max_concurrent is not None:
        out["maxConcurrent"] = record.max_concurrent
    return json.dumps(out, sort_keys=True, separators=(",", ":")) if out else None


def policy_from_json(text: str | None) -> dict[str, Any]:
    """The keyword arguments ``policy_to_json``'s text stands for
    (``attrs.evolve(record, **policy_from_json(text))``; ``max_concurrent`` is
    only there for a key's text)."""
    if not text:
        return {}
    raw = json.loads(text)
    out: dict[str, Any] = {
        "rate_limit": RateLimit.from_json(raw.get("rateLimit")),
        "tools": ToolPolicy.from_json(raw.get("tools")),
    }
    if "maxConcurrent" in raw:
        out["max_concurrent"] = raw["maxConcurrent"]
    return out


def _frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    return None if value is None else dict(value)


@attrs.frozen(kw_only=True)
class AuditEvent:
    """One gateway request or one management change.

    ``kind`` is ``"gateway"`` or ``"management"``; for management changes
    ``action`` says which (``create``, ``update``, ``rotate``, ``disable``,
    ``enable``, ``delete``). ``seq``, ``prev_hash`` and ``hash`` are set by
    the store when it appends the event to the connection's hash chain;
    they are ``None``/``0`` before that. ``count`` is set on an event that
    stands for several repeated refusals (``None``: one request).

    ``connection`` is ``None`` for events about no connection (API keys,
    dashboard sign-in): they form the global chain. ``changes`` (management
    updates) maps each changed field to ``{"from": ..., "to": ...}``.
    ``key_id`` names the audit key the event's hash is an HMAC under
    (``None``: an unkeyed SHA-256, from before chains were keyed). ``count``,
    ``changes`` and ``key_id`` appear in the JSON only when set, so events
    without them hash as before.
    """

    id: str
    timestamp: datetime
    connection: str | None
    kind: str = "gateway"
    action: str | None = None
    api_key_id: str | None = None
    user: str | None = None
    metadata: Mapping[str, Any] | None = attrs.field(default=None, converter=_frozen_mapping)
    method: str | None = None
    path: str | None = None
    rpc_method: str | None = None
    tool: str | None = None
    status: int | None = None
    outcome: str = "ok"
    latency_ms: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    credential_version: int | None = None
    seq: int = 0
    prev_hash: str | None = None
    hash: str | None = None
    count: int | None = None
    changes: Mapping[str, Any] | None = attrs.field(default=None, converter=_frozen_mapping)
    key_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "timestamp": format_time(self.timestamp),
            "connection": self.connection,
            "kind": self.kind,
            "action": self.action,
            "apiKeyId": self.api_key_id,
            "user": self.user,
            "metadata": dict(self.metadata) if self.metadata is not None else None,
            "method": self.method,
            "path": self.path,
            "rpcMethod": self.rpc_method,
            "tool": self.tool,
            "status": self.status,
            "outcome": self.outcome,
            "latencyMs": self.latency_ms,
            "bytesIn": self.bytes_in,
            "bytesOut": self.bytes_out,
            "credentialVersion": self.credential_version,
            "seq": self.seq,
            "prevHash": self.prev_hash,
            "hash": self.hash,
        }
        if self.count is not None:
            out["count"] = self.count
        if self.changes is not None:
            out["changes"] = dict(self.changes)
        if self.key_id is not None:
            out["keyId"] = self.key_id
        return out

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> AuditEvent:
        """The inverse of ``to_json()``: a stored event reads back equal, so
        its hash recomputes byte for byte.

        Raises:
            ValueError: a field is missing or of the wrong type
                (``ValidationError`` for a bad timestamp).
        """
        try:
            metadata = body.get("metadata")
            return cls(
                id=str(body["id"]),
                timestamp=parse_time(body["timestamp"]),
                connection=None if body["connection"] is None else str(body["connection"]),
                kind=str(body["kind"]),
                action=body.get("action"),
                api_key_id=body.get("apiKeyId"),
                user=body.get("user"),
                metadata=dict(metadata) if metadata is not None else None,
                method=body.get("method"),
                path=body.get("path"),
                rpc_method=body.get("rpcMethod"),
                tool=body.get("tool"),
                status=body.get("status"),
                outcome=str(body["outcome"]),
                latency_ms=body.get("latencyMs"),
                bytes_in=int(body["bytesIn"]),
                bytes_out=int(body["bytesOut"]),
                credential_version=body.get("credentialVersion"),
                seq=int(body["seq"]),
                prev_hash=body.get("prevHash"),
                hash=body.get("hash"),
                count=body.get("count"),
                changes=body.get("changes"),
                key_id=body.get("keyId"),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not an audit event: {exc}") from exc


@attrs.frozen
class Page(Generic[T]):
    """One page of a listing; ``next_cursor`` is ``None`` on the last page."""

    items: list[T]
    next_cursor: str | None = None
