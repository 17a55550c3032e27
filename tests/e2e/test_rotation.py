"""End to end: rotate, disable/enable and key revocation take effect on the very next request."""

from __future__ import annotations

import asyncio

import pytest
from e2e_harness import (
    Gateway,
    api,
    client_headers,
    new_credential,
    raw_post,
    streamable_session,
)
from mcp.shared.exceptions import MCPError
from mcp.types import TextContent
from upstream import UpstreamServer, fingerprint


def _text(result: object) -> str:
    content = result.content  # type: ignore[attr-defined]
    assert isinstance(content[0], TextContent)
    return content[0].text


async def test_rotate_mid_call_then_next_request_uses_new(
    gateway: Gateway, upstream: UpstreamServer
) -> None:
    """A call in flight during a rotate finishes; every later request carries the new credential."""
    old, new = new_credential("old"), new_credential("new")
    slug = await gateway.connection(upstream, old)
    upstream.accept(new)  # both are valid upstream while the rotate happens
    first_progress = asyncio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        first_progress.set()

    async with streamable_session(gateway.url(slug), client_headers(gateway.mcp_key)) as session:
        assert _text(await session.call_tool("whoami", {})) == fingerprint(old)
        slow = asyncio.create_task(
            session.call_tool(
                "slow_progress", {"steps": 3, "delay": 0.3}, progress_callback=on_progress
            )
        )
        await asyncio.wait_for(first_progress.wait(), timeout=10)
        assert not slow.done()
        response = await api(gateway, "POST", f"/virtual-keys/{slug}/rotate", {"credential": new})
        assert response.status_code == 200
        assert response.json()["credentialVersion"] == 2
        rotated_at = len(upstream.requests())

        assert _text(await asyncio.wait_for(slow, timeout=10)) == "done after 3 steps"
        assert _text(await session.call_tool("whoami", {})) == fingerprint(new)

        # The old credential is now refused upstream: the session keeps working.
        upstream.guard.refuse(old)
        assert _text(await session.call_tool("echo", {"text": "after"})) == "after"

    after = upstream.requests()[rotated_at:]
    assert after
    assert not [r for r in after if r.header("authorization") == f"Bearer {old}"]
    assert upstream.guard.seen_with(new)

    await gateway.gw.audit.flush()
    page = await gateway.gw.service.list_audit(slug, limit=200)
    calls = [e for e in page.items if e.rpc_method == "tools/call"]
    # Newest first: echo and whoami after the rotate, slow_progress and whoami before.
    assert [(e.tool, e.credential_version) for e in calls] == [
        ("echo", 2),
        ("whoami", 2),
        ("slow_progress", 1),
        ("whoami", 1),
    ]
    assert [e.action for e in page.items if e.kind != "gateway"][:1] == ["rotate"]


async def test_disable_refuses_at_once_and_enable_restores(
    gateway: Gateway, upstream: UpstreamServer
) -> None:
    """Disable answers 403 on the next request and nothing reaches the upstream; enable restores."""
    credential = new_credential()
    slug = await gateway.connection(upstream, credential)
    async with streamable_session(gateway.url(slug), client_headers(gateway.mcp_key)) as session:
        assert _text(await session.call_tool("echo", {"text": "on"})) == "on"

    response = await api(gateway, "POST", f"/virtual-keys/{slug}/disable")
    assert response.status_code == 200
    assert response.json()["enabled"] is False
    before = len(upstream.requests())
    refused = await raw_post(gateway.url(slug), gateway.mcp_key)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "connection_disabled"
    assert upstream.requests()[before:] == []

    response = await api(gateway, "POST", f"/virtual-keys/{slug}/enable")
    assert response.status_code == 200
    async with streamable_session(gateway.url(slug), client_headers(gateway.mcp_key)) as session:
        assert _text(await session.call_tool("echo", {"text": "back"})) == "back"

    await gateway.gw.audit.flush()
    page = await gateway.gw.service.list_audit(slug, limit=200)
    denied = [e for e in page.items if e.kind == "gateway" and e.outcome == "denied"]
    assert [e.status for e in denied] == [403]


async def test_disable_cuts_an_open_session(gateway: Gateway, upstream: UpstreamServer) -> None:
    """A session opened before the disable gets 403 on its next message, not a cached pass."""
    credential = new_credential()
    slug = await gateway.connection(upstream, credential)
    async with streamable_session(gateway.url(slug), client_headers(gateway.mcp_key)) as session:
        await session.call_tool("echo", {"text": "warm the caches"})
        await gateway.gw.service.set_enabled(slug, False)
        before = len(upstream.requests())
        with pytest.raises(MCPError):
            await session.call_tool("echo", {"text": "refused"})
        assert not [r for r in upstream.requests()[before:] if r.method == "POST"]
        await gateway.gw.service.set_enabled(slug, True)
        assert _text(await session.call_tool("echo", {"text": "again"})) == "again"

    await gateway.gw.audit.flush()
    page = await gateway.gw.service.list_audit(slug, limit=200)
    assert [e.status for e in page.items if e.outcome == "denied"] == [403]


async def test_revoked_key_gets_401_on_next_request(
    gateway: Gateway, upstream: UpstreamServer
) -> None:
    """A revoked gateway key is refused with 401 on the very next request."""
    credential = new_credential()
    slug = await gateway.connection(upstream, credential)
    created = await api(gateway, "POST", "/api-keys", {"name": "short-lived", "scopes": ["mcp"]})
    assert created.status_code == 201
    key, key_id = created.json()["key"], created.json()["id"]

    async with streamable_session(gateway.url(slug), client_headers(key)) as session:
        assert _text(await session.call_tool("echo", {"text": "ok"})) == "ok"

    revoked = await api(gateway, "DELETE", f"/api-keys/{key_id}")
    assert revoked.status_code == 204
    refused = await raw_post(gateway.url(slug), key)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"]
    assert key not in refused.text
    # Another key still works: the revoke touched only that key.
    assert (await raw_post(gateway.url(slug), gateway.mcp_key)).status_code != 401
