"""Where an upstream's tokens come from: RFC 9728, then RFC 8414 or OpenID discovery.

1. Protected resource metadata (RFC 9728): the URL from a ``WWW-Authenticate:
   Bearer resource_metadata="..."`` hint when the caller has one, else
   ``/.well-known/oauth-protected-resource`` inserted before the resource's path
   (3.1), then at the root (what the MCP authorization spec falls back to),
   and last an unauthenticated request to the resource itself for its hint.
   The document's ``resource`` must name the resource asked about (3.3).
2. Authorization server metadata for the first ``authorization_servers`` entry:
   ``/.well-known/oauth-authorization-server`` inserted before the issuer's path
   (RFC 8414 3.1), then ``/.well-known/openid-configuration`` inserted and
   appended (OpenID Discovery 4). The document's ``issuer`` must be the issuer
   asked about (RFC 8414 3.3): a mix-up defence.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import attrs

from igris_mw._oauth.errors import DiscoveryError
from igris_mw._policy.egress import EgressForbidden

__all__ = [
    "ResourceMetadata",
    "ServerMetadata",
    "authorization_server_metadata_urls",
    "discover",
    "discover_resource",
    "discover_server",
    "protected_resource_metadata_urls",
    "resource_metadata_hint",
]

MAX_DOCUMENT_BYTES = 512 * 1024
_TIMEOUT = aiohttp.ClientTimeout(total=10)

# RFC 9110 auth-param: token = ( token / quoted-string ); only the one we need.
_HINT = re.compile(
    r'(?:^|[\s,])resource_metadata\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]+))', re.IGNORECASE
)


@attrs.frozen
class ResourceMetadata:
    """RFC 9728 metadata: which authorization servers issue tokens for this resource."""

    resource: str
    authorization_servers: tuple[str, ...]
    scopes_supported: tuple[str, ...] = ()


@attrs.frozen
class ServerMetadata:
    """The parts of RFC 8414 / OpenID metadata the client uses."""

    issuer: str
    authorization_endpoint: str | None
    token_endpoint: str
    revocation_endpoint: str | None = None
    code_challenge_methods_supported: tuple[str, ...] = ()
    token_endpoint_auth_methods_supported: tuple[str, ...] = ()
    scopes_supported: tuple[str, ...] = ()
    #: RFC 9207: the server promises ``iss`` in every authorization response.
    authorization_response_iss_parameter_supported: bool = False


def resource_metadata_hint(www_authenticate: str) -> str | None:
    """The ``resource_metadata`` URL of a ``WWW-Authenticate`` header (RFC 9728 5.1)."""
    match = _HINT.search(www_authenticate)
    if match is None:
        return None
    value = match.group(1)
    if value is not None:
        return re.sub(r"\\(.)", r"\1", value)
    return match.group(2)


def _well_known(url: str, name: str, *, append: bool = False) -> str:
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    new_path = f"{path}/.well-known/{name}" if append else f"/.well-known/{name}{path}"
    return urlunsplit((parts.scheme, parts.netloc, new_path, "", ""))


def protected_resource_metadata_urls(resource: str) -> list[str]:
    """Where RFC 9728 metadata may live for ``resource``: path-inserted, then the root."""
    urls = [_well_known(resource, "oauth-protected-resource")]
    root = _well_known(_origin(resource), "oauth-protected-resource")
    if root not in urls:
        urls.append(root)
    return urls


def authorization_server_metadata_urls(issuer: str) -> list[str]:
    """RFC 8414 first, then OpenID discovery inserted (RFC 8414 5) and appended (OIDC 4)."""
    urls = [
        _well_known(issuer, "oauth-authorization-server"),
        _well_known(issuer, "openid-configuration"),
        _well_known(issuer, "openid-configuration", append=True),
    ]
    return list(dict.fromkeys(urls))


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


def _same_resource(a: str, b: str) -> bool:
    # RFC 9728 3.3 asks for identical values; a lone trailing slash is the one
    # difference servers commonly introduce and it names the same thing.
    return a == b or a.rstrip("/") == b.rstrip("/")


def _http_url(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
        return None
    return value


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, str))


HostCheck = Callable[[str], None]


async def _get_json(
    session: aiohttp.ClientSession, url: str, check_host: HostCheck | None = None
) -> dict[str, Any] | None:
    """The JSON object at ``url``, or None when there is none (404, not JSON,
    unreachable, or a host the egress policy refuses)."""
    try:
        if check_host is not None:
            check_host(urlsplit(url).hostname or "")
        async with session.get(
            url, allow_redirects=False, timeout=_TIMEOUT, headers={"Accept": "application/json"}
        ) as resp:
            if resp.status != 200:
                return None
            body = await resp.content.read(MAX_DOCUMENT_BYTES + 1)
    except (aiohttp.ClientError, OSError, TimeoutError, EgressForbidden):
        return None
    if len(body) > MAX_DOCUMENT_BYTES:
        return None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


async def _probe_hint(
    session: aiohttp.ClientSession, resource: str, check_host: HostCheck | None = None
) -> str | None:
    """Ask the resource itself, without credentials, for its ``resource_metadata`` hint."""
    try:
        if check_host is not None:
            check_host(urlsplit(resource).hostname or "")
        async with session.get(
            resource,
            allow_redirects=False,
            timeout=_TIMEOUT,
            headers={"Accept": "application/json, text/event-stream"},
        ) as resp:
            header = resp.headers.get("WWW-Authenticate", "")
    except (aiohttp.ClientError, OSError, TimeoutError, EgressForbidden):
        return None
    return resource_metadata_hint(header) if resp.status == 401 else None


def _parse_resource(data: dict[str, Any], resource: str) -> ResourceMetadata | None:
    named = data.get("resource")
    if not isinstance(named, str) or not _same_resource(named, resource):
        return None
    servers = tuple(s for s in _strings(data.get("authorization_servers")) if _http_url(s))
    if not servers:
        return None
    return ResourceMetadata(named, servers, _strings(data.get("scopes_supported")))


async def discover_resource(
    session: aiohttp.ClientSession,
    resource: str,
    *,
    www_authenticate: str | None = None,
    check_host: HostCheck | None = None,
) -> ResourceMetadata:
    """RFC 9728 metadata for ``resource`` (the upstream's URL).

    Raises:
        DiscoveryError: no document names this resource and an authorization server.
    """
    hint = resource_metadata_hint(www_authenticate) if www_authenticate else None
    candidates = [hint] if hint else protected_resource_metadata_urls(resource)
    for url in candidates:
        if _http_url(url) is None:
            continue
        data = await _get_json(session, url, check_host)
        if data is not None and (found := _parse_resource(data, resource)) is not None:
            return found
    probed = await _probe_hint(session, resource, check_host) if hint is None else None
    if probed is not None:
        data = await _get_json(session, probed, check_host) if _http_url(probed) else None
        if data is not None and (found := _parse_resource(data, resource)) is not None:
            return found
    host = urlsplit(resource).hostname or "the upstream"
    raise DiscoveryError(
        f"no OAuth protected resource metadata for the upstream at {host} "
        "(RFC 9728): set the connection's oauth.authorizationUrl and oauth.tokenUrl"
    )


def _parse_server(data: dict[str, Any], issuer: str) -> ServerMetadata | None:
    # RFC 8414 3.3: identical, or the document is not the issuer's.
    if data.get("issuer") != issuer:
        return None
    token = _http_url(data.get("token_endpoint"))
    if token is None:
        return None
    return ServerMetadata(
        issuer=issuer,
        authorization_endpoint=_http_url(data.get("authorization_endpoint")),
        token_endpoint=token,
        revocation_endpoint=_http_url(data.get("revocation_endpoint")),
        code_challenge_methods_supported=_strings(data.get("code_challenge_methods_supported")),
        token_endpoint_auth_methods_supported=_strings(
            data.get("token_endpoint_auth_methods_supported")
        ),
        scopes_supported=_strings(data.get("scopes_supported")),
        authorization_response_iss_parameter_supported=(
            data.get("authorization_response_iss_parameter_supported") is True
        ),
    )


async def discover_server(
    session: aiohttp.ClientSession, issuer: str, *, check_host: HostCheck | None = None
) -> ServerMetadata:
    """RFC 8414 / OpenID metadata of ``issuer``, whose ``issuer`` must match.

    Raises:
        DiscoveryError: no document at the well-known places is this issuer's.
    """
    if _http_url(issuer) is None or urlsplit(issuer).query:
        raise DiscoveryError("the authorization server's issuer is not an http(s) URL")
    mismatched = False
    for url in authorization_server_metadata_urls(issuer):
        data = await _get_json(session, url, check_host)
        if data is None:
            continue
        found = _parse_server(data, issuer)
        if found is not None:
            return found
        mismatched = True
    host = urlsplit(issuer).hostname
    if mismatched:
        raise DiscoveryError(
            f"the authorization server metadata at {host} names another issuer or no token "
            "endpoint (RFC 8414 3.3)"
        )
    raise DiscoveryError(f"no authorization server metadata at {host} (RFC 8414, OpenID)")


async def discover(
    session: aiohttp.ClientSession,
    resource: str,
    *,
    www_authenticate: str | None = None,
    check_host: HostCheck | None = None,
) -> tuple[ResourceMetadata, ServerMetadata]:
    """Both documents for ``resource``: its metadata, then its first authorization server's.

    ``check_host`` (the egress policy's) refuses hosts before any request: the
    metadata URLs come from the upstream, which must not steer the gateway
    into an internal network.
    """
    found = await discover_resource(
        session, resource, www_authenticate=www_authenticate, check_host=check_host
    )
    server = await discover_server(session, found.authorization_servers[0], check_host=check_host)
    return found, server
