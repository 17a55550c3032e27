"""The pure parts of the data-plane policy: credential forms, fixed query names, header rules."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from igris_mw._errors import BadRequest
from igris_mw._proxy.upstream import Target, request_headers, response_headers, upstream_url

TOKEN = 'tok/en+with=odd&chars"9'


@pytest.mark.parametrize(
    "echo",
    [
        TOKEN,
        f"Bearer {TOKEN}",
        quote(TOKEN, safe=""),
        json.dumps(TOKEN)[1:-1],
    ],
)
def test_every_form_of_the_bearer_token_counts_as_reflected(echo: str) -> None:
    """The raw token, the header value, and its percent- and JSON-escaped forms are caught."""
    target = Target("https://up.example/mcp", inject=(("Authorization", f"Bearer {TOKEN}"),))
    assert target.reflects_credential([], f'{{"debug": "{echo}"}}'.encode())
    assert target.reflects_credential([(b"x-echo", echo.encode())], b"")
    assert not target.reflects_credential([(b"x-echo", b"Bearer other")], b"nothing here")


def test_basic_auth_password_and_pair_count_as_reflected() -> None:
    """For basic auth the base64 form, user:password and the bare password are all caught."""
    pair = "alice:correct-horse-battery"
    value = "Basic " + base64.b64encode(pair.encode()).decode()
    target = Target("https://up.example/", inject=(("Authorization", value),))
    for echo in (value, pair, "correct-horse-battery", value.split(" ", 1)[1]):
        assert target.reflects_credential([], echo.encode())
    assert not target.reflects_credential([], b"alice")


def test_short_credentials_are_not_looked_for() -> None:
    """A credential form under 8 characters would match ordinary text: not looked for."""
    target = Target("https://up.example/", inject=(("X-Key", "abc"),))
    assert not target.reflects_credential([], b"abc abc abc")


@given(
    st.text(min_size=8, max_size=60).filter(
        lambda t: "\r" not in t and "\n" not in t and "\x00" not in t
    )
)
def test_any_injected_header_value_is_found_when_echoed(value: str) -> None:
    """Whatever the header credential, echoing it verbatim is detected."""
    target = Target("https://up.example/", inject=(("X-Api-Key", value),))
    assert target.reflects_credential([], b"prefix " + value.encode("utf-8", "surrogateescape"))


@pytest.mark.parametrize(
    ("query", "refused"),
    [
        (b"token=x", True),
        (b"TOKEN=x", True),
        (b"to%6Ben=x", True),
        (b"token[]=x", True),
        (b"a=1&token", True),
        (b"a=1;token=2", True),
        (b"tokens=x", False),
        (b"a=token", False),
        (b"", False),
    ],
)
def test_fixed_query_names_in_every_spelling(query: bytes, refused: bool) -> None:
    """A client query naming a fixed parameter (decoded, any case, a[] form) is refused."""
    target = Target("https://up.example/mcp?token=fixed")
    if refused:
        with pytest.raises(BadRequest):
            upstream_url(target, "", query)
    else:
        url = upstream_url(target, "", query)
        assert url.raw_query_string.startswith("token=fixed")


def test_client_routing_headers_never_go_upstream_and_metadata_headers_neither() -> None:
    """request_headers drops Forwarded, X-Forwarded-*, X-Real-IP and metadata headers."""
    scope = {
        "headers": [
            (b"forwarded", b"for=1.2.3.4"),
            (b"x-forwarded-for", b"1.2.3.4"),
            (b"x-real-ip", b"1.2.3.4"),
            (b"metadata-flavor", b"Google"),
            (b"x-aws-ec2-metadata-token-ttl-seconds", b"21600"),
            (b"accept", b"*/*"),
        ]
    }
    headers, _ = request_headers(scope, Target("https://up.example/"))
    assert list(headers) == ["accept"]


def test_upstream_policy_headers_never_reach_the_client() -> None:
    """response_headers drops cookies, challenges, Alt-Svc, HSTS and Clear-Site-Data."""
    raw = [
        (b"Set-Cookie", b"a=b"),
        (b"WWW-Authenticate", b"Bearer"),
        (b"Alt-Svc", b"h3"),
        (b"Strict-Transport-Security", b"max-age=1"),
        (b"Clear-Site-Data", b'"*"'),
        (b"Content-Type", b"application/json"),
    ]
    assert response_headers(raw, rewriting=False) == [(b"content-type", b"application/json")]
