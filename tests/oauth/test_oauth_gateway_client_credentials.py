"""oauth2_client_credentials through the gateway: the real provider, the MCP SDK client, a
token-checking upstream."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from e2e_harness import Gateway, client_headers, new_slug, streamable_session
from oauth_harness import (
    CONFIDENTIAL_CLIENT,
    CONFIDENTIAL_SECRET,
    POST_CLIENT,
    POST_SECRET,
    AuthorizationServer,
    ResourceServer,
)

from igris_mw.models import AuditEvent


async def cc_requests(provider: AuthorizationServer, client: str = CONFIDENTIAL_CLIENT) -> int:
    return await provider.token_requests(client, "client_credentials")


def cc_body(
    slug: str,
    provider: AuthorizationServer,
    resource_server: ResourceServer,
    *,
    client: str = CONFIDENTIAL_CLIENT,
    secret: str = CONFIDENTIAL_SECRET,
    **oauth: Any,
) -> dict[str, Any]:
    return {
        "slug": slug,
        "name": f"oauth {slug}",
        "upstreamUrl": resource_server.resource,
        "authType": "oauth2_client_credentials",
        "credential": secret,
        "oauth": {
            "tokenUrl": provider.token_endpoint,
            "clientId": client,
            "scopes": ["mcp:tools"],
            "resource": resource_server.resource,
            **oauth,
        },
    }


async def create(gateway: Gateway, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(
            f"{gateway.base_url}/api/v1/virtual-keys",
            json=body,
            headers={"Authorization": f"Bearer {gateway.admin_key}"},
        )


async def audit_events(gateway: Gateway, slug: str) -> list[AuditEvent]:
    await gateway.gw.audit.flush()
    page = await gateway.gw.service.audit.list_audit_events(slug, limit=200)
    return list(page.items)


@pytest.mark.parametrize(
    ("client", "secret", "method"),
    [
        (CONFIDENTIAL_CLIENT, CONFIDENTIAL_SECRET, "client_secret_basic"),
        (POST_CLIENT, POST_SECRET, "client_secret_post"),
    ],
)
async def test_mcp_client_calls_a_tool_with_a_client_credentials_token(
    gateway: Gateway,
    provider: AuthorizationServer,
    resource_server: ResourceServer,
    client: str,
    secret: str,
    method: str,
) -> None:
    """The MCP SDK client through the gateway: the upstream sees the provider's token."""
    slug = new_slug("cc")
    body = cc_body(
        slug,
        provider,
        resource_server,
        client=client,
        secret=secret,
        tokenEndpointAuthMethod=method,
    )
    resp = await create(gateway, body)
    assert resp.status_code == 201, resp.text
    shown = resp.json()
    assert shown["authType"] == "oauth2_client_credentials"
    assert shown["oauth"]["clientId"] == client
    assert secret not in resp.text
    async with streamable_session(gateway.url(slug), client_headers(gateway.mcp_key)) as session:
        result = await session.call_tool("whoami", {})
        who = json.loads(result.content[0].text)  # type: ignore[union-attr]
        assert who["client_id"] == client
        echoed = await session.call_tool("echo", {"text": "through oauth"})
        assert echoed.content[0].text == "through oauth"  # type: ignore[union-attr]
    events = await audit_events(gateway, slug)
    assert any(e.kind == "credential" and e.outcome == "ok" for e in events)
    assert all(secret not in json.dumps(e.to_json()) for e in events)


async def test_fifty_concurrent_first_requests_cause_one_token_request(
    gateway: Gateway, provider: AuthorizationServer, resource_server: ResourceServer
) -> None:
    """50 requests at once on a new connection: one token request, none refused upstream."""
    slug = new_slug("cc50")
    assert (await create(gateway, cc_body(slug, provider, resource_server))).status_code == 201
    before = await cc_requests(provider)
    refused_before = len(resource_server.guard.refused)
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    headers = {
        **client_headers(gateway.mcp_key),
        "Accept": "application/json, text/event-stream",
    }
    async with httpx.AsyncClient(timeout=30) as http:
        answers = await asyncio.gather(
            *(http.post(gateway.url(slug), json=ping, headers=headers) for _ in range(50))
        )
    assert await cc_requests(provider) - before == 1
    assert all(a.status_code != 401 for a in answers)
    assert len(resource_server.guard.refused) == refused_before


