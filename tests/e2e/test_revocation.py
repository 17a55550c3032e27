"""End to end: disabling, deleting or revoking ends the requests and streams already open.

The official MCP client holds a legacy SSE stream or a Streamable HTTP call to
a slow tool through the gateway; the change is made through the service (the
same process, as the management API would): the client's stream must end
within 1 s and the upstream must see its request closed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from e2e_harness import (
    Gateway,
    client_headers,
    legacy_session,
    new_credential,
    streamable_session,
)
from mcp.client.session import ClientSession
from mcp.shared.exceptions import MCPError
from upstream import UpstreamServer

Opener = Callable[[str, dict[str, str]], AbstractAsyncContextManager[ClientSession]]


async def _slow_call_then(session: ClientSession, change: Callable[[], Awaitable[Any]]) -> float:
    """Start a long tool call, make ``change`` once it streams, return how long
    the call took to fail after the change."""
    progressed = asyncio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        progressed.set()

    call = asyncio.ensure_future(
        session.call_tool(
            "slow_progress", {"steps": 100, "delay": 0.2}, progress_callback=on_progress
        )
    )
    try:
        await asyncio.wait_for(progressed.wait(), 10)
        changed_at = time.monotonic()
        await change()
        with pytest.raises(MCPError):  # the SDK's error for a closed stream
            await asyncio.wait_for(call, 5)
        return time.monotonic() - changed_at
    finally:
        call.cancel()


async def _upstream_closes(upstream: UpstreamServer, credential: str, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        still = [
            r
            for r in upstream.guard.open_requests()
            if r.header("authorization") == f"Bearer {credential}"
        ]
        if not still:
            return True
        await asyncio.sleep(0.02)
    return False


async def _revoked_events(gateway: Gateway, slug: str) -> list[Any]:
    await gateway.gw.audit.flush()
    page = await gateway.gw.service.list_audit(slug, limit=200)
    return [e for e in page.items if e.outcome == "revoked"]


@pytest.mark.parametrize(
    ("opener", "path", "suffix"),
    [(legacy_session, "/legacy", "/sse"), (streamable_session, "/mcp", "")],
    ids=["legacy-sse", "streamable-http"],
)
@pytest.mark.parametrize("how", ["disable", "delete"])
async def test_connection_change_ends_open_streams(
    gateway: Gateway,
    upstream: UpstreamServer,
    opener: Opener,
    path: str,
    suffix: str,
    how: str,
) -> None:
    """Disabling or deleting a connection ends its open stream within 1 s, upstream too."""
    credential = new_credential()
    slug = await gateway.connection(upstream, credential, path=path)
    service = gateway.gw.service

    async def change() -> None:
        if how == "disable":
            await service.set_enabled(slug, False)
        else:
            await service.delete_connection(slug)

    async with opener(gateway.url(slug, suffix), client_headers(gateway.mcp_key)) as session:
        took = await _slow_call_then(session, change)
        assert took < 1.0
        assert await _upstream_closes(upstream, credential, 1.0)
    assert await _revoked_events(gateway, slug)


@pytest.mark.parametrize(
    ("opener", "path", "suffix"),
    [(legacy_session, "/legacy", "/sse"), (streamable_session, "/mcp", "")],
    ids=["legacy-sse", "streamable-http"],
)
async def test_revoked_key_ends_open_streams(
    gateway: Gateway, upstream: UpstreamServer, opener: Opener, path: str, suffix: str
) -> None:
    """Revoking the key ends the streams open under it within 1 s; other keys keep theirs."""
    credential = new_credential()
    slug = await gateway.connection(upstream, credential, path=path)
    service = gateway.gw.service
    record, key = await service.create_api_key({"name": "to revoke", "scopes": ["mcp"]})

    async with (
        opener(gateway.url(slug, suffix), client_headers(gateway.mcp_key)) as other,
        opener(gateway.url(slug, suffix), client_headers(key)) as session,
    ):
        took = await _slow_call_then(session, lambda: service.revoke_api_key(record.id))
        assert took < 1.0
        # The other key's session is untouched.
        result = await other.call_tool("echo", {"text": "still here"})
        assert not result.is_error
    revoked = await _revoked_events(gateway, slug)
    assert revoked
    assert {e.api_key_id for e in revoked} == {record.id}


async def test_rotation_lets_open_streams_finish(
    gateway: Gateway, upstream: UpstreamServer
) -> None:
    """A rotation does not end the call in flight: it finishes on the old credential."""
    credential = new_credential()
    slug = await gateway.connection(upstream, credential, path="/mcp")
    new = new_credential()
    upstream.accept(new)
    async with streamable_session(gateway.url(slug), client_headers(gateway.mcp_key)) as s:
        progressed = asyncio.Event()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            progressed.set()

        call = asyncio.ensure_future(
            s.call_tool("slow_progress", {"steps": 4, "delay": 0.2}, progress_callback=on_progress)
        )
        await asyncio.wait_for(progressed.wait(), 10)
        await gateway.gw.service.rotate_credential(slug, new)
        result = await asyncio.wait_for(call, 10)
        assert not result.is_error
    assert not await _revoked_events(gateway, slug)


async def test_key_expiry_ends_open_streams(gateway: Gateway, upstream: UpstreamServer) -> None:
    """A key whose expiresAt passes while its stream is open: the stream ends then."""
    from datetime import timedelta

    from igris_mw.models import format_time, utcnow

    credential = new_credential()
    slug = await gateway.connection(upstream, credential, path="/legacy")
    expires = utcnow() + timedelta(seconds=2)
    _, key = await gateway.gw.service.create_api_key(
        {"name": "short", "scopes": ["mcp"], "expiresAt": format_time(expires)}
    )
    async with legacy_session(gateway.url(slug, "/sse"), client_headers(key)) as session:
        took = await _slow_call_then(session, lambda: asyncio.sleep(0))
        # The change is the clock: the call ends about when the key expires.
        assert took < (expires - utcnow()).total_seconds() + 3.0
    assert (utcnow() - expires).total_seconds() < 1.5
    assert await _revoked_events(gateway, slug)


async def test_change_by_another_process_on_sqlite_ends_streams_within_the_ttl(
    upstream: UpstreamServer, tmp_path: Path
) -> None:
    """A disable written by another process on the same SQLite file (no notice reaches
    the gateway) ends the open stream within cache_ttl plus one store round trip."""
    import httpx
    from e2e_harness import make_gateway, new_slug, serve

    from igris_mw._service import Service
    from igris_mw._sqlite import SQLiteStore

    ttl = 0.5
    gw = make_gateway(tmp_path, cache_ttl=ttl)
    async with serve(gw) as base_url:
        credential = new_credential()
        upstream.accept(credential)
        slug = new_slug("sqlite")
        await gw.service.create_connection(
            {
                "slug": slug,
                "name": slug,
                "upstreamUrl": upstream.base_url + "/legacy",
                "credential": credential,
            }
        )
        _, key = await gw.service.create_api_key({"name": "k", "scopes": ["mcp"]})
        # The "CLI": its own store object on the same file, whose writes the gateway
        # never hears of.
        other = SQLiteStore(tmp_path / "igris.db")
        await other.open()
        try:
            cli_service = Service(other, gw.crypto)
            async with (
                httpx.AsyncClient(timeout=httpx.Timeout(10, read=20)) as http,
                http.stream(
                    "GET",
                    f"{base_url}/v1/mcp/{slug}/sse",
                    headers={"Authorization": f"Bearer {key}", "Accept": "text/event-stream"},
                ) as resp,
            ):
                assert resp.status_code == 200
                chunks = resp.aiter_bytes()
                assert b"endpoint" in await chunks.__anext__()
                await cli_service.set_enabled(slug, False)
                changed = time.monotonic()
                async for _ in chunks:
                    pass
                took = time.monotonic() - changed
            assert took < 2 * ttl + 0.5
        finally:
            await other.close()


async def test_patch_taking_the_connection_from_a_key_ends_its_streams(
    gateway: Gateway, upstream: UpstreamServer
) -> None:
    """PATCH of a key's connections that drops this one ends its open stream within 1 s."""
    credential = new_credential()
    slug = await gateway.connection(upstream, credential, path="/legacy")
    other = await gateway.connection(upstream, new_credential(), path="/legacy")
    service = gateway.gw.service
    record, key = await service.create_api_key(
        {"name": "narrowed", "scopes": ["mcp"], "connections": [slug, other]}
    )
    async with legacy_session(gateway.url(slug, "/sse"), client_headers(key)) as session:
        took = await _slow_call_then(
            session, lambda: service.update_api_key(record.id, {"connections": [other]})
        )
        assert took < 1.0
    assert await _revoked_events(gateway, slug)
