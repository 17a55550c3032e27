"""Two ``igris-mw serve`` processes on one database honour each other's changes at once."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from igris_mw_postgres import PostgresStore
from igris_mw_postgres.testing import GatewayProcess, TempCluster, create_database

from igris_mw.storage import verify_chain

pytestmark = pytest.mark.slow

MASTER = {
    "IGRIS_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
    "IGRIS_ALLOW_UPSTREAM_NETWORKS": "127.0.0.0/8",  # the test upstream runs on loopback
}


async def _echo_auth(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Upstream stand-in: answers with the Authorization header it received."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    auth = dict(scope["headers"]).get(b"authorization", b"").decode()
    body = json.dumps({"auth": auth}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    """A local upstream on a free port; yields its MCP URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(_echo_auth, log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    server.should_exit = True
    await task
    sock.close()


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


async def until(check: Callable[[], Awaitable[bool]], within: float) -> float:
    """Seconds until ``check()`` holds; fails past ``within``."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < within, f"not honoured within {within} s"
        await asyncio.sleep(0.005)
    return time.monotonic() - started


async def test_rotate_disable_and_revoke_reach_the_other_replica(
    pg_dsn: str, upstream: str, tmp_path: Path
) -> None:
    """Rotate, disable and key revocation through replica A are honoured by replica B within 1 s."""
    admin = cli(pg_dsn, "api-keys", "create", "--name", "admin", "--scope", "admin")["key"]
    mcp = cli(pg_dsn, "api-keys", "create", "--name", "agent", "--scope", "mcp")
    ttl = ["--cache-ttl", "60"]  # far above the bound asserted: only NOTIFY can explain it
    with (
        GatewayProcess(pg_dsn, tmp_path / "a", MASTER, ttl) as a,
        GatewayProcess(pg_dsn, tmp_path / "b", MASTER, ttl) as b,
    ):
        async with httpx.AsyncClient(timeout=10) as http:
            admin_h = {"Authorization": f"Bearer {admin}"}
            mcp_h = {"Authorization": f"Bearer {mcp['key']}"}
            r = await http.post(
                f"{a.base_url}/api/v1/virtual-keys",
                headers=admin_h,
                json={
                    "slug": "shared",
                    "name": "Shared",
                    "upstreamUrl": upstream,
                    "credential": "cred-one",
                },
            )
            assert r.status_code == 201, r.text

            async def b_sees() -> httpx.Response:
                return await http.post(
                    f"{b.base_url}/v1/mcp/shared",
                    headers=mcp_h,
                    json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                )

            assert (await b_sees()).json() == {"auth": "Bearer cred-one"}  # B is warm now

            r = await http.post(
                f"{a.base_url}/api/v1/virtual-keys/shared/rotate",
                headers=admin_h,
                json={"credential": "cred-two"},
            )
            assert r.status_code == 200, r.text

            async def rotated() -> bool:
                return bool((await b_sees()).json() == {"auth": "Bearer cred-two"})

            await until(rotated, within=1.0)

            r = await http.post(f"{a.base_url}/api/v1/virtual-keys/shared/disable", headers=admin_h)
            assert r.status_code == 200, r.text

            async def refused() -> bool:
                return (await b_sees()).status_code == 403

            await until(refused, within=1.0)
            r = await http.post(f"{a.base_url}/api/v1/virtual-keys/shared/enable", headers=admin_h)
            assert r.status_code == 200, r.text

            async def enabled() -> bool:
                return (await b_sees()).status_code == 200

            await until(enabled, within=1.0)
            r = await http.delete(f"{a.base_url}/api/v1/api-keys/{mcp['id']}", headers=admin_h)
            assert r.status_code == 204, r.text

            async def key_revoked() -> bool:
                return (await b_sees()).status_code == 401

            await until(key_revoked, within=1.0)


async def test_postgres_restart_under_traffic(
    private_cluster: TempCluster, upstream: str, tmp_path: Path
) -> None:
    """During a Postgres outage cached connections work, others 503 fast; every event is stored."""
    dsn = create_database(private_cluster.dsn)
    admin = cli(dsn, "api-keys", "create", "--name", "admin", "--scope", "admin")["key"]
    mcp = cli(dsn, "api-keys", "create", "--name", "agent", "--scope", "mcp")["key"]
    made = {"warm": 0, "cold": 0}
    with GatewayProcess(dsn, tmp_path / "gw", MASTER, ["--cache-ttl", "60"]) as gw:
        async with httpx.AsyncClient(timeout=10) as http:
            for slug in made:
                r = await http.post(
                    f"{gw.base_url}/api/v1/virtual-keys",
                    headers={"Authorization": f"Bearer {admin}"},
                    json={
                        "slug": slug,
                        "name": slug,
                        "upstreamUrl": upstream,
                        "credential": "cred",
                    },
                )
                assert r.status_code == 201, r.text

            async def call(slug: str) -> httpx.Response:
                made[slug] += 1
                return await http.post(
                    f"{gw.base_url}/v1/mcp/{slug}",
                    headers={"Authorization": f"Bearer {mcp}"},
                    json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                )

            for _ in range(5):
                assert (await call("warm")).status_code == 200
            private_cluster.stop()
            try:
                for _ in range(5):
                    assert (await call("warm")).status_code == 200
                    started = time.monotonic()
                    cold = await call("cold")
                    assert cold.status_code == 503
                    assert cold.json()["error"]["code"] == "store_unavailable"
                    assert time.monotonic() - started < 3
            finally:
                private_cluster.start()
            for _ in range(5):
                assert (await call("warm")).status_code == 200

    # the gateway has stopped (audit queue flushed): count what was stored
    store = PostgresStore(dsn)
    await store.open()
    try:
        for slug, count in made.items():
            chain = await store.audit_chain(slug, limit=10_000)
            gateway_events = [e for e in chain if e.kind == "gateway"]
            assert len(gateway_events) == count, slug
            assert verify_chain(chain) == []
    finally:
        await store.close()