@pytest.mark.slow
async def test_two_second_tokens_over_ten_seconds_of_traffic_never_fail(
    gateway: Gateway,
    provider: AuthorizationServer,
    resource_server: ResourceServer,
    short_tokens: int,
) -> None:
    """An MCP session calling a tool for 10 s with 2 s tokens: every call succeeds."""
    slug = new_slug("cc2s")
    assert (await create(gateway, cc_body(slug, provider, resource_server))).status_code == 201
    before = await cc_requests(provider)
    calls = 0
    async with streamable_session(gateway.url(slug), client_headers(gateway.mcp_key)) as session:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            result = await session.call_tool("echo", {"text": f"call {calls}"})
            assert result.content[0].text == f"call {calls}"  # type: ignore[union-attr]
            calls += 1
            await asyncio.sleep(0.05)
    assert calls > 50
    assert 5 <= await cc_requests(provider) - before <= 15


async def test_an_upstream_401_drops_the_token_and_the_next_request_gets_a_new_one(
    gateway: Gateway, provider: AuthorizationServer, resource_server: ResourceServer
) -> None:
    """The upstream refuses the current token: that request fails, the next one renews."""
    slug = new_slug("cc401")
    assert (await create(gateway, cc_body(slug, provider, resource_server))).status_code == 201
    headers = {**client_headers(gateway.mcp_key), "Accept": "application/json, text/event-stream"}
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    async with httpx.AsyncClient(timeout=30) as http:
        first = await http.post(gateway.url(slug), json=ping, headers=headers)
        assert first.status_code != 401
        token = resource_server.guard.accepted[-1]
        seen = [c for c in resource_server.guard.accepted if c["jti"] == token["jti"]]
        assert seen
        resource_server.guard.revoked = resource_server.guard.revoked | {token["jti"]}
        before = await cc_requests(provider)
        refused = await http.post(gateway.url(slug), json=ping, headers=headers)
        assert refused.status_code in (401, 502)
        again = await http.post(gateway.url(slug), json=ping, headers=headers)
    assert again.status_code not in (401, 502)
    assert await cc_requests(provider) - before == 1


