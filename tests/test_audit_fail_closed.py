"""Fail closed: with the audit sink down and the spill unwritable, the gateway
answers 503 audit_unavailable and sends nothing upstream; once the sink is
back, every event of the outage is stored exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from igris_mw import IgrisGateway
from igris_mw.models import AuditEvent
from igris_mw.testing import FixedKeyring, MemoryStore
from igris_mw.testing.audit_hostile import unwritable_directory


class OutageStore(MemoryStore):
    """A memory store whose audit append fails like a server that is down."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def append_audit_events(self, events: Sequence[AuditEvent]) -> None:
        if self.down:
            raise ConnectionRefusedError("connection refused")
        await super().append_audit_events(events)


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


RPC = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}


async def test_outage_then_unwritable_spill_fails_closed_and_loses_nothing(
    tmp_path: Path, counted_upstream: tuple[str, list[str]]
) -> None:
    """503 audit_unavailable with nothing upstream; after recovery each event stored once."""
    url, upstream_seen = counted_upstream
    store = OutageStore()
    spill_dir = tmp_path / "spill"
    with unwritable_directory(spill_dir) as make_writable:
        gw = IgrisGateway(
            None,
            store=store,
            crypto=FixedKeyring("fail-closed"),
            audit_spill=spill_dir / "audit-spill.jsonl",
            environ={"IGRIS_ALLOW_UPSTREAM_NETWORKS": "127.0.0.0/8"},
        )
        gw.audit.max_pending = 5
        gw.audit.retry_delay = gw.audit.max_retry_delay = 0.02
        async with gw:
            _, key = await gw.service.create_api_key({"name": "a", "scopes": ["mcp"]})
            await gw.service.create_connection(
                {"slug": "conn-a", "name": "A", "upstreamUrl": url, "credential": "t"}
            )
            headers = {"Authorization": f"Bearer {key}"}
            transport = httpx.ASGITransport(app=gw)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
                assert (await c.post("/v1/mcp/conn-a", json=RPC, headers=headers)).is_success
                store.down = True
                served = 0
                refused = None
                for _ in range(200):
                    r = await c.post("/v1/mcp/conn-a", json=RPC, headers=headers)
                    if r.status_code == 503:
                        refused = r
                        break
                    assert r.status_code == 200
                    served += 1
                    await asyncio.sleep(0.005)
                assert refused is not None, "the gateway never failed closed"
                assert refused.json()["error"]["code"] == "audit_unavailable"
                assert refused.headers["retry-after"] == "5"
                assert gw.audit.failing_closed
                upstream_before = len(upstream_seen)
                for _ in range(10):
                    r = await c.post("/v1/mcp/conn-a", json=RPC, headers=headers)
                    assert r.status_code == 503
                    assert r.json()["error"]["code"] == "audit_unavailable"
                assert len(upstream_seen) == upstream_before  # nothing went upstream
                ready = await c.get("/readyz")
                assert ready.status_code == 503
                assert "audit" in ready.text
                # The spill directory becomes writable again, then the sink comes back.
                make_writable()
                for _ in range(500):
                    if not gw.audit.failing_closed:
                        break
                    await asyncio.sleep(0.01)
                assert not gw.audit.failing_closed
                store.down = False
                assert await gw.audit.flush(10)
                r = await c.post("/v1/mcp/conn-a", json=RPC, headers=headers)
                assert r.status_code == 200
            assert await gw.audit.flush(10)
            chain = await store.audit_chain("conn-a")
            gateway_events = [e for e in chain if e.kind == "gateway"]
            # the warm-up, every request served during the outage, the one after
            assert len(gateway_events) == 1 + served + 1
            assert len({e.id for e in chain}) == len(chain)
            assert all(e.status == 200 for e in gateway_events)
            report = await gw.service.verify_audit()
            assert report["conn-a"] == []
            assert all(not problems for problems in report.values()), report


async def test_fail_open_keeps_serving(
    tmp_path: Path, counted_upstream: tuple[str, list[str]]
) -> None:
    """audit_failure='open': the sink down and no room left, requests are still served."""
    url, _ = counted_upstream
    store = OutageStore()
    gw = IgrisGateway(
        None,
        store=store,
        crypto=FixedKeyring("fail-open"),
        environ={"IGRIS_ALLOW_UPSTREAM_NETWORKS": "127.0.0.0/8"},
        audit_failure="open",
    )
    gw.audit.max_pending = 3
    gw.audit.retry_delay = gw.audit.max_retry_delay = 0.02
    async with gw:
        _, key = await gw.service.create_api_key({"name": "a", "scopes": ["mcp"]})
        await gw.service.create_connection(
            {"slug": "conn-a", "name": "A", "upstreamUrl": url, "credential": "t"}
        )
        headers = {"Authorization": f"Bearer {key}"}
        store.down = True
        transport = httpx.ASGITransport(app=gw)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            for _ in range(30):
                r = await c.post("/v1/mcp/conn-a", json=RPC, headers=headers)
                assert r.status_code == 200
                await asyncio.sleep(0.005)
        assert gw.audit.saturated
        assert not gw.audit.failing_closed
        assert gw.audit.stats.dropped > 0
        store.down = False


def test_audit_failure_setting_is_validated() -> None:
    """An unknown IGRIS_AUDIT_FAILURE is a configuration error naming the variable."""
    from igris_mw.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="IGRIS_AUDIT_FAILURE"):
        IgrisGateway(None, store=MemoryStore(), environ={"IGRIS_AUDIT_FAILURE": "maybe"})


def test_serve_takes_audit_failure_closed_or_open(capsys: pytest.CaptureFixture[str]) -> None:
    """serve --audit-failure accepts closed|open and refuses anything else in one usage line."""
    from igris_mw import cli

    assert cli.main(["serve", "--audit-failure", "sideways"]) == 2
    assert "--audit-failure" in capsys.readouterr().err
    assert cli.main(["serve", "--help"]) == 0
    assert "--audit-failure {closed,open}" in capsys.readouterr().out
