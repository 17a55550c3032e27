"""End to end: tool policy with the official MCP SDK client through the gateway."""

from __future__ import annotations

import asyncio
import json

import pytest
from e2e_harness import Gateway, client_headers, new_credential, streamable_session
from mcp.shared.exceptions import MCPError
from upstream import UpstreamServer


async def test_sdk_sees_only_allowed_tools_and_a_denied_call_fails(
    gateway: Gateway, upstream: UpstreamServer
) -> None:
    """list_tools() shows the allowed tools; call_tool of a denied one raises -32003,
    and the upstream receives nothing for it."""
    credential = new_credential()
    slug = await gateway.connection(upstream, credential, path="/mcp")
    await gateway.gw.service.update_connection(slug, {"tools": {"deny": ["whoami"]}})
    _, key = await gateway.gw.service.create_api_key(
        {"name": "narrow", "scopes": ["mcp"], "tools": {"allow": ["echo", "whoami"]}}
    )
    async with streamable_session(gateway.url(slug), client_headers(key)) as session:
        listed = await session.list_tools()
        assert [t.name for t in listed.tools] == ["echo"]
        before = len(upstream.requests())
        with pytest.raises(MCPError) as caught:
            await session.call_tool("whoami", {})
        assert caught.value.error.code == -32003
        assert caught.value.error.message == "tool whoami is not allowed"
        assert len(upstream.requests()) == before  # never sent upstream
        with pytest.raises(MCPError) as caught:
            await session.call_tool("slow_progress", {"steps": 1, "delay": 0})
        assert caught.value.error.code == -32003
        result = await session.call_tool("echo", {"text": "allowed"})
        assert not result.is_error
    await gateway.gw.audit.flush()
    page = await gateway.gw.service.list_audit(slug, limit=200)
    denied = [e for e in page.items if e.outcome == "tool_denied"]
    assert sorted(e.tool or "" for e in denied) == ["slow_progress", "whoami"]
    assert all(e.status == 200 for e in denied)
    assert key not in json.dumps([e.to_json() for e in page.items])


async def test_legacy_sse_sdk_sees_only_allowed_tools_and_denied_calls_fail(
    gateway: Gateway, upstream: UpstreamServer
) -> None:
    """On the legacy transport too: tools filtered on the stream, a denied call's
    -32003 answer delivered on the session's stream, nothing sent upstream."""
    from e2e_harness import legacy_session

    credential = new_credential()
    slug = await gateway.connection(upstream, credential, path="/legacy")
    await gateway.gw.service.update_connection(slug, {"tools": {"allow": ["echo"]}})
    async with legacy_session(
        gateway.url(slug, "/sse"), client_headers(gateway.mcp_key)
    ) as session:
        listed = await session.list_tools()
        assert [t.name for t in listed.tools] == ["echo"]
        before = len(upstream.requests())
        with pytest.raises(MCPError) as caught:
            await session.call_tool("whoami", {})
        assert caught.value.error.code == -32003
        assert len(upstream.requests()) == before
        result = await session.call_tool("echo", {"text": "still works"})
        assert not result.is_error
    # The stream's registration ends with it, once the gateway has seen the
    # client leave (asynchronously: within a second, not at once).
    for _ in range(100):
        if len(gateway.gw._legacy) == 0:
            break
        await asyncio.sleep(0.01)
    assert len(gateway.gw._legacy) == 0