async def test_no_token_or_client_secret_in_logs_answers_or_audit(
    gateway: Gateway,
    provider: AuthorizationServer,
    resource_server: ResourceServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The token the gateway holds and the client secret appear in no log line,
    API answer or audit event (the upstream's 401 included)."""
    caplog.set_level("DEBUG")
    slug = new_slug("cccanary")
    assert (await create(gateway, cc_body(slug, provider, resource_server))).status_code == 201
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    headers = {**client_headers(gateway.mcp_key), "Accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient(timeout=30) as http:
        await http.post(gateway.url(slug), json=ping, headers=headers)
        state = await gateway.gw.oauth.grants.load((slug, ""))
        assert state is not None
        assert state.access_token is not None
        token = state.access_token.reveal().decode()
        resource_server.guard.revoke(token)
        refused = await http.post(gateway.url(slug), json=ping, headers=headers)
        shown = await http.get(
            f"{gateway.base_url}/api/v1/virtual-keys/{slug}",
            headers={"Authorization": f"Bearer {gateway.admin_key}"},
        )
    events = json.dumps([e.to_json() for e in await audit_events(gateway, slug)])
    for secret in (token, CONFIDENTIAL_SECRET):
        assert secret not in caplog.text
        assert secret not in refused.text
        assert secret not in shown.text
        assert secret not in events
    assert shown.json()["oauthStatus"] == "authorized"
    assert shown.json()["tokenExpiresAt"] is not None


async def test_a_token_endpoint_outage_is_a_502_without_secrets(
    gateway: Gateway, provider: AuthorizationServer, resource_server: ResourceServer
) -> None:
    """The provider answers 503: the client gets 502 oauth_error, audited, nothing leaked."""
    slug = new_slug("ccdown")
    assert (await create(gateway, cc_body(slug, provider, resource_server))).status_code == 201
    await provider.fail_next(1)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            resp = await http.post(
                gateway.url(slug),
                json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                headers=client_headers(gateway.mcp_key),
            )
    finally:
        await provider.fail_next(0)
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "oauth_error"
    assert CONFIDENTIAL_SECRET not in resp.text
    events = await audit_events(gateway, slug)
    assert any(e.kind == "credential" and e.outcome == "oauth_error" for e in events)
    assert any(e.kind == "gateway" and e.status == 502 for e in events)


async def test_a_wrong_client_secret_is_a_502_naming_invalid_client(
    gateway: Gateway, provider: AuthorizationServer, resource_server: ResourceServer
) -> None:
    """A rejected client secret: 502 whose message names invalid_client, not the secret."""
    slug = new_slug("ccbad")
    canary = "canary-client-secret-5e6f7a8b"
    body = cc_body(slug, provider, resource_server, secret=canary)
    assert (await create(gateway, body)).status_code == 201
    async with httpx.AsyncClient(timeout=30) as http:
        resp = await http.post(
            gateway.url(slug),
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers=client_headers(gateway.mcp_key),
        )
        shown = await http.get(
            f"{gateway.base_url}/api/v1/virtual-keys/{slug}",
            headers={"Authorization": f"Bearer {gateway.admin_key}"},
        )
    assert resp.status_code == 502
    assert "invalid_client" in resp.json()["error"]["message"]
    assert canary not in resp.text
    assert canary not in shown.text
    events = await audit_events(gateway, slug)
    assert all(canary not in json.dumps(e.to_json()) for e in events)


@pytest.mark.parametrize(
    ("oauth", "field"),
    [
        ({"clientId": "c"}, "oauth.tokenUrl"),
        ({"tokenUrl": "http://127.0.0.1:1/token"}, "oauth.clientId"),
        ({"tokenUrl": "ftp://x/token", "clientId": "c"}, "oauth.tokenUrl"),
        ({"tokenUrl": "http://127.0.0.1:1/t", "clientId": "c", "scopes": "a b"}, "oauth.scopes"),
        ({"tokenUrl": "http://127.0.0.1:1/t", "clientId": "c", "scopes": ["a b"]}, "oauth.scopes"),
        (
            {"tokenUrl": "http://127.0.0.1:1/t", "clientId": "c", "authorizationUrl": "http://x/a"},
            "oauth.authorizationUrl",
        ),
        (
            {"tokenUrl": "http://127.0.0.1:1/t", "clientId": "c", "clientSecret": "s"},
            "oauth.clientSecret",
        ),
        (
            {"tokenUrl": "http://127.0.0.1:1/t", "clientId": "c", "resource": "not a url"},
            "oauth.resource",
        ),
        (
            {
                "tokenUrl": "http://127.0.0.1:1/t",
                "clientId": "c",
                "tokenEndpointAuthMethod": "private_key_jwt",
            },
            "oauth.tokenEndpointAuthMethod",
        ),
    ],
)
async def test_an_invalid_oauth_object_is_a_422_naming_the_field(
    gateway: Gateway, oauth: dict[str, Any], field: str
) -> None:
    """Each bad oauth field is a 422 that names it; nothing is created."""
    slug = new_slug("ccbad")
    body = {
        "slug": slug,
        "name": "x",
        "upstreamUrl": "http://127.0.0.1:1/mcp",
        "authType": "oauth2_client_credentials",
        "credential": "s",
        "oauth": oauth,
    }
    resp = await create(gateway, body)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["field"] == field
    async with httpx.AsyncClient() as http:
        gone = await http.get(
            f"{gateway.base_url}/api/v1/virtual-keys/{slug}",
            headers={"Authorization": f"Bearer {gateway.admin_key}"},
        )
    assert gone.status_code == 404


async def test_oauth_without_an_oauth_type_and_missing_secret_are_422(gateway: Gateway) -> None:
    """oauth on a bearer connection, or client credentials without a secret: 422."""
    base = {"name": "x", "upstreamUrl": "http://127.0.0.1:1/mcp"}
    oauth = {"tokenUrl": "http://127.0.0.1:1/t", "clientId": "c"}
    resp = await create(gateway, {**base, "slug": new_slug("x"), "credential": "t", "oauth": oauth})
    assert resp.status_code == 422
    assert resp.json()["error"]["field"] == "oauth"
    resp = await create(
        gateway,
        {**base, "slug": new_slug("x"), "authType": "oauth2_client_credentials", "oauth": oauth},
    )
    assert resp.status_code == 422
    assert resp.json()["error"]["field"] == "credential"


async def test_token_requests_are_counted_in_the_refresh_metric(
    gateway: Gateway, provider: AuthorizationServer, resource_server: ResourceServer
) -> None:
    """igris_credential_refresh_total{connection, result} counts ok and failed renewals."""
    metrics_app = gateway.gw.metrics_app  # turns collection on
    slug = new_slug("ccmetric")
    assert (await create(gateway, cc_body(slug, provider, resource_server))).status_code == 201
    bad = new_slug("ccmetricbad")
    wrong = cc_body(bad, provider, resource_server, secret="wrong")
    assert (await create(gateway, wrong)).status_code == 201
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    headers = {**client_headers(gateway.mcp_key), "Accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient(timeout=30) as http:
        await http.post(gateway.url(slug), json=ping, headers=headers)
        await http.post(gateway.url(bad), json=ping, headers=headers)
    transport = httpx.ASGITransport(app=metrics_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://metrics") as scrape:
        text = (await scrape.get("/")).text
    assert f'igris_credential_refresh_total{{connection="{slug}",result="ok"}} 1' in text
    assert f'igris_credential_refresh_total{{connection="{bad}",result="failed"}} 1' in text
