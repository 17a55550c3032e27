"""Checking and parsing the contract JSON the management API and CLI take.

Everything here runs before a store read or write, so a bad request never
changes stored state. Errors name the offending field and never echo a
value (a pasted credential must not reach an error message).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ._errors import ValidationError
from ._tls_material import validate_ca_certificate, validate_client_identity
from .models import (
    AuthType,
    Scope,
    Secret,
    parse_time,
    validate_header_name,
    validate_secret_text,
    validate_slug,
)

__all__ = [
    "API_KEY_FIELDS",
    "API_KEY_PATCH_FIELDS",
    "CREATE_FIELDS",
    "PATCH_FIELDS",
    "TLS_FIELDS",
    "check_fields",
    "header_name_for",
    "parse_auth_type",
    "parse_bool",
    "parse_ca_certificate",
    "parse_client_identity",
    "parse_credential",
    "parse_credential_scope",
    "parse_cursor",
    "parse_expires_at",
    "parse_key_connections",
    "parse_limit",
    "parse_max_concurrent",
    "parse_scopes",
    "parse_since",
    "parse_user",
    "require_mapping",
]

# A connection's TLS material (docs/tls.md); clientKey is write-only, like credential.
TLS_FIELDS = frozenset({"caCertificate", "clientCertificate", "clientKey"})
CREATE_FIELDS = (
    frozenset({"slug", "name", "upstreamUrl", "authType", "headerName", "credential", "enabled"})
    | {"rateLimit", "tools", "oauth", "credentialScope"}
    | TLS_FIELDS
)
PATCH_FIELDS = frozenset(
    {"name", "upstreamUrl", "authType", "headerName", "enabled", "rateLimit", "tools", "oauth"}
) | {"caCertificate", "clientCertificate"}
_READ_ONLY_FIELDS = frozenset(
    {
        "credentialVersion",
        "createdAt",
        "updatedAt",
        "rotatedAt",
        "gatewayUrl",
        "id",
        "revokedAt",
        "oauthStatus",
        "tokenExpiresAt",
    }
)
API_KEY_FIELDS = frozenset(
    {"name", "scopes", "connections", "expiresAt", "rateLimit", "tools", "maxConcurrent", "user"}
)
API_KEY_PATCH_FIELDS = frozenset(
    {"name", "connections", "expiresAt", "rateLimit", "tools", "maxConcurrent"}
)
_MAX_CONCURRENT = 100_000
# Only field names that look like field names are echoed back: a pasted
# secret used as a JSON key must not end up in an error message.
_ECHOABLE_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,39}\Z")
_MAX_LIMIT = 200
_ROTATE_HINT = "rotate the connection's credential instead (POST .../rotate)"


def require_mapping(body: object, field: str = "body") -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise ValidationError(field, "must be a JSON object")
    return body


def check_fields(body: Mapping[str, Any], allowed: frozenset[str], what: str) -> None:
    for key in body:
        if not isinstance(key, str) or not _ECHOABLE_FIELD.match(key):
            raise ValidationError("body", f"has a field that is not allowed in {what}")
        if key in allowed:
            continue
        if key in _READ_ONLY_FIELDS:
            raise ValidationError(key, "is read-only")
        if key == "credential":
            raise ValidationError(key, f"cannot be changed in {what}; {_ROTATE_HINT}")
        if key == "clientKey":
            raise ValidationError(
                key, f"cannot be changed in {what}; rotate it (POST .../rotate with clientKey)"
            )
        raise ValidationError(key, f"is not a known field of {what}")


def parse_auth_type(value: object, field: str = "authType") -> AuthType:
    if isinstance(value, str):
        try:
            return AuthType(value)
        except ValueError:
            pass
    allowed = ", ".join(t.value for t in AuthType)
    raise ValidationError(field, f"must be one of: {allowed}")


def parse_bool(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(field, "must be true or false")
    return value


def parse_credential(value: object, auth_type: AuthType, field: str = "credential") -> bytes:
    plaintext = validate_secret_text(value, field=field)
    if auth_type is AuthType.BASIC and b":" not in plaintext:
        raise ValidationError(field, "must be 'user:password' for authType basic")
    if auth_type in (
        AuthType.BEARER,
        AuthType.HEADER,
        AuthType.OAUTH2_CLIENT_CREDENTIALS,
        AuthType.OAUTH2,
    ) and not all(0x20 <= b <= 0x7E or b == 0x09 for b in plaintext):
        # It goes out as an HTTP field value as it is: a character that cannot
        # be sent would only fail later, on every request. (basic is base64.)
        raise ValidationError(field, f"must be printable ASCII for authType {auth_type}")
    return plaintext


def parse_ca_certificate(value: object) -> str | None:
    """A connection's optional ``caCertificate`` (PEM); ``None`` removes it."""
    return None if value is None else validate_ca_certificate(value)


