"""Helpers for the end-to-end tests: serving apps, gateways, MCP client sessions."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import httpx
import httpx2
import uvicorn
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from upstream import QuietServer, UpstreamServer, free_socket

from igris_mw import IgrisGateway

MASTER_KEY = base64.b64encode(os.urandom(32)).decode()


def new_slug(prefix: str) -> str:
    """A unique connection slug, so tests sharing the session store never collide."""
    return f"{prefix}-{secrets.token_hex(4)}"


def new_credential(prefix: str = "cred") -> str:
    """A unique upstream credential."""
    return f"{prefix}-{secrets.token_urlsafe(16)}"


@contextlib.asynccontextmanager
async def serve(app: Any, *, lifespan: Literal["auto", "on", "off"] = "on") -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port; yield its base URL."""
    sock = free_socket()
    port = sock.getsockname()[1]
    # log_config=None: uvicorn's loggers propagate to the root, where caplog sees them.
    config = uvicorn.Config(
        app,
        log_config=None,
        lifespan=lifespan,
        access_log=True,
        ws="none",
        timeout_graceful_shutdown=3,
    )
    server = QuietServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    deadline = time.monotonic() + 10
    while not server.started:
        if task.done():
            await task
            raise RuntimeError("uvicorn exited during start-up")
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=15)
        sock.close()


def make_gateway(store_dir: Path, app: Any = None, **options: Any) -> IgrisGateway:
    """A gateway on a fresh SQLite store in ``store_dir``."""
    return IgrisGateway(
        app,
        store=f"sqlite:///{store_dir / 'igris.db'}",
        environ={"IGRIS_MASTER_KEY": MASTER_KEY},
        audit_spill=store_dir / "audit-spill.jsonl",
        upstream_timeout=10,
        **{"allow_upstream_networks": ["127.0.0.0/8"], **options},  # the test upstreams
    )


@attrs.define
class Gateway:
    """A running gateway and the keys the tests use."""

    gw: IgrisGateway
    base_url: str
    db_path: Path
    mcp_key: str = attrs.field(repr=False)
    mcp_key_id: str
    admin_key: str = attrs.field(repr=False)

    def url(self, slug: str, subpath: str = "") -> str:
        return f"{self.base_url}/v1/mcp/{slug}{subpath}"

    async def connection(
        self,
        upstream: UpstreamServer,
        credential: str,
        *,
        prefix: str = "e2e",
        path: str = "/mcp",
    ) -> str:
        """Create a bearer connection to ``upstream`` that accepts ``credential``."""
        upstream.accept(credential)
        slug = new_slug(prefix)
        await self.gw.service.create_connection(
            {
                "slug": slug,
                "name": f"e2e {slug}",
                "upstreamUrl": upstream.base_url + path,
                "authType": "bearer",
                "credential": credential,
            }
        )
        return slug


def client_headers(key: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """What an MCP client configured for the gateway sends."""
    return {"Authorization": f"Bearer {key}", **(extra or {})}


@contextlib.asynccontextmanager
async def streamable_session(
    url: str,
    headers: Mapping[str, str],
    *,
    on_response: Callable[[httpx2.Response], Awaitable[None]] | None = None,
) -> AsyncIterator[ClientSession]:
    """An initialized MCP session over Streamable HTTP, closed (DELETE) on exit."""
    hooks = {"response": [on_response]} if on_response is not None else {}
    async with (
        httpx2.AsyncClient(
            headers=dict(headers), timeout=httpx2.Timeout(30, read=60), event_hooks=hooks
        ) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write, read_timeout_seconds=20) as session,
    ):
        await session.initialize()
        yield session


@contextlib.asynccontextmanager
async def legacy_session(url: str, headers: Mapping[str, str]) -> AsyncIterator[ClientSession]:
    """An initialized MCP session over the legacy HTTP+SSE transport."""
    async with (
        sse_client(url, headers=dict(headers), timeout=10, sse_read_timeout=20) as (read, write),
        ClientSession(read, write, read_timeout_seconds=20) as session,
    ):
        await session.initialize()
        yield session


async def raw_post(url: str, key: str, body: Any = None) -> httpx.Response:
    """One JSON-RPC POST without a session: enough to see the gateway's verdict."""
    payload = (
        body
        if body is not None
        else {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "ping",
            "params": {},
        }
    )
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(
            url,
            json=payload,
            headers={
                "Authorization": f"Bearer {key}",
                "Accept": "application/json, text/event-stream",
            },
        )


async def api(
    gateway: Gateway, method: str, path: str, body: Any = None, *, key: str | None = None
) -> httpx.Response:
    """One management API call with the admin key."""
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        return await http.request(
            method,
            "/api/v1" + path,
            json=body,
            headers={"Authorization": f"Bearer {key or gateway.admin_key}"},
        )
