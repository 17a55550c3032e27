"""Two ``igris-mw serve`` processes on one Postgres database share OAuth tokens.

Client credentials: both replicas busy at once make one token request between
them, and with 3 s tokens they renew once per expiry, not once each.
Authorization code: with refresh-token rotation, the two never both use the
same refresh token (the provider would revoke the grant): no request fails.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from oauth_harness import (
    CONFIDENTIAL_CLIENT,
    CONFIDENTIAL_SECRET,
    PUBLIC_CLIENT,
    AuthorizationServer,
    ResourceServer,
    drive_consent,
    require_backends,
)

pytestmark = pytest.mark.slow

MASTER = {"IGRIS_MASTER_KEY": base64.b64encode(os.urandom(32)).decode()}


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """A database on a throwaway cluster (or IGRIS_TEST_POSTGRES_DSN's server)."""
    from igris_mw_postgres.testing import TempCluster, create_database, find_bindir

    given = os.environ.get("IGRIS_TEST_POSTGRES_DSN")
    if given:
        yield create_database(given)
        return
    if find_bindir() is None:
        message = "the replica tests need PostgreSQL server binaries (initdb, pg_ctl)"
        if require_backends():
            pytest.fail(message)
        pytest.skip(message)
    with TempCluster() as cluster:
        yield create_database(cluster.dsn)


def cli(store: str, *args: str) -> Any:
    out = subprocess.run(
        [sys.executable, "-m", "igris_mw.cli", *args, "--store", store, "--json"],
        env={**os.environ, **MASTER},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def replicas(pg_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Two serve processes on the database, and an admin and an mcp key."""
    from igris_mw_postgres.testing import GatewayProcess

    admin = cli(pg_database, "api-keys", "create", "--name", "admin", "--scope", "admin")["key"]
    mcp = cli(pg_database, "api-keys", "create", "--name", "agent", "--scope", "mcp")["key"]
    home = tmp_path_factory.mktemp("replicas")
    a = GatewayProcess(pg_database, home / "a", MASTER)
    b = GatewayProcess(pg_database, home / "b", MASTER)
    a.start()
    try:
        b.start()
        try:
            yield a, b, admin, mcp
        finally:
            b.stop()
    finally:
        a.stop()


@pytest.fixture
async def three_second_tokens(provider: AuthorizationServer) -> AsyncIterator[int]:
    """Access tokens of 3 s: renewed every 1.5 s. (2 s tokens leave a request no time
    in flight on a loaded machine: exp is whole seconds, so one may live just 1 s.)"""
    await provider.set_ttl(3)
    yield 3
    await provider.set_ttl(3600)


PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
FAILURES: list[str] = []


async def hammer(base_urls: list[str], slug: str, key: str, seconds: float) -> list[int]:
    """Ping ``slug`` through every replica in turn for ``seconds``; the statuses
    (a 401 or 502 as its error code, in ``FAILURES``)."""
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream"}
    statuses: list[int] = []
    async with httpx.AsyncClient(timeout=30) as http:

        async def loop(base: str) -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                r = await http.post(f"{base}/v1/mcp/{slug}", json=PING, headers=headers)
                statuses.append(r.status_code)
                if r.status_code in (401, 502):
                    FAILURES.append(r.text[:300])
                await asyncio.sleep(0.05)

        await asyncio.gather(*(loop(b) for b in base_urls for _ in range(2)))
    return statuses


async def create_cc(
    base_url: str,
    admin: str,
    slug: str,
    provider: AuthorizationServer,
    resource_server: ResourceServer,
) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        created = await http.post(
            f"{base_url}/api/v1/virtual-keys",
            headers={"Authorization": f"Bearer {admin}"},
            json={
                "slug": slug,
                "name": "cc",
                "upstreamUrl": resource_server.resource,
                "authType": "oauth2_client_credentials",
                "credential": CONFIDENTIAL_SECRET,
                "oauth": {
                    "tokenUrl": provider.token_endpoint,
                    "clientId": CONFIDENTIAL_CLIENT,
                    "scopes": ["mcp:tools"],
                    "resource": resource_server.resource,
                },
            },
        )
    assert created.status_code == 201, created.text


async def test_fifty_first_requests_over_two_replicas_make_one_token_request(
    replicas: Any, provider: AuthorizationServer, resource_server: ResourceServer
) -> None:
    """25 first requests on each replica at once: one token request between them."""
    a, b, admin, mcp = replicas
    slug = "cc-replicas-first"
    await create_cc(a.base_url, admin, slug, provider, resource_server)
    before = await provider.token_requests(CONFIDENTIAL_CLIENT, "client_credentials")
    headers = {"Authorization": f"Bearer {mcp}", "Accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient(timeout=30) as http:
        first = await asyncio.gather(
            *(
                http.post(f"{r.base_url}/v1/mcp/{slug}", json=PING, headers=headers)
                for r in (a, b)
                for _ in range(25)
            )
        )
    assert [r.status_code for r in first if r.status_code in (401, 502)] == []
    assert await provider.token_requests(CONFIDENTIAL_CLIENT, "client_credentials") - before == 1


async def test_client_credentials_renew_once_between_two_replicas(
    replicas: Any,
    provider: AuthorizationServer,
    resource_server: ResourceServer,
    three_second_tokens: int,
) -> None:
    """Both replicas busy for 8 s with 3 s tokens: one renewal per expiry, shared."""
    a, b, admin, mcp = replicas
    slug = "cc-replicas-renew"
    await create_cc(a.base_url, admin, slug, provider, resource_server)
    before = await provider.token_requests(CONFIDENTIAL_CLIENT, "client_credentials")
    statuses = await hammer([a.base_url, b.base_url], slug, mcp, 8)
    made = await provider.token_requests(CONFIDENTIAL_CLIENT, "client_credentials") - before
    assert statuses.count(401) + statuses.count(502) == 0, FAILURES
    # A renewal every 1.5 s (3 s tokens renewed 1.5 s early), shared: about 5, never 10.
    assert 3 <= made <= 7, made


async def test_refresh_rotation_is_never_used_twice_by_two_replicas(
    replicas: Any,
    provider: AuthorizationServer,
    resource_server: ResourceServer,
    three_second_tokens: int,
) -> None:
    """Consent begun on A, completed on B; traffic on both over 8 s of 3 s tokens: no failure."""
    a, b, admin, mcp = replicas
    slug = "oauth2-replicas"
    auth = {"Authorization": f"Bearer {admin}"}
    async with httpx.AsyncClient(timeout=30) as http:
        created = await http.post(
            f"{a.base_url}/api/v1/virtual-keys",
            headers=auth,
            json={
                "slug": slug,
                "name": "o2",
                "upstreamUrl": resource_server.resource,
                "authType": "oauth2",
                "oauth": {"clientId": PUBLIC_CLIENT, "scopes": ["mcp:tools"]},
            },
        )
        assert created.status_code == 201, created.text
        started = await http.post(
            f"{a.base_url}/api/v1/virtual-keys/{slug}/oauth/authorize", headers=auth
        )
        assert started.status_code == 200, started.text
        callback = await drive_consent(
            started.json()["authorizeUrl"],
            account="carol",
            redirect_prefix=f"{a.base_url}/api/v1/oauth/callback",
        )
        # The flow began on replica A; replica B completes it (it is sealed in the store).
        page = await http.get(callback.replace(a.base_url, b.base_url, 1))
        assert page.status_code == 200, page.text
        before = await provider.token_requests(PUBLIC_CLIENT, "refresh_token")
        statuses = await hammer([a.base_url, b.base_url], slug, mcp, 8)
        shown = await http.get(f"{b.base_url}/api/v1/virtual-keys/{slug}", headers=auth)
    refreshes = await provider.token_requests(PUBLIC_CLIENT, "refresh_token") - before
    assert statuses.count(401) + statuses.count(502) == 0, FAILURES
    assert 3 <= refreshes <= 7, refreshes
    assert shown.json()["oauthStatus"] == "authorized"
