"""Hostile input to the OAuth surfaces: the oauth object, the callback, discovery documents."""

from __future__ import annotations

import json
from typing import Any

import httpx
from e2e_harness import Gateway
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from igris_mw._errors import ValidationError
from igris_mw._oauth.config import parse_oauth

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
_oauth_objects = st.dictionaries(
    st.sampled_from(
        [
            "clientId",
            "scopes",
            "tokenUrl",
            "authorizationUrl",
            "audience",
            "resource",
            "tokenEndpointAuthMethod",
            "x\x00",
            "clientSecret",
        ]
    ),
    _json | st.text(alphabet=st.characters(), max_size=100),
    max_size=7,
)


@given(
    st.sampled_from(["oauth2_client_credentials", "oauth2"]),
    _oauth_objects | _json,
    st.booleans(),
)
def test_parse_oauth_gives_a_result_or_a_validation_error_never_echoing(
    auth_type: str, value: Any, has_secret: bool
) -> None:
    """Any JSON: a normalised object or a ValidationError naming an oauth field, no value."""
    error: ValidationError | None = None
    try:
        out = parse_oauth(auth_type, value, has_secret=has_secret)
    except ValidationError as exc:
        error = exc
    if error is not None:
        assert error.field == "oauth" or error.field.startswith("oauth.")
        for text in _strings(value):
            if len(text) >= 8:
                assert text not in error.message
        return
    assert isinstance(out["clientId"], str)
    assert isinstance(out["scopes"], list)
    json.dumps(out)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.dictionaries(
        st.sampled_from(["state", "code", "iss", "error", "error_description", "x"]),
        st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=300),
        max_size=6,
    )
)
async def test_any_callback_query_gets_a_page_never_a_500(
    gateway: Gateway, query: dict[str, str]
) -> None:
    """Whatever the provider (or an attacker) sends to the callback: an HTML page, 4xx/502."""
    async with httpx.AsyncClient() as browser:
        resp = await browser.get(f"{gateway.base_url}/api/v1/oauth/callback", params=query)
    assert resp.status_code in (400, 404, 502)
    assert resp.headers["content-type"].startswith("text/html")
    for value in query.values():
        if len(value) >= 4 and "<" in value:
            assert value not in resp.text
