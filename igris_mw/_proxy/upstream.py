"""The proxy's pure part: where a request goes upstream and with which headers.

No I/O here: ``Target`` (a connection's upstream and injected headers, built
once and cached), ``upstream_url`` (the upstream URL for a raw subpath and
query, with the path-escape rules), and the header policy both ways
(``request_headers``, ``response_headers``). ``forward`` does the I/O.

``subpath`` is the request's *raw* (still percent-encoded, as in
``scope["raw_path"]``) path after ``/v1/mcp/<slug>``: ``""`` proxies to
``upstreamUrl`` exactly, ``"/x"`` to ``upstreamUrl + "/x"``. Segments that
decode to ``.`` or ``..`` (``%2e%2e`` too, and ``..`` hidden behind an
encoded ``/`` or ``\\``), empty inner segments (``//host``), NUL, CR and LF
are refused with 400 ``bad_request`` rather than normalised: a client has no
business sending them, and a normalisation that differs from the upstream's
is how path confusion starts.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import ssl
from collections.abc import Iterable
from urllib.parse import quote, unquote, unquote_plus

import attrs
import yarl
from multidict import CIMultiDict

from .._asgi import Scope
from .._errors import BadRequest

__all__ = [
    "ALWAYS_STRIP",
    "CLIENT_STRIP",
    "HOP_BY_HOP",
    "RESPONSE_STRIP",
    "Target",
    "request_headers",
    "response_headers",
    "upstream_url",
]

# RFC 9110 7.6.1, plus the legacy Proxy-Connection and Keep-Alive.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Never forwarded upstream: the gateway key, the client's cookies, the gateway's
# own headers (X-Igris-* is matched by prefix), Host (aiohttp derives it from
# the URL), and Expect (the ASGI server already answered 100-continue).
ALWAYS_STRIP = frozenset({"authorization", "cookie", "host", "expect"})
# Never forwarded from the client either: routing claims the upstream might
# trust (the client is not a proxy of ours) and cloud metadata request headers
# (an SSRF to a metadata service needs them). Prefixes are matched too.
CLIENT_STRIP = frozenset(
    {
        "forwarded",
        "x-real-ip",
        "x-client-ip",
        "true-client-ip",
        "metadata-flavor",
        "metadata",
        "x-google-metadata-request",
    }
)
_CLIENT_STRIP_PREFIXES = ("x-igris-", "x-forwarded-", "x-aws-ec2-metadata-token")
# Never relayed from the upstream: state and policy it would set on the
# gateway's origin (cookies, HSTS, Alt-Svc, Clear-Site-Data) and its
# authentication challenge (a client must not start an OAuth flow against the
# upstream through the gateway).
RESPONSE_STRIP = frozenset(
    {
        "set-cookie",
        "set-cookie2",
        "www-authenticate",
        "alt-svc",
        "strict-transport-security",
        "clear-site-data",
    }
)
_RESPONSE_STRIP = RESPONSE_STRIP
_DROP_RESPONSE = HOP_BY_HOP | RESPONSE_STRIP
# aiohttp would otherwise invent these; a proxy sends only what the client sent.
_SAFE_PATH = "/%:@!$&'()*+,;=-._~"
_SAFE_QUERY = _SAFE_PATH + "?"


@attrs.frozen
class Target:
    """Where and how to forward one connection's requests; build once, cache, reuse.

    Args:
        base_url: the connection's ``upstreamUrl``.
        inject: headers to add (name, value); the values are credentials and
            never appear in a repr.
        strip: extra lower-case header names to remove from the client request
            (the injected names are always removed).
        ssl: the connection's own TLS context (its CA, its client certificate),
            built once per connection version; ``None`` uses the forwarder's
            default (system CAs plus ``IGRIS_UPSTREAM_CA_FILE``).

    Raises:
        ValueError: an injected header holds CR, LF or NUL.
    """

    base_url: yarl.URL = attrs.field(converter=yarl.URL)
    inject: tuple[tuple[str, str], ...] = attrs.field(default=(), repr=False)
    strip: frozenset[str] = attrs.field(default=frozenset(), converter=frozenset)
    ssl: ssl.SSLContext | None = attrs.field(default=None, repr=False, eq=False)
    _drop: frozenset[str] = attrs.field(init=False, repr=False, eq=False)
    _base_path: str = attrs.field(init=False, repr=False, eq=False)
    # The URL for the common request (no subpath, no query), built once, not per request.
    _plain_url: yarl.URL = attrs.field(init=False, repr=False, eq=False)
    # Query parameter names upstreamUrl fixes: a client may not repeat or override them.
    _fixed_query: frozenset[str] = attrs.field(init=False, repr=False, eq=False)
    # The forms of the injected credential an upstream error response must not echo.
    _needles: tuple[bytes, ...] = attrs.field(init=False, repr=False, eq=False)

    @_drop.default
    def _compute_drop(self) -> frozenset[str]:
        for name, value in self.inject:
            if any(c in value or c in name for c in "\r\n\0"):
                # Name the header, not the value: the value is the credential.
                raise ValueError(f"injected header {name!r} holds a line break or NUL")
        return (
            HOP_BY_HOP
            | ALWAYS_STRIP
            | CLIENT_STRIP
            | {s.lower() for s in self.strip}
            | {name.lower() for name, _ in self.inject}
        )

    @_base_path.default
    def _compute_base_path(self) -> str:
        return self.base_url.raw_path.rstrip("/")

    @_plain_url.default
    def _compute_plain_url(self) -> yarl.URL:
        return _build_url(self.base_url, self.base_url.raw_path, self.base_url.raw_query_string)

    @_fixed_query.default
    def _compute_fixed_query(self) -> frozenset[str]:
        return frozenset(_query_names(self.base_url.raw_query_string))

    @_needles.default
    def _compute_needles(self) -> tuple[bytes, ...]:
        return _credential_forms(value for _, value in self.inject)

    def reflects_credential(self, headers: Iterable[tuple[bytes, bytes]], body: bytes) -> bool:
        """True when a response's headers or body carry the injected credential."""
        needles = self._needles
        if not needles:
            return False
        for _, value in headers:
            if any(n in value for n in needles):
                return True
        return any(n in body for n in needles)

    def without_credential(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """``headers`` less any whose value carries the injected credential.

        For a response that is relayed (2xx/3xx): its streamed body cannot be
        held back to be checked, but its headers can, at a few ``in`` tests each.
        """
        needles = self._needles
        if not needles:
            return headers
        # A needle in no value is in none of them: one scan of the values
        # joined (the usual answer), the per-header check only after a hit.
        joined = b"\n".join([v for _, v in headers])
        if not any(x in joined for x in needles):
            return headers
        return [(n, v) for n, v in headers if not any(x in v for x in needles)]

    @property
    def label(self) -> str:
        """The upstream's host[:port], the only part of it an error message shows."""
        host = self.base_url.host or "?"
        port = self.base_url.explicit_port
        return f"{host}:{port}" if port else host


_MIN_NEEDLE = 8  # shorter forms would match ordinary text: a false 502


def _credential_forms(values: Iterable[str]) -> tuple[bytes, ...]:
    """The injected values, their bare secrets, and the escapes an echo may apply."""
    forms: set[str] = set()
    for value in values:
        candidates = {value}
        scheme, _, rest = value.partition(" ")
        if rest and scheme.lower() in ("bearer", "basic", "token"):
            candidates.add(rest)
            if scheme.lower() == "basic":
                try:
                    userpass = base64.b64decode(rest, validate=True).decode("utf-8")
                except (binascii.Error, UnicodeDecodeError):
                    userpass = ""
                if userpass:
                    candidates |= {userpass, userpass.partition(":")[2]}
        for c in candidates:
            if len(c) >= _MIN_NEEDLE:
                forms |= {c, quote(c, safe=""), json.dumps(c)[1:-1]}
    return tuple(sorted(f.encode("utf-8", "surrogateescape") for f in forms))


def _query_names(query: str) -> set[str]:
    """Parameter names as servers may read them: decoded, case-folded, ``a[]`` as ``a``."""
    names = set()
    for pair in re.split(r"[&;]", query):
        if pair:
            name = unquote_plus(pair.partition("=")[0], errors="replace")
            names.add(name.partition("[")[0].strip().casefold())
    return names


def _segment_escapes(segment: str) -> bool:
    decoded = unquote(segment, errors="strict") if "%" in segment else segment
    if any(c in decoded for c in "\0\r\n"):
        return True
    # "..;x" is ".." to a servlet container (path parameters are cut off).
    return any(part.split(";", 1)[0] in (".", "..") for part in re.split(r"[/\\]", decoded))


def upstream_url(target: Target, subpath: str, query_string: bytes | str = b"") -> yarl.URL:
    """The upstream URL for a raw ``subpath`` and query (the query is appended to upstreamUrl's).

    Raises:
        BadRequest: the subpath would leave the upstream base (dot segments, plain
            or percent-encoded, empty inner segments) or is not valid.
    """
    if not subpath and not query_string:
        return target._plain_url
    base = target.base_url
    if isinstance(query_string, bytes):
        query_string = query_string.decode("latin-1")
    if query_string and target._fixed_query and _query_names(query_string) & target._fixed_query:
        raise BadRequest(
            "the query repeats a parameter the connection's upstreamUrl fixes; "
            "it cannot be repeated or overridden"
        )
    if subpath:
        if not subpath.startswith("/"):
            subpath = "/" + subpath
        segments = subpath[1:].split("/")
        try:
            # The last segment may be empty: "messages/" is a legitimate path.
            bad = any(not s for s in segments[:-1]) or any(_segment_escapes(s) for s in segments)
        except UnicodeDecodeError:
            bad = True
        if bad:
            raise BadRequest("the path is not allowed: it would leave the upstream base")
        path = target._base_path + quote(subpath, safe=_SAFE_PATH)
    else:
        path = base.raw_path
    query = "&".join(q for q in (base.raw_query_string, quote(query_string, safe=_SAFE_QUERY)) if q)
    return _build_url(base, path, query)


def _build_url(base: yarl.URL, path: str, query: str) -> yarl.URL:
    return yarl.URL.build(
        scheme=base.scheme,
        authority=base.raw_authority,
        path=path,
        query_string=query,
        encoded=True,
    )


def _connection_tokens(values: Iterable[str]) -> set[str]:
    return {t.strip().lower() for v in values for t in v.split(",") if t.strip()}


def request_headers(scope: Scope, target: Target) -> tuple[CIMultiDict[str], bool]:
    """The headers to send upstream, and whether the client announced a body.

    Drops hop-by-hop headers (and those named in ``Connection``), the gateway
    key, cookies, ``X-Igris-*`` and the names the target injects; adds the
    injected ones.

    Raises:
        BadRequest: ``Content-Length`` is not a number.
    """
    # One pass; what Connection names and Transfer-Encoding's presence add to
    # the dropped names is known only at the end, so those (rare) are removed after.
    drop = target._drop
    headers: CIMultiDict[str] = CIMultiDict()
    has_body = False
    connection: list[str] | None = None
    chunked = False
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        if name == "content-length":
            try:
                has_body = has_body or int(value) > 0
            except ValueError:
                raise BadRequest("the Content-Length header is not a number") from None
        elif name == "transfer-encoding":
            has_body = chunked = True
        elif name == "connection":
            if connection is None:
                connection = []
            connection.append(value)
        if name in drop or name.startswith(_CLIENT_STRIP_PREFIXES):
            continue
        headers.add(name, value)
    if connection is not None:
        for named in _connection_tokens(connection):
            headers.popall(named, None)
    if chunked:
        # Transfer-Encoding is the body's real framing (RFC 9112 6.3); a Content-Length
        # beside it, sent upstream with the streamed body, would let the bytes past it
        # be read there as a second request (smuggling). An h11 host lets both through.
        headers.popall("content-length", None)
    for name, value in target.inject:
        headers.add(name, value)
    return headers, has_body


def response_headers(
    raw_headers: Iterable[tuple[bytes, bytes]], *, rewriting: bool
) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers as the client gets them.

    Hop-by-hop headers (and those named in ``Connection``) and ``Set-Cookie``
    are dropped; so is ``Content-Length`` when ``rewriting`` changes the body.
    """
    out = []
    connection: list[bytes] | None = None
    for raw_name, value in raw_headers:
        name = raw_name.lower()
        text = name.decode("latin-1")
        if text in _DROP_RESPONSE:
            if text == "connection":
                connection = [*(connection or ()), value]
            continue
        # A rewritten stream changes length; SSE rarely has one, but be exact.
        if rewriting and text == "content-length":
            continue
        out.append((name, value))
    if connection is not None:
        named = {
            t.encode("latin-1") for t in _connection_tokens(v.decode("latin-1") for v in connection)
        }
        out = [(n, v) for n, v in out if n not in named]
    return out
