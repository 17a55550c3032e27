"""The gateway on a Vault KV store with Transit crypto and a JSON-lines audit sink:
requests flow, a sealed Vault is a quick 503 with Retry-After, and service resumes after unseal."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from igris_mw_vault.testing import BaoDevServer

from igris_mw import IgrisGateway

TOKEN = "vault-upstream-canary-51c2"


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    async def handle(request: web.Request) -> web.Response:
        ok = request.headers.get("Authorization") == f"Bearer {TOKEN}"
        return web.json_response({"ok": ok}, status=200 if ok else 401)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/mcp"
    await runner.cleanup()


async def test_gateway_on_vault_survives_a_seal(
    bao: BaoDevServer,
    store_url: str,
    transit_key: str,
    tmp_path: Path,
    upstream: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Warm connections work while sealed; cold ones get a quick 503 vault_sealed; unseal heals."""
    monkeypatch.setenv("VAULT_TOKEN", bao.root_token)  # as an operator would
    sink = tmp_path / "audit.jsonl"
    gw = IgrisGateway(
        None,
        store=store_url.replace("vault://", "openbao://"),
        crypto=f"vault-transit://{bao.hostport}/transit/{transit_key}?tls=false",
        audit=f"jsonl://{sink}",
        allow_upstream_networks=["127.0.0.0/8"],  # the test upstream runs on loopback
    )
    await gw.startup()
    try:
        _, key = await gw.service.create_api_key({"name": "agent", "scopes": ["mcp"]})
        for slug in ("warm-one", "cold-one"):
            await gw.service.create_connection(
                {"slug": slug, "name": slug, "upstreamUrl": upstream, "credential": TOKEN}
            )
        headers = {"Authorization": f"Bearer {key}"}
        transport = httpx.ASGITransport(app=gw)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            assert (
                await client.post("/v1/mcp/warm-one", json={}, headers=headers)
            ).status_code == 200
            bao.seal()
            try:
                r = await client.post("/v1/mcp/warm-one", json={}, headers=headers)
                assert r.status_code == 200  # served from the cache: no Vault call
                started = time.monotonic()
                r = await client.post("/v1/mcp/cold-one", json={}, headers=headers)
                assert time.monotonic() - started < 5
                assert r.status_code == 503
                assert r.json()["error"]["code"] == "vault_sealed"
                assert int(r.headers["retry-after"]) > 0
            finally:
                bao.unseal()
            r = await client.post("/v1/mcp/cold-one", json={}, headers=headers)
            assert r.status_code == 200
        assert await gw.audit.flush(5)
    finally:
        await gw.aclose()
    text = sink.read_text()
    assert TOKEN not in text
    assert key not in text
    assert '"connection":"warm-one"' in text.replace(" ", "")
