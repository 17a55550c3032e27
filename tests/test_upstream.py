"""Tests for igris_mw._proxy.upstream: the proxy's pure part (Target, the upstream URL
and its path-escape rules, the header policy both ways). No I/O."""

from __future__ import annotations

import pytest

from igris_mw._errors import BadRequest
from igris_mw._proxy.upstream import Target, request_headers, response_headers, upstream_url

SECRET = "sk-live-upstream-credential-0123456789"


def test_target_repr_hides_injected_values() -> None:
    """A Target's repr names the upstream but never the credential."""
    target = Target("https://u:p@mcp.example:8443/x", inject=(("Authorization", SECRET),))
    assert SECRET not in repr(target)
    assert target.label == "mcp.example:8443"


def test_target_refuses_header_injection() -> None:
    """An injected value with a line break is refused, and the error does not echo it."""
    with pytest.raises(ValueError, match="X-Key") as info:
        Target("https://h/", inject=(("X-Key", "abc\r\nEvil: 1"),))
    assert "Evil" not in str(info.value)


@pytest.mark.parametrize(
    ("base", "subpath", "query", "expected"),
    [
        ("https://h/mcp", "", b"", "https://h/mcp"),
        ("https://h/mcp/", "", b"", "https://h/mcp/"),
        ("https://h/mcp", "/", b"", "https://h/mcp/"),
        (
            "https://h/legacy",
            "/messages/",
            b"session_id=1",
            "https://h/legacy/messages/?session_id=1",
        ),
        ("https://h/mcp?k=v", "/a%2Fb", b"q=%20x", "https://h/mcp/a%2Fb?k=v&q=%20x"),
        ("https://h", "/x y", b"a=b c", "https://h/x%20y?a=b%20c"),
        ("https://h/a", "/.well-known/x", b"", "https://h/a/.well-known/x"),
    ],
)
def test_upstream_url(base: str, subpath: str, query: bytes, expected: str) -> None:
    """The upstream URL is upstreamUrl + subpath, raw encodings kept, queries joined."""
    assert str(upstream_url(Target(base), subpath, query)) == expected


@pytest.mark.parametrize(
    "subpath",
    [
        "/..",
        "/a/../b",
        "/%2e%2e/x",
        "/.%2E/x",
        "/.",
        "/a/%2E",
        "//h/x",
        "/a//b",
        "/..%5c..",
        "/a%2F..%2Fb",
        "/%ff%fe",
        "/a%0d%0aX: y",
    ],
)
def test_upstream_url_refuses_escapes(subpath: str) -> None:
    """Every way out of the upstream base is a BadRequest."""
    with pytest.raises(BadRequest):
        upstream_url(Target("https://h/base"), subpath)


def test_request_headers_strip_gateway_key_hop_and_igris_headers_and_inject() -> None:
    """Upstream gets the client's end-to-end headers plus the injected ones, nothing else."""
    scope = {
        "headers": [
            (b"authorization", b"Bearer ig_client_key"),
            (b"cookie", b"session=1"),
            (b"host", b"gw.example"),
            (b"connection", b"keep-alive, X-Drop-Me"),
            (b"x-drop-me", b"1"),
            (b"x-igris-user", b"alice"),
            (b"te", b"trailers"),
            (b"accept", b"application/json, text/event-stream"),
            (b"mcp-session-id", b"abc"),
            (b"content-length", b"12"),
        ]
    }
    target = Target("https://h/mcp", inject=(("Authorization", f"Bearer {SECRET}"),))
    headers, has_body = request_headers(scope, target)
    assert has_body
    assert sorted(headers.items()) == sorted(
        [
            ("accept", "application/json, text/event-stream"),
            ("mcp-session-id", "abc"),
            ("content-length", "12"),
            ("Authorization", f"Bearer {SECRET}"),
        ]
    )


@pytest.mark.parametrize(
    ("raw", "has_body"),
    [
        ([], False),
        ([(b"content-length", b"0")], False),
        ([(b"transfer-encoding", b"chunked")], True),
    ],
)
def test_request_headers_report_whether_a_body_is_announced(
    raw: list[tuple[bytes, bytes]], has_body: bool
) -> None:
    """Content-Length > 0 or Transfer-Encoding announce a body."""
    assert request_headers({"headers": raw}, Target("https://h"))[1] is has_body


def test_request_headers_refuse_a_non_numeric_content_length() -> None:
    """A Content-Length that is not a number is a BadRequest."""
    with pytest.raises(BadRequest):
        request_headers({"headers": [(b"content-length", b"12abc")]}, Target("https://h"))


@pytest.mark.parametrize("rewriting", [False, True])
def test_response_headers_drop_hop_by_hop_and_cookies(rewriting: bool) -> None:
    """Set-Cookie, hop-by-hop and Connection-named headers never reach the client;
    Content-Length is dropped only when the body is rewritten."""
    raw = [
        (b"Content-Type", b"text/event-stream"),
        (b"Set-Cookie", b"a=1"),
        (b"Connection", b"close, X-Private"),
        (b"X-Private", b"1"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Content-Length", b"10"),
        (b"Mcp-Session-Id", b"s1"),
    ]
    out = response_headers(raw, rewriting=rewriting)
    expected = [(b"content-type", b"text/event-stream")]
    if not rewriting:
        expected.append((b"content-length", b"10"))
    expected.append((b"mcp-session-id", b"s1"))
    assert out == expected


@pytest.mark.parametrize(
    "raw",
    [
        [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")],
        [(b"transfer-encoding", b"chunked"), (b"content-length", b"5")],
        [(b"Transfer-Encoding", b"gzip, chunked"), (b"Content-Length", b"0")],
    ],
)
def test_request_headers_drop_content_length_beside_transfer_encoding(
    raw: list[tuple[bytes, bytes]],
) -> None:
    """With Transfer-Encoding (the body's real framing, RFC 9112 6.3) no Content-Length
    goes upstream: a streamed body longer than it would smuggle a second request."""
    headers, has_body = request_headers({"headers": raw}, Target("https://h"))
    assert "content-length" not in headers
    assert "transfer-encoding" not in headers
    assert has_body
