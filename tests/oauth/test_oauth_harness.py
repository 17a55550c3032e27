"""The test harness itself: the provider issues real tokens and the upstream checks them."""

from __future__ import annotations

import asyncio

import httpx
from oauth_harness import (
    CONFIDENTIAL_CLIENT,
    CONFIDENTIAL_SECRET,
    AuthorizationServer,
    ResourceServer,
)


async def _token(provider: AuthorizationServer, resource: str) -> str:
    async with httpx.AsyncClient() as client:
        resp = await client.post(
            provider.token_endpoint,
            auth=(CONFIDENTIAL_CLIENT, CONFIDENTIAL_SECRET),
            data={"grant_type": "client_credentials", "scope": "mcp:tools", "resource": resource},
        )
    resp.raise_for_status()
    return str(resp.json()["access_token"])


async def test_upstream_accepts_a_token_issued_for_it(
    provider: AuthorizationServer, resource_server: ResourceServer
) -> None:
    """A client-credentials JWT for the upstream's resource passes its guard."""
    token = await _token(provider, resource_server.resource)
    claims = resource_server.guard.validate(token)
    assert claims["aud"] == resource_server.resource
    assert claims["client_id"] == CONFIDENTIAL_CLIENT


async def test_upstream_refuses_a_token_for_another_resource(
    provider: AuthorizationServer, resource_server: ResourceServer
) -> None:
    """A token whose audience is another resource gets 401 with the RFC 9728 hint."""
    token = await _token(provider, "http://127.0.0.1:9/other")
    async with httpx.AsyncClient() as client:
        resp = await client.post(
            resource_server.resource, headers={"Authorization": f"Bearer {token}"}, json={}
        )
    assert resp.status_code == 401
    challenge = resp.headers["www-authenticate"]
    assert 'error="invalid_token"' in challenge
    assert f'resource_metadata="{resource_server.base_url}/.well-known/' in challenge


async def test_upstream_refuses_an_expired_token(
    provider: AuthorizationServer, resource_server: ResourceServer, short_tokens: int
) -> None:
    """Once its 2 s lifetime is over, a token is refused."""
    token = await _token(provider, resource_server.resource)
    resource_server.guard.validate(token)
    await asyncio.sleep(short_tokens + 1.1)
    async with httpx.AsyncClient() as client:
        resp = await client.post(
            resource_server.resource, headers={"Authorization": f"Bearer {token}"}, json={}
        )
    assert resp.status_code == 401
