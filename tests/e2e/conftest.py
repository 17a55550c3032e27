"""Session fixtures for the end-to-end tests: one real upstream, one real gateway.

Both are served by uvicorn on free loopback ports, started once per test
session: the upstream in a thread with its own event loop (so its pauses are
real and independent of the client), the gateway as a task on the session
loop (so tests can reach ``gw.service`` and ``gw.audit`` directly).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

# The helpers live next to this file; importlib mode puts nothing on sys.path.
sys.path.insert(0, str(Path(__file__).parent))

from e2e_harness import Gateway, make_gateway, serve
from upstream import UpstreamServer


@pytest.fixture(scope="session")
def upstream() -> Iterator[UpstreamServer]:
    """The upstream MCP server, in its own thread."""
    server = UpstreamServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    """The standalone gateway (``app=None``) served by uvicorn with its lifespan."""
    store_dir = tmp_path_factory.mktemp("gateway")
    gw = make_gateway(store_dir)
    async with serve(gw) as base_url:
        service = gw.service
        mcp_record, mcp_key = await service.create_api_key({"name": "e2e mcp", "scopes": ["mcp"]})
        _, admin_key = await service.create_api_key({"name": "e2e admin", "scopes": ["admin"]})
        yield Gateway(gw, base_url, store_dir / "igris.db", mcp_key, mcp_record.id, admin_key)
