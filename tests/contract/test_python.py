"""Contract: the Python surface (IgrisGateway middleware, IgrisClient SDK)."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest
from contract_harness import ScriptedUpstream
from e2e_harness import serve as serve_asgi

from igris_mw import AsyncIgrisClient, IgrisClient, IgrisGateway


async def _host_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"host app"})


def _master_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IGRIS_MASTER_KEY", base64.b64encode(secrets.token_bytes(32)).decode())


async def test_middleware_wraps_an_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scripted: ScriptedUpstream
) -> None:
    """IgrisGateway(app, store=...) serves /api/v1 and /v1/mcp and passes the rest to the app."""
    _master_key_env(monkeypatch)
    gw = IgrisGateway(
        _host_app,
        store=f"sqlite:///{tmp_path / 'igris.db'}",
        allow_upstream_networks=["127.0.0.0/8"],
    )
    async with serve_asgi(gw) as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            assert (await http.get("/anything")).text == "host app"
            assert (await http.get("/v1/mcp/some-slug")).status_code == 401
            assert (await http.get("/api/v1/virtual-keys")).status_code == 401
        _, admin = await gw.service.create_api_key({"name": "a", "scopes": ["admin"]})
        async with AsyncIgrisClient(base, api_key=admin) as igris:
            await igris.create_connection(
                slug="py-conn",
                name="Py",
                upstream_url=scripted.base_url + "/echo",
                credential="py-cred",
            )
        config = IgrisClient(base, api_key=admin).get_mcp_config("py-conn", user="u")
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.post(config.url, headers=config.headers, json={"jsonrpc": "2.0"})
        assert r.status_code == 200, r.text
        assert r.json()["headers"]["authorization"] == "Bearer py-cred"


async def test_allowed_networks_kwarg_is_honoured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scripted: ScriptedUpstream
) -> None:
    """Without allow_upstream_networks a loopback upstream is refused (422 upstream_forbidden)."""
    _master_key_env(monkeypatch)
    monkeypatch.delenv("IGRIS_ALLOW_UPSTREAM_NETWORKS", raising=False)
    gw = IgrisGateway(_host_app, store=f"sqlite:///{tmp_path / 'igris.db'}")
    async with serve_asgi(gw) as base:
        _, admin = await gw.service.create_api_key({"name": "a", "scopes": ["admin"]})
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            r = await http.post(
                "/api/v1/virtual-keys",
                headers={"Authorization": f"Bearer {admin}"},
                json={
                    "slug": "py-loop",
                    "name": "x",
                    "credential": "c",
                    "upstreamUrl": scripted.base_url + "/echo",
                },
            )
        assert r.status_code == 422
        assert r.json()["error"]["code"] == "upstream_forbidden"


async def test_dashboard_kwarg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """IgrisGateway(..., dashboard=True) serves /ui/; without it /ui/ stays the app's."""
    _master_key_env(monkeypatch)
    on = IgrisGateway(_host_app, store=f"sqlite:///{tmp_path / 'a.db'}", dashboard=True)
    # An async client: the server runs on this test's own event loop.
    async with serve_asgi(on) as base, httpx.AsyncClient(timeout=10) as http:
        r = await http.get(base + "/ui/", follow_redirects=True)
        assert r.status_code == 200
        assert "host app" not in r.text
    off = IgrisGateway(_host_app, store=f"sqlite:///{tmp_path / 'b.db'}")
    async with serve_asgi(off) as base, httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(base + "/ui/")).text == "host app"
