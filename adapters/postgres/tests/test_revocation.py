"""Revocation that holds across replicas, and stale-if-error with an end, on real Postgres.

Two ``igris-mw serve`` processes share one database: a disable made through A
ends a stream open on B when the NOTIFY arrives. One ``serve`` process under
traffic while its Postgres is stopped: warm requests work for ``--max-stale``
seconds, then fail closed (503 ``store_unavailable``), then recover.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from igris_mw_postgres.testing import GatewayProcess, TempCluster, create_database

pytestmark = pytest.mark.slow

MASTER = {
    "IGRIS_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
    "IGRIS_ALLOW_UPSTREAM_NETWORKS": "127.0.0.0/8",  # the test upstream runs on loopback
}


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


class _Streams:
    """Upstream stand-in: GET is an endless event stream; counts the open ones."""

    def __init__(self) -> None:
        self.open = 0
        self.closed = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] != "GET":
            while (await receive()).get("more_body"):
                pass
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": b'{"ok":true}'})
            return
        while (await receive()).get("more_body"):
            pass
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        self.open += 1
        try:
            gone = asyncio.ensure_future(receive())
            while not gone.done():
                await send(
                    {"type": "http.response.body", "body": b"data: tick\n\n", "more_body": True}
                )
                await asyncio.wait({gone}, timeout=0.1)
        except OSError:
            pass
        finally:
            self.open -= 1
            self.closed += 1


@pytest.fixture
async def streams() -> AsyncIterator[tuple[str, _Streams]]:
    import socket

    app = _Streams()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/mcp", app
    server.should_exit = True
    server.force_exit = True
    await task
    sock.close()


async def test_disable_through_a_ends_a_stream_open_on_b(
    pg_dsn: str, streams: tuple[str, _Streams], tmp_path: Path
) -> None:
    """A stream open on replica B ends within 1 s of a disable made through replica A."""
    url, upstream = streams
    admin = cli(pg_dsn, "api-keys", "create", "--name", "admin", "--scope", "admin")["key"]
    mcp = cli(pg_dsn, "api-keys", "create", "--name", "agent", "--scope", "mcp")["key"]
    ttl = ["--cache-ttl", "60"]  # only the NOTIFY can explain an end within the bound
    with (
        GatewayProcess(pg_dsn, tmp_path / "a", MASTER, ttl) as a,
        GatewayProcess(pg_dsn, tmp_path / "b", MASTER, ttl) as b,
    ):
        async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=30)) as http:
            admin_h = {"Authorization": f"Bearer {admin}"}
            r = await http.post(
                f"{a.base_url}/api/v1/virtual-keys",
                headers=admin_h,
                json={
                    "slug": "streamy",
                    "name": "Streamy",
                    "upstreamUrl": url,
                    "credential": "cred",
                },
            )
            assert r.status_code == 201, r.text
            async with http.stream(
                "GET",
                f"{b.base_url}/v1/mcp/streamy",
                headers={"Authorization": f"Bearer {mcp}", "Accept": "text/event-stream"},
            ) as resp:
                assert resp.status_code == 200
                chunks = resp.aiter_bytes()
                assert b"tick" in await chunks.__anext__()
                assert upstream.open == 1
                r = await http.post(
                    f"{a.base_url}/api/v1/virtual-keys/streamy/disable", headers=admin_h
                )
                assert r.status_code == 200, r.text
                disabled_at = time.monotonic()
                async for _ in chunks:
                    assert time.monotonic() - disabled_at < 1.0, "stream still open"
                ended = time.monotonic() - disabled_at
            assert ended < 1.0
            deadline = time.monotonic() + 1.0
            while upstream.open and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert upstream.open == 0
            assert upstream.closed == 1
            r = await http.get(
                f"{a.base_url}/api/v1/virtual-keys/streamy/audit?limit=50", headers=admin_h
            )
            for _ in range(50):  # B's audit writer flushes in the background
                if any(e["outcome"] == "revoked" for e in r.json()["data"]):
                    break
                await asyncio.sleep(0.1)
                r = await http.get(
                    f"{a.base_url}/api/v1/virtual-keys/streamy/audit?limit=50", headers=admin_h
                )
            assert any(e["outcome"] == "revoked" for e in r.json()["data"])


async def test_max_stale_fails_closed_then_recovers(
    private_cluster: TempCluster, streams: tuple[str, _Streams], tmp_path: Path
) -> None:
    """Postgres stopped under traffic: warm requests work for max-stale, then 503, then recover."""
    url, _ = streams
    dsn = create_database(private_cluster.dsn)
    admin = cli(dsn, "api-keys", "create", "--name", "admin", "--scope", "admin")["key"]
    mcp = cli(dsn, "api-keys", "create", "--name", "agent", "--scope", "mcp")["key"]
    max_stale = 3.0
    args = ["--cache-ttl", "0.5", "--max-stale", str(max_stale)]
    with GatewayProcess(dsn, tmp_path / "gw", MASTER, args) as gw:
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.post(
                f"{gw.base_url}/api/v1/virtual-keys",
                headers={"Authorization": f"Bearer {admin}"},
                json={"slug": "warm", "name": "warm", "upstreamUrl": url, "credential": "c"},
            )
            assert r.status_code == 201, r.text

            async def call() -> httpx.Response:
                return await http.post(
                    f"{gw.base_url}/v1/mcp/warm",
                    headers={"Authorization": f"Bearer {mcp}"},
                    json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                )

            assert (await call()).status_code == 200
            private_cluster.stop()
            stopped = time.monotonic()
            try:
                statuses: list[tuple[float, int, str | None]] = []
                while time.monotonic() - stopped < max_stale + 3.0:
                    r = await call()
                    code = r.json().get("error", {}).get("code") if r.status_code != 200 else None
                    statuses.append((time.monotonic() - stopped, r.status_code, code))
                    await asyncio.sleep(0.1)
            finally:
                private_cluster.start()
            # Served while fresh enough, refused once past the bound, never anything else.
            early = [s for t, s, _ in statuses if t < max_stale - 0.6]
            late = [(s, c) for t, s, c in statuses if t > max_stale + 1.2]
            assert early
            assert set(early) == {200}
            assert late
            assert set(late) == {(503, "store_unavailable")}
            deadline = time.monotonic() + 15
            while (await call()).status_code != 200:
                assert time.monotonic() < deadline, "no recovery after the store came back"
                await asyncio.sleep(0.2)


@pytest.fixture
def redis_url() -> Any:
    """A throwaway redis-server on a free loopback port (skip without the binary)."""
    import shutil

    from igris_mw.testing.redis_server import redis_server

    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("IGRIS_TEST_REQUIRE_BACKENDS") == "1":
            pytest.fail("no redis-server on PATH")
        pytest.skip("no redis-server on PATH")
    with redis_server(binary) as url:
        yield url


async def test_two_serve_processes_share_one_bucket_through_redis(
    pg_dsn: str, streams: tuple[str, _Streams], tmp_path: Path, redis_url: str
) -> None:
    """serve --rate-limit-store: two replicas together admit one bucket's worth, not two."""
    url, _ = streams
    admin = cli(pg_dsn, "api-keys", "create", "--name", "admin", "--scope", "admin")["key"]
    mcp = cli(pg_dsn, "api-keys", "create", "--name", "agent", "--scope", "mcp",
              "--rate-limit", "30/5")["key"]  # fmt: skip
    args = ["--rate-limit-store", redis_url]
    with (
        GatewayProcess(pg_dsn, tmp_path / "a", MASTER, args) as a,
        GatewayProcess(pg_dsn, tmp_path / "b", MASTER, args) as b,
    ):
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.post(
                f"{a.base_url}/api/v1/virtual-keys", headers={"Authorization": f"Bearer {admin}"},
                json={"slug": "limited", "name": "L", "upstreamUrl": url, "credential": "c"},
            )  # fmt: skip
            assert r.status_code == 201, r.text
            gate = asyncio.Semaphore(10)

            async def one(i: int) -> httpx.Response:
                base = a.base_url if i % 2 else b.base_url
                async with gate:
                    return await http.post(
                        f"{base}/v1/mcp/limited", headers={"Authorization": f"Bearer {mcp}"},
                        json={"jsonrpc": "2.0", "id": i, "method": "ping"},
                    )  # fmt: skip

            responses = await asyncio.gather(*(one(i) for i in range(100)))
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert 5 <= len(ok) <= 6
    assert len(ok) + len(refused) == 100
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
