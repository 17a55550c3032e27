"""oauth2 (authorization code + PKCE + refresh) through the gateway: consent in the
provider's forms, the MCP SDK client, rotation over several expiries, revocation."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from e2e_harness import Gateway, client_headers, new_slug, streamable_session
from oauth_harness import (
    CONFIDENTIAL_CLIENT,
    CONFIDENTIAL_SECRET,
    PUBLIC_CLIENT,
    AuthorizationServer,
    ResourceServer,
    drive_consent,
)

from igris_mw._oauth.tokens import ClientAuth, TokenClient
from igris_mw.models import Secret


def admin(gateway: Gateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.admin_key}"}


async def api(gateway: Gateway, method: str, path: str, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.request(
            method, f"{gateway.base_url}/api/v1{path}", headers=admin(gateway), **kw
        )


async def consent(gateway: Gateway, slug: str, account: str) -> httpx.Response:
    """Ask the gateway for the URL, consent as ``account``, follow the redirect back."""
    resp = await api(gateway, "POST", f"/virtual-keys/{slug}/oauth/authorize")
    assert resp.status_code == 200, resp.text
    url = resp.json()["authorizeUrl"]
    callback = await drive_consent(
        url, account=account, redirect_prefix=f"{gateway.base_url}/api/v1/oauth/callback"
    )
    async with httpx.AsyncClient() as browser:
        return await browser.get(callback)


async def whoami(gateway: Gateway, slug: str) -> dict[str, Any]:
    async with streamable_session(gateway.url(slug), client_headers(gateway.mcp_key)) as session:
        result = await session.call_tool("whoami", {})
    return dict(json.loads(result.content[0].text))  # type: ignore[union-attr]


async def ping(gateway: Gateway, slug: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(
            gateway.url(slug),
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={
                **client_headers(gateway.mcp_key),
                "Accept": "application/json, text/event-stream",
            },
        )


@pytest.mark.slow
async def test_consent_then_tools_then_rotation_then_revocation_then_consent_again(
    gateway: Gateway,
    provider: AuthorizationServer,
    resource_server: ResourceServer,
    short_tokens: int,
) -> None:
    """A public client discovered from the upstream, through its whole life."""
    slug = new_slug("oauth2")
    created = await api(
        gateway,
        "POST",
        "/virtual-keys",
        json={
            "slug": slug,
            "name": "oauth2 public",
            "upstreamUrl": resource_server.resource,
            "authType": "oauth2",
            "oauth": {"clientId": PUBLIC_CLIENT, "scopes": ["mcp:tools"]},
        },
    )
    assert created.status_code == 201, created.text
    assert created.json()["oauthStatus"] == "pending"
    assert created.json()["tokenExpiresAt"] is None

    before = await ping(gateway, slug)
    assert before.status_code == 502
    assert before.json()["error"]["code"] == "reauthorization_required"

    page = await consent(gateway, slug, "alice")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "authorized" in page.text
    assert slug in page.text
    assert page.headers["referrer-policy"] == "no-referrer"

    shown = (await api(gateway, "GET", f"/virtual-keys/{slug}")).json()
    assert shown["oauthStatus"] == "authorized"
    assert shown["tokenExpiresAt"] is not None

    assert (await whoami(gateway, slug))["sub"] == "alice"

    # Several expiries of 2 s tokens: each renewal uses (and rotates) the refresh token.
    refreshes_before = await provider.token_requests(PUBLIC_CLIENT, "refresh_token")
    async with streamable_session(gateway.url(slug), client_headers(gateway.mcp_key)) as session:
        for i in range(4):
            await asyncio.sleep(short_tokens)
            echoed = await session.call_tool("echo", {"text": f"after expiry {i}"})
            assert echoed.content[0].text == f"after expiry {i}"  # type: ignore[union-attr]
    assert await provider.token_requests(PUBLIC_CLIENT, "refresh_token") - refreshes_before >= 3

    # Revoke the grant at the provider (with the refresh token the gateway holds).
    state = await gateway.gw.oauth.grants.load((slug, ""))
    assert state is not None
    assert state.refresh_token is not None
    async with TokenClient() as tokens:
        await tokens.revoke(
            provider.revocation_endpoint,
            ClientAuth(PUBLIC_CLIENT, None, "none"),
            state.refresh_token,
        )
    await asyncio.sleep(short_tokens + 0.5)
    refused = await ping(gateway, slug)
    assert refused.status_code == 502
    assert refused.json()["error"]["code"] == "reauthorization_required"
    assert (await api(gateway, "GET", f"/virtual-keys/{slug}")).json()["oauthStatus"] == (
        "reauthorization_required"
    )

    # A new consent recovers.
    assert (await consent(gateway, slug, "alice")).status_code == 200
    assert (await whoami(gateway, slug))["sub"] == "alice"

    # No token of the grant ever reached an API answer or the audit trail.
    final = await gateway.gw.oauth.grants.load((slug, ""))
    assert final is not None
    secrets = [s.reveal().decode() for s in (final.access_token, final.refresh_token) if s]
    listing = await api(gateway, "GET", "/virtual-keys")
    audit = await api(gateway, "GET", f"/virtual-keys/{slug}/audit?limit=200")
    for secret in secrets:
        assert secret not in listing.text
        assert secret not in audit.text
    kinds = {(e["kind"], e["action"], e["outcome"]) for e in audit.json()["data"]}
    assert ("credential", "oauth_grant", "ok") in kinds
    assert ("credential", "oauth_token", "ok") in kinds
    assert ("credential", "oauth_token", "reauthorization_required") in kinds


async def test_a_confidential_client_with_configured_endpoints(
    gateway: Gateway, provider: AuthorizationServer, resource_server: ResourceServer
) -> None:
    """Endpoints given (no discovery), client secret as the credential: consent and call."""
    slug = new_slug("oauth2c")
    created = await api(
        gateway,
        "POST",
        "/virtual-keys",
        json={
            "slug": slug,
            "name": "oauth2 confidential",
            "upstreamUrl": resource_server.resource,
            "authType": "oauth2",
            "credential": CONFIDENTIAL_SECRET,
            "oauth": {
                "clientId": CONFIDENTIAL_CLIENT,
                "scopes": ["mcp:tools"],
                "authorizationUrl": f"{provider.issuer}/auth",
                "tokenUrl": provider.token_endpoint,
                "resource": resource_server.resource,
            },
        },
    )
    assert created.status_code == 201, created.text
    assert CONFIDENTIAL_SECRET not in created.text
    assert (await consent(gateway, slug, "bob")).status_code == 200
    who = await whoami(gateway, slug)
    assert (who["sub"], who["client_id"]) == ("bob", CONFIDENTIAL_CLIENT)


async def test_a_replayed_or_forged_callback_is_refused_with_a_page(
    gateway: Gateway, provider: AuthorizationServer, resource_server: ResourceServer
) -> None:
    """The callback page says in words why: an unknown state is a 400 page, nothing stored."""
    async with httpx.AsyncClient() as browser:
        forged = await browser.get(
            f"{gateway.base_url}/api/v1/oauth/callback",
            params={"state": "forged<script>", "code": "x"},
        )
    assert forged.status_code == 400
    assert "not authorized" in forged.text
    assert "<script>" not in forged.text
    assert forged.headers["x-frame-options"] == "DENY"


async def test_a_declined_consent_is_audited_and_told_in_words(
    gateway: Gateway, provider: AuthorizationServer, resource_server: ResourceServer
) -> None:
    """The provider answers access_denied: a 502 page saying consent was declined, audited."""
    slug = new_slug("declined")
    created = await api(
        gateway,
        "POST",
        "/virtual-keys",
        json={
            "slug": slug,
            "name": "d",
            "upstreamUrl": resource_server.resource,
            "authType": "oauth2",
            "oauth": {"clientId": PUBLIC_CLIENT, "scopes": []},
        },
    )
    assert created.status_code == 201
    started = await api(gateway, "POST", f"/virtual-keys/{slug}/oauth/authorize")
    from urllib.parse import parse_qs, urlsplit

    state = parse_qs(urlsplit(started.json()["authorizeUrl"]).query)["state"][0]
    async with httpx.AsyncClient() as browser:
        page = await browser.get(
            f"{gateway.base_url}/api/v1/oauth/callback",
            params={"state": state, "error": "access_denied", "iss": provider.issuer},
        )
    assert page.status_code == 502
    assert "consent was declined" in page.text
    await gateway.gw.audit.flush()
    events = (await gateway.gw.service.audit.list_audit_events(slug, limit=50)).items
    assert any(e.action == "oauth_grant" and e.outcome == "oauth_error" for e in events)


async def test_authorize_is_for_oauth2_connections_and_admins_only(
    gateway: Gateway, resource_server: ResourceServer
) -> None:
    """A bearer connection cannot be authorized (422); an mcp key gets 403."""
    slug = new_slug("plain")
    created = await api(
        gateway,
        "POST",
        "/virtual-keys",
        json={
            "slug": slug,
            "name": "p",
            "upstreamUrl": resource_server.resource,
            "credential": "static-token",
        },
    )
    assert created.status_code == 201
    assert "oauthStatus" not in created.json()
    resp = await api(gateway, "POST", f"/virtual-keys/{slug}/oauth/authorize")
    assert resp.status_code == 422
    assert resp.json()["error"]["field"] == "authType"
    async with httpx.AsyncClient() as http:
        denied = await http.post(
            f"{gateway.base_url}/api/v1/virtual-keys/{slug}/oauth/authorize",
            headers={"Authorization": f"Bearer {gateway.mcp_key}"},
        )
    assert denied.status_code == 403


def test_secret_type_guards_tokens() -> None:
    """Tokens are Secrets: repr never shows them."""
    assert "tok" not in repr(Secret(b"tok"))
