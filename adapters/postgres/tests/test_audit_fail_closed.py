"""A real Postgres outage, then an unwritable spill: the gateway fails closed
(503 audit_unavailable, nothing upstream); after the server is back, every
event of the outage is stored exactly once and the chain verifies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from igris_mw_postgres.testing import TempCluster, create_database

from igris_mw import IgrisGateway
from igris_mw.testing import FixedKeyring
from igris_mw.testing.audit_hostile import unwritable_directory

RPC = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}


@pytest.fixture
async def counted_upstream() -> AsyncIterator[tuple[str, list[str]]]:
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({"jsonrpc": "2.0", "id": 1, "result": {}})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/mcp", seen
    await runner.cleanup()


async def test_postgres_down_and_spill_unwritable_fails_closed(
    private_cluster: TempCluster, counted_upstream: tuple[str, list[str]], tmp_path: Path
) -> None:
    """503 audit_unavailable, no upstream request; once back, each outage event stored once."""
    url, upstream_seen = counted_upstream
    dsn = create_database(private_cluster.dsn)
    spill_dir = tmp_path / "spill"
    with unwritable_directory(spill_dir) as make_writable:
        gw = IgrisGateway(
            None,
            store=dsn,
            crypto=FixedKeyring("pg-fail-closed"),
            audit_spill=spill_dir / "audit-spill.jsonl",
            cache_ttl=120,
            environ={"IGRIS_ALLOW_UPSTREAM_NETWORKS": "127.0.0.0/8"},
        )
        gw.audit.max_pending = 5
        gw.audit.retry_delay = gw.audit.max_retry_delay = 0.05
        async with gw:
            _, key = await gw.service.create_api_key({"name": "a", "scopes": ["mcp"]})
            await gw.service.create_connection(
                {"slug": "conn-a", "name": "A", "upstreamUrl": url, "credential": "t"}
            )
            headers = {"Authorization": f"Bearer {key}"}
            transport = httpx.ASGITransport(app=gw)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
                assert (await c.post("/v1/mcp/conn-a", json=RPC, headers=headers)).is_success
                assert await gw.audit.flush(5)
                await asyncio.to_thread(private_cluster.stop)  # the real outage
                served = 0
                refused = None
                for _ in range(400):
                    r = await c.post("/v1/mcp/conn-a", json=RPC, headers=headers)
                    if r.status_code == 503:
                        refused = r
                        break
                    assert r.status_code == 200, r.text
                    served += 1
                    await asyncio.sleep(0.01)
                assert refused is not None, "the gateway never failed closed"
                assert refused.json()["error"]["code"] == "audit_unavailable"
                before = len(upstream_seen)
                for _ in range(5):
                    r = await c.post("/v1/mcp/conn-a", json=RPC, headers=headers)
                    assert r.json()["error"]["code"] == "audit_unavailable"
                assert len(upstream_seen) == before
                make_writable()
                await asyncio.to_thread(private_cluster.start)
                assert await gw.audit.flush(30)
                assert not gw.audit.failing_closed
                r = await c.post("/v1/mcp/conn-a", json=RPC, headers=headers)
                assert r.status_code == 200
            assert await gw.audit.flush(10)
            chain = await gw.service.audit.audit_chain("conn-a", limit=1000)
            gateway_events = [e for e in chain if e.kind == "gateway"]
            assert len(gateway_events) == 1 + served + 1
            assert len({e.id for e in chain}) == len(chain)
            report = await gw.service.verify_audit()
            assert report["conn-a"] == []
            assert all(not problems for problems in report.values()), report
