"""Client-credentials tokens held by GrantManager, against the real provider: single flight,
renewal, 401 drop, outage backoff, two replicas on one store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable
from typing import Any

import aiohttp
import httpx
import pytest
from oauth_harness import (
    CONFIDENTIAL_CLIENT,
    CONFIDENTIAL_SECRET,
    AuthorizationServer,
    ResourceServer,
)

from igris_mw._oauth.client_credentials import (
    ClientCredentialsConfig,
    renewal_skew,
    usable_margin,
)
from igris_mw._oauth.errors import OAuthError
from igris_mw._oauth.grants import GrantManager, MemoryGrantStore
from igris_mw._oauth.tokens import ClientAuth, TokenClient
from igris_mw.models import Secret


def config(provider: AuthorizationServer, resource: str) -> ClientCredentialsConfig:
    return ClientCredentialsConfig(
        token_url=provider.token_endpoint,
        client=ClientAuth(CONFIDENTIAL_CLIENT, Secret(CONFIDENTIAL_SECRET.encode())),
        scopes=("mcp:tools",),
        resource=resource,
    )


async def cc_requests(provider: AuthorizationServer) -> int:
    return await provider.token_requests(CONFIDENTIAL_CLIENT, "client_credentials")


def manager(session: aiohttp.ClientSession, **options: Any) -> GrantManager:
    return GrantManager(MemoryGrantStore(), TokenClient(session), **options)


async def test_fifty_concurrent_first_requests_make_one_token_request(
    provider: AuthorizationServer,
    resource_server: ResourceServer,
    session: aiohttp.ClientSession,
) -> None:
    """50 callers at once on a cold cache: exactly one token request, all get that token."""
    cache = manager(session)
    cfg = config(provider, resource_server.resource)
    before = await cc_requests(provider)
    got = await asyncio.gather(*(cache.token(("conn-1", ""), cfg) for _ in range(50)))
    assert await cc_requests(provider) - before == 1
    assert len({t.reveal() for t in got}) == 1
    resource_server.guard.validate(got[0].reveal().decode())


@pytest.mark.slow
async def test_two_second_tokens_are_renewed_with_no_failed_request(
    provider: AuthorizationServer,
    resource_server: ResourceServer,
    session: aiohttp.ClientSession,
    short_tokens: int,
) -> None:
    """10 s of traffic with 2 s tokens: every upstream request is accepted, tokens renewed."""
    cache = manager(session)
    cfg = config(provider, resource_server.resource)
    before = await cc_requests(provider)
    statuses: list[int] = []
    seen: set[bytes] = set()
    async with httpx.AsyncClient() as client:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            token = await cache.token(("conn-renew", ""), cfg)
            seen.add(token.reveal())
            resp = await client.post(
                resource_server.resource,
                headers={
                    "Authorization": f"Bearer {token.reveal().decode()}",
                    "Accept": "application/json, text/event-stream",
                },
                json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            )
            statuses.append(resp.status_code)
            await asyncio.sleep(0.05)
    assert len(statuses) > 50
    assert statuses.count(401) == 0
    requests = await cc_requests(provider) - before
    # A 2 s token is renewed 1 s before it expires: about one request a second.
    assert 5 <= requests <= 15
    assert len(seen) == requests


async def test_an_upstream_401_drops_the_token_and_the_next_caller_gets_a_new_one(
    provider: AuthorizationServer,
    resource_server: ResourceServer,
    session: aiohttp.ClientSession,
) -> None:
    """drop() forgets the refused token; a stale drop of an older token forgets nothing."""
    cache = manager(session)
    cfg = config(provider, resource_server.resource)
    key = ("conn-drop", "")
    first = await cache.token(key, cfg)
    assert await cache.token(key, cfg) == first
    assert cache.drop(key, first)
    second = await cache.token(key, cfg)
    assert second != first
    assert not cache.drop(key, first)
    assert await cache.token(key, cfg) == second


async def test_two_replicas_on_one_store_request_one_token_between_them(
    provider: AuthorizationServer,
    resource_server: ResourceServer,
    session: aiohttp.ClientSession,
) -> None:
    """Two managers sharing a store, 25 callers each at once: one token request in all."""
    store = MemoryGrantStore()
    replicas = [GrantManager(store, TokenClient(session)) for _ in range(2)]
    cfg = config(provider, resource_server.resource)
    before = await cc_requests(provider)
    got = await asyncio.gather(
        *(r.token(("conn-two", ""), cfg) for r in replicas for _ in range(25))
    )
    assert await cc_requests(provider) - before == 1
    assert len({t.reveal() for t in got}) == 1


async def test_an_outage_makes_one_token_request_per_backoff_not_one_per_caller(
    provider: AuthorizationServer,
    resource_server: ResourceServer,
    session: aiohttp.ClientSession,
) -> None:
    """While the token endpoint fails, 20 callers make one request and all see the error."""
    results: list[tuple[Hashable, str]] = []
    cache = manager(
        session,
        failure_backoff=5.0,
        on_refresh=lambda key, err, _state: results.append((key, "ok" if err is None else "error")),
    )
    cfg = config(provider, resource_server.resource)
    await provider.fail_next(100)
    try:
        before = await cc_requests(provider)
        outcomes = await asyncio.gather(
            *(cache.token(("conn-out", ""), cfg) for _ in range(20)), return_exceptions=True
        )
    finally:
        await provider.fail_next(0)
    assert all(isinstance(o, OAuthError) for o in outcomes)
    # The 503s are answered before the provider's grant handling: it counts none.
    assert await cc_requests(provider) - before == 0
    assert results == [(("conn-out", ""), "error")]


async def test_a_failed_renewal_keeps_serving_the_still_valid_token(
    provider: AuthorizationServer,
    resource_server: ResourceServer,
    session: aiohttp.ClientSession,
) -> None:
    """Inside the renewal window an outage is invisible: the current token is still used."""
    now = [time.time()]
    clock = lambda: now[0]  # noqa: E731
    cache = GrantManager(MemoryGrantStore(), TokenClient(session, clock=clock), clock=clock)
    cfg = config(provider, resource_server.resource)
    key = ("conn-keep", "")
    first = await cache.token(key, cfg)
    now[0] += 3600 - 30  # inside the 60 s renewal window of a 1 h token
    await provider.fail_next(1)
    assert await cache.token(key, cfg) == first
    before = await cc_requests(provider)
    now[0] += 0.5  # within the 1 s failure backoff: no new request
    assert await cache.token(key, cfg) == first
    assert await cc_requests(provider) == before
    now[0] += 1  # the backoff is over: renewed
    assert await cache.token(key, cfg) != first


@pytest.mark.parametrize(
    ("lifetime", "skew"), [(3600, 60), (300, 30), (100, 10), (10, 2), (2, 1), (1, 0.5), (0, 0)]
)
def test_renewal_skew(lifetime: float, skew: float) -> None:
    """min(60 s, max(2 s, 10 %)), never more than half the lifetime."""
    assert renewal_skew(lifetime) == skew


@pytest.mark.parametrize(("lifetime", "margin"), [(3600, 1.5), (4, 1.5), (2, 1), (1, 0.5)])
def test_usable_margin(lifetime: float, margin: float) -> None:
    """A token is not sent in the last min(1.5 s, 50 %) of its lifetime."""
    assert usable_margin(lifetime) == margin
