"""Contract, second part: credentials beyond one static secret (OAuth 2, per-user)."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from contract_harness import ScriptedUpstream, Served, error_of

PING = {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {}}


def _cc(gw: Served, scripted: ScriptedUpstream, mode: str = "ok") -> dict[str, Any]:
    return gw.create_connection(
        None,
        upstreamUrl=scripted.base_url + "/echo",
        authType="oauth2_client_credentials",
        credential="client-secret-canary-9",
        oauth={
            "tokenUrl": f"{scripted.base_url}/token/{mode}",
            "clientId": "igris-test",
            "scopes": ["mcp:tools", "read"],
            "audience": "https://api.example",
        },
    )


async def test_client_credentials_token_is_injected_once(
    gw: Served, scripted: ScriptedUpstream
) -> None:
    """oauth2_client_credentials: one token request for concurrent first requests; Bearer sent."""
    c = _cc(gw, scripted)
    assert c["authType"] == "oauth2_client_credentials"
    assert c["oauth"]["clientId"] == "igris-test"
    assert c["oauth"]["scopes"] == ["mcp:tools", "read"]
    assert "client-secret-canary-9" not in str({k: v for k, v in c.items() if k != "_credential"})
    before_tokens = len(scripted.token_requests)
    before = len(scripted.seen)
    async with httpx.AsyncClient(timeout=15) as http:
        rs = await asyncio.gather(
            *[http.post(c["gatewayUrl"], headers=gw.h(), json=PING) for _ in range(8)]
        )
    assert [r.status_code for r in rs] == [200] * 8
    tokens = scripted.token_requests[before_tokens:]
    assert len(tokens) == 1
    assert tokens[0].get("grant_type") == "client_credentials"
    sent = [s["headers"]["authorization"] for s in scripted.seen[before:] if s["path"] == "/echo"]
    assert len(sent) == 8
    assert len(set(sent)) == 1
    assert sent[0].startswith("Bearer at-ok-")
    read = gw.api("GET", f"/api/v1/virtual-keys/{c['slug']}")
    body = read.json()
    assert body["oauthStatus"] == "authorized"
    assert body["tokenExpiresAt"]
    assert "at-ok-" not in read.text
    assert "client-secret-canary-9" not in read.text


def test_oauth_fields_are_validated(gw: Served) -> None:
    """Without tokenUrl an oauth2_client_credentials connection is a 422; with it, a 201."""
    body = {
        "slug": "oauth-bad",
        "name": "x",
        "upstreamUrl": "https://a.example/",
        "authType": "oauth2_client_credentials",
        "credential": "s",
        "oauth": {"clientId": "c", "scopes": []},
    }
    err = error_of(gw.api("POST", "/api/v1/virtual-keys", json=body), 422)
    assert "tokenUrl" in err["message"] or str(err.get("field", "")).startswith("oauth"), err
    body["oauth"]["tokenUrl"] = "https://login.example/token"
    assert gw.api("POST", "/api/v1/virtual-keys", json=body).status_code == 201


def _authorize(gw: Served, slug: str, user: str | None = None) -> str:
    path = f"/api/v1/virtual-keys/{slug}" + (f"/users/{user}" if user else "")
    r = gw.api("POST", path + "/oauth/authorize")
    assert r.status_code == 200, r.text
    url: str = r.json()["authorizeUrl"]
    return url


def _consent(gw: Served, authorize_url: str) -> httpx.Response:
    """Play the provider: redirect the browser to the callback with a code and the state."""
    query = parse_qs(urlsplit(authorize_url).query)
    assert query["response_type"] == ["code"]
    assert query["code_challenge_method"] == ["S256"]
    assert query["code_challenge"][0]
    redirect = query["redirect_uri"][0]
    assert redirect.endswith("/api/v1/oauth/callback")
    return httpx.get(
        redirect.replace(urlsplit(redirect).netloc, urlsplit(gw.url).netloc),
        params={"code": "the-code", "state": query["state"][0]},
        timeout=15,
    )


def test_authorization_code_flow_and_reauthorization(
    gw: Served, scripted: ScriptedUpstream
) -> None:
    """oauth2: authorize, callback, authorized; invalid_grant: 502 reauthorization_required."""
    c = gw.create_connection(
        None,
        upstreamUrl=scripted.base_url + "/echo",
        authType="oauth2",
        credential=None,
        oauth={
            "clientId": "igris-pkce",
            "scopes": ["read"],
            "authorizationUrl": "https://idp.example/authorize",
            "tokenUrl": f"{scripted.base_url}/token/short",
        },
    )
    assert c["oauthStatus"] == "pending"
    url = _authorize(gw, c["slug"])
    assert url.startswith("https://idp.example/authorize?")
    assert _consent(gw, url).status_code < 400
    read = gw.api("GET", f"/api/v1/virtual-keys/{c['slug']}").json()
    assert read["oauthStatus"] == "authorized"
    r = httpx.post(c["gatewayUrl"], headers=gw.h(), json=PING, timeout=15)
    assert r.status_code == 200
    assert r.json()["headers"]["authorization"].startswith("Bearer at-short-")
    time.sleep(2.5)  # the 2 s token must be renewed; the provider says invalid_grant
    r = httpx.post(c["gatewayUrl"], headers=gw.h(), json=PING, timeout=15)
    error_of(r, 502, "reauthorization_required")
    read = gw.api("GET", f"/api/v1/virtual-keys/{c['slug']}").json()
    assert read["oauthStatus"] == "reauthorization_required"
    assert "rt-" not in str(read)
    assert "at-short" not in str(read)


def test_per_user_static_credentials(gw: Served, scripted: ScriptedUpstream) -> None:
    """per_user: PUT/GET/DELETE users; X-Igris-User picks the credential; missing is 403."""
    c = gw.create_connection(
        None, upstreamUrl=scripted.base_url + "/echo", credentialScope="per_user", credential=None
    )
    base = f"/api/v1/virtual-keys/{c['slug']}/users"
    r = gw.api("PUT", f"{base}/alice@example.com/credential", json={"credential": "alice-cred"})
    assert r.status_code in (200, 201, 204), r.text
    listing = gw.api("GET", base)
    assert listing.status_code == 200
    assert "alice@example.com" in listing.text
    assert "alice-cred" not in listing.text
    r = httpx.post(
        c["gatewayUrl"],
        headers=gw.h(**{"X-Igris-User": "alice@example.com"}),
        json=PING,
        timeout=10,
    )
    assert r.status_code == 200
    assert r.json()["headers"]["authorization"] == "Bearer alice-cred"
    error_of(
        httpx.post(c["gatewayUrl"], headers=gw.h(**{"X-Igris-User": "bob"}), json=PING),
        403,
        "user_credential_missing",
    )
    r = gw.api(
        "POST",
        "/api/v1/api-keys",
        json={"name": "bound", "scopes": ["mcp"], "user": "alice@example.com"},
    )
    assert r.status_code == 201
    assert r.json()["user"] == "alice@example.com"
    bound = r.json()["key"]
    ok = httpx.post(c["gatewayUrl"], headers=gw.h(bound), json=PING, timeout=10)
    assert ok.status_code == 200
    assert ok.json()["headers"]["authorization"] == "Bearer alice-cred"
    error_of(
        httpx.post(c["gatewayUrl"], headers=gw.h(bound, **{"X-Igris-User": "bob"}), json=PING),
        403,
        "user_mismatch",
    )
    assert gw.api("DELETE", f"{base}/alice@example.com/credential").status_code in (200, 204)
    error_of(
        httpx.post(c["gatewayUrl"], headers=gw.h(bound), json=PING), 403, "user_credential_missing"
    )


def test_per_user_oauth2_missing_grant_carries_authorize_url(
    gw: Served, scripted: ScriptedUpstream
) -> None:
    """per_user oauth2 without a grant for the user: 403 user_credential_missing + authorizeUrl."""
    c = gw.create_connection(
        None,
        upstreamUrl=scripted.base_url + "/echo",
        authType="oauth2",
        credential=None,
        credentialScope="per_user",
        oauth={
            "clientId": "igris-pkce",
            "scopes": [],
            "authorizationUrl": "https://idp.example/authorize",
            "tokenUrl": f"{scripted.base_url}/token/ok",
        },
    )
    r = httpx.post(c["gatewayUrl"], headers=gw.h(**{"X-Igris-User": "carol"}), json=PING)
    err = error_of(r, 403, "user_credential_missing")
    assert err["authorizeUrl"].startswith("https://idp.example/authorize?")
    url = _authorize(gw, c["slug"], "carol")
    assert _consent(gw, url).status_code < 400
    r = httpx.post(c["gatewayUrl"], headers=gw.h(**{"X-Igris-User": "carol"}), json=PING)
    assert r.status_code == 200
    assert r.json()["headers"]["authorization"].startswith("Bearer at-ok")
