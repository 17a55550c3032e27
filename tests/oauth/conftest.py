"""Session fixtures for the OAuth tests: a real authorization server and resource server.

The authorization server (oidc-provider on node) is started once per session on
a free loopback port and stopped at the end; a missing node or a missing
``npm ci`` fails the run under ``IGRIS_TEST_REQUIRE_BACKENDS=1`` and skips
otherwise, like Postgres and OpenBao.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

# The helpers live next to this file (and the gateway's in ../e2e); importlib
# mode puts nothing on sys.path.
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "e2e"))

from e2e_harness import Gateway, make_gateway, serve
from oauth_harness import (
    AuthorizationServer,
    ResourceServer,
    provider_unavailable,
    require_backends,
)


@pytest.fixture(scope="session")
def provider() -> Iterator[AuthorizationServer]:
    """oidc-provider on a free loopback port, for the whole session."""
    reason = provider_unavailable()
    if reason is not None:
        if require_backends():
            pytest.fail(f"the OAuth authorization server is required: {reason}")
        pytest.skip(reason)
    server = AuthorizationServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def resource_server(provider: AuthorizationServer) -> Iterator[ResourceServer]:
    """The MCP upstream that accepts only the provider's tokens for it."""
    server = ResourceServer(provider)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    """A standalone gateway on SQLite, served by uvicorn, with an mcp and an admin key."""
    store_dir = tmp_path_factory.mktemp("oauth-gateway")
    gw = make_gateway(store_dir)
    async with serve(gw) as base_url:
        service = gw.service
        mcp_record, mcp_key = await service.create_api_key({"name": "oauth mcp", "scopes": ["mcp"]})
        _, admin_key = await service.create_api_key({"name": "oauth admin", "scopes": ["admin"]})
        yield Gateway(gw, base_url, store_dir / "igris.db", mcp_key, mcp_record.id, admin_key)


@pytest.fixture
async def short_tokens(provider: AuthorizationServer) -> AsyncIterator[int]:
    """Access tokens issued during the test live 2 seconds."""
    await provider.set_ttl(2)
    yield 2
    await provider.set_ttl(3600)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session like the gateway's: no cookies, no redirects."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        yield s
