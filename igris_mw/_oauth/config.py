"""The connection's ``oauth`` object: checked, normalised, and turned into client settings.

It never holds a secret: the client secret is the connection's write-only
``credential``. Every error names the field as ``oauth.<name>`` and never
echoes a value.

- ``oauth2_client_credentials``: ``tokenUrl`` and ``clientId`` required;
  ``scopes``, ``audience``, ``resource``, ``tokenEndpointAuthMethod`` optional.
- ``oauth2``: ``clientId`` required; ``scopes``, ``resource``,
  ``tokenEndpointAuthMethod``; ``authorizationUrl`` and ``tokenUrl`` together or
  neither (then they are discovered from the upstream, RFC 9728 and RFC 8414).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from igris_mw._errors import ValidationError
from igris_mw.models import OAuthGrant, format_time

# Imported by the service (and so by the CLI): nothing here may pull in aiohttp.
__all__ = ["OAUTH_AUTH_TYPES", "oauth_status", "parse_oauth"]

OAUTH_AUTH_TYPES = frozenset({"oauth2_client_credentials", "oauth2"})

_COMMON = frozenset({"clientId", "scopes", "resource", "tokenEndpointAuthMethod"})
_ALLOWED = {
    "oauth2_client_credentials": _COMMON | {"tokenUrl", "audience"},
    "oauth2": _COMMON | {"tokenUrl", "authorizationUrl"},
}
_FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,39}\Z")
# RFC 6749 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,256}\Z")
_METHODS = ("client_secret_basic", "client_secret_post")
_MAX_SCOPES = 64


def _text(value: object, field: str, *, max_len: int = 256) -> str:
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise ValidationError(field, f"must be a non-empty string of at most {max_len} characters")
    if not value.isprintable():
        raise ValidationError(field, "must be printable text")
    return value


def _url(value: object, field: str) -> str:
    text = _text(value, field, max_len=2048)
    try:
        parts = urlsplit(text)
        _ = parts.port
    except ValueError:
        raise ValidationError(field, "is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(field, "must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValidationError(field, "must not carry user info")
    if parts.fragment or any(ch.isspace() for ch in text):
        raise ValidationError(field, "must not have a fragment or whitespace")
    return text


def parse_oauth(auth_type: str, value: object, *, has_secret: bool) -> dict[str, Any]:
    """The normalised ``oauth`` object for a connection of ``auth_type``.

    Args:
        has_secret: the connection has a client secret (its ``credential``).

    Raises:
        ValidationError: the object is missing, has unknown fields, or a field is invalid.
    """
    if value is None:
        raise ValidationError("oauth", f"is required when authType is '{auth_type}'")
    if not isinstance(value, Mapping):
        raise ValidationError("oauth", "must be a JSON object")
    allowed = _ALLOWED[auth_type]
    for key in value:
        if not isinstance(key, str) or not _FIELD_NAME.match(key):
            raise ValidationError("oauth", "has a field that is not allowed")
        if key not in allowed:
            raise ValidationError(f"oauth.{key}", f"is not a field of oauth for '{auth_type}'")
    out: dict[str, Any] = {"clientId": _text(value.get("clientId"), "oauth.clientId")}
    scopes = value.get("scopes", [])
    if not isinstance(scopes, list) or len(scopes) > _MAX_SCOPES:
        raise ValidationError("oauth.scopes", f"must be a list of at most {_MAX_SCOPES} scopes")
    for scope in scopes:
        if not isinstance(scope, str) or not _SCOPE.match(scope):
            raise ValidationError("oauth.scopes", "must hold RFC 6749 scope tokens")
    out["scopes"] = list(dict.fromkeys(scopes))
    if auth_type == "oauth2_client_credentials" or "tokenUrl" in value:
        out["tokenUrl"] = _url(value.get("tokenUrl"), "oauth.tokenUrl")
    if "authorizationUrl" in value:
        out["authorizationUrl"] = _url(value["authorizationUrl"], "oauth.authorizationUrl")
    if auth_type == "oauth2" and ("tokenUrl" in out) != ("authorizationUrl" in out):
        raise ValidationError(
            "oauth.authorizationUrl" if "tokenUrl" in out else "oauth.tokenUrl",
            "authorizationUrl and tokenUrl go together (or leave both out to discover them)",
        )
    if value.get("audience") is not None:
        out["audience"] = _text(value["audience"], "oauth.audience", max_len=2048)
    if value.get("resource") is not None:
        out["resource"] = _url(value["resource"], "oauth.resource")
    method = value.get("tokenEndpointAuthMethod")
    if method is not None:
        if method not in _METHODS:
            raise ValidationError(
                "oauth.tokenEndpointAuthMethod", "must be client_secret_basic or client_secret_post"
            )
        if not has_secret:
            raise ValidationError(
                "oauth.tokenEndpointAuthMethod", "needs a client secret (the credential)"
            )
        out["tokenEndpointAuthMethod"] = method
    return out


def oauth_status(grant: OAuthGrant | None) -> dict[str, Any]:
    """A connection's read-only ``oauthStatus`` and ``tokenExpiresAt``, from its grant."""
    if grant is None:
        return {"oauthStatus": "pending", "tokenExpiresAt": None}
    if grant.status == "reauthorization_required":
        return {"oauthStatus": "reauthorization_required", "tokenExpiresAt": None}
    expires = format_time(grant.expires_at) if grant.expires_at else None
    return {"oauthStatus": "authorized", "tokenExpiresAt": expires}
