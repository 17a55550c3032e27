"""Parsing the forward proxy setting (IGRIS_UPSTREAM_PROXY / serve --upstream-proxy)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from igris_mw._errors import ValidationError
from igris_mw._proxy.outbound import UpstreamProxy, parse_upstream_proxy

CANARY = "pr0xy-canary-S3cret"


def test_proxy_without_credentials() -> None:
    """http://host:port is taken as is, with no Proxy-Authorization."""
    proxy = parse_upstream_proxy("http://proxy.corp.example:3128")
    assert proxy == UpstreamProxy("http://proxy.corp.example:3128")
    assert proxy.request_options() == {"proxy": "http://proxy.corp.example:3128"}


def test_proxy_default_port_and_ipv6() -> None:
    """A missing port is 80; an IPv6 literal keeps its brackets; a trailing / is allowed."""
    assert parse_upstream_proxy("http://proxy").url == "http://proxy:80"
    assert parse_upstream_proxy("http://[::1]:8080/").url == "http://[::1]:8080"


def test_proxy_credentials_become_a_header_and_stay_hidden() -> None:
    """user:pass@ becomes Proxy-Authorization; repr, str and the URL never show the password."""
    proxy = parse_upstream_proxy(f"http://ops%40corp:{CANARY}@proxy.corp.example:3128")
    options = proxy.request_options()
    assert options["proxy"] == "http://proxy.corp.example:3128"
    expected = base64.b64encode(f"ops@corp:{CANARY}".encode()).decode()
    assert options["proxy_headers"] == {"Proxy-Authorization": f"Basic {expected}"}
    for text in (repr(proxy), str(proxy), f"{proxy}", f"{proxy!r}"):
        assert CANARY not in text
        assert expected not in text
        assert "credentials='**********'" in text


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("https://proxy:3128", "http://"),
        ("socks5://proxy:1080", "http://"),
        ("proxy:3128", "http://"),
        ("http://proxy:3128/path", "path"),
        ("http://proxy:3128?x=1", "path"),
        ("http://proxy:3128#frag", "path"),
        ("http://proxy:3128?", "path"),
        ("http://:3128", "no host"),
        ("http://proxy:99999", "not a valid URL"),
        ("http://proxy:port", "not a valid URL"),
        ("http://pro xy:3128", "whitespace"),
        ("http://proxy:3128\x00", "whitespace"),
        ("", "proxy URL"),
        (None, "proxy URL"),
    ],
)
def test_bad_proxy_urls_are_422(value: object, why: str) -> None:
    """A non-http scheme, a path/query/fragment, no host or a bad port is a 422."""
    with pytest.raises(ValidationError) as caught:
        parse_upstream_proxy(value)
    assert caught.value.status == 422
    assert caught.value.field == "upstreamProxy"
    assert why in caught.value.message


@given(st.text(max_size=40))
def test_errors_never_echo_the_password(password: str) -> None:
    """Whatever the password, a refused proxy URL's message does not contain it."""
    # Fenced by a marker, so a short password cannot match the message's own words
    # ("stre" in "upstreamProxy") by chance: only a leak puts the whole of it there.
    secret = f"Pw9q{password}q9wP"
    with pytest.raises(ValidationError) as caught:
        parse_upstream_proxy(f"https://user:{secret}@proxy:3128/x")
    assert secret not in caught.value.message
