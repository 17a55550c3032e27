"""End to end: a real ``igris-mw serve`` on a real Postgres server. The request
that used to stop the audit (``GET /v1/mcp/<slug>/%00`` with no key) is
stored, 200 ordinary requests after it are all stored within 2 s, and
``igris-mw audit verify`` passes."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from igris_mw_postgres import PostgresStore
from igris_mw_postgres.testing import GatewayProcess

from igris_mw.testing.audit_hostile import upstream

MASTER = {
    "IGRIS_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
    "IGRIS_ALLOW_UPSTREAM_NETWORKS": "127.0.0.0/8",  # the test upstream runs on loopback
}


def _cli(store: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "igris_mw.cli", *args, "--store", store],
        env={**os.environ, **MASTER}, capture_output=True, text=True, check=check, timeout=60,
    )  # fmt: skip


async def _gateway_events(dsn: str, slug: str) -> list[Any]:
    store = PostgresStore(dsn)
    await store.open()
    try:
        events: list[Any] = []
        while batch := await store.audit_chain(
            slug, after_seq=events[-1].seq if events else 0, limit=1000
        ):
            events += batch
        return [e for e in events if e.kind == "gateway"]
    finally:
        await store.close()


async def test_serve_on_postgres_stores_the_nul_request_and_everything_after(
    pg_dsn: str, tmp_path: Path
) -> None:
    """%00 with no key, then 200 requests: all 201 events stored within 2 s; verify passes."""
    admin = json.loads(
        _cli(pg_dsn, "api-keys", "create", "--name", "admin", "--scope", "admin", "--json").stdout
    )["key"]
    async with upstream() as url:
        with GatewayProcess(pg_dsn, tmp_path / "gw", MASTER) as gw:
            async with httpx.AsyncClient(base_url=gw.base_url, timeout=10) as http:
                r = await http.post(
                    "/api/v1/virtual-keys",
                    headers={"Authorization": f"Bearer {admin}"},
                    json={"slug": "nul", "name": "nul", "upstreamUrl": url, "credential": "c"},
                )
                assert r.status_code == 201, r.text
                r = await http.get("/v1/mcp/nul/%00")
                assert r.status_code == 401
                rpc = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
                for _ in range(200):
                    r = await http.post(
                        "/v1/mcp/nul", json=rpc, headers={"Authorization": f"Bearer {admin}"}
                    )
                    assert r.status_code == 200, r.text
                sent = time.monotonic()
                while len(events := await _gateway_events(pg_dsn, "nul")) < 201:
                    assert time.monotonic() - sent < 2.0, f"{len(events)} of 201 stored in 2 s"
                    await asyncio.sleep(0.05)
    assert events[0].path == "/v1/mcp/nul/\\x00"
    assert events[0].status == 401
    assert len(events) == 201
    verify = _cli(pg_dsn, "audit", "verify", check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.strip() == "ok"