def parse_client_identity(
    certificate: object, key: object, now: datetime
) -> tuple[str, Secret] | None:
    """``clientCertificate`` and ``clientKey``: both or neither (``None``).

    An expired certificate is refused; the key must match it. Messages never
    contain the key.
    """
    if certificate is None and key is None:
        return None
    if certificate is None:
        raise ValidationError("clientCertificate", "is required with clientKey")
    if key is None:
        raise ValidationError("clientKey", "is required with clientCertificate")
    return validate_client_identity(certificate, key, now=now)


def header_name_for(auth_type: AuthType, value: object) -> str | None:
    """The header name a connection of ``auth_type`` keeps (``None`` unless header)."""
    if auth_type is AuthType.HEADER:
        if value is None:
            raise ValidationError("headerName", "is required when authType is 'header'")
        return validate_header_name(value)
    if value is not None:
        raise ValidationError("headerName", "is only allowed when authType is 'header'")
    return None


def parse_user(value: object, field: str = "user") -> str:
    """An end user's id: 1-256 printable characters (it names a per-user credential)."""
    if not isinstance(value, str) or not 1 <= len(value) <= 256 or not value.isprintable():
        raise ValidationError(field, "must be 1-256 printable characters")
    return value


def parse_credential_scope(value: object, auth_type: AuthType, has_credential: bool) -> str:
    """``shared`` (default) or ``per_user``, checked against the auth type."""
    if value is None or value == "shared":
        return "shared"
    if value != "per_user":
        raise ValidationError("credentialScope", "must be shared or per_user")
    if auth_type in (AuthType.NONE, AuthType.OAUTH2_CLIENT_CREDENTIALS):
        raise ValidationError(
            "credentialScope", f"per_user does not apply to authType '{auth_type}'"
        )
    if has_credential and auth_type is not AuthType.OAUTH2:
        raise ValidationError(
            "credential",
            "must be omitted when credentialScope is per_user: give each user's credential "
            "with PUT .../users/{user}/credential",
        )
    return "per_user"


def parse_limit(value: object) -> int:
    if isinstance(value, str) and value.isdigit() and len(value) <= 6:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= _MAX_LIMIT:
        raise ValidationError("limit", f"must be an integer from 1 to {_MAX_LIMIT}")
    return value


def parse_cursor(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 1024:
        raise ValidationError("cursor", "is not a cursor this server made")
    return value


def parse_scopes(value: object) -> frozenset[Scope]:
    allowed = ", ".join(s.value for s in Scope)
    if not isinstance(value, list) or not value:
        raise ValidationError("scopes", f"must be a non-empty list of: {allowed}")
    out: set[Scope] = set()
    for item in value:
        try:
            out.add(Scope(item))
        except ValueError:
            raise ValidationError("scopes", f"must only contain: {allowed}") from None
    return frozenset(out)


def parse_key_connections(value: object, scopes: frozenset[Scope]) -> frozenset[str] | None:
    if value is None:
        return None
    if Scope.MCP not in scopes or Scope.ADMIN in scopes:
        # An admin key reaches every connection; a list would only mislead.
        raise ValidationError("connections", "only applies to keys with just the 'mcp' scope")
    if not isinstance(value, list) or not value:
        raise ValidationError(
            "connections",
            "must be a non-empty list of slugs (omit it to allow every connection)",
        )
    return frozenset(validate_slug(v, field="connections") for v in value)


def parse_max_concurrent(value: object) -> int | None:
    """An API key's optional ``maxConcurrent``: 1..100000 or null (no cap)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_CONCURRENT:
        raise ValidationError(
            "maxConcurrent", f"must be an integer from 1 to {_MAX_CONCURRENT}, or null"
        )
    return value


def parse_expires_at(value: object, now: datetime) -> datetime | None:
    """An API key's optional ``expiresAt``: RFC 3339 and after ``now``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError("expiresAt", "must be an RFC 3339 timestamp")
    expires_at = parse_time(value, field="expiresAt")
    if expires_at <= now:
        raise ValidationError("expiresAt", "must be in the future")
    return expires_at


def parse_since(value: object) -> datetime | None:
    """An audit listing's optional ``since``: a datetime or RFC 3339 text."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        return parse_time(value, field="since")
    raise ValidationError("since", "must be an RFC 3339 timestamp")
