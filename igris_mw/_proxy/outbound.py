"""The forward proxy on the way out to upstreams (``IGRIS_UPSTREAM_PROXY``).

Explicit only: the gateway's aiohttp session keeps ``trust_env=False``, so a
process's ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``NO_PROXY`` never take effect;
this setting is the one way to send upstream traffic through a proxy.

aiohttp does the rest per request (``proxy=``, ``proxy_auth=``): for an
``https://`` upstream it opens a ``CONNECT host:port`` tunnel and runs TLS
(SNI, verification against the connection's context) inside it, end to end
with the upstream; for ``http://`` it sends absolute-form requests to the
proxy. The proxy resolves the upstream's name, so the egress policy can only
check names and literals in that mode.

The proxy password is a ``Secret``: the object's repr and str show the URL
without it. The credentials travel as a ``Proxy-Authorization`` header in
``proxy_headers`` (aiohttp sends it on the CONNECT, or with each absolute-form
request), made once and kept out of repr; ``aiohttp.BasicAuth`` is deprecated
and, being a namedtuple, would print the password.
"""

from __future__ import annotations

import base64
import urllib.parse
from typing import Any

import attrs

from .._errors import ValidationError
from ..models import Secret

__all__ = ["UpstreamProxy", "parse_upstream_proxy"]

_FIELD = "upstreamProxy"


@attrs.frozen(repr=False)
class UpstreamProxy:
    """A parsed forward proxy: ``url`` never carries the credentials."""

    url: str
    username: str | None = None
    password: Secret | None = None

    _authorization: Secret | None = attrs.field(init=False, eq=False)

    def __attrs_post_init__(self) -> None:
        value = None
        if self.username is not None:
            password = self.password.reveal() if self.password is not None else b""
            token = base64.b64encode(self.username.encode() + b":" + password)
            value = Secret(b"Basic " + token)
        object.__setattr__(self, "_authorization", value)

    def request_options(self) -> dict[str, Any]:
        """The keyword arguments for ``aiohttp.ClientSession.request``."""
        if self._authorization is None:
            return {"proxy": self.url}
        header = self._authorization.reveal().decode("latin-1")
        return {"proxy": self.url, "proxy_headers": {"Proxy-Authorization": header}}

    @property
    def has_credentials(self) -> bool:
        return self.username is not None

    def __repr__(self) -> str:
        auth = ", credentials='**********'" if self.has_credentials else ""
        return f"UpstreamProxy({self.url!r}{auth})"

    __str__ = __repr__


def _reject(message: str) -> ValidationError:
    return ValidationError(_FIELD, message)


def parse_upstream_proxy(value: object, field: str = _FIELD) -> UpstreamProxy:
    """Parse ``http://[user:pass@]host:port``.

    Only ``http://`` proxies (the tunnel to an https upstream is TLS inside
    CONNECT, so the proxy itself needs no TLS); no path, query or fragment
    (they mean nothing to a proxy and usually betray a pasted upstream URL).
    Messages never echo the value, which may hold a password.

    Raises:
        ValidationError: anything else.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(field, "must be a proxy URL like http://host:port")
    text = value.strip()
    if any(ch in text for ch in "\x00\r\n\t ") or not text.isprintable():
        raise ValidationError(field, "must not contain whitespace or control characters")
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValidationError(field, "is not a valid URL (check the host and port)") from None
    if parts.scheme.lower() != "http":
        raise ValidationError(
            field, "must be an http:// proxy URL (https upstreams are tunnelled with CONNECT)"
        )
    if not parts.hostname:
        raise ValidationError(field, "has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ValidationError(field, "must not have a path, query or fragment: http://host:port")
    host = parts.hostname
    netloc_host = f"[{host}]" if ":" in host else host
    url = f"http://{netloc_host}:{port or 80}"
    username = parts.username
    password = parts.password
    if username is None and password is None:
        return UpstreamProxy(url)
    user = urllib.parse.unquote(username or "")
    secret = urllib.parse.unquote(password or "")
    if ":" in user:
        raise ValidationError(field, "the proxy user name must not contain ':'")
    return UpstreamProxy(url, user, Secret(secret.encode()))
