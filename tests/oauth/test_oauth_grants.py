"""Stored grants against the real provider: one refresh across replicas, rotation never stranded."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import parse_qs, urlsplit

import aiohttp
import attrs
import pytest
from oauth_harness import PUBLIC_CLIENT, AuthorizationServer, ResourceServer, drive_consent

from igris_mw._oauth.authorization_code import AuthorizationFlows, AuthorizationRequest
from igris_mw._oauth.discovery import discover
from igris_mw._oauth.errors import InvalidGrant
from igris_mw._oauth.grants import GrantManager, GrantState, MemoryGrantStore, RefreshConfig
from igris_mw._oauth.tokens import ClientAuth, TokenClient

REDIRECT = "http://127.0.0.1:8765/api/v1/oauth/callback"
KEY = ("notion", "")


async def consented(
    session: aiohttp.ClientSession, resource_server: ResourceServer, account: str
) -> tuple[GrantState, RefreshConfig, str]:
    """A fresh grant for ``account`` by consent, its refresh config and revocation URL."""
    _, server = await discover(session, resource_server.resource)
    assert server.authorization_endpoint is not None
    assert server.revocation_endpoint is not None
    client = ClientAuth(PUBLIC_CLIENT, None, "none")
    request = AuthorizationRequest(
        server.authorization_endpoint,
        server.token_endpoint,
        client,
        REDIRECT,
        scopes=("mcp:tools",),
        resource=resource_server.resource,
        issuer=server.issuer,
    )
    flows = AuthorizationFlows()
    url = await flows.begin(request, connection="notion")
    callback = await drive_consent(url, account=account, redirect_prefix=REDIRECT)
    answer = {k: v[0] for k, v in parse_qs(urlsplit(callback).query).items()}
    pending, code = await flows.complete(answer)
    tokens = await flows.exchange(TokenClient(session), pending, code)
    config = RefreshConfig(server.token_endpoint, client, resource=resource_server.resource)
    return GrantState.from_tokens(tokens, version=1), config, server.revocation_endpoint


async def refreshes(provider: AuthorizationServer) -> int:
    return await provider.token_requests(PUBLIC_CLIENT, "refresh_token")


@pytest.mark.slow
async def test_two_replicas_refresh_once_between_them_over_several_expiries(
    provider: AuthorizationServer,
    resource_server: ResourceServer,
    session: aiohttp.ClientSession,
    short_tokens: int,
) -> None:
    """Two managers on one store, busy for 7 s with 2 s tokens: no invalid_grant, no doubles."""
    store = MemoryGrantStore()
    state, config, _ = await consented(session, resource_server, "alice")
    store.put(KEY, state)
    replicas = [GrantManager(store, TokenClient(session)) for _ in range(2)]
    before = await refreshes(provider)
    seen: set[bytes] = set()
    failures: list[BaseException] = []

    async def traffic(manager: GrantManager) -> None:
        deadline = time.monotonic() + 7
        while time.monotonic() < deadline:
            try:
                token = await manager.token(KEY, config)
                resource_server.guard.validate(token.reveal().decode())
                seen.add(token.reveal())
            except Exception as exc:
                failures.append(exc)
            await asyncio.sleep(0.02)

    await asyncio.gather(*(traffic(m) for r in replicas for m in (r, r, r)))
    assert failures == []
    made = await refreshes(provider) - before
    assert made >= 4  # a 2 s token renewed 1 s before expiry, over 7 s
    assert len(seen) == made + 1  # every refresh gave one token both replicas used
    final = await store.load(KEY)
    assert final is not None
    assert final.status == "authorized"


async def test_a_revoked_grant_is_reauthorization_required_on_every_replica(
    provider: AuthorizationServer,
    resource_server: ResourceServer,
    session: aiohttp.ClientSession,
) -> None:
    """After revocation, the refreshing replica marks the row; the other asks nothing."""
    store = MemoryGrantStore()
    state, config, revocation = await consented(session, resource_server, "bob")
    assert state.refresh_token is not None
    store.put(KEY, attrs.evolve(state, expires_at=time.time() - 1))
    tokens = TokenClient(session)
    await tokens.revoke(revocation, config.client, state.refresh_token)
    first, second = GrantManager(store, tokens), GrantManager(store, tokens)
    with pytest.raises(InvalidGrant):
        await first.token(KEY, config)
    row = await store.load(KEY)
    assert row is not None
    assert row.status == "reauthorization_required"
    before = await refreshes(provider)
    with pytest.raises(InvalidGrant):
        await second.token(KEY, config)
    assert await refreshes(provider) == before


async def test_a_stale_claim_is_taken_over(
    resource_server: ResourceServer, session: aiohttp.ClientSession
) -> None:
    """A replica that died mid-refresh leaves a claim; after its lease another refreshes."""
    store = MemoryGrantStore()
    state, config, _ = await consented(session, resource_server, "carol")
    now = time.time()
    store.put(
        KEY,
        GrantState(
            None, state.refresh_token, None, status="refreshing", version=5, lease_until=now - 1
        ),
    )
    token = await GrantManager(store, TokenClient(session)).token(KEY, config)
    assert resource_server.guard.validate(token.reveal().decode())["sub"] == "carol"
    row = await store.load(KEY)
    assert row is not None
    assert (row.status, row.version) == ("authorized", 7)


async def test_no_grant_is_invalid_grant(session: aiohttp.ClientSession) -> None:
    """A connection nobody consented for raises InvalidGrant without a request."""
    config = RefreshConfig("http://127.0.0.1:9/token", ClientAuth("c", None, "none"))
    with pytest.raises(InvalidGrant):
        await GrantManager(MemoryGrantStore(), TokenClient(session)).token(KEY, config)
